"""The two layouts of a training batch and their static shapes, decided without jax: padded (one sequence a
row, ``FieldPadding``) and packed (data.packing, ``FieldPacking``). ``batch_layout`` gives each field the
objective trains its layout; grit_jax.model.batch holds the arrays (the jax pytree the data layer builds
and the objective reads) and checks them against these shapes.

Padded: a field of N sequences is [N, L] with L its *_max_len or, with data.length_buckets, one of the
field's buckets (the smallest that holds the global batch's longest row, grit_jax.data.pipeline).

Packed: with data.packing every field's sequences (queries, passages, chats) of the GLOBAL batch are packed
together into rows instead of one padded row each (grit_jax.data.packing builds them). A field's arrays,
global:
  tokens, segments (0 = padding, 1.. = the sequences of a row), positions (restarting at each sequence)
  [R, L]; embedding fields also instruction_len and slot [N] per sequence in the batch's order (slot =
  row * slots(L) + segment - 1: where its embedding is pooled); generative also loss_mask [R, L].
The shape (R, L) is one of a short grid (``shape_grid``): R a multiple of ``unit`` (so every batch shard
and every GradCache chunk / accumulation micro-batch gets whole rows) from a geometric ladder, L the
field's *_max_len M, or longer (up to 1.5 M, in steps of M/8 rounded to 128) where the next row count is
further away than that: where a batch shard holds few rows. 256 chats of ~510 tokens on 64 shards fill one
row of 2048 per shard by ~99%, so with rows of M only they need two (50% real); one row of 2304 takes them.
Each global batch takes the shape of fewest positions that holds it, which every host computes alike from
the length index (grit_jax.data.packing). R = N, L = M holds any batch (one sequence a row): nothing is
ever cut. A GradCache chunk or accumulation micro-batch holds at most the positions of an unpacked one per
batch shard, or one row where a row is longer (``chunks``); ``largest_shape`` is the shape whose chunk is
the largest, which grit-aot compiles.
Only the router loss of a mixture of experts is not a sum over tokens: there sequences are packed per
micro-batch (``groups``), so packed micro-batch j holds exactly the unpacked one's sequences.
"""

from __future__ import annotations

import dataclasses
import math

from grit_jax.errors import UsageError
from grit_jax.run_config import length_buckets

MAX_SLOTS = 256  # most sequences pooled per embedding row: the pooling's one-hot is [R, slots, L]
GRID_STEPS_PER_HALVING = 8  # row counts N * 2**(-k/8): a batch takes at most ~9% more rows than it needs
LONGER_ROWS = (1, 9 / 8, 10 / 8, 11 / 8, 12 / 8)  # row lengths, times the field's max_len
LENGTH_MULTIPLE = 128  # splash attention's smallest block (a max_len that is not a multiple keeps its own)
PREFIXES = {"query": "query", "passage": "passage", "generative": "gen"}  # arrays' names: gen_tokens, ...
ROW, SEQUENCE = "row", "sequence"  # an array's axis: [rows, row length] per token, or [N] per sequence
LIMITS = {"query": "query_max_len", "passage": "passage_max_len", "generative": "generative_max_len"}


