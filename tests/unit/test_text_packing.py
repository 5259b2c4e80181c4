"""encode's packing (grit_jax.inference.text_packing): every text placed once in a row it fits, passes
within the token budget, few shapes, and >= 90% of the computed slots real tokens on realistic length
mixes (the outputs' equality with texts embedded alone: tests/integration/test_inference.py)."""

import numpy as np
import pytest

from grit_jax.inference.text_packing import pack, real_share, row_length, slots


def test_row_lengths_two_per_octave():
    assert [row_length(n) for n in (1, 16, 17, 25, 33, 49, 65, 97, 129, 300, 385, 512, 513)] == [
        16, 16, 24, 32, 48, 64, 96, 128, 192, 384, 512, 512, 768,
    ]  # fmt: skip


def _check(lengths, batch_size, multiple=1):
    """The invariants of pack's passes; returns them."""
    passes = pack(lengths, batch_size, multiple)
    placed = [i for p in passes for row in p.rows for i in row]
    assert sorted(placed) == list(range(len(lengths)))  # every text exactly once
    budget = batch_size * row_length(max(lengths))
    for n, p in enumerate(passes):
        assert p.row_count % multiple == 0 and len(p.rows) <= p.row_count
        assert p.row_count * p.length <= max(budget, multiple * p.length)  # no more memory than today
        assert all(sum(lengths[i] for i in row) <= p.length and len(row) <= slots(p.length) for row in p.rows)
        if n < len(passes) - 1:
            assert len(p.rows) == p.row_count  # only the last (shortest) pass has rows of padding
    assert [p.length for p in passes] == sorted((p.length for p in passes), reverse=True)
    return passes


@pytest.mark.parametrize("docs, batch_size, multiple", [(256, 32, 1), (2000, 32, 1), (5000, 64, 8)])
def test_realistic_mix_is_at_least_90_percent_real_tokens(docs, batch_size, multiple):
    # web-passage-like lengths: log-normal, median ~97 tokens, a long tail cut at 512 (grit-embed's default)
    rng = np.random.default_rng(docs)
    lengths = np.minimum(rng.lognormal(4.5, 0.8, docs).astype(int) + 5, 512).tolist()
    passes = _check(lengths, batch_size, multiple)
    assert real_share(lengths, passes) >= 0.9
    # padded to the longest of each length-sorted batch, lengths rounded to powers of two (before): ~67%
    assert len({p.shape for p in passes}) <= 2 * len({p.length for p in passes}) + 2  # few to compile


def test_short_queries_share_rows_and_small_inputs_stay_small():
    lengths = [12, 9, 15, 20, 11, 7, 18, 14] * 40  # queries: several to a row of 64
    passes = _check(lengths, 256)
    assert real_share(lengths, passes) >= 0.9 and max(len(r) for p in passes for r in p.rows) >= 4
    assert [p.shape for p in pack([5], 256)] == [(1, 16)]  # one short query: one short row
    assert [p.shape for p in pack([300, 20], 1)] == [(1, 384)]  # the short one fills the long one's row
    assert [p.shape for p in pack([20] * 3, 1)] == [(1, 24)] * 3  # batch 1: rows no longer than 24
    assert pack([], 8) == [] and real_share([], []) == 1.0


def test_rows_are_multiples_of_the_mesh_split_and_passes_follow_the_budget():
    lengths = [500] * 3 + [100] * 50 + [30] * 7
    passes = _check(lengths, 4, multiple=8)
    assert passes[0].shape == (8, 512)
    passes = _check(lengths, 4)
    assert passes[0].shape == (4, 512) and {p.row_count * p.length for p in passes} <= {4 * 512}
