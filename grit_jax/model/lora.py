"""LoRA: low-rank adapters on a frozen base, as PEFT computes them: y = x W + (alpha / r) * (x A) B.

A Linear with adapters holds A [in..., r] and B [r, out...] (the kernel's input and output axes, so the
sharding rules place them like the kernel), both nnx.LoRAParam in float32 whatever the base's dtype.
A is drawn as PEFT draws it (kaiming-uniform: U(-1/sqrt(in), 1/sqrt(in))) and B is zero, so the model
with fresh adapters computes exactly the base. Training differentiates the adapters only: the state is
split into adapters (trainable) and base (frozen) with `split_adapters` (grit_jax/train/state.py).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from grit_jax.model.model_config import ModelConfig

RANK_AXIS = "lora_rank"  # logical axis of the rank (grit_jax.sharding: replicated)


def options(cfg: ModelConfig, name: str) -> dict:
    """The LoRA keywords of Linear `name` (a PEFT target name): rank 0 when it carries no adapter."""
    on = cfg.lora_rank > 0 and name in cfg.lora_targets
    return {"lora_rank": cfg.lora_rank if on else 0, "lora_alpha": cfg.lora_alpha}


def adapter_params(shape, names, *, in_ndim: int, rank: int, rngs: nnx.Rngs, stack: int | None):
    """(A, B) of a kernel of `shape` whose first `in_ndim` axes are the input: A [in..., r] drawn as PEFT
    draws it, B [r, out...] zero."""
    in_shape, out_shape = tuple(shape[:in_ndim]), tuple(shape[in_ndim:])
    a_shape, b_shape = (*in_shape, rank), (rank, *out_shape)
    a_names, b_names = (*names[:in_ndim], RANK_AXIS), (RANK_AXIS, *names[in_ndim:])
    if stack is not None:
        a_shape, b_shape = (stack, *a_shape), (stack, *b_shape)
        a_names, b_names = ("layers", *a_names), ("layers", *b_names)
    bound = 1.0 / math.sqrt(math.prod(in_shape))
    a = jax.random.uniform(rngs.params(), a_shape, jnp.float32, -bound, bound)
    b = jnp.zeros(b_shape, jnp.float32)
    return (
        nnx.LoRAParam(a, out_sharding=a_names, eager_sharding=False),
        nnx.LoRAParam(b, out_sharding=b_names, eager_sharding=False),
    )


def delta(x, a, b, scale: float):
    """scale * (x A) B for x [..., in...] (its trailing axes are A's input axes): [..., out...]."""
    in_ndim = a.ndim - 1
    inner, rank = math.prod(a.shape[:-1]), a.shape[-1]
    h = x.reshape(-1, inner) @ a.reshape(inner, rank).astype(x.dtype)
    y = h @ (scale * b.reshape(rank, -1)).astype(x.dtype)
    return y.reshape(*x.shape[: x.ndim - in_ndim], *b.shape[1:])


def merged_kernel(kernel, a, b, scale: float):
    """W + scale * A B in float32 (kernel [..., in..., out...], with A and B stacked alike)."""
    lead = a.ndim + b.ndim - kernel.ndim - 2  # leading stacked axes (layers)
    in_shape, out_shape = a.shape[lead:-1], b.shape[lead + 1 :]
    a2 = a.reshape(*a.shape[:lead], math.prod(in_shape), a.shape[-1]).astype(jnp.float32)
    b2 = b.reshape(*b.shape[: lead + 1], math.prod(out_shape)).astype(jnp.float32)
    update = jnp.matmul(a2, b2).reshape(kernel.shape)
    return kernel.astype(jnp.float32) + scale * update


def split_adapters(state: nnx.State) -> tuple[nnx.State, nnx.State]:
    """(adapters, base) of a model's state: the LoRAParam leaves, and everything else."""
    adapters, base = nnx.split_state(state, nnx.LoRAParam, ...)
    return adapters, base
