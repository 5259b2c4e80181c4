"""Packing sequences into rows (data.packing): best-fit decreasing over the GLOBAL batch, the packed
arrays of one host, and ``Packer``, grit_jax.data.pipeline's former for packed layouts (shapes and their
meaning: grit_jax.batch_layout, grit_jax.model.batch).

Best-fit decreasing: the longest sequence first, each into the row whose free space is the smallest that
holds it (a new row when none does). Deterministic (ties by index), so every host computes the whole
batch's packing from lengths alone; all agree on the shape and on which sequences each row holds. Host h
then fills global rows [h R/H, (h+1) R/H): the sequences of its rows, wherever they sit in the batch, so
no host's share sets a shape for the others. Group g (a micro-batch, grit_jax.batch_layout) holds global
sequences g, g + groups, ... and its k-th row is global row k * groups + g (the step's chunks are strided).
"""

from __future__ import annotations

import bisect
import dataclasses
import functools

import numpy as np

from grit_jax.batch_layout import FieldPacking
from grit_jax.errors import UsageError
from grit_jax.model.batch import Batch, PackedChat, PackedText


def best_fit(lengths, capacity: int, max_segments: int = 0) -> list[list[int]]:
    """Rows of indices into ``lengths`` (each row's total <= capacity, at most max_segments if > 0)."""
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    free: list[tuple[int, int]] = []  # (free space, row), ascending
    rows: list[list[int]] = []
    for i in order:
        n = int(lengths[i])
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            space, r = free.pop(k)
        else:
            space, r = capacity, len(rows)
            rows.append([])
        rows[r].append(i)
        space -= n
        if space > 0 and (not max_segments or len(rows[r]) < max_segments):
            bisect.insort(free, (space, r))
    return rows


@dataclasses.dataclass(frozen=True)
class FieldPlan:
    """One field of one global batch, packed: its (rows, row length) and the global sequence indices of
    every global row, in segment order."""

    shape: tuple[int, int]
    rows: tuple[tuple[int, ...], ...]


def plan_field(lengths, f: FieldPacking) -> FieldPlan:
    """The packing of a field whose global batch has sequences of ``lengths`` (cut at max_len)."""
    lengths = np.minimum(np.asarray(lengths), f.length)
    members = [np.arange(g, len(lengths), f.groups) for g in range(f.groups)]

    @functools.cache
    def packed(row_length: int) -> list[list[list[int]]]:  # per group, its rows of global indices
        return [
            [[int(m[i]) for i in row] for row in best_fit(lengths[m], row_length, f.slots(row_length))]
            for m in members
        ]

    total = int(lengths.sum())
    # Shapes of fewer positions than the tokens cannot hold them: skip their packing.
    for rows, n in f.shape_grid():
        if rows * n >= total and rows >= max(len(g) for g in packed(n)) * f.groups:
            break
    table: list[tuple[int, ...]] = [()] * rows
    for g, group in enumerate(packed(n)):
        for k, row in enumerate(group):
            table[k * f.groups + g] = tuple(row)
    return FieldPlan((rows, n), tuple(table))


def slot_of(plan: FieldPlan, f: FieldPacking) -> np.ndarray:
    """[N] where each sequence's embedding is pooled: global row * slots + segment - 1."""
    slots, out = f.slots(plan.shape[1]), np.zeros(f.sequences, np.int32)
    for r, row in enumerate(plan.rows):
        for segment, i in enumerate(row):
            out[i] = r * slots + segment
    return out


def host_sequences(plan: FieldPlan, host: int, hosts: int) -> list[int]:
    """The global sequence indices host ``host`` needs for its rows."""
    per_host = plan.shape[0] // hosts
    return sorted(i for row in plan.rows[host * per_host : (host + 1) * per_host] for i in row)


def pack_host(plan: FieldPlan, f: FieldPacking, sequences, *, hosts=(0, 1), extra=None, pad_id=0) -> dict:
    """This host's rows of a packed field: global rows [host R/H, (host+1) R/H) of ``plan`` (hosts: (host,
    H)).

    sequences: {global index: tokens} holding at least host_sequences(plan, host, H); extra: {name:
    {global index: per-token array}} packed alike (loss_mask). Embedding fields also get their slots
    ([N/H]: this host's share of the batch, in order). Returns {array name: array}
    (grit_jax.model.batch's PackedText and PackedChat), instruction lengths aside."""
    (host, count), (rows, length) = hosts, plan.shape
    local_rows = rows // count
    tokens = np.full((local_rows, length), pad_id, np.int32)
    segments = np.zeros((local_rows, length), np.int32)
    positions = np.zeros((local_rows, length), np.int32)
    extras = {name: np.zeros((local_rows, length), bool) for name in extra or {}}
    for r, row in enumerate(plan.rows[host * local_rows : (host + 1) * local_rows]):
        start = 0
        for segment, i in enumerate(row, 1):
            n = min(len(sequences[i]), f.length)
            tokens[r, start : start + n] = sequences[i][:n]
            segments[r, start : start + n] = segment
            positions[r, start : start + n] = np.arange(n)
            for name, values in (extra or {}).items():
                extras[name][r, start : start + n] = values[i][:n]
            start += n
    out = {"tokens": tokens, "segments": segments, "positions": positions, **extras}
    if f.field != "generative":
        share = f.sequences // count
        out["slot"] = slot_of(plan, f)[host * share : (host + 1) * share]
    return out


