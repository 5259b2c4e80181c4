"""Loading a model's weights: `open_weights(path)`, the one way in, and the reading and placing behind it.

`path` is a Hugging Face directory (config.json + safetensors) or an orbax checkpoint (a `grit-convert
hf-to-orbax` output, a training step dir or a work dir), local or gs://. The returned `Weights` says which
model it holds (`.config`) and reads it in the form a caller needs:

    w = open_weights("Mistral-7B-v0.1")
    w.load(param_shardings)   # nested {name: jax.Array}, each host reading only its shards (grit-train)
    w.model(mesh)             # a Transformer, sharded over `mesh` by the training rules or on one device
    w.tensors()               # one Hugging Face tensor at a time (grit-convert: file to file)
    w.read()                  # {dotted path: np.ndarray}, whole on this host (tests, small tools)

Reading. Both formats sit behind one interface (HFParams, CheckpointParams): `fill(entry, boxes)` writes
boxes of one stacked parameter (an index into it and a buffer), reading only what those boxes cover: lazy
safetensors slices of the tensors they overlap, or tensorstore slices of the orbax array, cast to the
buffers' dtype. The sharded placement passes this host's shards, conversion (grit_jax.programs.grit_convert)
one layer (one expert) at a time, whole reads the whole parameter: all three read through this one piece,
so names, shapes and layouts are checked in one place.

Placing. For every parameter, the shards this host's devices hold are computed from the parameter's
sharding first; the source then reads only those boxes straight into the shard buffers, cast to the
parameter dtype, and each buffer is placed on its device. No parameter is ever whole on a host or a device
(unless one device holds it whole), and no host talks to another, so a pod loads 7B or 8x7B weights with
each host holding its share. One loader serves grit-train's starting weights, `GritLM.from_pretrained` (on
a mesh, or one device) and `from_hf`.

The rest of weights/ serves this: the name map (hf.py), the file formats (safetensors_io.py, orbax_files.py)
and the checkpoints (checkpoints.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, SingleDeviceSharding

from grit_jax import sharding, storage
from grit_jax.choices import DTYPES
from grit_jax.errors import CheckpointError
from grit_jax.model import ModelConfig, Transformer, abstract_model
from grit_jax.weights import hf
from grit_jax.weights.checkpoints import CheckpointSource, check_leaves, checkpoint_leaves, resolve_checkpoint
from grit_jax.weights.orbax_files import leaf_opener, release_memory
from grit_jax.weights.safetensors_io import SafetensorsDir, numpy_dtype

Box = tuple[tuple[slice, ...], np.ndarray]  # (index into the stacked parameter, the buffer it is read into)


def stacked_shape(entry: hf.Entry, cfg: ModelConfig) -> tuple[int, ...]:
    """The shape of our parameter `entry`: the layer and expert axes, then one tensor's shape."""
    stack = (cfg.num_hidden_layers,) * entry.per_layer + (cfg.num_local_experts,) * entry.per_expert
    return stack + hf.param_shapes(cfg)[entry.path]


class HFParams:
    """The parameters of a Hugging Face directory; unexpected tensor names are refused on opening,
    missing or mis-shaped ones when read."""

    def __init__(self, path: str, cfg: ModelConfig):
        self.path, self.config, self.files = path, cfg, SafetensorsDir(path)
        hf.check_hf_names(self.files, cfg)

    def stored_dtype(self, entry: hf.Entry) -> np.dtype:
        _, name = next(hf.hf_names(entry, self.config))
        return self.files.lazy(name).dtype

    def fill(self, entry: hf.Entry, boxes: list[Box]) -> None:
        """Each box from the Hugging Face tensors it overlaps (one per layer and expert), only its part."""
        shape = hf.param_shapes(self.config)[entry.path]
        for position, name in hf.hf_names(entry, self.config):  # position: (layer, expert) in the stack
            wanted = [
                (index, buffer)
                for index, buffer in boxes
                if all(s.start <= p < s.stop for s, p in zip(index, position))
            ]
            if not wanted:
                continue
            tensor = self.files.lazy(name)
            for index, buffer in wanted:
                local = tuple(p - s.start for s, p in zip(index, position))
                buffer[local] = hf.read_block(tensor, entry, shape, index[len(position) :])
            del tensor
            self.files.close()  # unmapped: pages read so far would otherwise stay resident


class CheckpointParams:
    """The parameters of an orbax checkpoint (hf-to-orbax dir or a training step), names and shapes checked
    against `source.config` on opening."""

    def __init__(self, source: CheckpointSource):
        self.path, self.config, self.leaves = source.pytree_dir, source.config, checkpoint_leaves(source)
        check_leaves(source, self.leaves)
        self._open = leaf_opener(source.pytree_dir)

    def stored_dtype(self, entry: hf.Entry) -> np.dtype:
        name = self.leaves[entry.path][2]
        return numpy_dtype(name) if name in ("float32", "bfloat16", "float16") else np.dtype(name)

    def fill(self, entry: hf.Entry, boxes: list[Box]) -> None:
        array = self._open(self.leaves[entry.path][0])
        for index, buffer in boxes:
            buffer[...] = array[index].read().result()  # tensorstore reads only this slice
        release_memory()


