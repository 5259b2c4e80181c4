"""Train-step throughput of a config on whatever backend JAX has: tokens/s and MFU.

    python -m benchmarks.train_step --config configs/demo.py [--config.a.b=value ...] [--steps 10] [--write]

MFU = the analytic model FLOPs of a step (grit_jax/train/flops.py) / step time / peak, where the peak is
measured here: the best FLOP/s of a large square jnp.matmul in the model's compute dtype on one device,
times the number of devices (a vendor figure would flatter or shame a CPU). Batches are synthetic (random
tokens of the configured shapes), so no data directory is needed. --write puts a row first in the table
of benchmarks/RESULTS.md under "Train step throughput".
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from benchmarks.common import ROOT, add_row, best_of, today
from grit_jax import sharding
from grit_jax.train import flops, step
from grit_jax.train.state import TrainSetup
from grit_jax.train.synthetic import synthetic_batch

_CONFIG = config_flags.DEFINE_config_file("config", None, "a configs/*.py file", lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 10, "timed steps (after 2 warm-up steps)")
_WRITE = flags.DEFINE_bool("write", False, "put the result first in its table in benchmarks/RESULTS.md")
_MACHINE = flags.DEFINE_string("machine", "", "machine description for RESULTS.md (default: the device kind)")
TOPIC = "Train step throughput"


def matmul_peak(dtype: str, size: int, repeats: int = 5) -> float:
    """Best measured FLOP/s of one [size, size] @ [size, size] matmul on the default device."""
    a = jnp.ones((size, size), dtype)
    f = jax.jit(lambda x: x @ x)
    return 2 * size**3 / best_of(lambda: f(a).block_until_ready(), repeats)


def measure(config, num_steps: int) -> dict:
    setup = TrainSetup(config, sharding.make_mesh(config.mesh))
    state = setup.create_state()
    train_step = step.make_train_step(setup)
    batches = [
        step.global_batch(setup, synthetic_batch(config, seed=i, num_hosts=jax.process_count()))
        for i in range(2)
    ]
    for i in range(2):  # compile and warm up
        state, metrics = train_step(state, batches[i % 2])
    jax.block_until_ready(state)
    tokens, start = 0.0, time.perf_counter()
    for i in range(num_steps):
        state, metrics = train_step(state, batches[i % 2])
        tokens += float(metrics["tokens"])
    jax.block_until_ready(state)
    seconds = (time.perf_counter() - start) / num_steps
    cfg = setup.model_config
    positions = sum(int(np.prod(f.largest_shape())) for f in setup.layout.values())
    size = 2048 if jax.default_backend() == "cpu" else 8192
    peak = matmul_peak(cfg.dtype, size) * jax.device_count()
    step_flops = flops.train_step_flops(config, cfg)
    return {
        "device": f"{jax.device_count()} x {jax.devices()[0].device_kind} ({jax.default_backend()})",
        "step_s": seconds,
        "tokens_per_s": tokens / num_steps / seconds,
        "positions_per_s": positions / seconds,
        "model_tflops": step_flops / seconds / 1e12,
        "peak_tflops": peak / 1e12,
        "mfu": step_flops / seconds / peak,
        "params": cfg.num_params(),
        "dtype": cfg.dtype,
    }


def write(config_name: str, result: dict, machine: str):
    row = (
        f"| {config_name} | {machine} | {result['device']} | {result['params'] / 1e6:.2f} M "
        f"| {result['dtype']} | "
        f"{result['step_s'] * 1e3:.1f} | {result['tokens_per_s']:,.0f} | {result['positions_per_s']:,.0f} | "
        f"{result['model_tflops'] * 1e3:.1f} | {result['peak_tflops'] * 1e3:.1f} "
        f"| {result['mfu'] * 100:.1f}% | "
        f"{today()} |\n"
    )
    add_row(
        TOPIC,
        "### Rows of `python -m benchmarks.train_step --write`\n\n"
        "`python -m benchmarks.train_step --config CONFIG --write`: "
        "synthetic batches of the config's shapes, mean of the timed steps after 2 warm-up steps. MFU is "
        "against the measured peak (best FLOP/s of a large matmul in the compute dtype, "
        "per device x devices).\n\n"
        "| config | machine | devices | params | dtype | ms/step | real tokens/s | padded tokens/s | "
        "model GFLOP/s | peak GFLOP/s | MFU | date |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        row,
    )


def main(argv):
    del argv
    config = _CONFIG.value
    result = measure(config, _STEPS.value)
    for key, value in result.items():
        print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
    if _WRITE.value and jax.process_index() == 0:
        name = os.path.relpath(flags.FLAGS["config"].config_filename, ROOT)
        write(name, result, _MACHINE.value or result["device"])


if __name__ == "__main__":
    app.run(main)
