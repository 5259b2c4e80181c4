"""grit-convert: HF -> orbax -> HF is exact; a training checkpoint exports to a model transformers runs;
bad inputs fail with errors that name the path."""

import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from grit_jax import GritLM, sharding
from grit_jax.errors import CheckpointError
from grit_jax.model import abstract_model
from grit_jax.model.masks import make_attn_mask
from grit_jax.programs import grit_convert as convert
from grit_jax.run_config import base_config
from grit_jax.train.state import TrainSetup, resolve_model_config
from grit_jax.weights import open_weights
from grit_jax.weights.checkpoints import Checkpoints
from grit_jax.weights.model_dir import GRIT_CONFIG
from tests.grit_fixtures import make_hf_dir
from tests.hf_reference import assert_same_tensors


@pytest.mark.parametrize(
    "kind,dtype", [("mistral", torch.float32), ("mixtral", torch.float32), ("mistral", torch.bfloat16)]
)
def test_round_trip_is_exact(tmp_path, tokenizer_model, kind, dtype):
    reference, hf_dir = make_hf_dir(tmp_path / "hf", tokenizer_model, kind)
    if dtype != torch.float32:
        reference.to(dtype).save_pretrained(hf_dir, max_shard_size="100KB")
    convert.run(["hf-to-orbax", "--hf_dir", hf_dir, "--out", str(tmp_path / "ckpt")])
    assert (
        json.load(open(tmp_path / "ckpt" / convert.MODEL_CONFIG))["param_dtype"] == str(dtype).split(".")[1]
    )
    convert.run(
        [
            "orbax-to-hf",
            "--ckpt",
            str(tmp_path / "ckpt"),
            "--out",
            str(tmp_path / "back"),
            "--max_shard_size",
            "150KB",
        ]
    )
    back = tmp_path / "back"
    assert_same_tensors(hf_dir, str(back))
    index = json.load(open(back / "model.safetensors.index.json"))
    assert len(set(index["weight_map"].values())) > 1
    assert (back / "tokenizer.model").read_bytes() == open(tokenizer_model, "rb").read()
    grit = json.load(open(back / GRIT_CONFIG))
    assert grit["pooling_method"] == "mean" and grit["attn"] == "bbcc" and grit["normalized"] is True
    hf_config = json.load(open(back / "config.json"))
    assert hf_config["architectures"] == [reference.config.architectures[0]]
    # The orbax checkpoint is also what GritLM and the loader read, and orbax itself reads it back exactly
    # (grit-convert writes orbax's layout slice by slice with tensorstore: an orbax upgrade must not
    # break it).
    flat = open_weights(str(tmp_path / "ckpt")).read()
    assert flat["embed_tokens.embedding"].shape == (reference.config.vocab_size, reference.config.hidden_size)
    import orbax.checkpoint as ocp

    restored = ocp.PyTreeCheckpointer().restore(str(tmp_path / "ckpt" / "params"))
    by_orbax = {
        ".".join(str(getattr(k, "key", k)) for k in path if str(getattr(k, "key", k)) != "value"): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(restored)[0]
    }
    expected = open_weights(hf_dir).read()
    assert set(by_orbax) == set(expected)
    for key, value in expected.items():
        assert by_orbax[key].dtype == value.dtype and np.array_equal(np.asarray(by_orbax[key]), value), key


def make_training_checkpoint(workdir, tokenizer_model, step=3):
    """What grit_jax.programs.grit_train leaves behind: workdir/config.json and Checkpoints(workdir) step
    dirs."""
    config = base_config()
    config.data.tokenizer = tokenizer_model
    config.model.preset = "tiny"
    mesh = sharding.make_mesh(config.mesh)
    state = TrainSetup(config, mesh).create_state()
    # Make the weights differ from a fresh init and the norms from one.
    state = state.replace(
        params=jax.tree.map(lambda p: p + 0.05 * jnp.sin(jnp.arange(p.size).reshape(p.shape)), state.params)
    )
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json(indent=2))
    ckpt = Checkpoints(workdir, keep=3, async_save=False)
    ckpt.save(step, state, {"position": 0}, force=True)
    ckpt.close()
    return config, state


def test_training_checkpoint_exports_to_transformers(tmp_path, tokenizer_model):
    from transformers import AutoModelForCausalLM

    workdir = str(tmp_path / "run")
    config, state = make_training_checkpoint(workdir, tokenizer_model)
    out = str(tmp_path / "hf")
    convert.run(["orbax-to-hf", "--ckpt", workdir, "--out", out])  # the work dir: its latest step
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3"]
    reference = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    graphdef, _ = abstract_model(resolve_model_config(config))
    model = nnx.merge(graphdef, jax.device_get(state.params))
    tokens = np.random.default_rng(0).integers(3, 400, (2, 10)).astype(np.int32)
    mask = make_attn_mask(np.ones((2, 10), bool), "causal")
    ours = np.asarray(model.logits(model(jnp.asarray(tokens), mask).hidden))
    with torch.no_grad():
        theirs = reference(torch.as_tensor(tokens).long()).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    # GritLM reads the training checkpoint (tokenizer from config.data.tokenizer) and its export alike.
    a = GritLM.from_pretrained(workdir).encode(["hello world", "a b c"], instruction="<|embed|>\n")
    b = GritLM.from_pretrained(out).encode(["hello world", "a b c"], instruction="<|embed|>\n")
    np.testing.assert_allclose(a, b, atol=1e-6)
    step_dir = os.path.join(workdir, "checkpoints", "3")
    flat = open_weights(step_dir).read(jnp.bfloat16)
    assert str(flat["norm.scale"].dtype) == "bfloat16"


def _fails(capsys, argv, pattern):
    """grit-convert ends with status 1 and one line `grit-convert: error: ...` matching pattern."""
    capsys.readouterr()  # what came before (transformers' progress bars)
    assert convert.run(argv) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("grit-convert: error: "), lines
    assert re.search(pattern, lines[0]), lines[0]


def test_errors_name_the_path(tmp_path, tokenizer_model, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    _fails(
        capsys,
        ["orbax-to-hf", "--ckpt", str(empty), "--out", str(tmp_path / "x")],
        f"{empty}: not a checkpoint",
    )
    _fails(
        capsys,
        ["hf-to-orbax", "--hf_dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "y")],
        f"{tmp_path / 'nowhere'}: no such directory",
    )
    _, hf_dir = make_hf_dir(tmp_path / "hf", tokenizer_model)
    llama = tmp_path / "llama"
    shutil.copytree(hf_dir, llama)
    cfg = json.load(open(llama / "config.json"))
    cfg.update(architectures=["GemmaForCausalLM"], model_type="gemma")
    json.dump(cfg, open(llama / "config.json", "w"))
    _fails(
        capsys,
        ["hf-to-orbax", "--hf_dir", str(llama), "--out", str(tmp_path / "z")],
        f"{llama / 'config.json'}: architectures: .*GemmaForCausalLM",
    )
    os.remove(os.path.join(hf_dir, "tokenizer.model"))
    _fails(
        capsys,
        ["hf-to-orbax", "--hf_dir", hf_dir, "--out", str(tmp_path / "w")],
        f"no tokenizer: {os.path.join(hf_dir, 'tokenizer.model')}",
    )
    with pytest.raises(CheckpointError, match=f"{os.path.join(hf_dir, 'tokenizer.model')}"):
        GritLM.from_pretrained(hf_dir)
