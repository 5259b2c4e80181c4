"""What the quick start prints at its end: held-out MRR@10 of the trained model next to BM25's and the
untrained model's on the same queries, one held-out query with its top 3 passages, one generated answer.

The trained and untrained figures are the run's own held-out evaluations (metrics.jsonl: the first and the
last); BM25 (the `rank-bm25` package, in the `eval` extra) ranks the same passages for the same queries,
with the tokenizer's pieces as terms and each text's instruction left out. The example loads the final
checkpoint as a GritLM, or takes the trained model from the run (a LoRA run: its checkpoints hold the
adapters only, so its work dir is not a model to load). On several hosts of a LoRA run it is left out. A
run that started from a pretrained model (configs/smollm2.py) says "before GRIT" for the untrained figure,
adds the held-out generative loss before and after, and answers three held-out questions with the
pretrained model and with the trained one instead of ranking passages.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from rank_bm25 import BM25Okapi

from grit_jax import storage
from grit_jax.retrieval.instructions import gritlm_format
from grit_jax.retrieval.metrics import retrieval_metrics

EXAMPLE_FILE = os.path.join("jsonl", "eval_stdlib_functions.jsonl")


def _terms(tokens, mask, skip) -> list[list[str]]:
    return [[str(t) for t in row[s:][m[s:]]] for row, m, s in zip(tokens, mask, skip)]


def bm25_mrr(retrieval: dict) -> float:
    """MRR@10 of BM25 over the held-out arrays (data/heldout_sets.py), on the same token ids."""
    passages = _terms(
        retrieval["passage_tokens"], retrieval["passage_mask"], retrieval["passage_instruction_len"]
    )
    queries = _terms(retrieval["query_tokens"], retrieval["query_mask"], retrieval["query_instruction_len"])
    index = BM25Okapi(passages)
    scores = np.stack([index.get_scores(q) for q in queries])
    return retrieval_metrics(scores, retrieval["relevant"])["eval_mrr@10"]


def _first_and_last_eval(workdir: str, key="eval_mrr@10") -> tuple[float | None, float | None]:
    lines = storage.read_text(storage.join(workdir, "metrics.jsonl")).splitlines()
    evals = [r[key] for r in map(json.loads, lines) if key in r]
    return (evals[0], evals[-1]) if evals else (None, None)


def example(workdir: str, data_dir: str, max_new_tokens: int = 48, model=None) -> list[str]:
    """One held-out query, its top 3 of the held-out passages by the trained model (`model`, a GritLM,
    else the work dir's final checkpoint), and an answer."""
    from grit_jax.inference.gritlm import GritLM

    with open(os.path.join(data_dir, EXAMPLE_FILE), encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    passages = [p for r in records for p in r["pos"] + r["neg"]]
    passages = list(dict.fromkeys(passages))  # hard negatives repeat other records' positives
    model = model or GritLM.from_pretrained(workdir)
    instruction, query = records[0]["query"]
    q = model.encode(query, instruction=gritlm_format(instruction), max_length=128)
    d = model.encode(passages, instruction=gritlm_format(""), max_length=128, batch_size=64)
    top = np.argsort(-(d @ q))[:3]
    lines = [f"example query: {query!r}"]
    for rank, i in enumerate(top, 1):
        mark = " (the answer)" if passages[i] in records[0]["pos"] else ""
        lines.append(f"  {rank}. {' '.join(passages[i].split())[:100]!r}{mark}")
    name = query.split("(")[0]
    question = [{"role": "user", "content": f"What does `{name}` do?"}]
    ids = model.generate(question, max_new_tokens=max_new_tokens)
    answer = " ".join(model.tokenizer.decode(ids).split())[:200]
    shown = repr(answer) if answer else f"(nothing but {len(ids)} token(s) that decode to no text)"
    lines.append(f"generated: What does `{name}` do? -> {shown}")
    return lines


def answers_before_and_after(workdir: str, data_dir: str, base_dir: str, *, model=None, questions=3):
    """`questions` held-out functions asked about, answered by the base model and by the trained one
    (`model`, or the work dir's)."""
    from grit_jax.inference.gritlm import GritLM

    with open(os.path.join(data_dir, EXAMPLE_FILE), encoding="utf-8") as f:
        records = f.readlines()
    spread = [records[i * len(records) // questions] for i in range(questions)]  # not all from one module
    names = [json.loads(line)["query"][1].split("(")[0] for line in spread]
    lines = []
    for label, path in (("before", base_dir), ("after", workdir)):
        answering = model if label == "after" and model is not None else GritLM.from_pretrained(path)
        questions = [[{"role": "user", "content": f"What does `{name}` do?"}] for name in names]
        for name, ids in zip(names, answering.generate(questions, 48)):  # one batch: one decode loop
            answer = " ".join(answering.tokenizer.decode(ids).split())[:200]
            lines.append(f"{label:>6}: What does `{name}` do? -> {answer!r}")
    return sorted(lines, key=lambda line: names.index(line.split("`")[1]))  # each question's pair together


def trained_model(graphdef, params, tokenizer, objective):
    """A GritLM of a run's model in memory (base and adapters), embedding as the run's objective says;
    None on several hosts (its arrays span them all)."""
    import jax
    from flax import nnx

    from grit_jax.inference.gritlm import GritLM

    if jax.process_count() > 1:
        return None
    model = nnx.merge(graphdef, params)
    return GritLM(model, tokenizer, "unified", objective.pooling, objective.attn, objective.normalize)


def _show(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def demo_report(
    workdir: str, data_dir: str, retrieval: dict | None, *, model=None, lora=False, base_dir=""
) -> str:
    """The report's lines; `model`: the trained GritLM when the work dir holds no whole model (LoRA);
    base_dir: the pretrained model the run started from ("" for a run from random weights)."""
    untrained, trained = _first_and_last_eval(workdir)
    bm25 = bm25_mrr(retrieval) if retrieval is not None else None
    n = 0 if retrieval is None else len(retrieval["query_tokens"])
    python = ".".join(map(str, sys.version_info[:3]))  # the corpus is this Python's standard library
    start = "before GRIT" if base_dir else "untrained"
    lines = [
        f"held-out MRR@10 on {n} queries (Python {python}'s docstrings): trained {_show(trained)}, "
        f"{start} {_show(untrained)}, BM25 {_show(bm25)}"
    ]
    if lora and model is None:  # several hosts: the model in memory is spread over them
        return "\n".join(lines + ["example: not shown for a LoRA run on several hosts"])
    if not base_dir:
        return "\n".join(lines + example(workdir, data_dir, model=model))
    before, after = _first_and_last_eval(workdir, "eval_loss_gen")
    lines.append(
        f"held-out generative loss (nats per token): before GRIT {_show(before)}, trained {_show(after)}"
    )
    return "\n".join(lines + answers_before_and_after(workdir, data_dir, base_dir, model=model))
