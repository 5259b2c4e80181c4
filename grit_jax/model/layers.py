"""The building blocks of a Mistral decoder layer, as Hugging Face computes them.

Legend: B batch, T query length, S key length, N heads, K kv heads, G = N/K, H head dim, D model dim,
F MLP dim, V vocab. Every parameter carries logical axis names (`out_sharding`), placed on the mesh by
grit_jax.sharding; a stacked parameter gets a leading "layers" axis.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

NEG_INF = jnp.finfo(jnp.float32).min


def make_param(rngs: nnx.Rngs | None, shape, names, dtype, stack: int | None = None, init="normal"):
    """A parameter of `shape` (with a leading layer axis of size `stack`) named by logical axes."""
    if stack is not None:
        shape, names = (stack, *shape), ("layers", *names)
    if init == "ones":
        value = jnp.ones(shape, dtype)
    else:
        value = 0.02 * jax.random.normal(rngs.params(), shape, dtype)
    return nnx.Param(value, out_sharding=names, eager_sharding=False)


class RMSNorm(nnx.Module):
    def __init__(self, dim, eps, dtype, stack=None):
        self.scale = make_param(None, (dim,), ("norm",), dtype, stack, init="ones")
        self.eps = eps

    def __call__(self, x):
        input_dtype = x.dtype
        x = x.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(input_dtype) * x.astype(input_dtype)


def rotary_tables(positions, head_dim, theta, dtype):
    """cos, sin [B,T,H] for rotate-half RoPE (Hugging Face layout, so weights convert without permutation)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)


def apply_rotary(x, cos, sin):
    """x [B,T,N,H]; cos, sin [B,T,H]."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


class Attention(nnx.Module):
    """Grouped-query attention over an explicit mask; optionally reads and writes a key/value cache."""

    def __init__(self, cfg, rngs, stack=None):
        d, n, k, h, pdt = (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
            cfg.param_dtype,
        )
        self.q_proj = Linear(rngs, (d, n, h), ("embed", "heads", "head_dim"), pdt, stack)
        self.k_proj = Linear(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), pdt, stack)
        self.v_proj = Linear(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), pdt, stack)
        self.o_proj = Linear(rngs, (n, h, d), ("heads", "head_dim", "embed"), pdt, stack)
        self.num_kv_heads, self.head_dim = k, h

    def __call__(self, x, mask, cos, sin, cache=None):
        """x [B,T,D], mask [B,T,S]; cache (k, v [B,S,K,H], index) or None. Returns y [B,T,D], (k, v)."""
        dtype = x.dtype
        q = apply_rotary(self.q_proj("btd,dnh->btnh", x), cos, sin)
        k = apply_rotary(self.k_proj("btd,dkh->btkh", x), cos, sin)
        v = self.v_proj("btd,dkh->btkh", x)
        if cache is not None:
            cache_k, cache_v, index = cache
            k = jax.lax.dynamic_update_slice_in_dim(cache_k, k.astype(cache_k.dtype), index, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(cache_v, v.astype(cache_v.dtype), index, axis=1)
        b, t, n, h = q.shape
        q = q.reshape(b, t, self.num_kv_heads, n // self.num_kv_heads, h)  # B,T,K,G,H
        scores = jnp.einsum("btkgh,bskh->bkgts", q, k.astype(dtype)).astype(jnp.float32) / jnp.sqrt(h)
        scores = jnp.where(mask[:, None, None, :, :], scores, NEG_INF)
        probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
        out = jnp.einsum("bkgts,bskh->btkgh", probs, v.astype(dtype)).reshape(b, t, n, h)
        y = self.o_proj("btnh,nhd->btd", out)
        return y, (k, v)


class Linear(nnx.Module):
    """A bias-free projection whose kernel keeps its head structure (e.g. [D,N,H]) for sharding.

    Called with an einsum equation between the input and the kernel: the kernel is cast to the input's
    (compute) dtype, so bf16 compute runs over fp32 master weights.
    """

    def __init__(self, rngs, shape, names, dtype, stack=None):
        self.kernel = make_param(rngs, shape, names, dtype, stack)

    def __call__(self, equation: str, x):
        return jnp.einsum(equation, x, self.kernel[...].astype(x.dtype))


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg, rngs, stack=None):
        d, f, pdt = cfg.hidden_size, cfg.intermediate_size, cfg.param_dtype
        self.gate_proj = Linear(rngs, (d, f), ("embed", "mlp"), pdt, stack)
        self.up_proj = Linear(rngs, (d, f), ("embed", "mlp"), pdt, stack)
        self.down_proj = Linear(rngs, (f, d), ("mlp", "embed"), pdt, stack)

    def __call__(self, x):
        gate = self.gate_proj("btd,df->btf", x)
        up = self.up_proj("btd,df->btf", x)
        return self.down_proj("btf,fd->btd", jax.nn.silu(gate) * up)
