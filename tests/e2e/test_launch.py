"""launch/tpu.sh prints exactly the gcloud commands it would run, quoted; launch/local.sh stops its hosts."""

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.grit_fixtures import ROOT

REPO = Path(ROOT)
TPU_SH = REPO / "launch/tpu.sh"
LOCAL_SH = REPO / "launch/local.sh"

# Hostile values: spaces, quotes and shell metacharacters must survive as single words.
PROJECT = "my proj'ect"
ZONE = "us-east5-a;$(touch pwned)"
NAME = 'tpu "one" & `two` *'
WHERE = ["--project", PROJECT, "--zone", ZONE]
SSH = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", NAME, *WHERE]
TRAIN_ARGS = [
    "--config",
    "configs/my cfg.py:tiny",
    "--workdir",
    "/tmp/work dir/$HOME",
    "--config.data.path=a'b\"c;|&*>x",
    "--config.seed=1",
]


@pytest.fixture
def fake(tmp_path):
    """A fake gcloud first on PATH that appends its argv (JSON) to calls.jsonl."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(
        textwrap.dedent(f"""\
        #!{sys.executable}
        import json, sys
        with open({str(tmp_path / "calls.jsonl")!r}, "a") as f:
            f.write(json.dumps(sys.argv[1:]) + "\\n")
        if "describe" in sys.argv:
            print("ACTIVE")
        """)
    )
    gcloud.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIT_") and k != "DRY_RUN"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"

    def run(*args, **extra_env):
        return subprocess.run(
            [str(TPU_SH), *args],
            env={**env, **extra_env},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )

    def calls():
        log = tmp_path / "calls.jsonl"
        return (
            [["gcloud", *json.loads(line)] for line in log.read_text().splitlines()] if log.exists() else []
        )

    run.calls = calls
    run.dir = tmp_path
    return run


def printed(stdout: str) -> list[list[str]]:
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def remote(argv: list[str]) -> list[str]:
    """The words of an ssh --command."""
    return shlex.split(argv[argv.index("--command") + 1])


def dry(fake, *args):
    proc = fake("--project", PROJECT, "--zone", ZONE, "--name", NAME, *args, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert fake.calls() == [], "dry run called gcloud"
    assert not (fake.dir / "pwned").exists()
    return printed(proc.stdout)


def test_create_dry_run(fake):
    create = [
        "gcloud",
        "compute",
        "tpus",
        "queued-resources",
        "create",
        NAME,
        "--node-id",
        NAME,
        *WHERE,
        "--accelerator-type",
        "v5p-64",
        "--runtime-version",
    ]
    describe = [
        "gcloud",
        "compute",
        "tpus",
        "queued-resources",
        "describe",
        NAME,
        *WHERE,
        "--format",
        "value(state.state)",
    ]
    assert dry(fake, "create", "--type", "v5p-64", "--spot") == [
        create + ["v2-alpha-tpuv5", "--spot"],
        describe,
    ]
    assert dry(fake, "create", "--type=v5p-64", "--version", "my version", "--no-wait") == [
        create + ["my version"]
    ]


def test_setup_dry_run(fake):
    archive, scp, ssh = dry(fake, "setup", "--ref", "main")
    assert archive[:2] == ["git", "-C"] and archive[3:6] == ["archive", "--format=tar.gz", "-o"]
    assert archive[-1] == "main"
    assert scp == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "scp",
        archive[6],
        f"{NAME}:grit_jax-src.tar.gz",
        "--worker=all",
        *WHERE,
    ]
    assert ssh[:-1] == SSH + ["--worker=all", "--command"]
    assert "-e" in remote(ssh) and ".[tpu]" in remote(ssh)


def test_run_dry_run_quotes_every_argument(fake):
    [argv] = dry(fake, "run", "--env", "WANDB_NAME=a b", "--", *TRAIN_ARGS)
    assert argv[:-1] == SSH + ["--worker=all", "--command"]
    words = remote(argv)
    start = words.index("grit_jax.programs.grit_train") + 1
    assert words[start : words.index(">", start)] == TRAIN_ARGS
    assert "GRIT_DISTRIBUTED=1" in words and "WANDB_NAME=a b" in words and "nohup" in words


def test_logs_ssh_stop_delete_dry_run(fake):
    [mkdir, logs] = dry(fake, "logs", "--out", "my logs")
    assert mkdir == ["mkdir", "-p", "my logs"] and not (fake.dir / "my logs").exists()
    assert logs == SSH + [
        "--worker=all",
        "--command",
        "cat grit_jax/logs/train.log",
        "--output-directory",
        "my logs",
    ]
    [ssh] = dry(fake, "ssh", "--worker", "3", "--", "ls", "a b", "$(rm -rf x)")
    assert ssh == SSH + ["--worker=3", "--command", "ls 'a b' '$(rm -rf x)'"]
    assert remote(ssh) == ["ls", "a b", "$(rm -rf x)"]
    [stop, stop_vm] = dry(fake, "stop", "--vm")
    assert stop[:-1] == SSH + ["--worker=all", "--command"] and "kill" in remote(stop)
    assert stop_vm == ["gcloud", "compute", "tpus", "tpu-vm", "stop", NAME, *WHERE]
    assert dry(fake, "delete") == [
        ["gcloud", "compute", "tpus", "queued-resources", "delete", NAME, *WHERE, "--force", "--quiet"]
    ]


def test_dry_run_anywhere_and_from_env(fake):
    env = dict(GRIT_PROJECT=PROJECT, GRIT_ZONE=ZONE, GRIT_TPU_NAME=NAME)
    for args, extra in [
        (["--dry-run", "delete"], {}),
        (["delete"], {"DRY_RUN": "1"}),
        (["ssh", "--", "ls", "--dry-run"], {}),
    ]:
        proc = fake(*args, **env, **extra)
        assert proc.returncode == 0 and printed(proc.stdout), proc.stderr
    assert fake.calls() == []


def test_run_calls_gcloud_with_the_printed_argv(fake):
    """Not a dry run: the fake gcloud receives exactly the argv the dry run prints."""
    [expected] = dry(fake, "run", "--", *TRAIN_ARGS)
    proc = fake("--project", PROJECT, "--zone", ZONE, "--name", NAME, "run", "--", *TRAIN_ARGS)
    assert proc.returncode == 0, proc.stderr
    assert fake.calls() == [expected]
    create = fake(
        "create", "--type", "v4-8", "--timeout", "5", GRIT_PROJECT=PROJECT, GRIT_ZONE=ZONE, GRIT_TPU_NAME=NAME
    )
    assert create.returncode == 0, create.stderr
    assert [c[3:5] for c in fake.calls()[1:]] == [
        ["queued-resources", "create"],
        ["queued-resources", "describe"],
    ]


def test_run_command_executes_the_intended_argv(fake, tmp_path):
    """Run the remote command of `run` with bash, as a worker would, with a fake venv python (setup's)."""
    [argv] = dry(fake, "run", "--", *TRAIN_ARGS)
    home = tmp_path / "home"
    bin_dir = home / "grit_jax/.venv/bin"
    bin_dir.mkdir(parents=True)
    record = tmp_path / "argv.json"
    python3 = bin_dir / "python"
    python3.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        f"open({str(record)!r}, 'w').write(json.dumps([sys.argv[1:], os.environ.get('GRIT_DISTRIBUTED')]))\n"
    )
    python3.chmod(0o755)
    subprocess.run(["bash", "-c", argv[argv.index("--command") + 1]], cwd=home, check=True, timeout=30)
    for _ in range(100):
        if record.exists() and record.read_text() and (home / "grit_jax/logs/train.rc").exists():
            break
        time.sleep(0.05)
    assert json.loads(record.read_text()) == [["-m", "grit_jax.programs.grit_train", *TRAIN_ARGS], "1"]
    assert (home / "grit_jax/logs/train.pid").read_text().strip().isdigit()
    assert (home / "grit_jax/logs/train.rc").read_text() == "0\n"  # what `keep` reads
    assert not (home / "pwned").exists()


