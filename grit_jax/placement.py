"""Where GritLM's arrays live on a device mesh: weights sharded by the training rules (grit_jax.sharding),
encode batches split over the batch axes (data, fsdp, expert) of every device.

`mesh` is a jax.sharding.Mesh or a dict of axis sizes like a training config's `mesh` group
(`{"data": -1}`, `{"fsdp": 4, "tensor": 2}`; missing axes are 1). None keeps everything on one device.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from grit_jax import sharding
from grit_jax.choices import BATCH_AXES, MESH_AXES
from grit_jax.config import data_parallel_size
from grit_jax.errors import UsageError


def resolve_mesh(mesh) -> Mesh | None:
    """A Mesh from a Mesh, a dict of axis sizes, or None."""
    if mesh is None or isinstance(mesh, Mesh):
        return mesh
    if not isinstance(mesh, Mapping):
        raise UsageError(
            f"mesh must be a jax.sharding.Mesh or a dict of axis sizes, got {type(mesh).__name__}"
        )
    unknown = sorted(set(mesh) - set(MESH_AXES))
    if unknown:
        raise UsageError(f"mesh axes {unknown} are not among {MESH_AXES}")
    return sharding.make_mesh({a: mesh.get(a, 1) for a in MESH_AXES})


def parse_mesh(text: str) -> dict[str, int]:
    """`fsdp=4,tensor=2` (a command line's --mesh) as {"fsdp": 4, "tensor": 2}; -1 takes the rest."""
    sizes = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        axis, _, size = item.partition("=")
        if axis not in MESH_AXES or not size.lstrip("-").isdigit():
            raise UsageError(f"--mesh {text!r}: expected AXIS=SIZE[,AXIS=SIZE...] with AXIS in {MESH_AXES}")
        sizes[axis] = int(size)
    return sizes


def local_mesh(text: str | None) -> Mesh | None:
    """A mesh over this host's devices only (each host of grit-embed works alone), or None."""
    return sharding.make_mesh(parse_mesh(text), jax.local_devices()) if text else None


def shard_state(state, mesh: Mesh):
    """The model's nnx.State placed on the mesh, each weight split as training splits it."""
    return jax.device_put(state, sharding.named_shardings(sharding.param_specs(state, mesh), mesh))


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    return tuple(a for a in BATCH_AXES if a in mesh.shape)


def batch_multiple(mesh: Mesh | None) -> int:
    """How many ways a batch is split: its size is rounded up to a multiple of this."""
    return 1 if mesh is None else data_parallel_size(mesh.shape)


def round_batch(n: int, mesh: Mesh | None, bucket) -> int:
    """The padded batch size of n rows: a power of two (bucket), then a multiple of the batch split."""
    size, multiple = bucket(n, 1), batch_multiple(mesh)
    return -(-size // multiple) * multiple


def place_batch(mesh: Mesh | None, *arrays: np.ndarray):
    """Each array split along its first dimension over the mesh's batch axes (as is without a mesh)."""
    if mesh is None:
        return arrays
    where = NamedSharding(mesh, PartitionSpec(batch_axes(mesh)))
    return tuple(jax.device_put(a, where) for a in arrays)
