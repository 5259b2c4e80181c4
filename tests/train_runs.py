"""grit-train in subprocesses, as the end-to-end tests run it: commands, environment, metrics."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.grit_fixtures import ROOT, xla_flags

TIMING = {"step_time", "tokens_per_second", "mfu"}  # wall-clock fields: differ run to run


STEPS, EVERY = 30, 4  # the reference run: 30 steps, a checkpoint every 4 (tiny keeps the last 3)


def train_env(devices, cache, fast_compile=True):
    """fast_compile=False for runs long enough that LLVM's optimisations pay for themselves."""
    return dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=xla_flags(devices) if fast_compile else f"--xla_force_host_platform_device_count={devices}",
        JAX_COMPILATION_CACHE_DIR=cache,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )


def train_command(workdir, data_dir, *overrides, config="configs/tiny.py"):
    return [
        sys.executable,
        "-m",
        "grit_jax.programs.grit_train",
        f"--config={config}",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        f"--config.num_steps={STEPS}",
        f"--config.checkpoint.every_steps={EVERY}",
        *overrides,
    ]


def run_train(
    workdir, data_dir, cache, *overrides, devices=8, config="configs/tiny.py", timeout=240, fast_compile=True
):
    return subprocess.run(
        train_command(workdir, data_dir, *overrides, config=config),
        cwd=ROOT,
        env=train_env(devices, cache, fast_compile),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_train(workdir, data_dir, cache, *overrides, devices=8):
    return subprocess.Popen(
        train_command(workdir, data_dir, *overrides),
        cwd=ROOT,
        env=train_env(devices, cache),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def ok(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def read_metrics(workdir):
    """{step: record} from metrics.jsonl, asserting every step appears once and in order."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    steps = [r["step"] for r in records]
    assert steps == sorted(set(steps)), f"steps repeated or out of order: {steps}"
    return {r["step"]: {k: v for k, v in r.items() if k not in TIMING} for r in records}


def wait_for(predicate, process, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if process.poll() is not None:
            pytest.fail(f"the run ended before it could be interrupted:\n{process.stderr.read()[-3000:]}")
        time.sleep(0.02)
    process.kill()
    pytest.fail("timed out waiting for the run")


def assert_close_runs(got, want, steps, rtol):
    for step in steps:
        for key in ("loss", "loss_emb", "loss_gen", "grad_norm", "param_norm"):
            np.testing.assert_allclose(
                got[step][key], want[step][key], rtol=rtol, atol=1e-6, err_msg=f"step {step} {key}"
            )
        assert got[step]["tokens"] == want[step]["tokens"]


def tree_leaves(tree, prefix=""):
    """(dotted key, leaf) of a nested metadata tree of dicts, lists and tuples."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list | tuple):
        items = enumerate(tree)
    else:
        return [(prefix, tree)]
    return [pair for k, v in items for pair in tree_leaves(v, f"{prefix}{'.' if prefix else ''}{k}")]