@pytest.mark.parametrize(
    "missing, message",
    [
        ("--project", "missing project: pass --project or set GRIT_PROJECT"),
        ("--zone", "missing zone: pass --zone or set GRIT_ZONE"),
        ("--name", "missing TPU name: pass --name or set GRIT_TPU_NAME"),
    ],
)
def test_missing_settings_are_clear_errors(fake, missing, message):
    settings = {"--project": PROJECT, "--zone": ZONE, "--name": NAME}
    args = [w for k, v in settings.items() if k != missing for w in (k, v)]
    proc = fake("delete", *args)
    assert proc.returncode == 2 and message in proc.stderr
    assert fake.calls() == []


def test_usage_errors(fake):
    where = ["--project", "p", "--zone", "z", "--name", "n"]
    assert fake().returncode == 2 and "usage:" in fake().stderr
    assert fake("--help").returncode == 0 and "usage:" in fake("--help").stdout
    for args, message in [
        (["reboot", *where], "unknown command"),
        (["create", *where], "missing accelerator type"),
        (["run", *where], "run needs grit-train arguments"),
        (["delete", "--bogus", *where], "unknown option"),
        (["ssh", "--worker", "x;y", *where], "--worker must be"),
    ]:
        proc = fake(*args)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
    assert fake.calls() == []


