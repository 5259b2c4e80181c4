"""benchmarks/paper_claims.py's table: each two-objective run against the single-objective runs, with a
paired bootstrap interval over the same held-out queries and chats."""

import numpy as np

from benchmarks import paper_claims


def _run(ranks=None, chats=None):
    """A finished run as paper_claims.train returns it: metrics, per-item results, wall time."""
    result, items = {"seconds": 60.0}, {}
    if ranks is not None:
        items["reciprocal_rank"] = ranks
        result["eval_mrr@10"] = float(np.mean(ranks))
    if chats is not None:
        items["chat_loss"] = chats  # [loss sum, targets] per chat
        result["eval_loss_gen"] = sum(c[0] for c in chats) / sum(c[1] for c in chats)
    return {**result, "items": items}


def test_two_objective_runs_are_compared_with_each_single_objective_run():
    rng = np.random.default_rng(0)
    ranks = rng.uniform(0, 1, 300)
    chats = [[float(t) * 2.0, float(t)] for t in rng.integers(20, 120, 200)]  # 2.0 nats per target
    worse_gen = [[s + 0.3 * t, t] for s, t in chats]  # +0.3 nats per target on every chat
    results = {
        "unified": [_run(ranks, worse_gen)],
        "embedding": [_run(ranks - 0.05)],
        "generative": [_run(chats=chats)],
        "balance8": [_run(ranks - 0.02, chats)],
    }
    text = paper_claims.table(results, "smollm2", seeds=1, steps=60)
    first, second = text.split("| two-objective run |")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in first.splitlines()}
    # the single-objective runs have no row in the second table; both two-objective runs do
    assert "embedding-only |" not in second and "generative-only |" not in second
    unified = [line for line in second.splitlines() if line.startswith("| GRIT: both objectives")][0]
    assert "| +0.050 [+0.050, +0.050] | +0.300 [+0.300, +0.300] |" in unified
    balanced = [line for line in second.splitlines() if line.startswith("| unified, GritLM-7B's")][0]
    assert "| +0.030 [+0.030, +0.030] | +0.000 [+0.000, +0.000] |" in balanced
    # the first table still compares every run with the unified one
    assert "-0.300 [-0.300, -0.300]" in rows["unified, GritLM-7B's balance (embedding gradient / 8)"]


def test_no_second_table_without_both_single_objective_runs():
    rng = np.random.default_rng(1)
    results = {"unified": [_run(rng.uniform(0, 1, 10), [[2.0, 1.0]] * 10)], "embedding": [_run(np.zeros(10))]}
    assert "two-objective run" not in paper_claims.table(results, "demo", seeds=1, steps=10)
