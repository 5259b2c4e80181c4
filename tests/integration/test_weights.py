"""Starting weights load straight into their shards (grit_jax/weights/loading.py): from a bf16 Hugging
Face directory and from an orbax checkpoint, onto a data x fsdp mesh of 8 devices, cast to the fp32 master
dtype, equal to a whole read, and no buffer a host places is ever a whole sharded parameter."""

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from grit_jax import sharding
from grit_jax.errors import CheckpointError
from grit_jax.programs import grit_convert as convert
from grit_jax.run_config import base_config
from grit_jax.train.state import TrainSetup, initial_params, resolve_model_config
from grit_jax.weights import hf, model_dir, open_weights, safetensors_io
from grit_jax.weights import loading as weights
from tests.grit_fixtures import make_hf_dir, make_tokenizer


@pytest.fixture(scope="module")
def setup_and_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    tokenizer = str(root / "tokenizer.model")
    make_tokenizer(tokenizer)
    model, hf_dir = make_hf_dir(root / "hf", tokenizer, "mixtral")
    model.to(torch.bfloat16).save_pretrained(hf_dir, max_shard_size="100KB")  # bf16, as real checkpoints
    orbax_dir = convert.hf_to_orbax(hf_dir, str(root / "orbax"))
    config = base_config()
    config.model.update(preset="", hf_dir=hf_dir, param_dtype="float32")
    config.mesh.update(data=2, fsdp=4)
    setup = TrainSetup(config, sharding.make_mesh(config.mesh))
    return setup, hf_dir, orbax_dir


def _record_placed(monkeypatch):
    placed = []
    original = jax.device_put

    def device_put(value, device=None, *args, **kwargs):
        placed.append(np.shape(value))
        return original(value, device, *args, **kwargs)

    monkeypatch.setattr(weights.jax, "device_put", device_put)
    return placed


def _check(params, setup, whole, placed):
    flat = _flat(params)
    cfg = setup.model_config
    assert set(flat) == {e.path for e in hf.name_map(cfg)}
    for path, array in flat.items():
        assert array.dtype == np.float32, path
        np.testing.assert_array_equal(np.asarray(array), whole[path].astype(np.float32), err_msg=path)
        if array.sharding.shard_shape(array.shape) != array.shape:  # split: never placed whole
            assert array.shape not in placed, path
    assert any(a.sharding.shard_shape(a.shape) != a.shape for a in flat.values())


def _flat(params, prefix=""):
    out = {}
    for k, v in params.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_hugging_face_weights_load_into_shards_as_float32(setup_and_dirs, monkeypatch):
    setup, hf_dir, _ = setup_and_dirs
    whole = open_weights(hf_dir, config=setup.model_config).read()
    assert str(whole["norm.scale"].dtype) == "bfloat16"  # what is stored
    placed = _record_placed(monkeypatch)
    params = initial_params(setup.config, setup.model_config, setup.shardings.params)
    _check(params, setup, whole, placed)
    state = setup.create_state(params)
    dtypes = {str(x.dtype) for x in jax.tree.leaves((state.params, state.opt_state)) if x.ndim}
    assert dtypes == {"float32"}, dtypes


def test_orbax_weights_load_into_shards(setup_and_dirs, monkeypatch):
    setup, hf_dir, orbax_dir = setup_and_dirs
    whole = open_weights(hf_dir, config=setup.model_config).read()
    placed = _record_placed(monkeypatch)
    source = open_weights(orbax_dir, config=setup.model_config)
    _check(source.load(setup.shardings.params), setup, whole, placed)


def test_params_of_another_dtype_are_refused_by_name(setup_and_dirs):
    setup, hf_dir, _ = setup_and_dirs
    bf16_weights = open_weights(hf_dir, param_dtype="bfloat16")
    bf16 = jax.tree.map(np.asarray, bf16_weights.load(setup.shardings.params))
    with pytest.raises(CheckpointError, match=r"norm.scale: \(64,\) bfloat16 \(want \(64,\) float32\)"):
        setup.create_state(bf16)
    assert resolve_model_config(setup.config).param_dtype == "float32"


