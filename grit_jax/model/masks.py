"""Attention masks: the one place that decides who attends to whom (training, evaluation, inference).

The model takes a boolean mask [B, T, S] (True = query t may attend to key s) and never decides for
itself, so one set of parameters runs bidirectionally for embeddings and causally for generation.
"""

from __future__ import annotations

import jax.numpy as jnp

KINDS = ("causal", "bidirectional", "prefix")


def mask_from_positions(
    q_positions, kv_positions, kv_valid, kind="causal", *, prefix_len=None, sliding_window=None
):
    """The general form: queries at q_positions [B,T] over keys at kv_positions [B,S], kv_valid [B,S] bool.

    causal: a key at or before the query. bidirectional: every valid key. prefix: every key inside the first
    prefix_len [B] positions, causal after. sliding_window (as in Mistral): only the last `sliding_window`
    positions up to the query; for bidirectional attention, keys within that distance on either side.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown mask kind {kind!r}; expected one of {KINDS}")
    q = q_positions[:, :, None]
    k = kv_positions[:, None, :]
    mask = kv_valid[:, None, :]
    if kind == "causal":
        mask = mask & (k <= q)
    elif kind == "prefix":
        if prefix_len is None:
            raise ValueError("a prefix mask needs prefix_len")
        mask = mask & ((k <= q) | (k < jnp.asarray(prefix_len)[:, None, None]))
    if sliding_window is not None:
        distance = q - k if kind == "causal" else jnp.abs(q - k)
        mask = mask & (distance < sliding_window)
    return mask


def make_attn_mask(padding, kind="causal", prefix_len=None, sliding_window=None, *, segments=None):
    """A [B,T,T] mask for a batch without cache; padding [B,T] is True on real tokens (on either side).

    segments [B,T] int (packed rows, grit_jax.data.packing): a token attends only within its own segment;
    segments are contiguous, so causality and the window over row indices are those within the segment."""
    padding = jnp.asarray(padding, bool)
    positions = jnp.broadcast_to(jnp.arange(padding.shape[1]), padding.shape)
    mask = mask_from_positions(
        positions, positions, padding, kind, prefix_len=prefix_len, sliding_window=sliding_window
    )
    if segments is not None:
        mask = mask & (segments[:, :, None] == segments[:, None, :])
    return mask
