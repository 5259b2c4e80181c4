"""Embeddings from hidden states: the optional linear projection and pooling over the kept positions.

One definition for the train step's contrastive loss, held-out evaluation and GritLM.encode.
"""

import jax.numpy as jnp


def pooling_mask(mask, instruction_len):
    """mask [B,T] bool with the first instruction_len [B] positions (BOS + instruction) removed."""
    positions = jnp.arange(mask.shape[1])[None, :]
    return mask & (positions >= instruction_len[:, None])


def pool(hidden, mask, instruction_len, method="mean", normalize=True):
    """hidden [B,T,D], mask [B,T] bool, instruction_len [B] -> embeddings [B,D] float32.

    As the reference: instruction tokens are excluded (except for ``cls``, which takes position 0);
    ``weightedmean`` weighs kept positions 1, 2, 3, ...; ``lasttoken`` takes the last kept position.
    A sequence with no kept token pools to zeros (the reference would divide by zero).
    """
    hidden = hidden.astype(jnp.float32)
    keep = pooling_mask(mask, instruction_len).astype(jnp.float32)  # B,T
    if method == "cls":
        emb = hidden[:, 0]
    elif method == "lasttoken":
        last = hidden.shape[1] - 1 - jnp.argmax(keep[:, ::-1], axis=1)  # B
        emb = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0] * jnp.max(keep, 1, keepdims=True)
    else:
        weights = keep * jnp.cumsum(keep, axis=1) if method == "weightedmean" else keep
        emb = jnp.einsum("btd,bt->bd", hidden, weights) / jnp.maximum(jnp.sum(weights, 1, keepdims=True), 1.0)
    if normalize:
        emb = emb / jnp.maximum(jnp.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
    return emb


def project(hidden, projection):
    """The optional linear projection {kernel [D,P], bias [P]} (applied before pooling, as the reference)."""
    if not projection:
        return hidden
    return hidden.astype(jnp.float32) @ projection["kernel"] + projection["bias"]
