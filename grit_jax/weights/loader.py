"""Weights loaded straight into their shards: each host reads what its own devices hold.

For every parameter, the shards this host's devices hold are computed from the parameter's sharding
first; the source (grit_jax.weights.reader: a Hugging Face directory or an orbax checkpoint) then reads
only those boxes, lazy safetensors slices or tensorstore slices, straight into the shard buffers, cast
to the parameter dtype, and each buffer is placed on its device. No parameter is ever whole on a host or
a device (unless one device holds it whole), and no host talks to another, so a pod loads 7B or 8x7B
weights with each host holding its share. One loader serves grit-train's starting weights,
`GritLM.from_pretrained` (on a mesh, or one device) and `from_hf`, all through weights.py's `Weights`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, SingleDeviceSharding

from grit_jax import sharding
from grit_jax.model import Transformer, abstract_model
from grit_jax.weights import hf_names as hf
from grit_jax.weights.reader import Box, CheckpointParams, HFParams, stacked_shape
from grit_jax.weights.safetensors_io import numpy_dtype
from grit_jax.weights.tensorstore_io import release_memory


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
