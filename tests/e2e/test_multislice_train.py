"""Multislice training simulated on this machine: launch/local.sh runs 4 processes as 2 slices of 2 hosts
(`mesh.slices=2`: a CPU device's slice is its process's, processes 0-1 and 2-3) with 2 CPU devices each (4,
local.sh's default, doubles the test's time for nothing more), the data axis across the slices and fsdp over
the 2 hosts of each; the run logs the losses of one host with the same mesh. The contrastive loss's
negatives span every slice: were they per slice, loss_emb would differ."""

import subprocess
import sys

import pytest

from tests.grit_fixtures import ROOT
from tests.train_runs import assert_close_runs, ok, read_metrics, run_train, train_command, train_env

pytestmark = pytest.mark.slow

STEPS = 3
ARGS = (
    f"--config.num_steps={STEPS}",
    f"--config.checkpoint.every_steps={STEPS}",
    "--config.mesh.data=2",  # 1 per slice
    "--config.mesh.fsdp=4",  # over the 2 hosts of a slice
)


def test_two_slices_of_two_hosts_log_the_losses_of_one_host(tmp_path, data_dir, compile_cache):
    one_host = str(tmp_path / "one_host")
    ok(run_train(one_host, data_dir, compile_cache, *ARGS, devices=8, timeout=600))
    workdir = str(tmp_path / "two_slices")
    env = dict(train_env(2, compile_cache), PYTHON=sys.executable, DEVICES_PER_HOST="2", KILL_AFTER="5")
    env.pop("LOG_DIR", None)
    command = train_command(workdir, data_dir, *ARGS, "--config.mesh.slices=2")[3:]
    result = subprocess.run(
        ["bash", "launch/local.sh", "4", *command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "8 cpu device(s), 4 host(s) in 2 slices (only data spans them)" in result.stdout
    two_slices, single = read_metrics(workdir), read_metrics(one_host)
    assert sorted(two_slices) == sorted(single) == list(range(1, STEPS + 1))
    assert_close_runs(two_slices, single, range(1, STEPS + 1), rtol=1e-5)
