"""grit_jax.train.step_search.best on candidates as compiles report them (no compile here): ranked by the
estimate per real token, estimates within TIE of each other one speed, and then the least memory."""

from grit_jax.train import step_search
from grit_jax.train.step_search import Candidate

GIB = 2**30


def _candidate(name, seconds, tokens, gib, hbm_gib=16):
    return Candidate(
        {"model.remat_policy": name},
        compiled=True,
        total_bytes=int(gib * GIB),
        hbm_bytes=hbm_gib * GIB,
        chips=64,
        tokens=tokens,
        estimate={"step_seconds": seconds},
    )


def test_candidates_are_ranked_per_real_token():
    # the second step is longer but holds 10% more positions: per token it is the faster one
    today = _candidate("full", 52.3, 9_000_000, 7.5)
    more_rows = _candidate("dots", 55.0, 9_900_000, 8.0)
    assert step_search.best([today, more_rows]) is more_rows


def test_estimates_within_the_tie_take_the_least_memory():
    today = _candidate("full", 52.32, 9_000_000, 7.52)
    whole_logits = _candidate("none", 52.30, 9_000_000, 7.87)  # 0.04% faster, 0.35 GiB more
    assert step_search.best([whole_logits, today]) is today
    clearly_faster = _candidate("matmuls", 52.32 * (1 - 2 * step_search.TIE), 9_000_000, 9.0)
    assert step_search.best([today, whole_logits, clearly_faster]) is clearly_faster


def test_only_candidates_that_fit_with_spare_count():
    too_full = _candidate("none", 10.0, 9_000_000, 15.0)  # 94% of 16 GiB: under the 10% spare
    not_compiled = Candidate({"model.remat_policy": "dots"}, error="RESOURCE_EXHAUSTED")
    fits = _candidate("full", 50.0, 9_000_000, 7.5)
    assert step_search.best([too_full, not_compiled, fits]) is fits
    assert step_search.best([too_full, not_compiled]) is None