def _record_reads(monkeypatch):
    """(tensor name, tensor size, size read) of every lazy safetensors read."""
    reads, original = [], safetensors_io.LazyTensor.__getitem__

    def getitem(self, index):
        value = original(self, index)
        reads.append((self.name, int(np.prod(self.shape)), value.size))
        return value

    monkeypatch.setattr(safetensors_io.LazyTensor, "__getitem__", getitem)
    return reads


@pytest.mark.parametrize("kind", ["hf", "orbax"])
def test_pretrained_model_on_a_mesh_is_read_straight_into_its_shards(setup_and_dirs, monkeypatch, kind):
    """load_pretrained (GritLM.from_pretrained) on a mesh: the stored dtype kept, values equal a whole read,
    no split weight placed whole, and no Hugging Face tensor of a weight split within it read whole."""
    setup, hf_dir, orbax_dir = setup_and_dirs
    whole = open_weights(hf_dir, config=setup.model_config).read()
    placed, reads = _record_placed(monkeypatch), _record_reads(monkeypatch)
    model, _, _ = model_dir.load_pretrained(hf_dir if kind == "hf" else orbax_dir, mesh=setup.mesh)
    flat = _flat(nnx.state(model, nnx.Param).to_pure_dict())
    assert set(flat) == set(whole)
    cfg, specs = model.config, weights._shardings_by_path(setup.shardings.params)
    tensors_of = {name: e.path for e in hf.name_map(cfg) for _, name in hf.hf_names(e, cfg)}
    split_within = set()  # weights split within one Hugging Face tensor, not only across layers
    for path, array in flat.items():
        assert array.dtype == whole[path].dtype == np.dtype("bfloat16"), path
        np.testing.assert_array_equal(np.asarray(array), whole[path], err_msg=path)
        assert array.sharding.spec == specs[path].spec, path  # the training rules
        shard, k = array.sharding.shard_shape(array.shape), len(hf.param_shapes(cfg)[path])
        if shard != array.shape:
            assert array.shape not in placed, path
        if shard[-k:] != array.shape[-k:]:
            split_within.add(path)
    assert split_within and bool(reads) == (kind == "hf")
    for name, size, read in reads:
        assert tensors_of[name] not in split_within or read < size, (name, read, size)


def test_any_box_of_a_hugging_face_tensor_reads_as_the_whole_one_sliced(setup_and_dirs, tmp_path):
    """hf.read_block on random boxes (cut in any dimension, not only the first) of every kind of tensor:
    copied as is, biases (Qwen2's q/k/v, [N*H] in torch), kernels with one or two input axes."""
    _, mixtral, _ = setup_and_dirs
    make_tokenizer(str(tmp_path / "tokenizer.model"))
    _, qwen2 = make_hf_dir(tmp_path / "qwen2", str(tmp_path / "tokenizer.model"), "qwen2")
    rng, kinds = np.random.default_rng(0), set()
    for hf_dir in (mixtral, qwen2):
        cfg, files = hf.read_hf_config(hf_dir), safetensors_io.SafetensorsDir(hf_dir)
        whole = open_weights(hf_dir, config=cfg).read()
        for entry in hf.name_map(cfg):
            shape = hf.param_shapes(cfg)[entry.path]
            position, name = next(hf.hf_names(entry, cfg))
            for _ in range(3):
                starts = [int(rng.integers(0, n)) for n in shape]
                index = tuple(slice(a, int(rng.integers(a + 1, n + 1))) for a, n in zip(starts, shape))
                got = hf.read_block(files.lazy(name), entry, shape, index)
                want = whole[entry.path][position][index]
                np.testing.assert_array_equal(got, want, err_msg=f"{name} {index}")
            kinds.add(entry.in_ndim)
    assert kinds == {None, 0, 1, 2}
