"""Packed batches (data.packing) on two hosts through launch/local.sh log the losses of one host."""

import subprocess
import sys

import pytest

from tests.grit_fixtures import ROOT
from tests.train_runs import assert_close_runs, ok, read_metrics, run_train, train_command, train_env

PACKED = ("--config.data.packing=True", "--config.num_steps=4", "--config.checkpoint.every_steps=4")


@pytest.mark.slow  # grit-train in subprocesses
def test_two_hosts_pack_their_shares_and_log_the_losses_of_one(tmp_path, data_dir, compile_cache):
    """2 processes x 4 devices: each host reads and packs only its own rows' sequences into the row count
    all hosts agreed on; the run logs the losses of 1 process x 8 devices packing the whole batch.

    Tolerance 1e-5 relative: the same sequences and losses, but the rows hold them in another order when
    each host packs its half, and the cross-host sums run through gloo."""
    one_host = str(tmp_path / "one_host")
    ok(run_train(one_host, data_dir, compile_cache, *PACKED))
    two_hosts = str(tmp_path / "two_hosts")
    env = dict(train_env(4, compile_cache), PYTHON=sys.executable, DEVICES_PER_HOST="4")
    command = ["bash", "launch/local.sh", "2", *train_command(two_hosts, data_dir, *PACKED)[3:]]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    got, want = read_metrics(two_hosts), read_metrics(one_host)
    assert sorted(got) == sorted(want) == [1, 2, 3, 4]
    assert_close_runs(got, want, want, rtol=1e-5)  # the real tokens too
    assert all(0.5 < got[step]["real_share"] <= 1 for step in got)
