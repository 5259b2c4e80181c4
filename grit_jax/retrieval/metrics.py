"""Retrieval metrics, one definition each: MRR@10 as held-out evaluation and the quick start compute it
from a score matrix, and nDCG@10 / MRR@10 / recall@100 per query the way trec_eval does (grit-eval).

Ranking ties break as trec_eval's: score descending, then document id descending. A query judged only
non-relevant scores 0 on every metric.
"""

from __future__ import annotations

import math

import numpy as np

METRICS = ("ndcg@10", "mrr@10", "recall@100")


def reciprocal_rank(first: int, k: int = 10) -> float:
    """1 / (rank + 1) of the first relevant document at 0-based `first`, 0 past the top k."""
    return 1.0 / (first + 1) if first < k else 0.0


def first_relevant(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """scores, relevant [Nq, Np] -> [Nq]: the 0-based rank of the first relevant passage (Np: none)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    hits = np.take_along_axis(relevant, order, axis=1)
    return np.where(hits.any(1), hits.argmax(1), scores.shape[1])


def retrieval_metrics(scores: np.ndarray, relevant: np.ndarray) -> dict[str, float]:
    """scores, relevant [Nq, Np] -> MRR@10 and recall@1 (a hit = any relevant passage)."""
    return metrics_from_ranks(first_relevant(scores, relevant))


def metrics_from_ranks(first: np.ndarray) -> dict[str, float]:
    """MRR@10 and recall@1 from first_relevant's ranks."""
    return {
        "eval_mrr@10": float(np.mean([reciprocal_rank(f) for f in first])),
        "eval_recall@1": float((first == 0).mean()),
    }


def ranked(scores: dict[str, float]) -> list[str]:
    """Document ids best first, ties broken as trec_eval (higher id first)."""
    return [d for d, _ in sorted(scores.items(), key=lambda x: (x[1], x[0]), reverse=True)]


def query_metrics(scores: dict[str, float], judged: dict[str, int]) -> dict[str, float]:
    ranking = ranked(scores)
    relevant = {d: r for d, r in judged.items() if r > 0}
    if not relevant:
        return dict.fromkeys(METRICS, 0.0)
    dcg = sum(relevant.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranking[:10]))
    ideal = sum(r / math.log2(i + 2) for i, r in enumerate(sorted(relevant.values(), reverse=True)[:10]))
    first = next((i for i, d in enumerate(ranking[:10]) if d in relevant), None)
    return {
        "ndcg@10": dcg / ideal,
        "mrr@10": reciprocal_rank(10 if first is None else first),
        "recall@100": len(set(ranking[:100]) & set(relevant)) / len(relevant),
    }


def score_run(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    """Mean of each metric over the queries of the qrels (a query missing from the run scores 0)."""
    per_query = [query_metrics(run.get(q, {}), judged) for q, judged in qrels.items()]
    return {m: float(np.mean([p[m] for p in per_query])) if per_query else 0.0 for m in METRICS}
