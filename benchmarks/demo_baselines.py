"""What the quick start's held-out retrieval rewards: lexical baselines and untrained models on the same
queries and passages (configs/demo.py's held-out set, its token ids, instructions left out).

    python -m benchmarks.demo_baselines [--data_dir DIR] [--write]

BM25 (rank-bm25, as the quick start prints it), TF-IDF cosine, bags of random token vectors (plain and
IDF-weighted; what an embedding of mean-pooled token identities can reach), and the untrained demo model
with its token embeddings drawn at several standard deviations (`ModelConfig.embedding_init_std`).
A minute or two on 2 cores; --write puts the table first in benchmarks/RESULTS.md, "Demo and quick start".
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np

from benchmarks.common import add_entry, machine, today


def _bags(retrieval: dict, prefix: str, vocab: int) -> np.ndarray:
    """Token counts [N, vocab] of each text after its instruction."""
    tokens, mask, skip = (retrieval[f"{prefix}_{k}"] for k in ("tokens", "mask", "instruction_len"))
    counts = np.zeros((len(tokens), vocab))
    for i, (row, m, s) in enumerate(zip(tokens, mask, skip)):
        np.add.at(counts[i], row[s:][m[s:]], 1)
    return counts


def _mrr(q: np.ndarray, p: np.ndarray, relevant: np.ndarray) -> float:
    from grit_jax.retrieval.metrics import retrieval_metrics

    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    p = p / np.linalg.norm(p, axis=1, keepdims=True)
    return retrieval_metrics(q @ p.T, relevant)["eval_mrr@10"]


def lexical(retrieval: dict, vocab: int) -> list[tuple[str, float]]:
    from grit_jax.retrieval.demo_report import bm25_mrr

    q, p = _bags(retrieval, "query", vocab), _bags(retrieval, "passage", vocab)
    df = (q > 0).sum(0) + (p > 0).sum(0)
    idf = np.log((len(q) + len(p) + 1) / (df + 1))
    rows = [("BM25", bm25_mrr(retrieval)), ("TF-IDF cosine", _mrr(q * idf, p * idf, retrieval["relevant"]))]
    for dim in (128, 512):
        vectors = np.random.default_rng(0).normal(size=(vocab, dim))
        rows.append(
            (f"bag of random {dim}-d token vectors", _mrr(q @ vectors, p @ vectors, retrieval["relevant"]))
        )
        weighted = _mrr((q * idf) @ vectors, (p * idf) @ vectors, retrieval["relevant"])
        rows.append((f"bag of random {dim}-d token vectors, IDF-weighted", weighted))
    return rows


def _model_embeddings(model, retrieval: dict, prefix: str, objective_config) -> np.ndarray:
    import jax.numpy as jnp

    from grit_jax.model.batch import PaddedText
    from grit_jax.train import objective

    arrays = (jnp.asarray(retrieval[f"{prefix}_{k}"]) for k in ("tokens", "mask", "instruction_len"))
    return np.asarray(objective.encode(model, None, PaddedText(*arrays), objective_config))


def untrained(retrieval: dict, config, stds=(0.02, 0.25, 1.0)) -> list[tuple[str, float]]:
    from flax import nnx

    from grit_jax.model import ModelConfig, Transformer

    rows = []
    for std in stds:
        model = Transformer(ModelConfig.preset("demo", embedding_init_std=std), rngs=nnx.Rngs(config.seed))
        q, p = (
            _model_embeddings(model, retrieval, prefix, config.objective) for prefix in ("query", "passage")
        )
        rows.append(
            (f"untrained demo model, token embeddings drawn at std {std}", _mrr(q, p, retrieval["relevant"]))
        )
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--data_dir", default="", help="a prepared demo corpus (default: build one)")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    from configs.demo import get_config
    from grit_jax.data.demo import prepare_demo_data
    from grit_jax.data.heldout_sets import eval_retrieval_arrays

    config = get_config()
    config.data.data_dir = args.data_dir or os.path.join(tempfile.mkdtemp(), "data")
    prepare_demo_data(config.data.data_dir, vocab_size=config.data.demo_vocab_size)
    retrieval = eval_retrieval_arrays(config.data, config.log.eval_max_queries)
    rows = lexical(retrieval, config.data.demo_vocab_size) + untrained(retrieval, config)
    n_q, n_p = retrieval["relevant"].shape
    text = (
        f"### Held-out retrieval without training: {n_q} queries, {n_p} passages ({machine()}, {today()})\n\n"
        "`python -m benchmarks.demo_baselines --write`\n\n| ranker | MRR@10 |\n|---|---|\n"
        + "".join(f"| {name} | {value:.3f} |\n" for name, value in rows)
    )
    print(text)
    if args.write:
        add_entry("Demo and quick start", text)


if __name__ == "__main__":
    main()
