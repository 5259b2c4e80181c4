"""GritLM's embeddings of many token rows at once: texts packed several to a row (text_packing), one
compiled pass per row shape that embeds, projects and pools, results in the caller's order.

Each text of a packed row is its own segment: it attends only to itself (model.masks' dense mask with
segment ids), its positions restart at 0, and pooling (model.pooling.pool_segments) takes exactly its
tokens after the instruction, so its embedding is the one it gets alone (within float rounding).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from grit_jax.inference import output_checks, placement, text_packing
from grit_jax.model import masks
from grit_jax.model.pooling import pool_segments, project
from grit_jax.sharding import use_mesh


@functools.partial(jax.jit, static_argnames=("graphdef", "kind", "window", "method", "normalize"))
def _packed_pass(
    graphdef, state, projection, tokens, *, segments, positions, skips, kind, window, method, normalize
):
    """Embeddings [R, slots(L), D] of the texts in packed rows tokens/segments/positions [R,L] (segment
    s of row r in slot s-1), each pooled after its first skips[r] tokens."""
    model = nnx.merge(graphdef, state)
    mask = masks.make_attn_mask(segments > 0, kind, sliding_window=window, segments=segments)
    hidden = project(model(tokens, mask, positions=positions).hidden, projection)
    count = text_packing.slots(tokens.shape[1])
    skip = jnp.broadcast_to(skips[:, None], (tokens.shape[0], count))
    return pool_segments(hidden, segments, positions, skip, method=method, normalize=normalize)


def layout(rows: list[list[int]], one: text_packing.Pass, pad_id: int):
    """(tokens, segments, positions [R,L] int32, texts, flat slots): where each text of the pass sits."""
    shape = one.shape
    tokens = np.full(shape, pad_id, np.int32)
    segments, positions = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
    texts, flat = [], []
    for r, members in enumerate(one.rows):
        at = 0
        for s, i in enumerate(members):
            n = len(rows[i])
            tokens[r, at : at + n], segments[r, at : at + n] = rows[i], s + 1
            positions[r, at : at + n] = np.arange(n)
            texts.append(i)
            flat.append(r * text_packing.slots(one.length) + s)
            at += n
    return tokens, segments, positions, np.asarray(texts), np.asarray(flat)


def encode_rows(model, rows: list[list[int]], skip: int, batch_size: int) -> np.ndarray:
    """Embeddings float32 [len(rows), D] of token rows (BOS included) of a GritLM `model`, pooled after
    their first `skip` tokens, in the rows' order; at most batch_size x (the longest row's length,
    rounded up) token slots per pass. output_checks.BadRow names the first bad row's index in `rows`."""
    output_checks.check_poolable(rows, skip)
    passes = text_packing.pack([len(r) for r in rows], batch_size, placement.batch_multiple(model.mesh))
    out = None
    kind = "bidirectional" if model.attn is not None and model.attn[:2] == "bb" else "causal"
    for one in passes:
        tokens, segments, positions, texts, flat = layout(rows, one, model.tokenizer.pad_id)
        skips = np.full((one.row_count,), skip, np.int32)
        placed = placement.place_batch(model.mesh, tokens, segments, positions, skips)
        with use_mesh(model.mesh):
            emb = _packed_pass(
                model.graphdef,
                model.state,
                model.projection,
                *placed[:1],
                segments=placed[1],
                positions=placed[2],
                skips=placed[3],
                kind=kind,
                window=model.config.sliding_window,
                method=model.pooling_method,
                normalize=model.normalized,
            )
        emb = placement.to_host(emb)
        emb = emb.reshape(-1, emb.shape[-1])[flat]
        if out is None:
            out = np.empty((len(rows), emb.shape[1]), np.float32)
        out[texts] = emb
    if out is None:
        return np.zeros((0, 0), np.float32)
    output_checks.check_embeddings(out)  # names the first bad row in the caller's order
    return out
