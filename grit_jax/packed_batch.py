"""Packed (padding-free) batches: their static shapes, decided without jax (data.packing).

With data.packing every field's sequences (queries, passages, chats) are packed into rows of the field's
*_max_len instead of one padded row each (grit_jax.data.packing builds them). A field's arrays, global:
  {prefix}_tokens, {prefix}_segments (0 = padding, 1.. = the sequences of a row), {prefix}_positions
  (restarting at each sequence) [R, L]; embedding fields also {prefix}_instruction_len and {prefix}_slot
  [N] per sequence in the batch's order (slot = row * slots + segment - 1: where its embedding is pooled);
  generative also gen_loss_mask [R, L].
R, the number of rows, is one of a short grid of multiples of ``unit`` (so every batch shard and every
GradCache chunk / accumulation micro-batch gets whole rows); each global batch takes the smallest that
holds it, which every host computes alike from the length index (grit_jax.data.pipeline). The largest,
R = N, holds any batch (one sequence a row), so a batch never needs to be cut.
A GradCache chunk or accumulation micro-batch of a packed field is at most as many rows as an unpacked
one (``chunk_rows``: the same memory or less); a batch of R rows takes as many chunks as that needs.
Only the router loss of a mixture of experts is not a sum over tokens: there sequences are packed per
host and per micro-batch (``groups``), so packed micro-batch j holds exactly the unpacked one's sequences.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np

from grit_jax.errors import UsageError

MAX_SLOTS = 256  # most sequences pooled per embedding row: the pooling's one-hot is [R, slots, L]
GRID_STEPS_PER_HALVING = 8  # row counts N * 2**(-k/8): a batch takes at most ~9% more rows than it needs
PREFIXES = {"query": "query", "passage": "passage", "generative": "gen"}
LIMITS = {"query": "query_max_len", "passage": "passage_max_len", "generative": "generative_max_len"}


@dataclasses.dataclass(frozen=True)
class FieldPacking:
    """How one field packs: N sequences into rows of ``length``, in ``groups`` groups per host."""

    field: str
    sequences: int
    length: int
    groups: int  # > 1: sequences packed per micro-batch (the router loss), one chunk each
    unit: int  # every row count is a multiple: data-parallel size x groups
    slots: int  # most sequences per row (embedding fields); 0 = unlimited
    chunk_rows: int = 0  # rows per chunk or micro-batch at most (groups == 1); 0 = one pass

    @property
    def prefix(self) -> str:
        return PREFIXES[self.field]

    def row_grid(self) -> tuple[int, ...]:
        """The row counts a batch may have, ascending; the last is N."""
        counts, k = set(), 0
        while not counts or min(counts) > self.unit:
            rows = math.ceil(self.sequences * 2 ** (-k / GRID_STEPS_PER_HALVING) / self.unit) * self.unit
            counts.add(rows)
            k += 1
        return tuple(sorted(counts))

    def chunks(self, rows: int) -> int:
        """Chunks (micro-batches) of a batch of ``rows`` rows: the fewest that split every batch shard's
        rows evenly into chunks of at most chunk_rows rows in all."""
        if self.groups > 1:
            return self.groups
        if not self.chunk_rows or rows <= self.chunk_rows:
            return 1
        per_shard, most = rows // self.unit, self.chunk_rows // self.unit
        return next(c for c in range(1, per_shard + 1) if per_shard % c == 0 and per_shard // c <= most)

    def rows_for(self, rows_per_group: int, hosts: int) -> int:
        """The smallest row count of the grid that gives every (host, group) ``rows_per_group`` rows."""
        need = rows_per_group * hosts * self.groups
        return next(r for r in self.row_grid() if r >= need)

    def shapes(self, rows: int | None = None) -> dict[str, tuple[tuple[int, ...], type]]:
        """Global shape and dtype of this field's arrays with ``rows`` rows (default: the largest)."""
        r, n, p = rows or self.sequences, self.sequences, self.prefix
        shapes = {f"{p}_{name}": ((r, self.length), np.int32) for name in ("tokens", "segments", "positions")}
        if self.field == "generative":
            shapes["gen_loss_mask"] = ((r, self.length), np.bool_)
        else:
            shapes.update({f"{p}_instruction_len": ((n,), np.int32), f"{p}_slot": ((n,), np.int32)})
        return shapes


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
            fields[field] = FieldPacking(field, n, length, 1, w, min(length, MAX_SLOTS), chunk_rows)
    if objective.mode in ("unified", "generative"):
        steps, n = max(int(objective.generative_accumulation_steps), 1), data.generative_batch_size
        if moe and steps > 1:
            fields["generative"] = FieldPacking("generative", n, data.generative_max_len, steps, w * steps, 0)
        else:
            chunk_rows = n // steps if steps > 1 else 0
            fields["generative"] = FieldPacking("generative", n, data.generative_max_len, 1, w, 0, chunk_rows)
    for f in fields.values():
        if f.sequences % f.unit or (f.chunk_rows and f.chunk_rows % f.unit):
            raise UsageError(
                f"data.packing: the {f.sequences} {f.field} sequences of a batch do not split into "
                f"{data_parallel} batch shards x {f.groups} micro-batches of whole rows; change the batch "
                "size"
            )
    return fields


def packed_batch_shapes(layout: Mapping[str, FieldPacking], rows: Mapping[str, int] | None = None) -> dict:
    """Global shapes of a packed batch with ``rows`` {field: R} (default: each field's largest)."""
    shapes = {}
    for field, f in layout.items():
        shapes.update(f.shapes((rows or {}).get(field)))
    return shapes


def packed_rows(layout: Mapping[str, FieldPacking], batch: Mapping) -> dict[str, int]:
    """{field: R} of a (host's or global) packed batch, each checked against the field's layout."""
    return {field: int(batch[f"{f.prefix}_tokens"].shape[0]) for field, f in layout.items()}


def validate_packed_batch(layout: Mapping[str, FieldPacking], batch: Mapping, num_hosts: int = 1) -> None:
    """Check a packed batch's arrays against the layout (a host's rows: num_hosts > 1)."""
    expected = packed_batch_shapes(layout)
    if set(batch) != set(expected):
        raise UsageError(f"a packed batch (data.packing) holds {sorted(expected)}, not {sorted(batch)}")
    for _field, f in layout.items():
        rows = int(batch[f"{f.prefix}_tokens"].shape[0]) * num_hosts
        if rows not in f.row_grid():
            raise UsageError(f"batch[{f.prefix + '_tokens'!r}] has {rows} rows, not one of {f.row_grid()}")
        for name, (shape, _) in f.shapes(rows).items():
            got = tuple(batch[name].shape)
            if (got[0] * num_hosts, *got[1:]) != shape:
                raise UsageError(f"batch[{name!r}] has shape {got}, a packed batch needs {shape} globally")
