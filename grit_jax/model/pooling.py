"""Embeddings from hidden states: the optional linear projection and pooling over the kept positions.

One definition for the train step's contrastive loss, held-out evaluation and GritLM.encode.
"""

import jax
import jax.numpy as jnp


def pooling_mask(mask, instruction_len):
    """mask [B,T] bool with the first instruction_len [B] positions (BOS + instruction) removed."""
    positions = jnp.arange(mask.shape[1])[None, :]
    return mask & (positions >= instruction_len[:, None])


def pool(hidden, mask, instruction_len, method="mean", *, normalize=True):
    """hidden [B,T,D], mask [B,T] bool, instruction_len [B] -> embeddings [B,D] float32.

    As the reference: instruction tokens are excluded (except for ``cls``, which takes position 0);
    ``weightedmean`` weighs kept positions 1, 2, 3, ...; ``lasttoken`` takes the last kept position.
    A sequence with no kept token pools to zeros (the reference would divide by zero).
    """
    hidden = hidden.astype(jnp.float32)
    if method == "cls":
        return _normalized(hidden[:, 0], normalize)
    weights = pooling_weights(pooling_mask(mask, instruction_len).astype(jnp.float32), method)  # B,T
    emb = jnp.einsum("btd,bt->bd", hidden, weights) / jnp.maximum(jnp.sum(weights, 1, keepdims=True), 1.0)
    return _normalized(emb, normalize)


def pool_segments(hidden, segments, positions, instruction_len, *, method="mean", normalize=True):
    """Packed rows: hidden [R,L,D], segments and positions [R,L], instruction_len [R,M] of each row's
    sequences -> embeddings [R,M,D] float32, sequence m of row r pooled exactly as ``pool`` pools it alone
    (a slot without a sequence pools to zeros). grit_jax.batch_layout says what the arrays hold."""
    hidden = hidden.astype(jnp.float32)
    slots = instruction_len.shape[1]
    member = segments[:, None, :] == jnp.arange(1, slots + 1)[None, :, None]  # R,M,L
    if method == "cls":
        keep = member & (positions[:, None, :] == 0)
    else:
        keep = member & (positions[:, None, :] >= instruction_len[:, :, None])
    weights = pooling_weights(keep.astype(jnp.float32), "mean" if method == "cls" else method)
    emb = jnp.einsum("rld,rml->rmd", hidden, weights) / jnp.maximum(jnp.sum(weights, -1)[..., None], 1.0)
    return _normalized(emb, normalize)


def pooling_weights(keep, method):
    """Weights over the last axis of keep (1.0 on kept positions of one sequence): mean = keep,
    weightedmean = 1, 2, 3, ... over the kept positions, lasttoken = the last kept position only."""
    if method == "weightedmean":
        return keep * jnp.cumsum(keep, axis=-1)
    if method == "lasttoken":
        length = keep.shape[-1]
        last = length - 1 - jnp.argmax(keep[..., ::-1], axis=-1)
        return (jnp.arange(length) == last[..., None]) * jnp.max(keep, -1, keepdims=True)
    return keep


def _normalized(emb, normalize):
    """emb / max(|emb|, 1e-12); written so that a zero embedding (an empty slot of a packed row) has a
    zero gradient, not the NaN of the norm's gradient at 0."""
    if not normalize:
        return emb
    return emb * jax.lax.rsqrt(jnp.maximum(jnp.sum(emb * emb, axis=-1, keepdims=True), 1e-24))


def project(hidden, projection):
    """The optional linear projection {kernel [D,P], bias [P]} (applied before pooling, as the reference)."""
    if not projection:
        return hidden
    return hidden.astype(jnp.float32) @ projection["kernel"] + projection["bias"]
