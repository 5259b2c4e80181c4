"""LoRA on one host (configs/gritlm.py *-lora): train-state bytes, compiled FLOPs of a LoRA step against
the full fine-tuning step, and grit-aot's fit on v4-8, v5e-8, v6e-8.

    python -m benchmarks.lora state                      # bytes of the train state (no compile; seconds)
    python -m benchmarks.lora flops [--preset mistral_1b]  # XLA's FLOPs of one step, LoRA vs full (CPU)
    python -m benchmarks.lora aot --variant 7b-lora --topology v5e-8   # one grit-aot row (minutes)

Each appends its rows to benchmarks/RESULTS.md, "LoRA on one host". Run under `nice`, one at a time.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform

import jax

from benchmarks.common import add_row
from configs.gritlm import get_config
from grit_jax import sharding
from grit_jax.train.state import TrainSetup
from grit_jax.train.step import abstract_batch, make_train_step

HEADING = "LoRA on one host"
PREAMBLE = (
    "`python -m benchmarks.lora state|flops|aot` (configs/gritlm.py *-lora: rank 16, alpha 32, all seven\n"
    "projections, base frozen in bfloat16, adapters and AdamW in float32, FSDP over 8 chips).\n\n"
    "| what | recipe | figure | machine, date |\n|---|---|---|---|\n"
)
GiB = 2**30


def _where() -> str:
    return f"{os.cpu_count()}-core CPU ({platform.machine()}), {datetime.date.today().isoformat()}"


def _bytes(tree) -> int:
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def full_config(config):
    """The same recipe, fully fine-tuned as configs/gritlm.py's full recipes are (float32 master weights)."""
    config = config.copy_and_resolve_references()
    config.model.lora.rank = 0
    config.model.param_dtype = "float32"
    return config


def state_bytes(variant: str) -> str:
    """Whole-slice bytes of the train state: LoRA (base + adapters + AdamW) against full fine-tuning."""
    mesh = sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1, "expert": 1})
    lora = TrainSetup(get_config(variant), mesh).abstract
    full = TrainSetup(full_config(get_config(variant)), mesh).abstract
    bf16 = full_config(get_config(variant))
    bf16.model.param_dtype = "bfloat16"
    bf16 = TrainSetup(bf16, mesh).abstract
    trainable = _bytes((lora.params, lora.projection))
    return (
        f"base (bf16) {_bytes(lora.frozen) / GiB:.2f} GiB + adapters {trainable / GiB:.3f} GiB + AdamW "
        f"{_bytes(lora.opt_state) / GiB:.3f} GiB = {_bytes(lora) / GiB:.2f} GiB; full fine-tuning "
        f"(fp32 weights + AdamW) {_bytes(full) / GiB:.1f} GiB, plus its fp32 gradients "
        f"{_bytes(full.params) / GiB:.1f} GiB during the step; with bf16 weights and AdamW moments "
        f"{_bytes(bf16) / GiB:.1f} GiB + {_bytes(bf16.params) / GiB:.1f} GiB of gradients"
    )


def step_flops(config) -> float:
    setup = TrainSetup(config, sharding.make_mesh(config.mesh))
    compiled = make_train_step(setup).lower(setup.abstract_state(), abstract_batch(setup)).compile()
    cost = compiled.cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def flops_ratio(preset: str) -> str:
    """XLA's FLOPs of one compiled step (8 CPU devices), LoRA vs full, same batch, remat and lengths."""
    config = get_config("7b-lora")
    config.model.update(preset=preset, scan_layers=False)  # XLA's cost analysis counts a loop body once
    config.data.update(
        embedding_batch_size=8, generative_batch_size=8, query_max_len=128, passage_max_len=256
    )
    config.data.generative_max_len = 256
    config.objective.update(embedding_chunk_size=8, generative_accumulation_steps=1)
    lora, full = step_flops(config), step_flops(full_config(config))
    return (
        f"{preset}, 8 queries x 2 passages (128/256 tokens) + 8 x 256 generative, full remat: LoRA "
        f"{lora:.3e} vs full {full:.3e} FLOPs per step = {lora / full:.3f}"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("state", "flops", "aot"))
    parser.add_argument("--variant", default="7b-lora")
    parser.add_argument("--topology", default="v5e-8")
    parser.add_argument("--preset", default="mistral_1b")
    args = parser.parse_args()
    if args.what == "state":
        for variant in ("7b-lora", "llama3.1-8b-lora", "qwen3-8b-lora"):
            row = f"| train state | {variant} | {state_bytes(variant)} | {_where()} |\n"
            print(row, end="")
            add_row(HEADING, PREAMBLE, row)
    elif args.what == "flops":
        row = f"| compiled FLOPs | {args.preset} | {flops_ratio(args.preset)} | {_where()} |\n"
        print(row, end="")
        add_row(HEADING, PREAMBLE, row)
    else:
        from grit_jax.hardware import parse_accelerator
        from grit_jax.programs.grit_aot import compile_report

        r = compile_report(get_config(args.variant), parse_accelerator(args.topology))
        state = (r.parameter_bytes + r.optimizer_bytes) / GiB
        figure = (
            f"{args.topology}: {'fits' if r.fits else 'does not fit'}, {r.total_bytes / GiB:.2f} of "
            f"{r.hbm_bytes / GiB:.0f} GiB per chip (state {state:.2f}, "
            f"temporaries {r.temp_bytes / GiB:.2f}); {r.hours:.1f} h for {r.num_steps} steps at 50% MFU of "
            f"full fine-tuning's FLOPs; compiled in {r.compile_seconds / 60:.0f} min"
        )
        row = f"| grit-aot | {args.variant} | {figure} | {_where()}, libtpu |\n"
        print(row, end="")
        add_row(HEADING, PREAMBLE, row)


if __name__ == "__main__":
    main()
