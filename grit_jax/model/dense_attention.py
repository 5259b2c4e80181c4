"""Attention over a dense [B,T,S] boolean mask, with its backward written out (no fused kernel).

This is the path of every platform without a kernel for the call (CPU training; inference with a
key/value cache) and the tests' oracle. Its backward is the flash-attention one, written by hand rather
than left to autodiff of softmax and the mask: dS = P * (dP - rowsum(dO * O)) needs one [.., T, S]
elementwise pass where autodiff takes four (the softmax's product, sum and difference, and the mask's
select), and the scale folds into it. On the CPU train step of benchmarks/torch_reference_step.py the
attention's forward and backward take about 25% less time (RESULTS.md, "Train step vs PyTorch").

Layout: kv heads first, [B,K,T*G,H], so each product is one batched matmul over (B, K) with the G query
heads of a kv head as more rows (next to each other: with one kv head the reshapes are free).
Legend: B batch, T query length, S key length, N heads, K kv heads, G = N/K, H head dim.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

NEG_INF = jnp.finfo(jnp.float32).min


def dense_attention(q, k, v, mask):
    """q [B,T,N,H], k and v [B,S,K,H], mask [B,T,S] bool (who may attend to whom) -> [B,T,N,H]."""
    b, t, n, h = q.shape
    kv_heads = k.shape[2]
    rows = q.reshape(b, t, kv_heads, n // kv_heads, h).transpose(0, 2, 1, 3, 4)  # B,K,T,G,H
    keys, values = k.astype(q.dtype).transpose(0, 2, 1, 3), v.astype(q.dtype).transpose(0, 2, 1, 3)
    out = _attention(rows.reshape(b, kv_heads, -1, h), keys, values, mask)  # B,K,T*G,H
    return out.reshape(b, kv_heads, t, n // kv_heads, h).transpose(0, 2, 1, 3, 4).reshape(b, t, n, h)


@jax.custom_vjp
def _attention(q, k, v, mask):
    """q [B,K,T*G,H], k and v [B,K,S,H], mask [B,T,S] -> [B,K,T*G,H]."""
    return _forward(q, k, v, mask)[0]


def _probabilities(q, k, mask):
    """softmax(q k^T / sqrt(H)) over the allowed keys, float32 [B,K,T*G,S]; a row that may see no key
    spreads evenly over them all (its output is never used)."""
    scores = jnp.einsum("bkmh,bksh->bkms", q, k).astype(jnp.float32) / math.sqrt(q.shape[-1])
    return jax.nn.softmax(_where_allowed(mask, scores, NEG_INF), axis=-1)


def _where_allowed(mask, scores, other):
    """scores [B,K,T*G,S] where mask [B,T,S] allows, else other."""
    b, kv_heads, rows, s = scores.shape
    t = mask.shape[1]
    kept = jnp.where(mask[:, None, :, None], scores.reshape(b, kv_heads, t, rows // t, s), other)
    return kept.reshape(scores.shape)


def _forward(q, k, v, mask):
    probs = _probabilities(q, k, mask)
    out = jnp.einsum("bkms,bksh->bkmh", probs.astype(q.dtype), v)
    return out, (q, k, v, mask, probs, out)


def _backward(saved, d_out):
    q, k, v, mask, probs, out = saved
    dtype, h = q.dtype, q.shape[-1]
    d_v = jnp.einsum("bkms,bkmh->bksh", probs.astype(dtype), d_out)
    d_probs = jnp.einsum("bkmh,bksh->bkms", d_out, v).astype(jnp.float32)
    row_dot = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
    d_scores = probs * (d_probs - row_dot) / math.sqrt(h)
    # A row that sees no key has probabilities 1/S, not 0, where the mask forbids: no gradient there.
    d_scores = _where_allowed(mask, d_scores, 0.0).astype(dtype)
    d_q = jnp.einsum("bkms,bksh->bkmh", d_scores, k)
    d_k = jnp.einsum("bkms,bkmh->bksh", d_scores, q)
    return d_q, d_k, d_v, None


_attention.defvjp(_forward, _backward)
