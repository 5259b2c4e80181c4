"""The shapes of packed batches (grit_jax.batch_layout) and the global packing (grit_jax.data.packing), from
lengths alone: the shape of fewest positions that holds the batch, longer rows where whole rows per batch
shard leave a gap, chunks no larger than unpacked ones, and every sequence in exactly one row."""

import numpy as np
import pytest

from grit_jax.batch_layout import FieldPacking
from grit_jax.data.packing import best_fit, host_sequences, plan_field, slot_of
from grit_jax.errors import UsageError
from grit_jax.model import batch as batch_lib

# The 7B recipe's chats on v5e-64: 256 of at most 2048 tokens, 64 batch shards, 4 micro-batches of 64 rows.
CHATS = FieldPacking("generative", 256, 2048, groups=1, unit=64, chunk_rows=64)


def check_plan(plan, lengths, f):
    rows, length = plan.shape
    assert (rows, length) in f.shape_grid() and len(plan.rows) == rows
    assert sorted(i for row in plan.rows for i in row) == list(range(len(lengths)))
    assert all(sum(min(lengths[i], f.length) for i in row) <= length for row in plan.rows)
    if f.slots(length):
        assert all(len(row) <= f.slots(length) for row in plan.rows)


def test_one_row_per_shard_takes_a_longer_row_not_two():
    """~510-token chats fill one row of 2048 per shard by ~99%: rows of max_len would need two per shard
    (50% real); a row of 2304 or 2560 holds them."""
    lengths = np.random.default_rng(0).integers(300, 700, 256)
    assert lengths.sum() > 64 * 2048 * 0.9
    plan = plan_field(lengths, CHATS)
    check_plan(plan, lengths, CHATS)
    rows, length = plan.shape
    assert rows == 64 and 2048 < length <= 3072 and length % 128 == 0
    assert lengths.sum() / (rows * length) > 0.8
    assert CHATS.chunks(rows, length) == 1  # one row per shard: one micro-batch of one (longer) row


def test_the_shape_of_fewest_positions_that_holds_the_batch_is_taken():
    f = FieldPacking("passage", 512, 256, groups=1, unit=8, chunk_rows=128)
    rng = np.random.default_rng(1)
    for lengths in (rng.integers(5, 60, 512), rng.integers(100, 256, 512), np.full(512, 256)):
        plan = plan_field(lengths, f)
        check_plan(plan, lengths, f)
        for rows, n in f.shape_grid():  # every shape of fewer positions cannot hold the batch
            if rows * n >= plan.shape[0] * plan.shape[1]:
                break
            assert rows * n < lengths.sum() or len(best_fit(lengths, n, f.slots(n))) > rows
    assert plan_field(np.full(512, 256), f).shape == (512, 256)  # one sequence a row always fits


def test_rows_of_max_len_where_row_counts_are_fine_grained():
    """Many rows per shard: the row-count ladder is ~9% apart, so no longer row is offered."""
    f = FieldPacking("query", 2048, 256, groups=1, unit=1, chunk_rows=0)
    assert {n for r, n in f.shape_grid() if r > 64} == {256}


def test_chunks_hold_no_more_than_an_unpacked_chunk_or_one_row():
    for rows, length in CHATS.shape_grid():
        per_chunk = CHATS.chunk_positions(rows, length)
        assert per_chunk <= max(CHATS.chunk_rows // CHATS.unit * CHATS.length, length)
    assert CHATS.largest_shape()[1] == 3072  # one micro-batch row of 1.5 x max_len per shard
    whole = FieldPacking("query", 64, 32, groups=1, unit=8)  # one pass: the largest is one sequence a row
    assert whole.largest_shape() == (64, 32)


def test_groups_are_packed_apart_and_hosts_split_the_rows():
    f = FieldPacking("generative", 32, 64, groups=2, unit=4)
    lengths = np.random.default_rng(2).integers(3, 40, 32)
    plan = plan_field(lengths, f)
    check_plan(plan, lengths, f)
    for r, row in enumerate(plan.rows):  # group g's rows are rows g, g + groups, ...: its sequences only
        assert all(i % 2 == r % 2 for i in row)
    halves = [host_sequences(plan, h, 2) for h in (0, 1)]
    assert sorted(halves[0] + halves[1]) == list(range(32))


def test_slots_point_at_each_sequence_segment():
    f = FieldPacking("query", 16, 8, groups=1, unit=2)
    lengths = np.random.default_rng(3).integers(1, 8, 16)
    plan = plan_field(lengths, f)
    slots = f.slots(plan.shape[1])
    for i, slot in enumerate(slot_of(plan, f)):
        assert plan.rows[slot // slots][slot % slots] == i


def test_a_shape_outside_the_grid_is_refused_by_name():
    f = FieldPacking("generative", 8, 16, groups=1, unit=1)
    arrays = batch_lib.shapes({"generative": f}, {"generative": (3, 17)})["generative"]
    batch = batch_lib.Batch(generative=batch_lib.PackedChat(**{a: np.zeros(*s) for a, s in arrays.items()}))
    with pytest.raises(UsageError, match=r"batch\['gen_tokens'\] has shape \(3, 17\)"):
        batch_lib.check({"generative": f}, batch)
