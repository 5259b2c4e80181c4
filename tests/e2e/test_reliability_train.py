"""grit-train's own handling of checkpoint accidents, in subprocesses on the tiny model: Ctrl-C saves and
exits cleanly, a damaged newest checkpoint is reported in one line and the run resumes from the one
before, a save that fails stops the run in one line with the last good step."""

import json
import logging
import os
import re
import resource
import signal
import subprocess
import sys
import time
import types
import warnings

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


def test_only_the_noise_of_a_failed_background_save_is_dropped(caplog):
    """What orbax's background save leaves behind after it failed: tensorstore's callbacks into the closed
    event loop (unraisable), asyncio's report of the unretrieved write tasks. Nothing else is hidden."""
    from grit_jax.weights import orbax_noise

    seen = []
    hook = orbax_noise._drop_closed_loop_callbacks(seen.append)
    for error in (RuntimeError("Event loop is closed"), RuntimeError("another"), ValueError("x")):
        hook(types.SimpleNamespace(exc_value=error))
    assert [str(u.exc_value) for u in seen] == ["another", "x"]

    orbax_noise.quiet()
    asyncio_log = logging.getLogger("asyncio")
    with caplog.at_level(logging.ERROR):
        unretrieved = "Task exception was never retrieved\nfuture: <Task coro=<{}>>"
        asyncio_log.error(unretrieved.format("write_fragment() at /x/orbax/y.py"))
        asyncio_log.error(unretrieved.format("mine() at /x/app.py"))
    assert [r.getMessage().split("<")[-1] for r in caplog.records] == ["mine() at /x/app.py>>"]

    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        orbax_noise.after_failed_save()
        warnings.warn("coroutine 'write_fragment' was never awaited", RuntimeWarning, stacklevel=1)
        warnings.warn("something else", RuntimeWarning, stacklevel=1)
    assert [str(w.message) for w in shown] == ["something else"]


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
    # orbax's background threads log the failure once each, a line apiece; no traceback reaches the user
    # (tensorstore's writes into orbax's closed event loop, asyncio's unretrieved task errors)
    assert "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) < 10, result.stderr
    assert "done." not in result.stdout
    # The save runs in the background: the run stops when it fails, and at the latest before the next save
    assert max(_steps(workdir)) < int(failed.group(1)) + 5
