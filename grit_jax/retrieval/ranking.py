"""Retrieval evaluation on a BEIR directory: embed queries and corpus, rank by dot product (cosine for
normalised embeddings), and score them (retrieval/metrics.py).

Ranking ties break as trec_eval's: score descending, then document id descending. A query judged only
non-relevant scores 0 on every metric; queries absent from the qrels are not ranked.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from grit_jax.errors import DataError
from grit_jax.inference.output_checks import BadRow
from grit_jax.retrieval.corpus import read_qrels, read_records
from grit_jax.retrieval.embedding_store import embed_texts
from grit_jax.retrieval.instructions import GENERIC_RETRIEVAL, gritlm_format
from grit_jax.retrieval.metrics import score_run

DEFAULT_QUERY_INSTRUCTION = gritlm_format(GENERIC_RETRIEVAL)
DEFAULT_DOC_INSTRUCTION = gritlm_format("")


def search(queries: np.ndarray, docs: np.ndarray, doc_ids: list[str], k: int = 100, *, chunk: int = 1024):
    """The top k documents of each query by dot product: a list of {doc id: score}, one per query row."""
    out = []
    k = min(k, len(doc_ids))
    for start in range(0, len(queries), chunk):
        scores = queries[start : start + chunk].astype(np.float32) @ docs.astype(np.float32).T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < len(doc_ids) else None
        for i, row in enumerate(scores):
            picked = range(len(doc_ids)) if top is None else top[i]
            out.append({doc_ids[j]: float(row[j]) for j in picked})
    return out


def load_beir(data: str, split: str = "test", drop_missing: bool = False):
    """(corpus [(id, text)], queries [(id, text)] with qrels, qrels) of a BEIR directory; documents are
    title + " " + text, as the reference joins them. Judgements that name a document not in the corpus
    are an error (they would score as misses), or with drop_missing dropped and counted on stderr."""
    paths = {n: os.path.join(data, n) for n in ("corpus.jsonl", "queries.jsonl")}
    for path in paths.values():
        if not os.path.isfile(path):
            raise DataError(f"{path}: no such file (the BEIR layout: corpus.jsonl, queries.jsonl, qrels/)")
    qrels_path = os.path.join(data, "qrels", f"{split}.tsv")
    qrels = read_qrels(qrels_path)
    corpus = list(read_records([paths["corpus.jsonl"]], "title+text"))
    if not corpus:
        raise DataError(f"{paths['corpus.jsonl']}: no documents")
    doc_ids = {d for d, _ in corpus}
    missing = sorted({d for judged in qrels.values() for d in judged} - doc_ids)
    if missing and not drop_missing:
        raise DataError(
            f"{qrels_path}: judges {len(missing)} document(s) that {paths['corpus.jsonl']} lacks, e.g. "
            f"{missing[:3]}; fix the data or pass --drop_missing to drop those judgements"
        )
    if missing:
        judged = sum(len(j) for j in qrels.values())
        qrels = {q: kept for q, j in qrels.items() if (kept := {d: r for d, r in j.items() if d in doc_ids})}
        left = sum(len(j) for j in qrels.values())
        print(
            f"{qrels_path}: dropped {judged - left} judgement(s) of {len(missing)} document(s) not in "
            f"the corpus; {len(qrels)} queries left",
            file=sys.stderr,
        )
    queries = [(q, t) for q, t in read_records([paths["queries.jsonl"]], "text") if q in qrels]
    missing = sorted(set(qrels) - {q for q, _ in queries})
    if missing:
        raise DataError(f"{paths['queries.jsonl']}: qrels name queries it lacks: {missing[:5]}")
    if not queries:
        raise DataError(f"{qrels_path}: no query left to evaluate")
    return corpus, queries, qrels


def evaluate_retrieval(
    model,
    beir: tuple,
    query_instruction: str = DEFAULT_QUERY_INSTRUCTION,
    doc_instruction: str = DEFAULT_DOC_INSTRUCTION,
    *,
    batch_size: int = 64,
    max_length: int = 512,
):
    """({metric: value, counts}, run) of a GritLM on `load_beir`'s (corpus, queries, qrels)."""
    corpus, queries, qrels = beir
    docs = _embed(model, corpus, "document", doc_instruction, batch_size=batch_size, max_length=max_length)
    q = _embed(model, queries, "query", query_instruction, batch_size=batch_size, max_length=max_length)
    hits = search(q, docs, [d for d, _ in corpus], k=100)
    run = {qid: h for (qid, _), h in zip(queries, hits)}
    result = score_run(run, qrels)
    result.update(queries=len(queries), documents=len(corpus))
    return result, run


def _embed(
    model, items: list[tuple[str, str]], kind: str, instruction: str, *, batch_size: int, max_length: int
):
    """embed_texts of (id, text) items; a degenerate embedding is an error naming the item's id."""
    try:
        return embed_texts(model, [t for _, t in items], instruction, batch_size, max_length=max_length)
    except BadRow as e:
        raise e.named(f"{kind} {items[e.row][0]!r}") from None
