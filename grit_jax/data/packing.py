"""Packing sequences into rows (data.packing): best-fit decreasing, per host and per group, and the
packed arrays of one host (shapes and their meaning: grit_jax.packed_batch).

Best-fit decreasing: the longest sequence first, each into the row whose free space is the smallest that
holds it (a new row when none does). Deterministic (ties by index), so every host computes every other
host's packing from lengths alone and all agree on the row count.
"""

from __future__ import annotations

import bisect

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


def group_rows(lengths, f: FieldPacking) -> list[list[list[int]]]:
    """One host's sequences (local indices, lengths cut at the field's length) packed per group:
    group g holds local sequences g, g + groups, ... (the rows of unpacked chunk g)."""
    lengths = np.minimum(np.asarray(lengths), f.length)
    out = []
    for g in range(f.groups):
        members = np.arange(g, len(lengths), f.groups)
        out.append([[int(members[i]) for i in row] for row in best_fit(lengths[members], f.length, f.slots)])
    return out


def rows_needed(lengths_per_host, f: FieldPacking) -> int:
    """Rows per (host, group) that the fullest one needs."""
    return max(len(rows) for lengths in lengths_per_host for rows in group_rows(lengths, f))


def pack_host(sequences, f: FieldPacking, rows: int, host: int, hosts: int, extra=None, pad_id: int = 0):
    """This host's rows of a packed field with ``rows`` global rows.

    sequences: this host's token arrays (its share of the batch, in order); extra: {name: per-sequence
    arrays aligned with the tokens} packed alike (gen_loss_mask). Returns the host's arrays keyed as
    grit_jax.packed_batch.FieldPacking.shapes; slots index global rows."""
    local_rows = rows // hosts
    per_group = local_rows // f.groups
    p, length = f.prefix, f.length
    tokens = np.full((local_rows, length), pad_id, np.int32)
    segments = np.zeros((local_rows, length), np.int32)
    positions = np.zeros((local_rows, length), np.int32)
    extras = {
        name: np.zeros((local_rows, length), np.asarray(v[0]).dtype) for name, v in (extra or {}).items()
    }
    slot = np.zeros(len(sequences), np.int32)
    for g, group in enumerate(group_rows([len(s) for s in sequences], f)):
        if len(group) > per_group:
            raise ValueError(f"{f.field}: group {g} needs {len(group)} rows, {per_group} given")
        for k, members in enumerate(group):
            r, start = k * f.groups + g, 0  # group g's rows: local rows g, g + groups, ... (strided chunks)
            for segment, i in enumerate(members, 1):
                n = min(len(sequences[i]), length)
                tokens[r, start : start + n] = sequences[i][:n]
                segments[r, start : start + n] = segment
                positions[r, start : start + n] = np.arange(n)
                for name, values in (extra or {}).items():
                    extras[name][r, start : start + n] = values[i][:n]
                slot[i] = ((host * local_rows + r) * f.slots + segment - 1) if f.slots else 0
                start += n
    out = {f"{p}_tokens": tokens, f"{p}_segments": segments, f"{p}_positions": positions, **extras}
    if f.field != "generative":
        out[f"{p}_slot"] = slot
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
        rows = f.rows_for(rows_needed([[len(t) for t in tokens]], f), 1)
        out.update(pack_host(tokens, f, rows, 0, 1, extra, pad_id))
        if f.field != "generative":
            out[f"{f.prefix}_instruction_len"] = np.asarray(batch[f"{f.prefix}_instruction_len"], np.int32)
    return out
