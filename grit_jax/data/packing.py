"""Packing sequences into rows (data.packing): best-fit decreasing over the GLOBAL batch, and the packed
arrays of one host (shapes and their meaning: grit_jax.packed_batch).

Best-fit decreasing: the longest sequence first, each into the row whose free space is the smallest that
holds it (a new row when none does). Deterministic (ties by index), so every host computes the whole
batch's packing from lengths alone; all agree on the shape and on which sequences each row holds. Host h
then fills global rows [h R/H, (h+1) R/H): the sequences of its rows, wherever they sit in the batch, so
no host's share sets a shape for the others. Group g (a micro-batch, grit_jax.packed_batch) holds global
sequences g, g + groups, ... and its k-th row is global row k * groups + g (the step's chunks are strided).
"""

from __future__ import annotations

import bisect
import dataclasses
import functools

import numpy as np

from grit_jax.packed_batch import FieldPacking


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


def pack_host(plan: FieldPlan, f: FieldPacking, host: int, hosts: int, sequences, extra=None, pad_id=0):
    """This host's rows of a packed field: global rows [host R/H, (host+1) R/H) of ``plan``.

    sequences: {global index: tokens} holding at least host_sequences(plan, host, hosts); extra: {name:
    {global index: per-token array}} packed alike (gen_loss_mask). Embedding fields also get their slots
    ([N/H]: this host's share of the batch, in order). Returns the arrays keyed as FieldPacking.shapes."""
    rows, length = plan.shape
    local_rows, p = rows // hosts, f.prefix
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
    out = {f"{p}_tokens": tokens, f"{p}_segments": segments, f"{p}_positions": positions, **extras}
    if f.field != "generative":
        share = f.sequences // hosts
        out[f"{p}_slot"] = slot_of(plan, f)[host * share : (host + 1) * share]
    return out


def field_sequences(batch, prefix: str) -> tuple[list[np.ndarray], dict[str, list[np.ndarray]]]:
    """The sequences of a right-padded field of a host batch (tests, benchmarks): tokens and, for the
    generative field, the loss mask of each, cut at its real length."""
    mask = batch[f"{prefix}_mask"]
    lengths = mask.sum(axis=1)
    tokens = [batch[f"{prefix}_tokens"][i, :n] for i, n in enumerate(lengths)]
    extra = (
        {"gen_loss_mask": [batch["gen_loss_mask"][i, :n] for i, n in enumerate(lengths)]}
        if prefix == "gen"
        else {}
    )
    return tokens, extra


def pack_padded_batch(batch, layout, pad_id: int = 0) -> dict[str, np.ndarray]:
    """The packed form (one host) of a right-padded batch: the same sequences, in the same order."""
    out = {}
    for f in layout.values():
        tokens, extra = field_sequences(batch, f.prefix)
        plan = plan_field([len(t) for t in tokens], f)
        extra = {name: dict(enumerate(v)) for name, v in extra.items()}
        out.update(pack_host(plan, f, 0, 1, dict(enumerate(tokens)), extra, pad_id))
        if f.field != "generative":
            out[f"{f.prefix}_instruction_len"] = np.asarray(batch[f"{f.prefix}_instruction_len"], np.int32)
    return out
