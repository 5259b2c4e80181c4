"""A work directory belongs to one run (grit_jax.train.workdir_lock): a second run is refused in one line
naming the holder, locally and on gs:// (the GCS emulator: an object created only if absent), and a
crashed holder does not block the next run."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from grit_jax.errors import UsageError
from grit_jax.train.workdir_lock import LOCK, WorkdirLock
from tests import gcs_emulator
from tests.gcs_emulator import BUCKET
from tests.grit_fixtures import ROOT


def test_a_second_run_on_a_local_work_dir_is_refused_naming_the_holder(tmp_path):
    first = WorkdirLock(str(tmp_path))
    first.acquire()
    with pytest.raises(UsageError) as raised:
        WorkdirLock(str(tmp_path)).acquire()
    message = str(raised.value)
    assert f"--workdir {tmp_path} is in use by another run: " in message
    assert f"pid {os.getpid()}" in message and "\n" not in message
    first.release()
    second = WorkdirLock(str(tmp_path))
    second.acquire()  # released: the next run takes it
    assert json.loads(open(tmp_path / LOCK).read())["pid"] == os.getpid()
    second.release()


@pytest.mark.slow  # a subprocess
def test_a_killed_holder_does_not_block_the_next_run(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from grit_jax.train.workdir_lock import WorkdirLock; "
            f"lock = WorkdirLock({str(tmp_path)!r}); lock.acquire(); "
            "print('held', flush=True); time.sleep(99)",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(UsageError, match=f"pid {holder.pid}"):
        WorkdirLock(str(tmp_path)).acquire()
    holder.kill()
    holder.wait()
    lock = WorkdirLock(str(tmp_path))
    lock.acquire()
    lock.release()


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    server, env = gcs_emulator.start(str(tmp_path_factory.mktemp("gcs")))
    yield f"gs://{BUCKET}"
    gcs_emulator.stop(server, env)


def test_a_second_run_on_a_gcs_work_dir_is_refused_then_a_stale_lock_taken_over(gcs):
    workdir = f"{gcs}/run"
    first = WorkdirLock(workdir)
    first.acquire()
    with pytest.raises(UsageError, match=r"is in use by another run: .* pid \d+ .*last seen \d+ s ago"):
        WorkdirLock(workdir).acquire()
    first.stop.set()  # the holder crashed: no more heartbeats
    time.sleep(1.5)
    taker = WorkdirLock(workdir, stale_seconds=1.0)
    taker.acquire()  # not rewritten for over a second: a crashed run's lock
    with pytest.raises(UsageError, match="is in use by another run"):
        WorkdirLock(workdir).acquire()
    taker.release()
    again = WorkdirLock(workdir)
    again.acquire()  # released: free
    again.release()


def test_a_gcs_lock_of_a_process_gone_from_this_host_is_taken_at_once(gcs):
    """A run killed and resumed on the same host (SIGKILL, then the same command) does not wait 10 minutes."""
    import fsspec

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    holder = {"host": socket.gethostname(), "pid": int(gone.stdout), "started": "earlier"}
    workdir = f"{gcs}/killed"
    fs, key = fsspec.core.url_to_fs(f"{workdir}/run.lock")
    fs.pipe_file(key, json.dumps(holder).encode(), mode="create")
    lock = WorkdirLock(workdir)
    lock.acquire()  # its holder's process is gone from this host: no need to wait for STALE_SECONDS
    with pytest.raises(UsageError, match="is in use by another run"):
        WorkdirLock(workdir).acquire()  # a live holder (this process) still refuses
    lock.release()


def test_a_resume_keeps_every_metrics_line_up_to_its_step_around_a_damaged_one(tmp_path, capsys):
    from grit_jax.train.metrics_log import MetricsLog

    lines = [json.dumps({"step": step, "loss": 1.0 / step}) + "\n" for step in range(1, 41)]
    lines[3] = '{"step": 4, "loss": 0.2\n'  # damaged in the middle
    (tmp_path / "metrics.jsonl").write_text("".join(lines) + '{"step": 41, "lo')  # cut short by a kill
    log = MetricsLog(str(tmp_path), 100, True, start_step=30)
    log.close()
    kept = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")]
    assert kept == [1, 2, 3] + list(range(5, 31))
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{tmp_path}/metrics.jsonl:4: a damaged line (not a JSON record with a step); dropped"]
