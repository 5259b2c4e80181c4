"""The paper's claims at small scale: a recipe (configs/demo.py from random weights, or configs/smollm2.py
from the pretrained SmolLM2-135M-Instruct) trained in unified, embedding-only and generative-only mode, and
the embedding ablations the paper reports that fit here; held-out MRR@10 and generative loss per run, and
each run's difference from the unified one with a paired bootstrap interval over the held-out queries and
chats (of the last seed).

    python -m benchmarks.paper_claims [--recipe demo|smollm2] [--seeds 3] [--steps 200] [--runs unified,...]
                                      [--write]

Every run is `grit-train --config configs/RECIPE.py` in its own work dir, on one prepared copy of the
recipe's data (the no-instruction ablation prepares its own, the same texts with empty instructions) and,
for smollm2, one converted copy of the base model. A seed changes the data order (and, from scratch, the
initial weights). --write puts the table first in benchmarks/RESULTS.md, "Paper claims at small scale" or
"Paper claims from a pretrained start". Runs one at a time (2 cores: the demo's 6 runs x 3 seeds at 200
steps take 42 min).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks.common import ROOT, add_entry, machine, module_command, today

# run name -> (what it is, config overrides); "no_instructions" also swaps the data (prepare_data below).
RUNS = {
    "unified": ("GRIT: both objectives (the recipe)", []),
    "embedding": ("embedding-only", ["--config.objective.mode=embedding"]),
    "generative": ("generative-only", ["--config.objective.mode=generative"]),
    "causal": ("unified, causal attention for embeddings", ["--config.objective.attn=cccc"]),
    "lasttoken": ("unified, last-token pooling", ["--config.objective.pooling=lasttoken"]),
    "no_instructions": ("unified, no instructions", []),
    # GritLM-7B trained on 8 GPUs whose all-gather carried no gradient: its embedding gradient was 1/8 of
    # the global loss's (../shared/REFERENCE.md), which weights generation 8x more than the exact gradient.
    "balance8": (
        "unified, GritLM-7B's balance (embedding gradient / 8)",
        ["--config.objective.reference_world_size=8"],
    ),
}
# What the paper reports for the same comparisons (GritLM 7B; Muennighoff et al. 2024): the unified
# model's figures against the single-objective models, and the direction of its embedding ablations.
PAPER = {
    "unified": "MTEB 66.8, generative 55.5",
    "embedding": "MTEB 66.8 (embedding-only)",
    "generative": "generative 55.2 (generative-only)",
    "causal": "bidirectional attention chosen over causal for embeddings",
    "lasttoken": "mean pooling chosen over last-token",
    "no_instructions": "instructions on queries are part of the recipe",
    "balance8": "GritLM-7B: 8 GPUs, loss_gen + loss_emb / 8 in effect",
}


RECIPES = {"demo": "configs/demo.py", "smollm2": "configs/smollm2.py"}
TOPICS = {"demo": "Paper claims at small scale", "smollm2": "Paper claims from a pretrained start"}
BOOTSTRAP_SAMPLES = 2000


def recipe_config(recipe: str):
    return importlib.import_module(f"configs.{recipe}").get_config()


def prepare_base(root: str, recipe: str) -> list[str]:
    """Overrides that start every run from the same converted base model (none for a random start)."""
    config = recipe_config(recipe)
    if not config.model.gguf:
        return []
    from grit_jax.weights.gguf_base import converted_base

    return [f"--config.model.hf_dir={converted_base(config.model.gguf, os.path.join(root, 'base_model'))}"]


def prepare_data(root: str, recipe: str, instructions: bool, base: list[str]) -> str:
    """The recipe's data prepared once into root (its tokenizer and lengths); without instructions every
    query and passage instruction is empty: the same texts, formatted without one."""
    from grit_jax.data import demo, sources
    from grit_jax.data.tokenizer import Tokenizer

    config = recipe_config(recipe)
    model_tokenizer = base[0].split("=", 1)[1] if config.data.demo_tokenizer == "model" else None
    out = os.path.join(root, "data" if instructions else "data_no_instructions")
    with_instructions = os.path.join(root, "data")
    demo.prepare_demo_data(
        with_instructions, vocab_size=config.data.demo_vocab_size, tokenizer=model_tokenizer
    )
    if instructions:
        return out
    files = demo.build_jsonl(os.path.join(out, "jsonl"))
    for path in files["embedding"] + files["eval_embedding"]:
        rows = [json.loads(line) for line in open(path, encoding="utf-8")]
        with open(path, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(dict(row, query=["", row["query"][1]]), ensure_ascii=False) + "\n")
    query_max_len, passage_max_len, generative_max_len = demo.PREPARE_LIMITS
    sources.prepare(
        out,
        Tokenizer(with_instructions),
        files["embedding"],
        files["generative"],
        eval_embedding=files["eval_embedding"],
        eval_generative=files["eval_generative"],
        query_max_len=query_max_len,
        passage_max_len=passage_max_len,
        generative_max_len=generative_max_len,
        plain_strings="formatted",
    )
    return out


def train(run: str, recipe: str, seed: int, steps: int, data_dir: str, workdir: str, base: list[str]) -> dict:
    """One grit-train run: its last held-out evaluation (eval_mrr@10 and/or eval_loss_gen) and, under
    "items", that evaluation's per-query reciprocal ranks and per-chat losses (eval_items.jsonl). A run
    already finished in `workdir` (the same command, interrupted later) is read, not run again."""
    if not os.path.isfile(workdir + ".seconds"):
        _run(run, recipe, seed, steps, data_dir, workdir, base)
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    last = [r for r in rows if "eval_mrr@10" in r or "eval_loss_gen" in r][-1]
    items = [json.loads(line) for line in open(os.path.join(workdir, "eval_items.jsonl"))][-1]
    assert last["step"] == items["step"] == steps, f"{workdir} holds another run; remove it"
    result = {k: last[k] for k in ("eval_mrr@10", "eval_loss_gen") if k in last}
    with open(workdir + ".seconds") as f:
        return {**result, "items": items, "seconds": float(f.read())}


def _run(run: str, recipe: str, seed: int, steps: int, data_dir: str, workdir: str, base: list[str]):
    args = [
        "--config",
        RECIPES[recipe],
        "--workdir",
        workdir,
        f"--config.data.data_dir={data_dir}",
        f"--config.seed={seed}",
        f"--config.num_steps={steps}",
        f"--config.log.eval_every_steps={steps}",
        f"--config.checkpoint.every_steps={steps}",
        f"--config.compile_cache_dir={os.path.join(os.path.dirname(workdir), 'compile_cache')}",  # shared
        *base,
        *RUNS[run][1],
    ]
    log, started = workdir + ".log", time.monotonic()
    with open(log, "w") as out:
        done = subprocess.run(
            module_command("grit_jax.programs.grit_train", *args), cwd=ROOT, stdout=out, stderr=out
        )
    if done.returncode:
        sys.exit(f"{run} seed {seed} failed; its log: {log}")
    with open(workdir + ".seconds", "w") as f:  # the run's wall time; also: this run is finished
        f.write(str(time.monotonic() - started))


def paired_interval(a: dict, b: dict, key: str, seed: int = 0) -> tuple[float, float, float] | None:
    """(difference, low, high): a's metric minus b's with a 95% paired bootstrap interval, resampling the
    held-out queries (key "reciprocal_rank": MRR@10) or chats (key "chat_loss": [loss sum, targets] each,
    the loss per target of the resampled chats)."""
    if key not in a["items"] or key not in b["items"]:
        return None
    x, y = np.asarray(a["items"][key], float), np.asarray(b["items"][key], float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(x), size=(BOOTSTRAP_SAMPLES, len(x)))

    def metric(v, idx):
        if v.ndim == 1:
            return v[idx].mean(-1)
        return v[idx, 0].sum(-1) / v[idx, 1].sum(-1)

    diffs = metric(x, picks) - metric(y, picks)
    full = np.arange(len(x))
    low, high = np.percentile(diffs, [2.5, 97.5])
    return float(metric(x, full) - metric(y, full)), float(low), float(high)


def _cell(values: list[float], digits: int) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def _difference(run: str, results: dict, key: str, digits: int, against: str = "unified") -> str:
    if run == against or against not in results:
        return "(reference)" if run == against else "n/a"
    found = paired_interval(results[run][-1], results[against][-1], key)
    if found is None:
        return "n/a"
    d, low, high = found
    return f"{d:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def table(results: dict, recipe: str, seeds: int, steps: int) -> str:
    lines = [
        "| run | held-out MRR@10 | vs unified (95% paired bootstrap) | held-out generative loss (nats/token) "
        "| vs unified | wall time | the paper (7B) |",
        "|---|---|---|---|---|---|---|",
    ]
    for run, per_seed in results.items():
        mrr = [r["eval_mrr@10"] for r in per_seed if "eval_mrr@10" in r]
        gen = [r["eval_loss_gen"] for r in per_seed if "eval_loss_gen" in r]
        minutes = np.mean([r["seconds"] for r in per_seed]) / 60
        lines.append(
            f"| {RUNS[run][0]} | {_cell(mrr, 3)} | {_difference(run, results, 'reciprocal_rank', 3)} "
            f"| {_cell(gen, 3)} | {_difference(run, results, 'chat_loss', 3)} | {minutes:.1f} min "
            f"| {PAPER[run]} |"
        )
    # The paper's claim is about each two-objective run against the single-objective runs from the same
    # start: the same embedding as embedding-only, the same generation as generative-only.
    both = [run for run, runs in results.items() if {"eval_mrr@10", "eval_loss_gen"} <= runs[-1].keys()]
    if both and {"embedding", "generative"} <= results.keys():
        lines += [
            "",
            "| two-objective run | MRR@10 minus embedding-only's | generative loss minus generative-only's |",
            "|---|---|---|",
        ]
        for run in both:
            lines.append(
                f"| {RUNS[run][0]} | {_difference(run, results, 'reciprocal_rank', 3, 'embedding')} "
                f"| {_difference(run, results, 'chat_loss', 3, 'generative')} |"
            )
    spread = "mean ± standard deviation" if seeds > 1 else "one seed"
    head = (
        f"### {RECIPES[recipe]}, {steps} steps, seeds 0-{seeds - 1}: {spread} ({machine()}, {today()})\n\n"
        f"`python -m benchmarks.paper_claims --recipe {recipe} --seeds {seeds} --steps {steps} --write`; "
        "intervals: the last seed's runs, paired over the same held-out queries or chats.\n\n"
    )
    return head + "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--recipe", default="demo", choices=list(RECIPES))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--runs", default=",".join(RUNS), help="comma-separated, of: " + ", ".join(RUNS))
    parser.add_argument("--workdir", default="", help="keep the runs here (default: a temporary dir)")
    parser.add_argument("--write", action="store_true", help="put the table first in RESULTS.md")
    args = parser.parse_args()
    runs = args.runs.split(",")
    unknown = sorted(set(runs) - set(RUNS))
    if unknown:
        parser.error(f"--runs: unknown {unknown}; choose from {list(RUNS)}")
    root = args.workdir or tempfile.mkdtemp(prefix="paper_claims_")
    base = prepare_base(root, args.recipe)
    results = {}
    for run in runs:
        data_dir = prepare_data(root, args.recipe, instructions=run != "no_instructions", base=base)
        results[run] = []
        for seed in range(args.seeds):
            workdir = os.path.join(root, f"{run}-{seed}")
            results[run].append(train(run, args.recipe, seed, args.steps, data_dir, workdir, base))
            shown = {k: v for k, v in results[run][-1].items() if k != "items"}
            print(run, seed, shown, flush=True)
    text = table({run: results[run] for run in RUNS if run in results}, args.recipe, args.seeds, args.steps)
    print(text)
    if args.write:
        add_entry(TOPICS[args.recipe], text)


if __name__ == "__main__":
    main()
