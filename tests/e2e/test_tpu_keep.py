"""launch/tpu.sh on gcloud's terms: accelerator names per generation, a provisioned Python, multislice
queued resources, and `keep`, which re-creates a preempted Spot slice (or all slices when one is
preempted), resumes, and logs the goodput over the attempts; against a scripted fake `gcloud` on PATH."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from grit_jax.train.goodput import summary_line
from tests.grit_fixtures import ROOT

TPU_SH = Path(ROOT) / "launch/tpu.sh"
WHERE = ["--project", "p", "--zone", "z", "--name", "n"]
TRAIN = ["--config", "configs/gritlm.py:7b", "--workdir", "gs://bucket/run 1"]

# A stateful fake: `create` makes the queued resource exist, `delete` removes it; `describe` of an
# existing one answers the next scripted state, the status ssh (worker 0) the next scripted status, a
# node's `tpu-vm describe` its next scripted state (READY when none), `storage cat` of goodput.jsonl the
# next scripted text (the last one again when none is left; NOT_FOUND when none was scripted).
FAKE_GCLOUD = """\
#!{python}
import json, sys
path = {scenario!r}
s = json.load(open(path))
argv = sys.argv[1:]
s["calls"].append(argv)
def done(code=0, out=""):
    json.dump(s, open(path, "w"))
    if out:
        print(out)
    sys.exit(code)
if argv[2:4] == ["queued-resources", "create"]:
    if s["exists"]:
        print("ALREADY_EXISTS", file=sys.stderr)
        done(1)
    s["exists"] = True
elif argv[2:4] == ["queued-resources", "delete"]:
    s["exists"] = False
elif argv[2:4] == ["queued-resources", "describe"]:
    if not s["exists"]:
        print("NOT_FOUND: queued resource n", file=sys.stderr)
        done(1)
    if not s["states"]:
        print("scenario has no more states", file=sys.stderr)
        done(3)
    done(0, s["states"].pop(0))
elif "--worker=0" in argv and "train.rc" in argv[-1]:
    done(0, s["statuses"].pop(0) if s["statuses"] else "scenario has no more statuses")
elif argv[2:4] == ["tpu-vm", "describe"]:
    states = s["nodes"].get(argv[4], [])
    done(0, states.pop(0) if states else "READY")
elif argv[:2] == ["storage", "cat"]:
    if not s["goodput"]:
        print("ERROR: NOT_FOUND " + argv[2], file=sys.stderr)
        done(1)
    done(0, s["goodput"].pop(0) if len(s["goodput"]) > 1 else s["goodput"][0])
