"""grit-train's own handling of checkpoint accidents, in subprocesses on the tiny model: Ctrl-C saves and
exits cleanly, a damaged newest checkpoint is reported in one line and the run resumes from the one
before, a save that fails stops the run in one line with the last good step."""

import collections
import fnmatch
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time

import pytest

from tests.grit_fixtures import ROOT, xla_flags

pytestmark = pytest.mark.slow  # grit-train in subprocesses


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from grit_jax.data.demo import prepare_demo_data

    return prepare_demo_data(str(tmp_path_factory.mktemp("data")), vocab_size=512)["data_dir"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("jax_cache"))


def _command(workdir, data_dir, *overrides):
    return [
        sys.executable,
        "-m",
        "grit_jax.programs.grit_train",
        "--config=configs/tiny.py",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        "--config.checkpoint.every_steps=5",
        *overrides,
    ]


def _env(cache):
    return dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=xla_flags(1),
        JAX_COMPILATION_CACHE_DIR=cache,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )


def _steps(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    return [json.loads(line)["step"] for line in open(path) if line.endswith("\n")]


def test_ctrl_c_saves_then_a_damaged_newest_checkpoint_is_skipped(tmp_path, data_dir, cache):
    workdir = str(tmp_path / "run")
    process = subprocess.Popen(
        _command(workdir, data_dir, "--config.num_steps=100000"),
        cwd=ROOT,
        env=_env(cache),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not (_steps(workdir) and max(_steps(workdir)) >= 6 and _saved(workdir)):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.2)
    second = _run(cache, _command(workdir, data_dir, "--config.num_steps=100000"))  # the same work dir
    assert second.returncode == 2 and "is in use by another run" in second.stderr.splitlines()[-1]
    assert f"pid {process.pid}" in second.stderr
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    saved = int(out.split("preempted: saved checkpoint step ")[1].split()[0])
    assert saved > 5 and os.path.isdir(f"{workdir}/checkpoints/{saved}")
    before = max(s for s in _saved(workdir) if s != saved)  # keep=3: the last ones

    os.remove(f"{workdir}/checkpoints/{saved}/state/manifest.ocdbt")
    ended = (f"--config.num_steps={saved}", "--config.resume_changes=num_steps")  # the schedule changes
    result = _run(cache, _command(workdir, data_dir, *ended))
    assert result.returncode == 0, result.stderr
    assert f"checkpoint step {saved} is damaged (state/manifest.ocdbt is missing)" in result.stdout
    assert f"resuming from checkpoint step {before} " in result.stdout
    assert os.path.isdir(f"{workdir}/checkpoints/{saved}.damaged")
    assert os.path.isdir(f"{workdir}/checkpoints/{saved}")  # saved again by the resumed run
    assert _steps(workdir) == list(range(1, saved + 1))

    config = open(f"{workdir}/config.json").read()
    refused = _run(
        cache,
        _command(
            workdir,
            data_dir,
            f"--config.num_steps={saved + 5}",
            "--config.seed=1",
            "--config.objective.projection_dim=8",
        ),
    )
    assert refused.returncode == 2 and "resuming would change the run (num_steps: " in refused.stderr
    assert "--config.resume_changes=num_steps,objective.projection_dim,seed" in refused.stderr
    assert open(f"{workdir}/config.json").read() == config  # the work dir still describes its run


def _saved(workdir):
    directory = os.path.join(workdir, "checkpoints")
    return [int(d) for d in os.listdir(directory) if d.isdigit()] if os.path.isdir(directory) else []


def _run(cache, command):
    return subprocess.run(command, cwd=ROOT, env=_env(cache), capture_output=True, text=True, timeout=300)


CLOSED_LOOP_TRACEBACK = (  # tensorstore's, for a write completing into asyncio's closed loop
    "Traceback (most recent call last):",
    'File "*/asyncio/base_events.py", line *, in call_soon_threadsafe',
    "self._check_closed()",
    'File "*/asyncio/base_events.py", line *, in _check_closed',
    "raise RuntimeError('Event loop is closed')",
    "RuntimeError: Event loop is closed",
)


# An absl/glog record, to the end of its line: another thread may print one in the middle of a traceback,
# even in the middle of a line ("RuntimeError" + record + ": Event loop is closed").
LOG_RECORD = re.compile(r"[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [^\n]*\n?")


def _without_noise(stderr: str) -> tuple[list[str], list[str]]:
    """(the log records of ``stderr``, its other lines without the CLOSED_LOOP_TRACEBACK lines). Several
    threads print those tracebacks at once, their lines interleaved, so they are taken out line by line,
    and only when every line of the traceback appears equally often (each traceback whole): any other
    traceback leaves its own lines, or its header, behind."""
    records = LOG_RECORD.findall(stderr)
    lines = [line for line in LOG_RECORD.sub("", stderr).splitlines() if line.strip()]

    def pattern(line):
        return next((p for p in CLOSED_LOOP_TRACEBACK if fnmatch.fnmatchcase(line.strip(), p)), None)

    counts = collections.Counter(pattern(line) for line in lines)
    if len({counts[p] for p in CLOSED_LOOP_TRACEBACK}) > 1:  # a traceback that is not all closed loop
        return records, lines
    return records, [line for line in lines if pattern(line) is None]


def test_closed_loop_tracebacks_are_found_however_threads_interleave_them():
    block = [f"  {line}" for line in CLOSED_LOOP_TRACEBACK]
    record = "E1204 05:57:03.264188 139795825575616 future.py:387] another thread failed"
    cut = block[5].replace("RuntimeError", "RuntimeError" + record + "\n")  # a record inside a line
    interleaved = [*block[:2], *block, *block[2:5], record, cut]  # two threads' tracebacks
    stderr = "\n".join(["first", *interleaved, "last"])
    assert _without_noise(stderr) == ([record + "\n", record + "\n"], ["first", "last"])
    other = "\n".join(["first", *block, "Traceback (most recent call last):", "ValueError: x", "last"])
    assert "ValueError: x" in _without_noise(other)[1]
    assert "Traceback (most recent call last):" in _without_noise(other)[1]


def test_a_failed_save_stops_the_run_in_one_line(tmp_path, data_dir, cache):
    """Writes over 400 kB fail (EFBIG, as a full disk fails them): step 5's checkpoint cannot be saved."""

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, resource.RLIM_INFINITY))

    workdir = str(tmp_path / "run")
    result = subprocess.run(
        _command(workdir, data_dir, "--config.num_steps=40"),
        cwd=ROOT,
        env=_env(cache),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit_file_size,
    )
    assert result.returncode == 3, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    failed = re.match(
        r"grit-train: stopped: checkpoint step (\d+) could not be saved in .*\(File too large\)", last
    )
    assert failed and "The last good checkpoint is none" in last, result.stderr
    # Known noise: tensorstore prints a traceback for each write that completes into the asyncio loop
    # orbax closed after the failure ("RuntimeError: Event loop is closed"), interleaved with orbax's
    # logged errors. Without those exact blocks, no traceback is left and the rest is short.
    records, rest = _without_noise(result.stderr)
    assert not any("Traceback" in line for line in rest + records), result.stderr
    assert len(rest) + len(records) < 40, result.stderr
    assert "done." not in result.stdout
    # The save runs in the background: the run stops when it fails, and at the latest before the next save
    assert max(_steps(workdir)) < int(failed.group(1)) + 5
