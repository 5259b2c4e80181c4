"""Starting weights loaded straight into their shards: each host reads what its own devices hold.

For every parameter, the shards this host's devices hold are computed from the parameter's sharding
first; the source is then read once, one Hugging Face tensor (one layer, one expert) or one orbax
slice at a time, into those shard buffers, cast to the parameter dtype, and each buffer is placed on
its device. No parameter is ever whole on a host or a device, and no host talks to another, so a pod
loads 7B or 8x7B weights with each host holding its share plus one tensor.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from flax import nnx

from grit_jax import hf
from grit_jax.checkpoint import CheckpointSource, check_leaves, checkpoint_leaves, resolve_checkpoint
from grit_jax.model import ModelConfig
from grit_jax.safetensors_io import SafetensorsDir, numpy_dtype
from grit_jax.tensorstore_io import leaf_opener, release_memory

Shard = tuple[tuple[slice, ...], np.ndarray]  # (index into the stacked parameter, this host's buffer)


def _host_shards(shape: tuple[int, ...], sharding, dtype) -> tuple[dict, list[Shard]]:
    """{device: key} for this host's devices, and one buffer per distinct shard (replicas share one)."""
    by_key, device_keys = {}, {}
    for device, index in sharding.addressable_devices_indices_map(shape).items():
        index = tuple(slice(*s.indices(n)) for s, n in zip(index, shape))
        key = tuple((s.start, s.stop) for s in index)
        if key not in by_key:
            by_key[key] = (index, np.empty([s.stop - s.start for s in index], dtype))
        device_keys[device] = key
    return device_keys, by_key


def place(shape: tuple[int, ...], sharding, dtype, fill: Callable[[list[Shard]], None]) -> jax.Array:
    """A global array of ``shape`` with ``sharding`` whose host shards ``fill`` writes."""
    device_keys, by_key = _host_shards(shape, sharding, dtype)
    fill(list(by_key.values()))
    arrays = [jax.device_put(by_key[key][1], device) for device, key in device_keys.items()]
    return jax.make_array_from_single_device_arrays(shape, sharding, arrays)


def _fill_from_hf(source: SafetensorsDir, entry: hf.Entry, cfg: ModelConfig, shards: list[Shard]):
    """Reads each Hugging Face tensor of ``entry`` once, into every shard that holds part of it."""
    shape = hf.param_shapes(cfg)[entry.path]
    for position, name in hf.hf_names(entry, cfg):  # position: (layer, expert) in the stacked array
        wanted = [
            (index, buffer)
            for index, buffer in shards
            if all(s.start <= p < s.stop for s, p in zip(index, position))
        ]
        if not wanted:
            continue
        value = hf.read_ours(source, entry, name, shape)
        for index, buffer in wanted:
            local = tuple(p - s.start for s, p in zip(index, position))
            buffer[local] = value[index[len(position) :]]
        del value


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


def load_hf(path: str, cfg: ModelConfig, param_shardings: nnx.State) -> dict:
    """The parameters of a Hugging Face directory, nested, as sharded global arrays in cfg.param_dtype."""
    source = SafetensorsDir(path)
    hf.check_hf_names(source, cfg)
    shardings, dtype, shapes = (
        _shardings_by_path(param_shardings),
        numpy_dtype(cfg.param_dtype),
        hf.param_shapes(cfg),
    )
    flat = {}
    for entry in hf.name_map(cfg):
        stack = (cfg.num_hidden_layers,) * entry.per_layer + (cfg.num_local_experts,) * entry.per_expert
        flat[entry.path] = place(
            stack + shapes[entry.path],
            shardings[entry.path],
            dtype,
            lambda shards, entry=entry: _fill_from_hf(source, entry, cfg, shards),
        )
        release_memory()
    return _nested(flat)


def load_checkpoint(source: CheckpointSource, param_shardings: nnx.State) -> dict:
    """The parameters of an orbax checkpoint, nested, each host reading only its shards' slices."""
    cfg, leaves = source.config, checkpoint_leaves(source)
    check_leaves(source, leaves)
    open_leaf, shardings = leaf_opener(source.pytree_dir), _shardings_by_path(param_shardings)
    dtype, flat = numpy_dtype(cfg.param_dtype), {}

    for entry in hf.name_map(cfg):
        keys, shape = leaves[entry.path][:2]
        array = open_leaf(keys)

        def fill(shards, array=array):
            for index, buffer in shards:
                buffer[...] = array[index].read().result()  # tensorstore reads only this slice

        flat[entry.path] = place(shape, shardings[entry.path], dtype, fill)
        release_memory()
    return _nested(flat)


def initial_params(config, cfg: ModelConfig, param_shardings: nnx.State) -> dict | None:
    """None (initialise from config.seed), or the weights of model.hf_dir (a Hugging Face directory) or of
    model.init_checkpoint (a `grit-convert hf-to-orbax` output or another run's checkpoint), as sharded
    arrays in cfg.param_dtype, whatever dtype they were stored in."""
    if config.model.init_checkpoint:
        source = resolve_checkpoint(config.model.init_checkpoint)
        source.config = cfg
        return load_checkpoint(source, param_shardings)
    if config.model.hf_dir:
        return load_hf(config.model.hf_dir, cfg, param_shardings)
    return None
