"""grit-train with LoRA, in subprocesses on the demo data: checkpoints hold the adapters (not the base),
a run killed with SIGKILL resumes exactly, 2 hosts (launch/local.sh) log what 1 host logs, and adapters
are never resumed onto another base."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.grit_fixtures import ROOT, xla_flags

pytestmark = pytest.mark.slow
TIMING = {"step_time", "tokens_per_second", "mfu"}
STEPS, EVERY = 12, 4
LORA = ("--config.model.lora.rank=4", "--config.model.lora.alpha=8", "--config.optimizer.learning_rate=1e-2")
DEMO = "--config.data.demo_corpus=True"  # the demo's final report, as a LoRA run of configs/demo.py ends


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from grit_jax.data.demo import prepare_demo_data

    return prepare_demo_data(str(tmp_path_factory.mktemp("demo_data")), vocab_size=512)["data_dir"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("jax_cache"))


def _env(devices, cache):
    return dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=xla_flags(devices),
        JAX_COMPILATION_CACHE_DIR=cache,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )


def _args(workdir, data_dir, *overrides):
    return [
        "--config=configs/tiny.py",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        f"--config.num_steps={STEPS}",
        f"--config.checkpoint.every_steps={EVERY}",
        *LORA,
        DEMO,
        *overrides,
    ]


def _command(workdir, data_dir, *overrides):
    return [sys.executable, "-m", "grit_jax.programs.grit_train", *_args(workdir, data_dir, *overrides)]


def _train(workdir, data_dir, cache, *overrides):
    return subprocess.run(
        _command(workdir, data_dir, *overrides),
        cwd=ROOT,
        env=_env(8, cache),
        capture_output=True,
        text=True,
        timeout=1200,
    )


def _ok(result):
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return {r["step"]: {k: v for k, v in r.items() if k not in TIMING} for r in records}


def _wait_for(predicate, process, timeout=1200):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if process.poll() is not None:
            pytest.fail(f"the run ended before it could be interrupted:\n{process.stdout.read()[-3000:]}")
        time.sleep(0.02)
    process.kill()
    pytest.fail("timed out waiting for the run")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir, cache):
    """The LoRA run's work dir; its stdout in stdout.txt beside it."""
    root = tmp_path_factory.mktemp("lora_reference")
    workdir = str(root / "run")
    (root / "stdout.txt").write_text(_ok(_train(workdir, data_dir, cache)).stdout)
    return workdir


def test_the_final_report_of_a_lora_run_shows_the_trained_model(reference):
    """A LoRA run's work dir holds no base: the demo's report embeds and generates with the run's model."""
    out = open(os.path.join(os.path.dirname(reference), "stdout.txt")).read()
    report = out.split("final metrics: ")[1].splitlines()[1:]
    assert report[0].startswith("held-out MRR@10 on "), out[-2000:]
    assert report[1].startswith("example query: ") and report[2].startswith("  1. ")
    assert report[-1].startswith("generated: What does ")


def test_a_lora_work_dir_loaded_as_a_model_names_the_adapter_route(tmp_path, reference, capsys):
    from grit_jax.errors import CheckpointError
    from grit_jax.inference.gritlm import GritLM
    from grit_jax.programs import grit_eval
    from tests.grit_fixtures import write_beir

    how = (
        f"{reference}: a LoRA run's checkpoint holds its adapters only, not the base; export them with "
        f"`grit-convert lora-to-peft --ckpt {reference} --out ADAPTER_DIR`, then load its base "
        "(preset 'tiny', random init: no dir holds it) with the adapter: grit-eval/grit-embed --model BASE "
        "--adapter ADAPTER_DIR, GritLM.from_pretrained(BASE, adapter=ADAPTER_DIR), or "
        "`grit-convert merge-adapter` for one merged model"
    )
    with pytest.raises(CheckpointError) as e:
        GritLM.from_pretrained(reference)
    assert str(e.value) == how
    write_beir(tmp_path / "beir")
    assert grit_eval.run(["retrieval", "--model", reference, "--data", str(tmp_path / "beir")]) == 1
    assert capsys.readouterr().err.splitlines() == [f"grit-eval: error: {how}"]


def test_checkpoints_hold_the_adapters_and_record_the_base(reference):
    from grit_jax.weights.checkpoints import checkpoint_leaves, resolve_checkpoint

    metrics = _metrics(reference)
    assert sorted(metrics) == list(range(1, STEPS + 1))
    assert metrics[STEPS]["loss"] < metrics[1]["loss"]
    leaves = checkpoint_leaves(resolve_checkpoint(reference))
    assert leaves and {name.split(".")[-1] for name in leaves} == {"lora_a", "lora_b"}
    with open(os.path.join(reference, "base.json")) as f:
        record = json.load(f)
    assert record["base"].startswith("preset tiny") and len(record["fingerprint"]) == 16


def test_resume_after_sigkill_is_exact(tmp_path, reference, data_dir, cache):
    workdir = str(tmp_path)
    process = subprocess.Popen(
        _command(workdir, data_dir),
        cwd=ROOT,
        env=_env(8, cache),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _wait_for(lambda: os.path.isdir(os.path.join(workdir, "checkpoints", str(EVERY))), process)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    restart = _ok(_train(workdir, data_dir, cache))
    resumed = int(restart.stdout.split("resuming from checkpoint step ")[1].split()[0])
    assert EVERY <= resumed < STEPS
    assert _metrics(workdir) == _metrics(reference)


def test_resuming_onto_another_base_is_refused(tmp_path, reference, data_dir, cache):
    workdir = str(tmp_path / "run")
    shutil.copytree(reference, workdir)
    accepted = "--config.resume_changes=seed,num_steps"  # the config accepts them: the base does not
    result = _train(workdir, data_dir, cache, "--config.seed=1", f"--config.num_steps={STEPS + 4}", accepted)
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("grit-train: error: ") and "adapters were trained on preset tiny" in last, last


def test_two_hosts_log_what_one_host_logs(tmp_path, reference, data_dir, cache):
    """launch/local.sh: 2 processes x 4 CPU devices (gloo) against 1 process x 8 devices."""
    workdir = str(tmp_path / "two_hosts")
    env = dict(_env(4, cache), PYTHON=sys.executable, DEVICES_PER_HOST="4")
    env.pop("LOG_DIR", None)
    command = ["bash", "launch/local.sh", "2", *_args(workdir, data_dir)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    two, one = _metrics(workdir), _metrics(reference)
    assert sorted(two) == sorted(one)
    for step in one:
        np.testing.assert_allclose(two[step]["loss"], one[step]["loss"], rtol=1e-5, err_msg=str(step))
    with (
        open(os.path.join(workdir, "base.json")) as a,
        open(os.path.join(reference, "base.json")) as b,
    ):
        assert json.load(a) == json.load(b)
