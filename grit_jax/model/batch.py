"""The training batch: per field (query, passage, generative) one small pytree that says how it attends.

The data layer builds a ``Batch`` (grit_jax.data.pipeline), the train step places it on the mesh and
checks it (``check``), the objective reads it (grit_jax.train.objective). Each field comes in the two
layouts of grit_jax.batch_layout: padded (one sequence a row, ``mask`` its real tokens) or packed
(several sequences a row, ``segments`` and restarting ``positions``). A field gives its own attention
spec, real tokens, pooling and next-token targets, its token counts and the (token, attended pair) counts
of its model FLOPs, so nothing outside asks which layout it is.

An array is declared once, as a dataclass field with its axis (``array``): ROW ([rows, row length], per
token) or SEQUENCE ([N], per sequence). Its global shape, its check, its placement on the mesh and its
name in messages (``{prefix}_{name}``: gen_loss_mask) follow from that declaration.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import struct

from grit_jax.batch_layout import MAX_SLOTS, PREFIXES, ROW, SEQUENCE
from grit_jax.errors import UsageError
from grit_jax.model.attention import AttentionSpec, attention_spec
from grit_jax.model.pooling import pool, pool_segments

FIELDS = ("query", "passage", "generative")


def array(axis: str, dtype) -> Any:
    """A batch array: ``axis`` ROW ([rows, row length]) or SEQUENCE ([N]) and its dtype."""
    return struct.field(metadata={"axis": axis, "dtype": np.dtype(dtype)})


def arrays(field) -> dict[str, tuple[str, np.dtype]]:
    """{name: (axis, dtype)} of a field class's (or instance's) arrays, in declaration order."""
    return {f.name: (f.metadata["axis"], f.metadata["dtype"]) for f in dataclasses.fields(field)}


@struct.dataclass
class Padded:
    """Right-padded rows, one sequence each: tokens [R, L], mask [R, L] (its real tokens)."""

    tokens: Any = array(ROW, np.int32)
    mask: Any = array(ROW, np.bool_)
    positions = None  # 0.. along each row: the model's default

    @property
    def real(self):
        return self.mask

    def attention(self, kind: str, window: int | None, impl: str) -> AttentionSpec:
        return attention_spec(self.mask, kind, window, impl)

    def num_sequences(self):
        return self.tokens.shape[0]

    def flop_counts(self, causal: bool) -> tuple:
        """(tokens, attended (query, key) pairs) its model FLOPs count: every padded position, each
        attending to the whole row (causal: half of it)."""
        rows, length = self.tokens.shape
        return rows * length, rows * length * (length / 2 if causal else length)


@struct.dataclass
class Packed:
    """Packed rows: tokens, segments (0 = padding, 1.. = the sequences of a row) and positions
    (restarting at each sequence), all [R, L]."""

    tokens: Any = array(ROW, np.int32)
    segments: Any = array(ROW, np.int32)
    positions: Any = array(ROW, np.int32)

    @property
    def real(self):
        return self.segments > 0

    def attention(self, kind: str, window: int | None, impl: str) -> AttentionSpec:
        return attention_spec(None, kind, window, impl, segments=self.segments)

    def num_sequences(self):
        return jnp.sum((self.positions == 0) & (self.segments > 0))

    def flop_counts(self, causal: bool) -> tuple:
        """(real tokens, attended pairs): a token at position p attends to p + 1 keys (causal) or to its
        whole sequence (sum over a sequence of n tokens of 2p + 1 = n * n)."""
        real = self.real.astype(jnp.float32)
        pos = self.positions.astype(jnp.float32)
        return jnp.sum(real), jnp.sum(real * (pos + 1 if causal else 2 * pos + 1))


def token_counts(field) -> tuple:
    """(real tokens, computed positions) of a field."""
    return jnp.sum(field.real.astype(jnp.int32)), field.tokens.size


@struct.dataclass
class PaddedText(Padded):
    """A query or passage field, padded: also instruction_len [N] (tokens left out of the pooling)."""

    instruction_len: Any = array(SEQUENCE, np.int32)

    def pooling_rows(self):
        """The rows the embedding pass encodes (any leading slice of them pools alone)."""
        return self

    def pool(self, hidden, pooling: str, normalize: bool):
        return pool(hidden, self.mask, self.instruction_len, pooling, normalize=normalize)

    def in_order(self, pooled):
        """The pooled rows as [N, D], in the batch's sequence order."""
        return pooled


@struct.dataclass
class PackedText(Packed):
    """A query or passage field, packed: also instruction_len and slot [N] (where each sequence is
    pooled: row * slots + segment - 1), in the batch's sequence order."""

    instruction_len: Any = array(SEQUENCE, np.int32)
    slot: Any = array(SEQUENCE, np.int32)

    def pooling_rows(self):
        rows, length = self.tokens.shape
        slots = min(length, MAX_SLOTS)
        instruction = jnp.zeros(rows * slots, jnp.int32).at[self.slot].set(self.instruction_len)
        return SlotRows(self.tokens, self.segments, self.positions, instruction.reshape(rows, slots))

    def in_order(self, pooled):
        return pooled.reshape(-1, pooled.shape[-1])[self.slot]