@dataclasses.dataclass(frozen=True)
class FieldPadding:
    """How one field pads: N sequences, one a row, right-padded to one of ``lengths`` (its length
    buckets, ascending: the last is its max_len); GradCache chunks or accumulation micro-batches of
    ``chunk_rows`` rows (0 = one pass)."""

    field: str
    sequences: int
    lengths: tuple[int, ...]
    chunk_rows: int = 0
    packed = False

    @property
    def prefix(self) -> str:
        return PREFIXES[self.field]

    @property
    def length(self) -> int:
        return self.lengths[-1]

    def dims(self, shape: tuple[int, int]) -> dict[str, tuple[int, ...]]:
        """The global shape of a (rows, length) batch's arrays by axis: per token, per sequence."""
        return {ROW: tuple(shape), SEQUENCE: (shape[0],)}

    def check_shape(self, shape: tuple[int, int]) -> None:
        name = self.prefix + "_tokens"
        if shape[1] not in self.lengths:
            raise UsageError(
                f"batch[{name!r}] has length {shape[1]}, not one of {self.lengths} "
                f"(data.{LIMITS[self.field]} and data.length_buckets.{self.field})"
            )
        if shape[0] != self.sequences:
            raise UsageError(
                f"batch[{name!r}] has {shape[0]} rows globally, the config says {self.sequences} "
                "(data.*_batch_size, train_group_size)"
            )

    def shape_grid(self) -> tuple[tuple[int, int], ...]:
        return tuple((self.sequences, n) for n in self.lengths)

    def largest_shape(self) -> tuple[int, int]:
        return self.sequences, self.length

    def chunks(self, rows: int, row_length: int | None = None) -> int:
        """Chunks (micro-batches) of a batch of ``rows`` rows."""
        return rows // self.chunk_rows if self.chunk_rows and self.chunk_rows < rows else 1