def iter_tensors(
    source: HFParams | CheckpointParams, dtype=None
) -> Iterator[tuple[hf.Entry, tuple[int, ...], tuple[int, ...], str, np.ndarray]]:
    """(entry, stacked shape, position in the stack, Hugging Face name, one tensor in our layout) for every
    tensor, in name_map order, each in a buffer of its own (`dtype`, default as stored): memory stays near
    one tensor whatever the size of the stacked parameter."""
    cfg = source.config
    for entry in hf.name_map(cfg):
        shape = stacked_shape(entry, cfg)
        for position, name in hf.hf_names(entry, cfg):
            tensor_shape = shape[len(position) :]
            index = tuple(slice(p, p + 1) for p in position) + tuple(slice(0, n) for n in tensor_shape)
            buffer = np.empty((1,) * len(position) + tensor_shape, dtype or source.stored_dtype(entry))
            source.fill(entry, [(index, buffer)])
            yield entry, shape, position, name, buffer.reshape(tensor_shape)
            del buffer
            release_memory()


def read_params(source: HFParams | CheckpointParams, dtype=None) -> dict[str, np.ndarray]:
    """{our dotted path: the whole stacked parameter} on this host (`dtype`, default as stored): for tests
    and tools that want numpy; programs load into shards with load() instead."""
    out = {}
    for entry in hf.name_map(source.config):
        shape = stacked_shape(entry, source.config)
        out[entry.path] = np.empty(shape, dtype or source.stored_dtype(entry))
        source.fill(entry, [(tuple(slice(0, n) for n in shape), out[entry.path])])
    return out


# ----------------------------------------------------------------------------- placing into shards


def _host_shards(shape: tuple[int, ...], sharding, dtype) -> tuple[dict, dict]:
    """{device: key} for this host's devices, and one box per distinct shard (replicas share one)."""
    by_key, device_keys = {}, {}
    for device, index in sharding.addressable_devices_indices_map(shape).items():
        index = tuple(slice(*s.indices(n)) for s, n in zip(index, shape))
        key = tuple((s.start, s.stop) for s in index)
        if key not in by_key:
            by_key[key] = (index, np.empty([s.stop - s.start for s in index], dtype))
        device_keys[device] = key
    return device_keys, by_key


def place(shape: tuple[int, ...], sharding, dtype, fill: Callable[[list[Box]], None]) -> jax.Array:
    """A global array of ``shape`` with ``sharding`` whose host shards ``fill`` writes."""
    device_keys, by_key = _host_shards(shape, sharding, dtype)
    fill(list(by_key.values()))
    arrays = [jax.device_put(by_key[key][1], device) for device, key in device_keys.items()]
    return jax.make_array_from_single_device_arrays(shape, sharding, arrays)


def _nested(flat: dict[str, jax.Array]) -> dict:
    nested = {}
    for path, value in flat.items():
        node = nested
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return nested


def _shardings_by_path(param_shardings: nnx.State) -> dict[str, object]:
    return {".".join(map(str, k)): v.get_value() for k, v in nnx.to_flat_state(param_shardings)}


def load(source: HFParams | CheckpointParams, param_shardings: nnx.State) -> dict:
    """The parameters of `source`, nested, as global arrays with `param_shardings` in the source config's
    param_dtype, each host reading only its shards."""
    cfg, shardings = source.config, _shardings_by_path(param_shardings)
    dtype, flat = numpy_dtype(cfg.param_dtype), {}
    for entry in hf.name_map(cfg):
        shape = stacked_shape(entry, cfg)
        flat[entry.path] = place(shape, shardings[entry.path], dtype, _filler(source, entry))
        release_memory()
    return _nested(flat)


def _filler(source, entry):
    return lambda boxes: source.fill(entry, boxes)


def load_model(source: HFParams | CheckpointParams, mesh: Mesh | None = None) -> Transformer:
    """A Transformer holding the weights of `source` in its config's param_dtype: sharded over `mesh` by
    the training rules (grit_jax.sharding), or on this host's first device without one."""
    graphdef, abstract = abstract_model(source.config)
    if mesh is None:
        shardings = jax.tree.map(lambda _: SingleDeviceSharding(jax.local_devices()[0]), abstract)
    else:
        shardings = sharding.named_shardings(sharding.param_specs(abstract, mesh), mesh)
    nnx.replace_by_pure_dict(abstract, load(source, shardings))
    return nnx.merge(graphdef, abstract)


# ----------------------------------------------------------------------------- the front door


