"""grit-train with length buckets logs the losses of a run without them (subprocesses, two hosts)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.bucket_data import BUCKETS, LIMITS, data_config, prepare_mixed, take_steps
from tests.grit_fixtures import ROOT, xla_flags


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return prepare_mixed(tmp_path_factory.mktemp("mixed"))


@pytest.mark.slow  # grit-train in subprocesses
def test_grit_train_with_buckets_logs_the_losses_of_a_run_without(tmp_path, data_dir):
    """A bucketed and an unbucketed run, through the command line: the same 4 steps (held-out evaluation
    before and after, a checkpoint) with and without --config.data.length_buckets.* log the same losses,
    token counts and held-out metrics."""
    shapes = [
        tuple(b[k].shape[1] for k in ("query_tokens", "gen_tokens"))
        for b in take_steps(data_config(data_dir, BUCKETS), 4)
    ]
    assert shapes == [(32, 64), (16, 64), (16, 32), (32, 64)], "not the short batches this test is about"
    root = ROOT
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(2))
    logged = []
    for name, buckets in (("plain", {}), ("buckets", BUCKETS)):
        workdir = tmp_path / name
        flags = [f"--config.data.length_buckets.{f}={','.join(map(str, b))}," for f, b in buckets.items()]
        command = [
            *(
                sys.executable,
                "-m",
                "grit_jax.programs.grit_train",
                "--config=configs/tiny.py",
                f"--workdir={workdir}",
            ),
            f"--config.data.data_dir={data_dir}",
            *(f"--config.data.{k}={v}" for k, v in LIMITS.items()),
            *("--config.num_steps=4", "--config.checkpoint.every_steps=4", "--config.log.eval_every_steps=4"),
            *flags,
        ]
        result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
        assert ("data.length_buckets: up to 8 batch shapes" in result.stdout) == bool(buckets)
        with open(workdir / "metrics.jsonl") as f:
            logged.append([json.loads(line) for line in f])
    plain, bucketed = logged
    assert [r["step"] for r in plain] == [r["step"] for r in bucketed] == [0, 1, 2, 3, 4]
    for a, b in zip(plain, bucketed):
        for name in ("loss", "loss_emb", "loss_gen", "tokens", "eval_mrr@10", "eval_loss_gen"):
            if name in a:
                np.testing.assert_allclose(b[name], a[name], rtol=1e-4, err_msg=f"step {a['step']} {name}")