# ---- launch/local.sh -------------------------------------------------------------------------------

FAKE_TRAIN = """
import os, signal, sys, time
rank = os.environ["GRIT_PROCESS_ID"]
def on_term(*_):
    open(os.path.join(os.environ["MARKS"], rank), "w").write("term")
    sys.exit(3)
signal.signal(signal.SIGTERM, on_term if sys.argv[1] != "ignore" else signal.SIG_IGN)
print("rank", rank, "of", os.environ["GRIT_NUM_PROCESSES"], os.environ["XLA_FLAGS"], sys.argv[1:], flush=True)
if sys.argv[1] == "fail" and rank == "1":
    time.sleep(1)  # the others have set their SIGTERM handler
    sys.exit(7)
if sys.argv[1] != "ok":
    time.sleep(60)
"""


@pytest.fixture
def local(tmp_path):
    (tmp_path / "fake_train.py").write_text(FAKE_TRAIN)
    (tmp_path / "marks").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIT_") and k != "XLA_FLAGS"}
    env.update(
        PYTHON=sys.executable,
        GRIT_LOCAL_MODULE="fake_train",
        PYTHONPATH=str(tmp_path),
        MARKS=str(tmp_path / "marks"),
        LOG_DIR=str(tmp_path / "logs"),
        KILL_AFTER="2",
    )

    def start(*args, **extra):
        return subprocess.Popen(
            [str(LOCAL_SH), *args],
            env={**env, **extra},
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_started(n):  # every process has printed its first line (its SIGTERM handler is set)
        for _ in range(300):
            logs = [tmp_path / f"logs/process_{i}.log" for i in range(n)]
            if all(log.exists() and "rank" in log.read_text() for log in logs):
                return
            time.sleep(0.05)
        raise TimeoutError("local.sh processes did not start")

    start.wait_started = wait_started
    start.marks = lambda: sorted(os.listdir(tmp_path / "marks"))
    start.dir = tmp_path
    return start


def test_local_runs_every_process(local):
    proc = local("3", "ok", "a b", DEVICES_PER_HOST="2")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    for i in range(3):
        log = (local.dir / f"logs/process_{i}.log").read_text()
        assert f"rank {i} of 3 --xla_force_host_platform_device_count=2 ['ok', 'a b']" in log
        assert f"[{i}] rank {i}" in out


def test_local_failure_stops_the_others(local):
    proc = local("3", "fail")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 7, err
    assert "process 1 exited with status 7" in err
    assert local.marks() == ["0", "2"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_local_forwards_signals(local, sig):
    proc = local("2", "sleep")
    local.wait_started(2)
    proc.send_signal(sig)
    proc.communicate(timeout=30)
    assert proc.returncode == 3 and local.marks() == ["0", "1"]


def test_local_kills_processes_that_ignore_sigterm(local):
    proc = local("2", "ignore")
    local.wait_started(2)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGKILL
