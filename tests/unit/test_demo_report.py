"""BM25's figure of the quick start's final printout, checked by hand on a toy set (the printout itself:
tests/e2e/test_train.py::test_demo_learns)."""

import numpy as np
import pytest

from grit_jax.retrieval.demo_report import bm25_mrr


def test_bm25_mrr_on_token_ids():
    # Query 0 shares its terms with passage 1 only, query 1 with passage 0 only; instructions (the first
    # two tokens of every text) are left out, so their shared tokens do not count.
    tokens = lambda rows: np.array([[7, 8] + r + [0] * (4 - len(r)) for r in rows])  # noqa: E731
    mask = lambda rows: np.array([[True] * (2 + len(r)) + [False] * (4 - len(r)) for r in rows])  # noqa: E731
    passages, queries = [[10, 11], [20, 21, 22], [30], [40, 41]], [[20, 22], [11, 10, 10]]
    retrieval = dict(
        passage_tokens=tokens(passages),
        passage_mask=mask(passages),
        passage_instruction_len=np.full(4, 2),
        query_tokens=tokens(queries),
        query_mask=mask(queries),
        query_instruction_len=np.full(2, 2),
        relevant=np.array([[False, True, False, False], [False, False, True, False]]),
    )
    # q0 finds p1 first; q1's relevant p2 shares no term with it: score 0, tied with p1 and p3 behind p0, and
    # the stable order puts it third.
    assert bm25_mrr(retrieval) == pytest.approx((1.0 + 1.0 / 3) / 2)