def is_hf_dir(path: str) -> bool:
    """A Hugging Face model directory: a config.json, and not a training work dir."""
    return storage.isfile(storage.join(path, "config.json")) and not storage.isdir(
        storage.join(path, "checkpoints")
    )


class Weights:
    """A model's parameters in a Hugging Face directory or an orbax checkpoint (see `open_weights`)."""

    def __init__(self, source: HFParams | CheckpointParams, checkpoint: CheckpointSource | None):
        self._source = source
        self.checkpoint = checkpoint  # the orbax checkpoint's own description, None for a Hugging Face dir

    @property
    def path(self) -> str:
        return self._source.path

    @property
    def config(self) -> ModelConfig:
        return self._source.config

    def stored_dtype(self, entry: hf.Entry) -> np.dtype:
        """The dtype one parameter (an entry of hf.name_map) is stored in."""
        return self._source.stored_dtype(entry)

    def stored_param_dtype(self) -> str:
        """The dtype the parameters are stored in, if a model may hold it (else float32)."""
        stored = str(self.stored_dtype(hf.name_map(self.config)[0]))
        return stored if stored in DTYPES else "float32"

    def load(self, param_shardings) -> dict:
        """Nested parameters as global arrays with `param_shardings` (an nnx.State of shardings), in
        config.param_dtype; each host reads only the boxes its devices hold."""
        return load(self._source, param_shardings)

    def model(self, mesh: Mesh | None = None, *, param_dtype: str | None = None) -> Transformer:
        """A Transformer holding these weights in `param_dtype` (default config.param_dtype), sharded over
        `mesh` by the training rules (grit_jax/sharding.py), or on this host's first device without one."""
        if param_dtype is not None:
            self._source.config = self.config.replace(param_dtype=param_dtype)
        return load_model(self._source, mesh)

    def tensors(self, dtype=None):
        """(entry, stacked shape, position, Hugging Face name, tensor) one tensor at a time (py)."""
        return iter_tensors(self._source, dtype)

    def read(self, dtype=None) -> dict[str, np.ndarray]:
        """{our dotted path: the whole stacked parameter} on this host, `dtype` default as stored."""
        return read_params(self._source, dtype)


def open_weights(
    path: str,
    *,
    step: int | None = None,
    config: ModelConfig | None = None,
    kind: str | None = None,
    **config_changes,
) -> Weights:
    """The weights at `path` (see the module docstring). `config` replaces the model config read from
    `path` (it must agree on every shape: it may change dtypes and other settings); `config_changes`
    override fields of the one read (e.g. dtype, param_dtype); `step` picks a training checkpoint's step
    (default: the latest complete one); `kind` ("hf" or "orbax") insists on one format."""
    path = os.fspath(storage.as_path(path))
    expected = {"hf": "a Hugging Face model directory", "orbax": "an orbax checkpoint"}.get(
        kind, "a Hugging Face dir or an orbax checkpoint"
    )
    if not storage.isdir(path):
        raise CheckpointError(f"{path}: no such directory (expected {expected})")
    if kind == "hf" or (kind is None and is_hf_dir(path)):
        cfg = config or hf.read_hf_config(path, **config_changes)
        return Weights(HFParams(path, cfg), None)
    checkpoint = resolve_checkpoint(path, step)
    if checkpoint.config.lora_rank:
        raise CheckpointError(_lora_run_message(path, checkpoint))
    if config is not None:
        checkpoint.config = config
    elif config_changes:
        checkpoint.config = checkpoint.config.replace(**config_changes)
    return Weights(CheckpointParams(checkpoint), checkpoint)


def _lora_run_message(path: str, checkpoint: CheckpointSource) -> str:
    """What to do with a LoRA run's checkpoint, whose steps hold its adapters and not the base."""
    model = (checkpoint.training_config or {}).get("model") or {}
    base = model.get("hf_dir") or model.get("init_checkpoint")
    where = (
        f"the base {base}"
        if base
        else f"its base (preset {model.get('preset')!r}, random init: no dir holds it)"
    )
    return (
        f"{path}: a LoRA run's checkpoint holds its adapters only, not the base; export them with "
        f"`grit-convert lora-to-peft --ckpt {path} --out ADAPTER_DIR`, then load {where} with the adapter: "
        "grit-eval/grit-embed --model BASE --adapter ADAPTER_DIR, GritLM.from_pretrained(BASE, "
        "adapter=ADAPTER_DIR), or `grit-convert merge-adapter` for one merged model"
    )


def from_hf(path: str, dtype: str | None = None, **config_changes) -> Transformer:
    """A grit_jax Transformer holding the weights of a Hugging Face directory (grit_jax.choices.MODEL_TYPES)
    on this host's first device. `dtype` is the parameter dtype (float32 default); config_changes override
    ModelConfig fields (e.g. compute dtype, remat_policy)."""
    if dtype is not None:
        config_changes["param_dtype"] = dtype
    return open_weights(path, kind="hf", **config_changes).model()
