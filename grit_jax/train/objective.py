"""The GRIT objective: pooling, the contrastive loss over the global batch, the next-token loss, loss_fn.

Legend: B queries, G passages per query (train_group_size), T length, D model dim, P projection dim,
V vocab, C chunk (sequences per encoding chunk), W data-parallel size (batch shards).

Every loss is written on global arrays: under ``jax.jit`` with batch-sharded
inputs, ``q @ p.T`` compares each query with every passage of every shard and XLA inserts the
collectives. Pooling and similarities run in float32 whatever the compute dtype. The objective's
fields and batch sizes were checked once, by grit_jax.run_config.validate_config.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from grit_jax import sharding
from grit_jax.choices import ATTENTIONS
from grit_jax.model import load_balancing_loss
from grit_jax.model.batch import Batch
from grit_jax.model.pooling import project

# ----------------------------------------------------------------------------- losses


def contrastive_loss(q, p, temperature=0.02):
    """InfoNCE over the global batch: q [B,D], p [B*G,D] -> (loss, top-1 accuracy).

    Query i's positive is passage i*G; every other passage (its own G-1 hard negatives and all other
    queries' passages, on every shard) is a negative. Scores in float32, mean cross-entropy over B.
    """
    q, p = q.astype(jnp.float32), p.astype(jnp.float32)
    group = p.shape[0] // q.shape[0]
    scores = jnp.einsum("bd,nd->bn", q, p, precision=jax.lax.Precision.HIGHEST) / temperature  # B, B*G
    scores = sharding.constrain(scores, ("batch", None))
    targets = jnp.arange(q.shape[0]) * group
    log_probs = jax.nn.log_softmax(scores, axis=-1)
    loss = -jnp.mean(jnp.take_along_axis(log_probs, targets[:, None], axis=1))
    accuracy = jnp.mean((jnp.argmax(scores, axis=-1) == targets).astype(jnp.float32))
    return loss, accuracy


def shifted_targets(tokens, loss_mask):
    """(targets [B,T], weights [B,T] float32): position t-1 predicts tokens[t] where loss_mask[t].

    Targets shifted left instead of logits[:, :-1]: slicing [B,T,V] logits copies them (and its gradient
    pads them back); the last position gets weight 0 and any valid target.
    """
    targets = jnp.concatenate([tokens[:, 1:], tokens[:, :1]], axis=1)
    weight = jnp.pad(loss_mask[:, 1:].astype(jnp.float32), ((0, 0), (0, 1)))
    return targets, weight


def weighted_nll(logits, targets, weight):
    """Sum over positions of weight * (-log softmax(logits)[target]), in float32."""
    logits = logits.astype(jnp.float32)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    nll = jax.nn.logsumexp(logits, axis=-1) - target_logit
    return jnp.sum(nll * weight)


def token_cross_entropy(logits, tokens, loss_mask):
    """Next-token cross-entropy: logits [B,T,V] at t-1 predict tokens [B,T] at t where loss_mask [B,T].

    Returns (sum of the per-token losses over labelled targets, number of labelled targets).
    """
    targets, weight = shifted_targets(tokens, loss_mask)
    return weighted_nll(logits, targets, weight), jnp.sum(weight)


def blocked_token_cross_entropy(logits_fn, hidden, tokens, loss_mask, *, block: int):
    """``token_cross_entropy(logits_fn(hidden), tokens, loss_mask)`` over blocks of ``block`` positions.

    Each block's logits [B,block,V] are computed, reduced to one sum and dropped; the backward pass
    recomputes them (jax.checkpoint), so the whole [B,T,V] float32 logits and their gradient never exist.
    Blocks split T, never the (sharded) rows. The targets are shifted before the split (a block's last
    position predicts the next block's first token); a T that ``block`` does not divide is padded with
    positions of weight 0. block 0 or >= T: the whole sequence at once.
    """
    rows, length = tokens.shape
    if not block or block >= length:
        return token_cross_entropy(logits_fn(hidden), tokens, loss_mask)
    targets, weight = shifted_targets(tokens, loss_mask)
    count = -(-length // block)

    def split(a):  # [B,T,...] -> [count, B, block, ...]
        a = jnp.pad(a, [(0, 0), (0, count * block - length)] + [(0, 0)] * (a.ndim - 2))
        return jnp.swapaxes(a.reshape(rows, count, block, *a.shape[2:]), 0, 1)

    def block_sum(args):
        h, t, w = args
        return weighted_nll(logits_fn(h), t, w)

    sums = jax.lax.map(jax.checkpoint(block_sum), (split(hidden), split(targets), split(weight)))
    return jnp.sum(sums), jnp.sum(weight)


def generative_normalizer(loss_mask, loss_gen_type, num_sequences=None):
    """What the summed token loss is divided by, over the GLOBAL generative batch.

    ``mixed``: the number of labelled targets. The reference takes the mean over each device's tokens
    and then averages over devices; the global mean over tokens is the exact form of what it
    approximates, and the two agree when every device holds the same number of labelled tokens.
    ``token``: the number of sequences (reference: per-device sum / per-device sequences, averaged
    over devices, which equals global sum / global sequences). Packed rows hold several sequences each:
    ``num_sequences`` is their number (default: one a row).
    """
    if loss_gen_type == "mixed":
        return jnp.maximum(jnp.sum(loss_mask[:, 1:].astype(jnp.float32)), 1.0)
    count = loss_mask.shape[0] if num_sequences is None else num_sequences
    return jnp.asarray(count, jnp.float32)  # token


def scale_gradient(x, factor):
    """x in the forward pass, factor * dx in the backward pass."""
    return jax.lax.stop_gradient(x) + factor * (x - jax.lax.stop_gradient(x))


# ----------------------------------------------------------------------------- chunked passes


def _chunked(arrays, num_chunks):
    """[N,...] -> [num_chunks, N/num_chunks, ...] with chunk j = rows j, j+num_chunks, ... .

    Strided, so that when N is split contiguously over W shards every chunk is split over all W
    shards too and no data moves.
    """
    return jax.tree.map(
        lambda a: jnp.swapaxes(a.reshape(a.shape[0] // num_chunks, num_chunks, *a.shape[1:]), 0, 1), arrays
    )


def _unchunked(a):
    """Inverse of ``_chunked``: [num_chunks, C, ...] -> [N, ...] in the original row order."""
    a = jnp.swapaxes(a, 0, 1)
    return a.reshape(a.shape[0] * a.shape[1], *a.shape[2:])


def map_chunks(fn, inputs, chunk_size):
    """fn over row chunks of ``inputs`` with each chunk rematerialised (GradCache).

    The forward keeps only fn's (small) outputs; the backward re-runs one chunk at a time, so memory
    is bounded by the chunk while values and gradients equal the unchunked ones. chunk_size 0 = one pass.
    """
    n = jax.tree.leaves(inputs)[0].shape[0]
    if not chunk_size or chunk_size >= n:
        return fn(inputs)
    out = jax.lax.map(jax.checkpoint(fn), _chunked(inputs, n // chunk_size))
    return jax.tree.map(_unchunked, out)


def training_attention(model, rows, kind: str):
    """The attention spec of a field's rows (grit_jax.model.batch: padded or packed): a kernel runs it
    where model.config.attention_impl and the platform allow (grit_jax.model.attention), else the dense
    mask."""
    return rows.attention(kind, model.config.sliding_window, model.config.attention_impl)


def encode(model, projection, rows, objective):
    """Pooled embeddings [rows or rows x slots, D or P] of a query or passage field's rows with the
    embedding pass's attention."""
    spec = training_attention(model, rows, ATTENTIONS[objective.attn])
    hidden = model(rows.tokens, spec, positions=rows.positions).hidden
    return rows.pool(project(hidden, projection), objective.pooling, objective.normalize)


def default_chunks(batch, objective) -> dict[str, int]:
    """{field: chunks or micro-batches} of a padded batch as ``objective`` asks (GradCache chunks of
    embedding_chunk_size sequences, generative_accumulation_steps micro-batches); the train step passes
    its layout's instead (grit_jax.batch_layout), packed batches included."""
    chunk, out = objective.embedding_chunk_size, {}
    for name, field in batch.fields().items():
        rows = field.tokens.shape[0]
        if name == "generative":
            out[name] = max(int(objective.generative_accumulation_steps), 1)
        else:
            out[name] = rows // chunk if chunk and chunk < rows else 1
    return out


def embeddings(graphdef, params, projection, field, *, objective, num_chunks: int):
    """Embeddings [N,D or P] of a query or passage field (grit_jax.model.batch), in the batch's sequence
    order, its rows encoded in ``num_chunks`` GradCache chunks with the embedding pass's attention."""

    def encode_rows(rows):
        return encode(nnx.merge(graphdef, params), projection, rows, objective)

    rows = field.pooling_rows()
    count = rows.tokens.shape[0]
    return field.in_order(map_chunks(encode_rows, rows, count // num_chunks if num_chunks > 1 else 0))


def embedding_loss(graphdef, params, projection, batch, *, objective, chunks):
    """(loss, metrics) of the contrastive task on a global batch, encoded in chunks {field: chunks}."""
    q = embeddings(graphdef, params, projection, batch.query, objective=objective, num_chunks=chunks["query"])
    p = embeddings(
        graphdef, params, projection, batch.passage, objective=objective, num_chunks=chunks["passage"]
    )
    loss, accuracy = contrastive_loss(q, p, objective.temperature)
    if objective.reference_world_size:
        # The reference all-gathers reps without gradient and averages gradients over its W GPUs: its
        # embedding gradient is 1/W of the exact one, whatever mesh we run on. Same value, gradient / W.
        loss = scale_gradient(loss, 1.0 / objective.reference_world_size)
    return loss, {"loss_emb": loss, "accuracy": accuracy}


def generative_loss(graphdef, params, field, objective, *, steps: int):
    """(loss, metrics) of next-token prediction on the generative field, in ``steps`` micro-batches.

    loss_gen = loss_gen_factor * CE (normalised per ``generative_normalizer``), the logits computed in
    blocks of objective.gen_loss_block positions (``blocked_token_cross_entropy``); for Mixtral
    loss_router = router_aux_loss_coef * the load-balancing loss (mean over micro-batches).
    """
    targets = field.targets()
    normalizer = generative_normalizer(targets, objective.loss_gen_type, field.num_sequences())

    def micro(rows):
        chat, weights = rows
        model = nnx.merge(graphdef, params)
        out = model(chat.tokens, training_attention(model, chat, "causal"), positions=chat.positions)
        total, _ = blocked_token_cross_entropy(
            model.logits, out.hidden, chat.tokens, weights, block=objective.gen_loss_block
        )
        aux = jnp.zeros((), jnp.float32)
        if out.router_logits is not None:
            aux = load_balancing_loss(out.router_logits, model.config.num_experts_per_tok, chat.real)
        return total, aux

    if steps == 1:
        total, aux = micro((field, targets))
    else:
        totals, auxes = jax.lax.map(jax.checkpoint(micro), _chunked((field, targets), steps))
        total, aux = jnp.sum(totals), jnp.mean(auxes)
    loss_gen = objective.loss_gen_factor * total / normalizer
    loss_router = objective.router_aux_loss_coef * aux
    return loss_gen + loss_router, {"loss_gen": loss_gen, "loss_router": loss_router}


def loss_fn(trainable, graphdef, batch: Batch, objective, *, chunks=None, frozen=None):
    """Total loss and metrics of one global batch (grit_jax.model.batch). trainable = (model nnx.State,
    projection dict); frozen: None, or the LoRA base (the rest of the model's state, grit_jax/model/lora.py).

    mode ``unified``: loss = loss_emb + loss_gen (+ loss_router); ``embedding`` / ``generative``: one
    of them. Metrics are named as the reference names them where it has a name. chunks: {field: chunks
    or micro-batches of its rows} (the train step's layout), by default ``default_chunks``.
    """
    params, projection = trainable
    chunks = chunks or default_chunks(batch, objective)
    if frozen is not None:
        params = nnx.merge_state(frozen, params)
    zero = jnp.zeros((), jnp.float32)
    metrics = {"loss_emb": zero, "accuracy": zero, "loss_gen": zero, "loss_router": zero}
    loss = zero
    if objective.mode in ("unified", "embedding"):
        emb, m = embedding_loss(graphdef, params, projection, batch, objective=objective, chunks=chunks)
        loss, metrics = loss + emb, {**metrics, **m}
    if objective.mode in ("unified", "generative"):
        gen, m = generative_loss(graphdef, params, batch.generative, objective, steps=chunks["generative"])
        loss, metrics = loss + gen, {**metrics, **m}
    metrics["loss"] = loss
    return loss, metrics
