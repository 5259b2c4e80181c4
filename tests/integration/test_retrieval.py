"""grit-eval retrieval: nDCG@10, MRR@10 and recall@100 equal pytrec_eval's on the same run; the run ranks
the corpus by the dot product of GritLM.encode's embeddings with the reference's instructions."""

import json

import numpy as np
import pytest
import pytrec_eval

from grit_jax import GritLM
from grit_jax.programs.grit_eval import run
from grit_jax.retrieval.instructions import task_instructions
from grit_jax.retrieval.metrics import ranked, score_run
from grit_jax.retrieval.ranking import DEFAULT_DOC_INSTRUCTION, DEFAULT_QUERY_INSTRUCTION
from tests.grit_fixtures import N_DOCS, N_QUERIES, make_hf_dir, make_tokenizer, write_beir


def pytrec_scores(qrels, run):
    """The three figures from trec_eval's own code: MRR@10 as recip_rank of the top 10."""
    full = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"}).evaluate(run)
    top10 = {q: {d: run[q][d] for d in ranked(run[q])[:10]} for q in run}
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    return {
        "ndcg@10": np.mean([full[q]["ndcg_cut_10"] for q in qrels]),
        "mrr@10": np.mean([rr[q]["recip_rank"] for q in qrels]),
        "recall@100": np.mean([full[q]["recall_100"] for q in qrels]),
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrieval")
    make_tokenizer(root / "tokenizer.model")
    _, path = make_hf_dir(root / "hf", root / "tokenizer.model")
    docs, queries = write_beir(root / "beir")
    return root, path, docs, queries


def test_grit_eval_matches_pytrec_eval(setup, capsys):
    root, path, docs, queries = setup
    out, run_out = root / "result.json", root / "run.json"
    args = ["retrieval", "--model", path, "--data", str(root / "beir"), "--out", str(out)]
    assert run(args + ["--run_out", str(run_out), "--batch_size", "16"]) == 0
    result = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == result
    assert result["queries"] == N_QUERIES and result["documents"] == N_DOCS
    assert result["query_instruction"] == DEFAULT_QUERY_INSTRUCTION == task_instructions("NFCorpus")[0]
    assert result["doc_instruction"] == DEFAULT_DOC_INSTRUCTION == "<|embed|>\n"
    ranking = json.loads(run_out.read_text())
    qrels = {}
    for line in (root / "beir" / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        q, d, s = line.split("\t")
        qrels.setdefault(q, {})[d] = int(s)
    assert set(ranking) == set(qrels) and all(len(r) == 100 for r in ranking.values())
    want = pytrec_scores(qrels, ranking)
    for metric, value in want.items():
        assert result[metric] == pytest.approx(value, abs=1e-9), metric
    assert 0 < result["recall@100"] < 1  # a random model: neither nothing nor everything
    # The run is the dot product of GritLM.encode's embeddings with the reference's instructions.
    model = GritLM.from_pretrained(path, mode="embedding")
    d = model.encode([f"{x['title']} {x['text']}" if x["title"] else x["text"] for x in docs], "<|embed|>\n")
    q = model.encode([queries[0]["text"]], DEFAULT_QUERY_INSTRUCTION)[0]
    best = [f"doc{i}" for i in np.argsort(-(d @ q))[:10]]
    assert ranked(ranking["q0"])[:10] == best


def test_ties_and_edge_cases_match_pytrec_eval():
    qrels = {"a": {"d1": 2, "d2": 1, "d9": 1}, "b": {"d3": 1}, "c": {"d4": 0, "d5": 1}}
    run = {
        "a": {"d0": 1.0, "d1": 0.5, "d2": 0.5, "d3": 0.5, "d4": 0.1},  # ties: higher id first
        "b": {f"d{i}": 1.0 - i / 100 for i in range(20) if i != 3} | {"d3": -1.0},  # rank 20
        "c": {"d4": 3.0, "d5": 3.0, "d6": 1.0},
    }
    got = score_run(run, qrels)
    want = pytrec_scores(qrels, run)
    for metric in want:
        assert got[metric] == pytest.approx(want[metric], abs=1e-12), metric