@dataclasses.dataclass(frozen=True)
class FieldPacking:
    """How one field packs: N sequences of at most ``length`` tokens, in ``groups`` groups."""

    field: str
    sequences: int
    length: int  # the field's max_len: sequences are cut there, as unpacked
    groups: int  # > 1: sequences packed per micro-batch (the router loss), one chunk each
    unit: int  # every row count is a multiple: data-parallel size x groups
    chunk_rows: int = 0  # rows of max_len per chunk or micro-batch at most (groups == 1); 0 = one pass

    packed = True

    @property
    def prefix(self) -> str:
        return PREFIXES[self.field]

    def dims(self, shape: tuple[int, int]) -> dict[str, tuple[int, ...]]:
        """The global shape of a (rows, row length) batch's arrays by axis: per token, per sequence."""
        return {ROW: tuple(shape), SEQUENCE: (self.sequences,)}

    def check_shape(self, shape: tuple[int, int]) -> None:
        if shape not in self.shape_grid():
            raise UsageError(
                f"batch[{self.prefix + '_tokens'!r}] has shape {shape} globally, not one of (rows, length) "
                f"{self.shape_grid()}"
            )

    def slots(self, row_length: int) -> int:
        """Most sequences in one row of ``row_length`` (embedding fields: pooled slots); 0 = unlimited."""
        return 0 if self.field == "generative" else min(row_length, MAX_SLOTS)

    def row_lengths(self) -> tuple[int, ...]:
        """The row lengths a batch may have, ascending; the first is max_len."""
        step = LENGTH_MULTIPLE if self.length % LENGTH_MULTIPLE == 0 else 1
        return tuple(sorted({math.ceil(self.length * g / step) * step for g in LONGER_ROWS}))

    def row_grid(self) -> tuple[int, ...]:
        """The row counts a batch may have, ascending; the last is N."""
        counts, k = set(), 0
        while not counts or min(counts) > self.unit:
            rows = math.ceil(self.sequences * 2 ** (-k / GRID_STEPS_PER_HALVING) / self.unit) * self.unit
            counts.add(rows)
            k += 1
        return tuple(sorted(counts))

    def shape_grid(self) -> tuple[tuple[int, int], ...]:
        """Every (rows, row length) a batch may have, fewest positions first (then shorter rows): each
        row count with rows of max_len, and with longer rows where those stay under the next row count's
        positions (where whole rows per batch shard leave a gap wider than a longer row's step)."""
        counts, m = self.row_grid(), self.length
        shapes = [
            (r, n)
            for r, above in zip(counts, counts[1:] + (0,))
            for n in self.row_lengths()
            if n == m or r * n < above * m
        ]
        return tuple(sorted(shapes, key=lambda s: (s[0] * s[1], s[1])))

    def chunks(self, rows: int, row_length: int | None = None) -> int:
        """Chunks (micro-batches) of a batch of ``rows`` rows: the fewest that split every batch shard's
        rows evenly into chunks of at most chunk_rows rows of max_len (in positions; one row at least)."""
        row_length = row_length or self.length
        if self.groups > 1:
            return self.groups
        if not self.chunk_rows or rows <= self.chunk_rows and row_length <= self.length:
            return 1
        per_shard = rows // self.unit
        most = max(1, self.chunk_rows // self.unit * self.length // row_length)
        return next(c for c in range(1, per_shard + 1) if per_shard % c == 0 and per_shard // c <= most)

    def chunk_positions(self, rows: int, row_length: int) -> int:
        """Positions one batch shard computes in one chunk of a (rows, row_length) batch."""
        return rows // self.unit // self.chunks(rows, row_length) * row_length

    def largest_shape(self) -> tuple[int, int]:
        """The shape of the grid with the largest chunk (the memory a step needs), then most positions."""
        return max(self.shape_grid(), key=lambda s: (self.chunk_positions(*s), s[0] * s[1]))


def batch_layout(config, data_parallel: int = 1, moe: bool = False) -> dict[str, FieldPadding | FieldPacking]:
    """{field: its layout} of every field the objective trains: packed with data.packing, else padded.
    moe: the model has a router loss (packed generative sequences are then packed per micro-batch)."""
    if config.data.packing:
        return packing_layout(config, data_parallel, moe)
    return padded_layout(config.data, config.objective.mode, config.objective)


def padded_layout(data, mode: str, objective=None) -> dict[str, FieldPadding]:
    """{field: FieldPadding} of the fields ``mode`` trains (chunks: objective's, none without it)."""
    fields = {}
    chunk = objective.embedding_chunk_size if objective else 0
    steps = max(int(objective.generative_accumulation_steps), 1) if objective else 1
    if mode in ("unified", "embedding"):
        b = data.embedding_batch_size
        for field, n in (("query", b), ("passage", b * data.train_group_size)):
            fields[field] = FieldPadding(field, n, length_buckets(data, field), chunk if chunk < n else 0)
    if mode in ("unified", "generative"):
        n = data.generative_batch_size
        fields["generative"] = FieldPadding("generative", n, length_buckets(data, "generative"), n // steps)
    return fields


def packing_layout(config, data_parallel: int, moe: bool = False) -> dict[str, FieldPacking]:
    """{field: FieldPacking} of every field the objective trains, or {} without data.packing.
    moe: the model has a router loss (generative sequences are then packed per micro-batch)."""
    data, objective = config.data, config.objective
    if not data.packing:
        return {}
    fields, w = {}, data_parallel
    if objective.mode in ("unified", "embedding"):
        b, chunk = data.embedding_batch_size, objective.embedding_chunk_size
        for field, n in (("query", b), ("passage", b * data.train_group_size)):
            length = data[LIMITS[field]]
            chunk_rows = chunk if chunk and chunk < n else 0
            fields[field] = FieldPacking(field, n, length, 1, w, chunk_rows)
    if objective.mode in ("unified", "generative"):
        steps, n = max(int(objective.generative_accumulation_steps), 1), data.generative_batch_size
        if moe and steps > 1:
            fields["generative"] = FieldPacking("generative", n, data.generative_max_len, steps, w * steps)
        else:
            chunk_rows = n // steps if steps > 1 else 0
            fields["generative"] = FieldPacking("generative", n, data.generative_max_len, 1, w, chunk_rows)
    for f in fields.values():
        if f.sequences % f.unit or (f.chunk_rows and f.chunk_rows % f.unit):
            raise UsageError(
                f"data.packing: the {f.sequences} {f.field} sequences of a batch do not split into "
                f"{data_parallel} batch shards x {f.groups} micro-batches of whole rows; change the batch "
                "size"
            )
    return fields