@struct.dataclass
class SlotRows(Packed):
    """Packed rows with each slot's instruction length [R, slots]: what the embedding pass chunks (derived
    from a PackedText inside the step, never a batch of its own)."""

    instruction: Any = array("slot", np.int32)

    def pool(self, hidden, pooling: str, normalize: bool):
        return pool_segments(
            hidden, self.segments, self.positions, self.instruction, method=pooling, normalize=normalize
        )


@struct.dataclass
class PaddedChat(Padded):
    """The generative field, padded: also loss_mask [R, L] (the tokens to predict)."""

    loss_mask: Any = array(ROW, np.bool_)

    def targets(self):
        """[R, L] weights of the tokens predicted (the next-token loss's mask)."""
        return self.loss_mask


@struct.dataclass
class PackedChat(Packed):
    """The generative field, packed: also loss_mask [R, L]."""

    loss_mask: Any = array(ROW, np.bool_)

    def targets(self):
        # no target at a sequence's first token: nothing of its own precedes it
        return self.loss_mask & (self.positions > 0) & (self.segments > 0)


LAYOUT_CLASSES = {  # (packed, field) -> the field's class
    (False, "query"): PaddedText,
    (False, "passage"): PaddedText,
    (False, "generative"): PaddedChat,
    (True, "query"): PackedText,
    (True, "passage"): PackedText,
    (True, "generative"): PackedChat,
}


@struct.dataclass
class Batch:
    """One batch (global, or one host's rows): a field per part the objective trains, else None."""

    query: Any = None
    passage: Any = None
    generative: Any = None

    def fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FIELDS if getattr(self, name) is not None}

    def named(self) -> dict[str, Any]:
        """{name: array} with the names of messages (query_tokens, gen_loss_mask, ...)."""
        return {
            f"{PREFIXES[name]}_{a}": getattr(field, a)
            for name, field in self.fields().items()
            for a in arrays(field)
        }

    @classmethod
    def from_named(cls, named) -> Batch:
        """The inverse of ``named``: a field is packed where it has segments."""
        fields = {}
        for name, prefix in PREFIXES.items():
            if f"{prefix}_tokens" in named:
                kind = LAYOUT_CLASSES[(f"{prefix}_segments" in named, name)]
                fields[name] = kind(**{a: named[f"{prefix}_{a}"] for a in arrays(kind)})
        return cls(**fields)


def shapes(layout, sizes=None) -> dict[str, Any]:
    """{field: {array: (global shape, dtype)}} of a batch with ``sizes`` {field: (rows, row length), or a
    row length alone: the layout's most rows} (default: each field's largest, grit_jax.batch_layout)."""
    out = {}
    for name, spec in layout.items():
        size = (sizes or {}).get(name) or spec.largest_shape()
        dims = spec.dims((spec.largest_shape()[0], size) if isinstance(size, int) else size)
        kind = LAYOUT_CLASSES[(spec.packed, name)]
        out[name] = {a: (dims[axis], dtype) for a, (axis, dtype) in arrays(kind).items()}
    return out


def field_shapes(batch: Batch, num_hosts: int = 1) -> dict[str, tuple[int, int]]:
    """{field: (rows, row length)} of a global batch, or of one host's (num_hosts hosts)."""
    return {name: (f.tokens.shape[0] * num_hosts, f.tokens.shape[1]) for name, f in batch.fields().items()}


def check(layout, batch: Batch, num_hosts: int = 1) -> None:
    """Check a batch against the layout (a host's rows: num_hosts > 1): the fields the objective trains,
    each in its layout, of a shape of its grid, every array of the shape its axis says."""
    if not isinstance(batch, Batch):
        raise UsageError(f"a batch is a grit_jax.model.batch.Batch, not {type(batch).__name__}")
    fields = batch.fields()
    if set(fields) != set(layout):
        raise UsageError(
            f"the batch holds the fields {sorted(fields)}; the objective trains {sorted(layout)}"
        )
    _check_group(layout, fields)
    for name, field in fields.items():
        spec, prefix = layout[name], PREFIXES[name]
        if not isinstance(field, LAYOUT_CLASSES[(spec.packed, name)]):
            raise UsageError(
                f"batch.{name} is a {type(field).__name__}; data.packing={spec.packed} needs a "
                f"{LAYOUT_CLASSES[(spec.packed, name)].__name__}"
            )
        shape = field_shapes(Batch(**{name: field}), num_hosts)[name]
        spec.check_shape(shape)
        dims = spec.dims(shape)
        for a, (axis, _) in arrays(field).items():
            got = tuple(np.shape(getattr(field, a)))
            if not got or (got[0] * num_hosts, *got[1:]) != dims[axis]:
                raise UsageError(
                    f"batch[{prefix + '_' + a!r}] has shape {got}, the batch needs {dims[axis]} globally"
                )


def _check_group(layout, fields) -> None:
    """Padded queries and passages: train_group_size passages per query."""
    query, passage = layout.get("query"), layout.get("passage")
    if not query or query.packed or "passage" not in fields:
        return
    g = passage.sequences // query.sequences
    nq, n_passages = fields["query"].tokens.shape[0], fields["passage"].tokens.shape[0]
    if n_passages != nq * g:
        raise UsageError(
            f"the batch has {n_passages} passages for {nq} queries but data.train_group_size={g} needs "
            f"{nq * g} (a positive and {g - 1} hard negatives each); lower data.train_group_size to "
            f"{max(n_passages // max(nq, 1), 1)} or give every query {g - 1} negatives"
        )
