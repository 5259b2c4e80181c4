"""The README's AOT memory table: the paper's recipes compiled for TPU slices with ``grit-aot``.

    python -m benchmarks.aot_table [--out DIR] [--jobs 1] [--force] [--only SUBSTRING]

Each row is one ``python -m grit_jax.programs.grit_aot ... --json`` run (a fresh process: libtpu, compile
caches
and memory are not shared between rows); finished rows are kept in --out and reused unless --force.
Prints the markdown table; compiling the 7B and 8x7B steps takes minutes per row on a small CPU.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time

from benchmarks.common import ROOT

MFU = 0.5

# (model, config, accelerator, overrides): the paper's recipes as configured, and what makes 7B fit
# on 64 v5e chips when the configured recipe does not.
ROWS = [
    ("GritLM-7B", "configs/gritlm.py:7b", "v4-128", {}),
    ("GritLM-7B", "configs/gritlm.py:7b", "v5p-128", {}),
    ("GritLM-7B", "configs/gritlm.py:7b", "v5e-64", {}),
    ("GritLM-7B", "configs/gritlm.py:7b", "v6e-64", {}),
    # Issue 13: the 7B rows above run splash attention (model.attention_impl=auto on TPU); the same
    # recipe with the dense attention it replaced, and what splash's smaller temporaries allow.
    ("GritLM-7B", "configs/gritlm.py:7b", "v5e-64", {"model.attention_impl": "dense"}),
    ("GritLM-7B", "configs/gritlm.py:7b", "v5p-128", {"model.attention_impl": "dense"}),
    ("GritLM-7B", "configs/gritlm.py:7b", "v6e-64", {"model.attention_impl": "dense"}),
    ("GritLM-7B", "configs/gritlm.py:7b", "v5e-64", {"objective.embedding_chunk_size": 512}),
    # 256 queries over 128 / 256 batch shards: a chunk must be a multiple of the shards, and 256
    # generative sequences leave room for 2 / 1 accumulation steps
    (
        "GritLM-8x7B",
        "configs/gritlm.py:8x7b",
        "v5p-256",
        {"objective.embedding_chunk_size": 128, "objective.generative_accumulation_steps": 2},
    ),
    # the same recipe with each MoE implementation (issue 13): every expert on every token, or dropless
    (
        "GritLM-8x7B (moe_impl=dense)",
        "configs/gritlm.py:8x7b",
        "v5p-256",
        {
            "objective.embedding_chunk_size": 128,
            "objective.generative_accumulation_steps": 2,
            "model.moe_impl": "dense",
        },
    ),
    (
        "GritLM-8x7B (moe_impl=ragged)",
        "configs/gritlm.py:8x7b",
        "v5p-256",
        {
            "objective.embedding_chunk_size": 128,
            "objective.generative_accumulation_steps": 2,
            "model.moe_impl": "ragged",
        },
    ),
    (
        "GritLM-8x7B",
        "configs/gritlm.py:8x7b",
        "v5p-512",
        {"objective.embedding_chunk_size": 256, "objective.generative_accumulation_steps": 1},
    ),
    # Today's bases (issue 14): the 7B recipe on Llama-3.1-8B and Qwen3-8B, the small one on one v5e-8.
    ("GRIT Llama-3.1-8B", "configs/gritlm.py:llama3.1-8b", "v5p-128", {}),
    ("GRIT Qwen3-8B", "configs/gritlm.py:qwen3-8b", "v5p-128", {}),
    ("GRIT Qwen2.5-0.5B", "configs/gritlm.py:qwen2.5-0.5b", "v5e-8", {}),
]


def row_id(config, accelerator, overrides) -> str:
    name = os.path.basename(config).replace(".py", "").replace(":", "_")
    extra = "".join(f"_{k.split('.')[-1]}{v}" for k, v in sorted(overrides.items()))
    return f"{name}_{accelerator}{extra}"


def compile_row(config, accelerator, overrides, out_dir, force=False) -> dict:
    path = os.path.join(out_dir, row_id(config, accelerator, overrides) + ".json")
    if os.path.exists(path) and not force:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    args = [
        sys.executable,
        "-m",
        "grit_jax.programs.grit_aot",
        "--config",
        config,
        "--topology",
        accelerator,
        f"--mfu={MFU}",
        f"--json={path}",
        *(f"--config.{k}={v}" for k, v in overrides.items()),
    ]
    start = time.perf_counter()
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    if result.returncode not in (0, 1) or not os.path.exists(path):
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    print(
        f"{row_id(config, accelerator, overrides)}: {result.stdout.splitlines()[0]} "
        f"({time.perf_counter() - start:.0f} s)",
        file=sys.stderr,
        flush=True,
    )
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _estimate_cells(e: dict) -> str:
    """grit-aot's compiled-cost estimate (grit_jax/train/step_cost.py); "-" for a row compiled before it."""
    if not e:
        return "- | - | - |"
    return f"{e['step_seconds']:.3g} | {e['mfu']:.1%} | {e['flops_ratio']:.2f} |"


def table(rows) -> str:
    head = (
        "| model | slice | chips | HBM/chip | per chip: params + optimizer | temporaries | total | fits "
        "| attention | embedding chunk | remat | gen. accumulation | hours for 1253 steps at 50% MFU "
        "| est. s per step (roofline) | est. MFU | compiled / model FLOPs |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    gib = 2**30
    for model, r in rows:
        s = r["settings"]
        lines.append(
            f"| {model} | {r['accelerator']} | {r['chips']} | {r['hbm_bytes'] / gib:.0f} GiB "
            f"| {(r['parameter_bytes'] + r['optimizer_bytes']) / gib:.2f} GiB "
            f"| {r['temp_bytes'] / gib:.2f} GiB "
            f"| {r['total_bytes'] / gib:.2f} GiB | {'yes' if r['fits'] else '**no**'} "
            f"| {s.get('attention_impl', 'dense')} | {s['embedding_chunk_size']} | {s['remat_policy']} "
            f"| {s['generative_accumulation_steps']} "
            f"| {r['hours']:.1f} | " + _estimate_cells(r.get("estimate") or {})
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", default=os.path.join(tempfile.gettempdir(), "grit_aot_table"), help="row JSON files"
    )
    parser.add_argument("--jobs", type=int, default=1, help="rows compiled at once")
    parser.add_argument("--force", action="store_true", help="recompile rows already in --out")
    parser.add_argument("--only", default="", help="only rows whose id contains this")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rows = [r for r in ROWS if args.only in row_id(*r[1:])]
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda r: (r[0], compile_row(*r[1:], args.out, args.force)), rows))
    print(table(results))


if __name__ == "__main__":
    main()
