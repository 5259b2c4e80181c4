"""The quick start's final printout: held-out MRR@10 trained / untrained / BM25 on the same queries, an
example query with its top 3 passages, a generated answer; BM25's figure checked by hand on a toy set."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from grit_jax.retrieval.demo_report import bm25_mrr
from tests.grit_fixtures import ROOT, xla_flags


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


@pytest.mark.slow
def test_the_demo_ends_with_the_comparison_and_an_example(tmp_path):
    from grit_jax.data.demo import prepare_demo_data

    data_dir = prepare_demo_data(str(tmp_path / "data"), vocab_size=512)["data_dir"]
    command = [
        sys.executable,
        "-m",
        "grit_jax.programs.grit_train",
        "--config=configs/demo.py",
        f"--workdir={tmp_path / 'run'}",
    ]
    command += [
        f"--config.data.data_dir={data_dir}",
        "--config.num_steps=4",
        "--config.log.eval_every_steps=4",
    ]
    command += ["--config.data.query_max_len=32", "--config.data.passage_max_len=32"]
    command += ["--config.data.generative_max_len=48", "--config.checkpoint.every_steps=4"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(1))
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    figures = re.search(
        r"held-out MRR@10 on (\d+) queries: trained ([\d.]+), untrained ([\d.]+), BM25 ([\d.]+)", out
    )
    assert figures, out[-3000:]
    assert int(figures[1]) > 10 and all(0 <= float(figures[i]) <= 1 for i in (2, 3, 4))
    assert float(figures[4]) > 0.1  # BM25 on docstrings finds something
    lines = out[out.index("example query:") :].splitlines()
    assert [line[:5] for line in lines[1:4]] == ["  1. ", "  2. ", "  3. "]
    assert lines[4].startswith("generated: What does `")