done()
"""


@pytest.fixture
def gcloud(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scenario = tmp_path / "scenario.json"
    fake = bin_dir / "gcloud"
    fake.write_text(FAKE_GCLOUD.format(python=sys.executable, scenario=str(scenario)))
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIT_") and k != "DRY_RUN"}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", TMPDIR=str(tmp_path))

    def run(*args, states=(), statuses=(), exists=False, nodes=None, goodput=()):
        scenario.write_text(
            json.dumps(
                dict(
                    exists=exists,
                    states=list(states),
                    statuses=list(statuses),
                    calls=[],
                    nodes=nodes or {},
                    goodput=list(goodput),
                )
            )  # fmt: skip
        )
        proc = subprocess.run(
            [str(TPU_SH), *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        return proc, json.loads(scenario.read_text())

    run.dir = tmp_path
    return run


def kind(call: list[str]) -> str:
    """A short name for one gcloud call: create, describe, delete, scp, setup, run, status, node (a
    node's state), storage (goodput.jsonl read)."""
    if call[0] != "compute":  # a printed command, not an argv the fake recorded
        return kind(call[1:]) if call[0] == "gcloud" else call[0]
    if call[2] == "queued-resources":
        return call[3]
    if call[3] in ("scp", "describe"):
        return {"scp": "scp", "describe": "node"}[call[3]]
    command = call[call.index("--command") + 1]
    if "train.rc" in command and "nohup" not in command:
        return "status"
    return "setup" if "tar" in command else "run"


def printed(stdout: str) -> list[list[str]]:
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


@pytest.mark.parametrize(
    "given, accelerator, version",
    [
        ("v4-32", "v4-32", "tpu-ubuntu2204-base"),
        ("v5e-64", "v5litepod-64", "v2-alpha-tpuv5-lite"),
        ("v5litepod-8", "v5litepod-8", "v2-alpha-tpuv5-lite"),
        ("v5p-128", "v5p-128", "v2-alpha-tpuv5"),
        ("v6e-256", "v6e-256", "v2-alpha-tpuv6e"),
    ],
)
def test_create_names_gcloud_accelerator_and_runtime(gcloud, given, accelerator, version):
    proc, state = gcloud("create", *WHERE, "--type", given, "--no-wait", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    [create] = printed(proc.stdout)
    assert create[create.index("--accelerator-type") + 1] == accelerator
    assert create[create.index("--runtime-version") + 1] == version
    assert state["calls"] == []


@pytest.mark.parametrize("bad", ["v5e", "v3-8", "v5e-x", "tpu-64", "v6e-0"])
def test_unknown_type_is_one_line(gcloud, bad):
    proc, state = gcloud("create", *WHERE, "--type", bad, "--dry-run")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"tpu.sh: error: unknown --type '{bad}': use v4-N, v5e-N (or v5litepod-N), v5p-N or v6e-N, "
        "e.g. v5e-64"
    ]
    assert state["calls"] == []


@pytest.mark.parametrize(
    "bad, why",
    [
        ("v5e-7", "v5e slices have 1, 4, 8, 16, 32, 64, 128 or 256 chips"),
        ("v6e-512", "v6e slices have 1, 4, 8, 16, 32, 64, 128 or 256 chips"),
        ("v4-12", "v4-N counts TensorCores, a multiple of 8 (whole hosts) up to 8192"),
        ("v5p-20000", "v5p-N counts TensorCores, a multiple of 8 (whole hosts) up to 17920"),
    ],
)
def test_a_slice_size_cloud_tpu_does_not_offer_is_one_line(gcloud, bad, why):
    proc, state = gcloud("create", *WHERE, "--type", bad, "--dry-run")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [f"tpu.sh: error: no such slice --type '{bad}': {why}"]
    assert state["calls"] == []


def test_setup_provisions_python_and_run_uses_it(gcloud):
    proc, _ = gcloud("setup", *WHERE, "--python-version", "3.12", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    setup = printed(proc.stdout)[-1]
    remote = setup[setup.index("--command") + 1]
    assert "python3 -m pip install -q --user uv" in remote
    assert "~/.local/bin/uv venv -q --python 3.12 .venv" in remote
    assert "~/.local/bin/uv pip install -q --python .venv/bin/python -e '.[tpu]'" in remote
    proc, _ = gcloud("run", *WHERE, "--dry-run", "--", *TRAIN)
    [run] = printed(proc.stdout)
    assert "nohup .venv/bin/python -m grit_jax.programs.grit_train" in run[-1]
    # An existing Python instead: setup pip-installs into it, run starts it; no uv.
    proc, _ = gcloud("setup", *WHERE, "--python", "/opt/py311/bin/python", "--dry-run")
    remote = printed(proc.stdout)[-1][-1]
    assert "uv" not in remote and "/opt/py311/bin/python -m pip install -q -e '.[tpu]'" in remote
    proc, _ = gcloud("setup", *WHERE, "--extras", "tpu,eval", "--dry-run")
    assert "-e '.[tpu,eval]'" in printed(proc.stdout)[-1][-1]
    proc, _ = gcloud("setup", *WHERE, "--extras", "tpu;rm", "--dry-run")
    assert proc.returncode == 2 and "--extras must look like tpu,eval" in proc.stderr


def test_status_command_reads_the_worker_files(gcloud, tmp_path):
    """The status check `keep` runs on worker 0, run by bash on the files grit-train's shell leaves."""
    proc, _ = gcloud("keep", *WHERE, "--type", "v5e-8", "--dry-run", "--", *TRAIN)
    status = [c for c in printed(proc.stdout) if kind(c) == "status"][0][-1]
    logs = tmp_path / "home/grit_jax/logs"
    logs.mkdir(parents=True)

    def answer(rc=None, log="", pid=None):
        for name, text in [("train.rc", rc), ("train.log", log), ("train.pid", pid)]:
            (logs / name).unlink(missing_ok=True)
            if text is not None:
                (logs / name).write_text(text)
        out = subprocess.run(["bash", "-c", status], cwd=tmp_path / "home", capture_output=True, text=True)
        return out.stdout.strip()

    assert answer(pid=str(os.getpid())) == "running"
    assert answer(pid="999999999") == "lost"
    assert answer(rc="0\n", log="step 10\ndone. checkpoints: x\n") == "done"
    assert answer(rc="0\n", log="preempted: saved checkpoint step 7 in gs://b/r\n") == "preempted"
    assert answer(rc="2\n", log="grit-train: error: bad\n") == "failed:2"


# goodput.jsonl of three attempts (grit_jax/train/goodput.py): killed at step 7 after a checkpoint at 4,
# resumed there (3 s lost) and preempted at 10 after saving, resumed at 10 and finished at 12.
ATTEMPTS = [
    dict(attempt=1, start_step=0, last_step=7, wall=12.5, productive=6.25, compile=2.0, data_wait=0.5,
         checkpoint_save=1.0, checkpoint_restore=0.0, evaluation=0.75, lost_to_restart=0.0,
         checkpoints=[[4, 3.25]]),
    dict(attempt=2, start_step=4, last_step=10, wall=9.0, productive=6.0, compile=1.0, data_wait=0.0,
         checkpoint_save=0.5, checkpoint_restore=0.5, evaluation=0.0, lost_to_restart=3.0,
         checkpoints=[[8, 4.0], [10, 6.0]]),
    dict(attempt=3, start_step=10, last_step=12, wall=4.0, productive=2.0, compile=1.25e-05, data_wait=0.0,
         checkpoint_save=0.25, checkpoint_restore=0.5, evaluation=0.0, lost_to_restart=0.0,
         checkpoints=[[12, 2.0]]),
]  # fmt: skip


def goodput_texts(count: int) -> list[str]:
    """What goodput.jsonl holds after each of the first `count` attempts."""
    return ["".join(json.dumps(a) + "\n" for a in ATTEMPTS[: i + 1]) for i in range(count)]


def test_keep_survives_two_preemptions_and_resumes(gcloud):
    proc, state = gcloud(
        "keep",
        *WHERE,
        "--type",
        "v5e-16",
        "--spot",
        "--poll",
        "0",
        "--max-restarts",
        "2",
        "--out",
        "keep logs",
        "--",
        *TRAIN,
        states=[
            # created, queued, then ACTIVE; training runs until Spot preempts the slice
            *["WAITING_FOR_RESOURCES", "ACTIVE", "ACTIVE", "SUSPENDING", "SUSPENDED", "SUSPENDED"],
            # re-created: ACTIVE, preempted again
            *["ACTIVE", "ACTIVE", "SUSPENDED", "SUSPENDED"],
            # re-created: runs to the end
            *["ACTIVE", "ACTIVE", "ACTIVE"],
        ],
        statuses=["running", "running", "running", "done"],
        goodput=goodput_texts(3),
    )
    assert proc.returncode == 0, proc.stderr
    kinds = [kind(c) for c in state["calls"]]
    cycle = ["scp", "setup", "run"]
    assert kinds == [
        *["describe", "create", "describe", "describe", *cycle, "describe", "status"],
        *["describe", "describe", "describe", "storage", "delete", "create", "describe", *cycle],
        *["describe", "status", "describe", "describe", "storage", "delete", "create", "describe", *cycle],
        *["describe", "status", "describe", "status", "storage"],
    ]
    assert all(
        c == ["storage", "cat", "gs://bucket/run 1/goodput.jsonl"]
        for c in state["calls"]
        if kind(c) == "storage"
    )
    creates = [c for c in state["calls"] if kind(c) == "create"]
    assert all(c[c.index("--accelerator-type") + 1] == "v5litepod-16" and "--spot" in c for c in creates)
    runs = [c for c in state["calls"] if kind(c) == "run"]
    assert len(runs) == 3 and runs[0] == runs[1] == runs[2]  # the same work dir: grit-train resumes there
    assert "'gs://bucket/run 1'" in runs[0][-1]
    log = (gcloud.dir / "keep logs/keep.log").read_text().splitlines()
    assert (
        [line.split(" ", 2)[2] for line in log]
        == [
            "keep: v5litepod-16, grit-train --config configs/gritlm.py:7b --workdir 'gs://bucket/run 1'",
            "no queued resource: creating it",
            "ACTIVE: setting up and starting grit-train (it resumes from the latest checkpoint)",
            "queued resource is SUSPENDING",
            "queued resource is SUSPENDED",
            "queued resource SUSPENDED (preempted); restart 1 of 2: deleting and re-creating it",
            summary_line(ATTEMPTS[:1]),  # the goodput so far (awk here; the same line as grit_jax's)
            "ACTIVE: setting up and starting grit-train (it resumes from the latest checkpoint)",
            "queued resource is SUSPENDED",
            "queued resource SUSPENDED (preempted); restart 2 of 2: deleting and re-creating it",
            summary_line(ATTEMPTS[:2]),
            "ACTIVE: setting up and starting grit-train (it resumes from the latest checkpoint)",
            "grit-train finished",
            summary_line(ATTEMPTS),
        ]
    )
    assert (
        log[-1]
        .split(" ", 2)[2]
        .startswith("goodput: 0.441 of 25.5 s wall over 3 attempt(s): productive 11.2 s")
    )


def test_keep_restarts_a_preempted_run_and_gives_up_after_max(gcloud):
    proc, state = gcloud(
        "keep",
        *WHERE,
        "--type",
        "v6e-8",
        "--poll",
        "0",
        "--max-restarts",
        "1",
        "--",
        *TRAIN,
        exists=True,
        states=["ACTIVE", "ACTIVE", "ACTIVE", "ACTIVE"],
        statuses=["preempted", "lost"],
    )
    assert proc.returncode == 1
    assert [kind(c) for c in state["calls"]] == [
        *["describe", "describe", "scp", "setup", "run", "describe", "status", "storage", "run"],
        *["describe", "status", "storage"],
    ]
    assert "grit-train preempted on an ACTIVE slice; restart 1 of 1: starting it again" in proc.stderr
    assert "grit-train lost on an ACTIVE slice; gave up after 1 restarts" in proc.stderr
    # no goodput.jsonl in the work dir (the fake's bucket is empty): said, not fatal
    assert proc.stderr.rstrip().endswith("goodput: no record in gs://bucket/run 1/goodput.jsonl yet")


def test_keep_does_not_restart_a_failed_run_and_needs_a_bucket(gcloud):
    proc, state = gcloud(
        "keep", *WHERE, "--type", "v4-8", "--poll", "0", "--", *TRAIN,
        exists=True, states=["ACTIVE", "ACTIVE", "ACTIVE"], statuses=["failed:2"],
    )  # fmt: skip
    assert proc.returncode == 1 and "grit-train exited with status 2; not restarting" in proc.stderr
    assert [kind(c) for c in state["calls"]][-3:] == ["describe", "status", "storage"]
    proc, state = gcloud("keep", *WHERE, "--type", "v4-8", "--", "--workdir", "/tmp/run")
    assert proc.returncode == 2 and state["calls"] == []
    assert proc.stderr.splitlines() == [
        "tpu.sh: error: keep needs --workdir gs://BUCKET/PATH: a re-created slice starts with empty disks"
    ]


def test_fake_scenario_is_strict(gcloud):
    """The fake fails a loop that asks for more states than scripted (so the tests above can fail)."""
    proc, _ = gcloud("create", *WHERE, "--type", "v5p-8", "--poll", "0", "--timeout", "1", states=[])
    # tpu.sh gives up (timeout or repeated describe failures, whichever comes first on this machine)
    assert proc.returncode == 2 and "scenario has no more states" in proc.stderr
    assert re.search(r"not ACTIVE after 1 s|could not describe queued resource n 10 times", proc.stderr)


def test_multislice_dry_run_prints_one_queued_resource_of_n_slices_and_every_node(gcloud):
    proc, state = gcloud(
        "keep", *WHERE, "--type", "v5e-64", "--slices", "2", "--spot", "--dry-run", "--", *TRAIN
    )
    assert proc.returncode == 0, proc.stderr
    assert state["calls"] == []
    commands = printed(proc.stdout)
    [create] = [c for c in commands if kind(c) == "create"]
    assert create[:7] == ["gcloud", "compute", "tpus", "queued-resources", "create", "n", "--node-count"]
    assert create[7:10] == ["2", "--node-prefix", "n"] and "--node-id" not in create and "--spot" in create
    assert create[create.index("--accelerator-type") + 1] == "v5litepod-64"  # the type of each slice
    for step in ("scp", "setup", "run", "node"):  # every node of every slice
        assert [c[5] if c[4] != "scp" else c[6].split(":")[0] for c in commands if kind(c) == step] == [
            "n-0",
            "n-1",
        ]
    assert all("--worker=all" in c for c in commands if kind(c) in ("scp", "setup", "run"))
    assert [c[5] for c in commands if kind(c) == "status"] == ["n-0"]  # worker 0 of slice 0: process 0
    assert commands[-1] == ["gcloud", "storage", "cat", "gs://bucket/run 1/goodput.jsonl"]
    proc, _ = gcloud("create", *WHERE, "--type", "v5e-8", "--no-wait", "--dry-run")
    assert "--node-id" in printed(proc.stdout)[0] and "--node-count" not in printed(proc.stdout)[0]
    proc, _ = gcloud("ssh", *WHERE, "--slices", "3", "--node", "2", "--dry-run", "--", "hostname")
    assert printed(proc.stdout) == [
        ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "n-2", "--project", "p", "--zone", "z", "--worker=0",
         "--command", "hostname"]
    ]  # fmt: skip


@pytest.mark.parametrize(
    "args, error",
    [
        (["--slices", "0"], "--slices must be a number of slices (1 or more), not '0'"),
        (["--slices", "2", "--node", "2"], "--node must be a slice number below --slices 2, not '2'"),
        (["--slices", "2", "--name", "a b"], "--name 'a b' with --slices: node names <name>-0.. may use "
         "letters, digits and _.~+%- only"),
    ],
)  # fmt: skip
def test_bad_slices_are_one_line(gcloud, args, error):
    proc, state = gcloud("create", *WHERE, "--type", "v5e-8", *args, "--dry-run")
    assert proc.returncode == 2 and proc.stderr.splitlines() == [f"tpu.sh: error: {error}"]
    assert state["calls"] == []


def test_keep_recreates_every_slice_when_one_is_preempted(gcloud):
    proc, state = gcloud(
        "keep", *WHERE, "--type", "v5e-16", "--slices", "2", "--spot", "--poll", "0", "--", *TRAIN,
        # created and ACTIVE; slice 1 preempted while the queued resource still reads ACTIVE; re-created
        states=["ACTIVE", "ACTIVE", "ACTIVE", "ACTIVE", "ACTIVE"],
        nodes={"n-0": ["READY", "READY"], "n-1": ["PREEMPTED", "READY"]},
        statuses=["done"],
        goodput=goodput_texts(2),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    cycle = ["scp", "setup", "scp", "setup", "run", "run"]  # each slice's node
    assert [kind(c) for c in state["calls"]] == [
        *[
            "describe",
            "create",
            "describe",
            *cycle,
            "describe",
            "node",
            "node",
            "storage",
            "delete",
            "create",
        ],
        *["describe", "describe", *cycle, "describe", "node", "node", "status", "storage"],
    ]
    creates = [c for c in state["calls"] if kind(c) == "create"]
    assert len(creates) == 2 and all(c[c.index("--node-count") + 1] == "2" for c in creates)
    log = (gcloud.dir / "logs/n/keep.log").read_text().splitlines()
    assert [line.split(" ", 2)[2] for line in log] == [
        "keep: v5litepod-16 x 2 slices, grit-train --config configs/gritlm.py:7b "
        "--workdir 'gs://bucket/run 1'",
        "no queued resource: creating it",
        "ACTIVE: setting up and starting grit-train (it resumes from the latest checkpoint)",
        "slice n-1 is PREEMPTED; restart 1 of 10: deleting and re-creating all 2 slices",
        summary_line(ATTEMPTS[:1]),
        "ACTIVE: setting up and starting grit-train (it resumes from the latest checkpoint)",
        "grit-train finished",
        summary_line(ATTEMPTS[:2]),
    ]
