"""The jitted passes of GritLM (an encoding pass, a decoding step into a key/value buffer) and sampling.

Shapes are rounded up to powers of two (`bucket`), so new lengths within a bucket reuse the compiled
functions.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from grit_jax.model import KVCache

MIN_BUCKET = 16


def bucket(n: int, minimum: int = MIN_BUCKET) -> int:
    """The next power of two >= n (at least `minimum`): the lengths the jitted functions are compiled for."""
    return max(minimum, 1 << max(int(n) - 1, 0).bit_length())


# ----------------------------------------------------------------------------- jitted pieces


@functools.partial(jax.jit, static_argnames=("graphdef", "with_cache"))
def _encode_pass(graphdef, state, tokens, mask, *, with_cache):
    """Hidden states [B,T,D] (and the cache of the pass) over a full mask [B,T,T]."""
    model = nnx.merge(graphdef, state)
    cache = KVCache.empty(model.config, tokens.shape[0], tokens.shape[1]) if with_cache else None
    out = model(tokens, mask, cache=cache)
    return out.hidden, (out.cache.k, out.cache.v) if with_cache else None


@functools.partial(jax.jit, static_argnames=("graphdef",), donate_argnames=("cache",))
def _decode_pass(graphdef, state, tokens, mask, *, positions, cache, last):
    """Runs tokens [B,T] at positions [B,T] into the buffer at cache.index; logits [B,V] at column last."""
    model = nnx.merge(graphdef, state)
    out = model(tokens, mask, positions=positions, cache=cache)
    hidden = jnp.take_along_axis(out.hidden, last[:, None, None], axis=1)
    return model.logits(hidden)[:, 0], out.cache


@jax.jit
def _place(buffer_k, buffer_v, k, v):
    """Copies a prefix cache [L,B,S,K,H] into the start of the buffer."""
    return (
        jax.lax.dynamic_update_slice_in_dim(buffer_k, k.astype(buffer_k.dtype), 0, axis=2),
        jax.lax.dynamic_update_slice_in_dim(buffer_v, v.astype(buffer_v.dtype), 0, axis=2),
    )


# ----------------------------------------------------------------------------- sampling


def sample(
    logits: np.ndarray, rng: np.random.Generator, do_sample=False, temperature=1.0, *, top_k=0, top_p=1.0
):
    """Next tokens [B] from logits [B,V]: argmax, or a draw after temperature, top-k and top-p filtering."""
    if not do_sample:
        return logits.argmax(-1)
    logits = logits.astype(np.float64) / max(temperature, 1e-6)
    if top_k:
        kth = np.sort(logits, axis=-1)[:, -min(top_k, logits.shape[-1])][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    if top_p < 1.0:
        order = np.argsort(-probs, axis=-1)
        sorted_probs = np.take_along_axis(probs, order, -1)
        drop = np.cumsum(sorted_probs, -1) - sorted_probs >= top_p  # keep the smallest set reaching top_p
        np.put_along_axis(probs, order, np.where(drop, 0.0, sorted_probs), -1)
        probs /= probs.sum(-1, keepdims=True)
    return np.array([rng.choice(probs.shape[-1], p=p) for p in probs])
