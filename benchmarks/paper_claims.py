"""The paper's claims at the quick start's scale: the demo recipe (configs/demo.py, its data, steps and
held-out sets) trained in unified, embedding-only and generative-only mode, and the embedding ablations
the paper reports that fit here, each with several seeds; held-out MRR@10 and generative loss per run.

    python -m benchmarks.paper_claims [--seeds 3] [--steps 200] [--runs unified,embedding,...] [--write]

Every run is `grit-train --config configs/demo.py` in its own work dir, on one prepared copy of the demo
data (the no-instruction ablation prepares its own, the same texts with empty instructions). A seed
changes the initial weights and the data order. --write puts the table first in benchmarks/RESULTS.md,
"Paper claims at small scale". Runs one at a time (2 cores: 42 min for 6 runs x 3 seeds at 200 steps).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

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
}


def prepare_data(root: str, instructions: bool) -> str:
    """The demo data prepared once into root (the recipe's tokenizer and lengths); without instructions
    every query and passage instruction is empty: the same texts, formatted without one."""
    from configs.demo import get_config
    from grit_jax.data import demo, sources
    from grit_jax.data.tokenizer import Tokenizer

    config = get_config()
    out = os.path.join(root, "data" if instructions else "data_no_instructions")
    with_instructions = os.path.join(root, "data")
    demo.prepare_demo_data(with_instructions, vocab_size=config.data.demo_vocab_size)
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
        Tokenizer(os.path.join(with_instructions, "tokenizer.model")),
        files["embedding"],
        files["generative"],
        files["eval_embedding"],
        files["eval_generative"],
        query_max_len=query_max_len,
        passage_max_len=passage_max_len,
        generative_max_len=generative_max_len,
        plain_strings="formatted",
    )
    return out


def train(run: str, seed: int, steps: int, data_dir: str, workdir: str) -> dict:
    """One grit-train run; its last held-out evaluation (eval_mrr@10 and/or eval_loss_gen)."""
    args = [
        "--config",
        "configs/demo.py",
        "--workdir",
        workdir,
        f"--config.data.data_dir={data_dir}",
        f"--config.seed={seed}",
        f"--config.num_steps={steps}",
        f"--config.log.eval_every_steps={steps}",
        f"--config.checkpoint.every_steps={steps}",
        f"--config.compile_cache_dir={os.path.join(os.path.dirname(workdir), 'compile_cache')}",  # shared
        *RUNS[run][1],
    ]
    log = workdir + ".log"
    with open(log, "w") as out:
        done = subprocess.run(
            module_command("grit_jax.programs.grit_train", *args), cwd=ROOT, stdout=out, stderr=out
        )
    if done.returncode:
        sys.exit(f"{run} seed {seed} failed; its log: {log}")
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    last = [r for r in rows if "eval_mrr@10" in r or "eval_loss_gen" in r][-1]
    return {k: last[k] for k in ("eval_mrr@10", "eval_loss_gen") if k in last}


def _cell(values: list[float], digits: int) -> str:
    if not values:
        return "n/a"
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def table(results: dict, seeds: int, steps: int) -> str:
    lines = [
        "| run | held-out MRR@10 | held-out generative loss (nats/token) | the paper (7B) |",
        "|---|---|---|---|",
    ]
    for run, per_seed in results.items():
        mrr = [r["eval_mrr@10"] for r in per_seed if "eval_mrr@10" in r]
        gen = [r["eval_loss_gen"] for r in per_seed if "eval_loss_gen" in r]
        lines.append(f"| {RUNS[run][0]} | {_cell(mrr, 3)} | {_cell(gen, 3)} | {PAPER[run]} |")
    head = (
        f"### {steps} steps, seeds 0-{seeds - 1}: mean ± standard deviation ({machine()}, {today()})\n\n"
        f"`python -m benchmarks.paper_claims --seeds {seeds} --steps {steps} --write`\n\n"
    )
    return head + "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
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
    results = {}
    for run in runs:
        data_dir = prepare_data(root, instructions=run != "no_instructions")
        results[run] = []
        for seed in range(args.seeds):
            results[run].append(train(run, seed, args.steps, data_dir, os.path.join(root, f"{run}-{seed}")))
            print(run, seed, results[run][-1], flush=True)
    text = table({run: results[run] for run in RUNS if run in results}, args.seeds, args.steps)
    print(text)
    if args.write:
        add_entry("Paper claims at small scale", text)


if __name__ == "__main__":
    main()