class Packer:
    """Packs each field of a step's global batch alike on every host (the plan from the length index
    alone), then fills this host's rows: the records of the sequences its rows hold, wherever they sit in
    the batch, and its own share of the per-sequence arrays (instruction lengths). Nothing is cut beyond
    the field's *_max_len, as padded. layout: {field: FieldPacking} (grit_jax.batch_layout)."""

    def __init__(self, layout, pad_id: int, host: int, hosts: int):
        self.layout, self.pad_id, self.host, self.hosts = layout, pad_id, host, hosts
        for f in layout.values():
            if f.unit % hosts:
                raise UsageError(
                    f"data.packing: {hosts} hosts cannot each take whole {f.field} rows; use a "
                    "data-parallel size that is a multiple of the number of hosts"
                )

    def needs_lengths(self, fields) -> bool:
        return True  # every plan is made from the lengths of the whole global batch

    @functools.lru_cache(maxsize=2)  # noqa: B019 (one Packer per run: nothing leaks)
    def plans(self, reader, step: int) -> dict[str, FieldPlan]:
        """{field: the packing of the whole global batch of ``step``}, the same on every host (reader:
        grit_jax.data.pipeline.HostBatches)."""
        return {field: plan_field(n, self.layout[field]) for field, n in reader.global_lengths(step).items()}

    def _pack(self, reader, step: int, field: str, sequences, *, extra=None) -> dict:
        """This host's rows of ``field`` (sequences: {global index: tokens} of at least its rows')."""
        plan, hosts = self.plans(reader, step)[field], (self.host, self.hosts)
        return pack_host(plan, self.layout[field], sequences, hosts=hosts, extra=extra, pad_id=self.pad_id)

    def embedding(self, reader, step: int) -> dict[str, PackedText]:
        plan, plans = reader.batch_plan(step), self.plans(reader, step)
        group = reader.config.train_group_size
        start, stop = reader.rows["embedding"]
        queries = host_sequences(plans["query"], self.host, self.hosts)
        passages = host_sequences(plans["passage"], self.host, self.hosts)
        rows = sorted({*range(start, stop), *queries, *(i // group for i in passages)})
        read = {row: reader.embedding_row(step, plan, row) for row in rows}
        query = self._pack(reader, step, "query", {i: read[i][0] for i in queries})
        passage = self._pack(reader, step, "passage", {i: read[i // group][2][i % group] for i in passages})
        query["instruction_len"] = np.asarray([read[r][1] for r in range(start, stop)], np.int32)
        passage["instruction_len"] = np.asarray([n for r in range(start, stop) for n in read[r][3]], np.int32)
        return {"query": PackedText(**query), "passage": PackedText(**passage)}

    def generative(self, reader, step: int) -> PackedChat:
        chats = host_sequences(self.plans(reader, step)["generative"], self.host, self.hosts)
        read = {i: reader.generative_row(step, i) for i in chats}
        masks = {i: loss_mask for i, (_, loss_mask) in read.items()}
        tokens = {i: t for i, (t, _) in read.items()}
        return PackedChat(**self._pack(reader, step, "generative", tokens, extra={"loss_mask": masks}))


def pack_padded_batch(batch: Batch, layout, pad_id: int = 0) -> Batch:
    """The packed form (one host) of a right-padded batch (tests, benchmarks): the same sequences, in
    the same order."""
    out = {}
    for name, field in batch.fields().items():
        f, lengths = layout[name], field.mask.sum(axis=1)
        tokens = {i: field.tokens[i, :n] for i, n in enumerate(lengths)}
        plan = plan_field(lengths, f)
        if name == "generative":
            extra = {"loss_mask": {i: field.loss_mask[i, :n] for i, n in enumerate(lengths)}}
            out[name] = PackedChat(**pack_host(plan, f, tokens, extra=extra, pad_id=pad_id))
        else:
            arrays = pack_host(plan, f, tokens, pad_id=pad_id)
            out[name] = PackedText(**arrays, instruction_len=np.asarray(field.instruction_len, np.int32))
    return Batch(**out)
