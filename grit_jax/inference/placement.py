"""Where GritLM's arrays live on a device mesh: weights sharded by the training rules (grit_jax.sharding),
encode batches split over the batch axes (data, fsdp, expert) of every device.

`mesh` is a jax.sharding.Mesh or a dict of axis sizes like a training config's `mesh` group
(`{"data": -1}`, `{"fsdp": 4, "tensor": 2}`; missing axes are 1). None keeps everything on one device.
A mesh may span several hosts: every host then makes the same calls with the same inputs, places the
shards its devices hold, and gets the whole result back (`to_host`).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from grit_jax import sharding
from grit_jax.choices import BATCH_AXES, MESH_AXES
from grit_jax.errors import UsageError
from grit_jax.run_config import data_parallel_size


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
    """The model's nnx.State placed on the mesh, each weight split as training splits it (weights loaded
    into those shards already, grit_jax.weights.loading, stay where they are)."""
    target = sharding.named_shardings(sharding.param_specs(state, mesh), mesh)
    return jax.tree.map(lambda x, s: x if x.sharding == s else jax.device_put(x, s), state, target)


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    return tuple(a for a in BATCH_AXES if a in mesh.shape)


def batch_multiple(mesh: Mesh | None) -> int:
    """How many ways a batch is split: its size is rounded up to a multiple of this."""
    return 1 if mesh is None else data_parallel_size(mesh.shape)


def round_batch(n: int, mesh: Mesh | None, bucket) -> int:
    """The padded batch size of n rows: a power of two (bucket), then a multiple of the batch split."""
    size, multiple = bucket(n, 1), batch_multiple(mesh)
    return -(-size // multiple) * multiple


def _on_mesh(x, mesh: Mesh, where: NamedSharding):
    """x (the same value on every host) as a global array placed by `where`; an array already on the
    mesh's devices stays as it is (a cache from the last step, the weights)."""
    if isinstance(x, jax.Array) and x.sharding.device_set == set(mesh.devices.flat):
        return x
    if jax.process_count() == 1:
        return jax.device_put(x, where)
    host = np.asarray(x)  # each host places the shards its own devices hold
    return jax.make_array_from_callback(host.shape, where, lambda index: host[index])


def place_batch(mesh: Mesh | None, *arrays):
    """Each array split along its first dimension over the mesh's batch axes (as is without a mesh)."""
    if mesh is None:
        return arrays
    where = NamedSharding(mesh, PartitionSpec(batch_axes(mesh)))
    return tuple(_on_mesh(a, mesh, where) for a in arrays)


def replicate(mesh: Mesh | None, *trees):
    """Every array of each tree whole on every device of the mesh (as is without a mesh): the small
    inputs of a pass (prompt tokens, masks, positions) that every host passes alike."""
    if mesh is None:
        return trees
    where = NamedSharding(mesh, PartitionSpec())
    return tuple(jax.tree.map(lambda x: _on_mesh(x, mesh, where), t) for t in trees)


def to_host(x) -> np.ndarray:
    """The whole value of x on this host, gathered from every host when it spans several."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)
