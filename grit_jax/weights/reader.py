"""Where a model's parameters are read from, a Hugging Face directory or an orbax checkpoint, behind one
interface: `fill(entry, boxes)` writes boxes of one stacked parameter (an index into it and a buffer),
reading only what those boxes cover: lazy safetensors slices of the tensors they overlap, or tensorstore
slices of the orbax array, cast to the buffers' dtype.

The sharded loader (grit_jax.weights.loader) passes this host's shards, conversion
(grit_jax.programs.grit_convert) one layer
(one expert) at a time, whole reads the whole parameter: all three read through this one piece, so names,
shapes and layouts are checked in one place.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from grit_jax.model import ModelConfig
from grit_jax.weights import hf_names as hf
from grit_jax.weights.orbax_checkpoint import (
    CheckpointSource,
    check_leaves,
    checkpoint_leaves,
)
from grit_jax.weights.safetensors_io import SafetensorsDir, numpy_dtype
from grit_jax.weights.tensorstore_io import leaf_opener, release_memory

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
    and tools that want numpy; programs load into shards with loader.py instead."""
    out = {}
    for entry in hf.name_map(source.config):
        shape = stacked_shape(entry, source.config)
        out[entry.path] = np.empty(shape, dtype or source.stored_dtype(entry))
        source.fill(entry, [(tuple(slice(0, n) for n in shape), out[entry.path])])
    return out
