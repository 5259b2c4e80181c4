"""Which weights a model has, in 16 hex digits: what a grit-embed store, a grit-eval mteb result and a
LoRA run's adapters (grit_jax.train.lora_base) record, so that none is reused with other weights.

It hashes every tensor's name, shape and dtype and the exact values at both ends of it (the first ROW
values of its first row, the last ROW of its last row), gathered from the sharded arrays by one small
jitted pass: the same on any mesh and any number of hosts, and it reads about 1 KB a tensor, not the
model. Not a hash of the files' headers and sizes: those are the same for every checkpoint of one
architecture (two steps of a run, a base and its fine-tune, a re-export into the same dir), which is
exactly what must be told apart; every training step moves these values. Not a hash of all the bytes
either: that reads a 7B model's 14 GB again.
"""

from __future__ import annotations

import hashlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

ROW = 64  # values sampled from each end of each tensor


def _ends(x):
    x = x.reshape(1) if x.ndim == 0 else x
    first, last = x[(0,) * (x.ndim - 1)][:ROW], x[(-1,) * (x.ndim - 1)][-ROW:]
    return jnp.concatenate([first, last]).astype(jnp.float32)


def fingerprint(state: nnx.State, replicated=None) -> str:
    """A hex digest of the tensors of an nnx.State (global arrays; `replicated`: a sharding that puts the
    samples whole on every device of their mesh, or None for arrays on one device)."""
    flat = [(".".join(map(str, k)), v.get_value()) for k, v in nnx.to_flat_state(state)]
    flat = [(name, value) for name, value in flat if isinstance(value, jax.Array)]
    samples = jax.jit(lambda xs: [_ends(x) for x in xs], out_shardings=replicated)([v for _, v in flat])
    digest = hashlib.sha256()
    for (name, value), sample in zip(flat, samples):
        digest.update(f"{name}{value.shape}{value.dtype}".encode())
        digest.update(np.asarray(jax.device_get(sample)).tobytes())
    return digest.hexdigest()[:16]


def model_fingerprint(model) -> str:
    """The fingerprint of a GritLM's weights (on its mesh, or on one device)."""
    replicated = None if model.mesh is None else NamedSharding(model.mesh, PartitionSpec())
    return fingerprint(model.state, replicated)
