"""The training program end to end, in subprocesses (`python -m grit_jax.programs.grit_train`), on the demo
corpus.

Every run but the demo's uses the tiny model on the stdlib-docstring corpus prepared once per session
(vocabulary 512; the demo's run uses configs/demo.py on its own build, vocabulary 1024), faked CPU devices,
and a compilation cache shared by the session's subprocesses (identical programs compile once). What is
shown: the demo learns; a run killed (SIGKILL or SIGTERM) and restarted logs the same values as an
uninterrupted run; 1 device and 8 devices log the same losses; non-finite steps are skipped and stop the
run; a half-written checkpoint is skipped and kept; bad command lines end in one line.
"""

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from grit_jax.train.goodput import BUCKETS, FILE, read_records
from tests.grit_fixtures import ROOT
from tests.train_runs import (
    EVERY,
    STEPS,
    assert_close_runs,
    ok,
    read_metrics,
    run_train,
    start_train,
    train_command,
    train_env,
    tree_leaves,
    wait_for,
)

pytestmark = pytest.mark.slow  # every test here runs grit-train in subprocesses


def test_reference_run_logs_every_step(reference):
    metrics = read_metrics(reference)
    assert sorted(metrics) == list(range(1, STEPS + 1))
    assert all(np.isfinite(m["loss"]) and m["nonfinite"] == 0 for m in metrics.values())
    assert sorted(os.listdir(os.path.join(reference, "checkpoints"))) == ["24", "28", "30"]
    [record] = read_records(os.path.join(reference, FILE))  # where its time went (goodput)
    assert (record["start_step"], record["last_step"], record["lost_to_restart"]) == (0, STEPS, 0.0)
    assert record["productive"] > 0 and record["compile"] > 0 and record["checkpoint_save"] > 0
    assert all(record[k] >= 0 for k in BUCKETS) and record["checkpoint_restore"] == 0.0
    assert record["productive"] + sum(record[k] for k in BUCKETS) <= record["wall"]
    assert [c[0] for c in record["checkpoints"]] == list(range(EVERY, STEPS, EVERY)) + [STEPS]


def test_resume_after_sigkill_is_exact(tmp_path, reference, data_dir, compile_cache):
    """Killed after a checkpoint, restarted: every later step logs exactly (bit for bit on CPU) what
    the uninterrupted run logged; lines the killed run wrote past its checkpoint are replaced."""
    workdir = str(tmp_path)
    process = start_train(workdir, data_dir, compile_cache)
    wait_for(lambda: _steps_past_checkpoint(workdir) >= 2, process)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    restart = ok(run_train(workdir, data_dir, compile_cache))
    resumed = int(restart.stdout.split("resuming from checkpoint step ")[1].split()[0])
    assert EVERY <= resumed < STEPS
    assert read_metrics(workdir) == read_metrics(reference)
    # goodput: the resumed attempt counts the killed one's steps past its checkpoint as lost
    killed, again = read_records(os.path.join(workdir, FILE))
    assert killed["last_step"] > resumed == again["start_step"] and again["last_step"] == STEPS
    assert again["lost_to_restart"] > 0 and again["checkpoint_restore"] > 0
    assert "over 2 attempt(s)" in restart.stdout.split("goodput: ")[1].splitlines()[0]


def _steps_past_checkpoint(workdir) -> int:
    """Steps the run recorded (goodput.jsonl) past its newest complete checkpoint (orbax renames the
    directory when the save is complete); -1 before the first."""
    root = os.path.join(workdir, "checkpoints")
    saved = [int(d) for d in os.listdir(root) if d.isdigit()] if os.path.isdir(root) else []
    records = read_records(os.path.join(workdir, FILE))
    return records[-1]["last_step"] - max(saved) if saved and records else -1


def test_resume_after_sigterm_is_exact(tmp_path, reference, data_dir, compile_cache):
    """SIGTERM (a preemption) saves at the next step boundary and exits 0; the restart continues exactly."""
    workdir = str(tmp_path)
    process = start_train(workdir, data_dir, compile_cache)
    log = os.path.join(workdir, "metrics.jsonl")
    wait_for(lambda: os.path.exists(log) and sum(1 for _ in open(log)) >= 2, process)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-3000:]
    saved = int(stdout.split("preempted: saved checkpoint step ")[1].split()[0])
    assert 2 <= saved < STEPS
    restart = ok(run_train(workdir, data_dir, compile_cache))
    assert f"resuming from checkpoint step {saved} " in restart.stdout
    assert read_metrics(workdir) == read_metrics(reference)
    stopped, again = read_records(os.path.join(workdir, FILE))  # saved where it stopped: nothing lost
    assert stopped["last_step"] == saved == again["start_step"] and again["lost_to_restart"] == 0.0


def test_one_device_and_eight_devices_log_the_same_losses(tmp_path, reference, data_dir, compile_cache):
    """Same config, mesh data=1 vs data=8: the global batch and the loss are the same; only the order of
    fp32 reductions differs (~1e-6 relative per step, compounding over training), so 1e-4 relative."""
    ok(run_train(str(tmp_path), data_dir, compile_cache, devices=1))
    one, eight = read_metrics(str(tmp_path)), read_metrics(reference)
    assert sorted(one) == sorted(eight)
    for step in one:
        for key in ("loss", "loss_emb", "loss_gen", "grad_norm", "param_norm"):
            np.testing.assert_allclose(
                one[step][key], eight[step][key], rtol=1e-4, atol=1e-6, err_msg=f"step {step} {key}"
            )
        assert one[step]["tokens"] == eight[step]["tokens"]


def test_half_written_checkpoint_is_skipped_and_kept(tmp_path, reference, data_dir, compile_cache):
    """A save that never finished (orbax's temporary directory) is not loaded and not deleted; the run
    resumes from the previous complete step, says which directory it ignored, and continues exactly."""
    workdir = str(tmp_path / "run")
    shutil.copytree(reference, workdir)
    checkpoints = os.path.join(workdir, "checkpoints")
    partial = os.path.join(checkpoints, f"{STEPS}.orbax-checkpoint-tmp-1764180000000000")
    os.rename(os.path.join(checkpoints, str(STEPS)), partial)
    shutil.rmtree(os.path.join(partial, "state"))  # cut short mid-write
    result = ok(run_train(workdir, data_dir, compile_cache))
    assert "resuming from checkpoint step 28 " in result.stdout
    assert partial in result.stderr and "incomplete checkpoint" in result.stderr
    assert os.path.isdir(partial)
    assert read_metrics(workdir) == read_metrics(reference)


def test_nonfinite_steps_are_skipped_then_stop_the_run(tmp_path, data_dir, compile_cache):
    """lr 1e30: step 1's update makes the weights ~1e30, so every later loss overflows. Those steps are
    not applied and are logged; after max_nonfinite_steps in a row the run stops (exit 3) with one line
    naming the last good checkpoint, which is intact (only finite steps are ever saved)."""
    workdir = str(tmp_path)
    result = run_train(
        workdir,
        data_dir,
        compile_cache,
        "--config.optimizer.learning_rate=1e30",
        "--config.optimizer.warmup_ratio=0",
        "--config.checkpoint.every_steps=1",
        "--config.max_nonfinite_steps=3",
    )
    assert result.returncode == 3, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("grit-train: stopped: 3 non-finite steps in a row")
        and "last good checkpoint is step 1" in last
    )
    assert "Traceback" not in result.stderr
    metrics = read_metrics(workdir)
    assert [metrics[s]["nonfinite"] for s in sorted(metrics)] == [0, 1, 1, 1]
    assert os.listdir(os.path.join(workdir, "checkpoints")) == ["1"]  # complete, no half-written save

    from grit_jax.weights import checkpoints as checkpoint

    assert checkpoint.Checkpoints(workdir, keep=3, async_save=False).latest_step() == 1


@pytest.mark.parametrize(
    "args, names",
    [
        (["--config.model.nope=1"], "--config.model.nope"),
        (["--config.num_steps=abc"], "--config.num_steps"),
        (["--config.objective.mode=both"], "objective.mode"),
        (["--config.data.data_dir={tmp}/missing"], "data.data_dir"),
        (["--workdir={tmp}/a_file/run"], "--workdir"),
        (["--config=configs/nope.py"], "configs/nope.py"),
        (["--config.mesh.data=3"], "mesh"),
    ],
)
def test_bad_command_lines_end_with_one_line(tmp_path, data_dir, compile_cache, args, names):
    (tmp_path / "a_file").write_text("not a directory")
    args = [a.format(tmp=tmp_path) for a in args]
    result = run_train(str(tmp_path / "run"), data_dir, compile_cache, *args, devices=8, timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("grit-train: error: ") and names in last, last


def test_demo_learns(tmp_path, demo_data_dir, compile_cache):
    """The demo (configs/demo.py: its corpus, vocabulary, lengths and 3 hard negatives) shortened to 100
    steps: held-out retrieval MRR@10 rises well above its untrained value and the held-out generative loss
    falls; the final printout is the quick start's."""
    workdir = str(tmp_path)
    result = ok(
        run_train(
            workdir,
            demo_data_dir,
            compile_cache,
            "--config.num_steps=100",
            "--config.log.eval_every_steps=100",
            "--config.checkpoint.every_steps=1000",
            config="configs/demo.py",
            devices=1,
            timeout=600,  # ~2 min wall alone on 2 cores, ~3 min in the suite; room for a busier machine
            fast_compile=False,  # 100 steps of the demo model: -O0 would double the step time
        )
    )
    metrics = read_metrics(workdir)
    untrained, trained = metrics[0], metrics[100]
    print(
        f"demo (100 steps): MRR@10 {untrained['eval_mrr@10']:.3f} -> {trained['eval_mrr@10']:.3f}, "
        f"eval loss_gen {untrained['eval_loss_gen']:.3f} -> {trained['eval_loss_gen']:.3f}"
    )
    # The untrained model is a bag of random token vectors (embedding_init_std 0.25): MRR@10 ~0.16 on the
    # 304 held-out queries (standard error ~0.02). Measured (2-core CPU, deterministic): 0.165 -> 0.284 at
    # step 100, eval loss_gen 6.949 -> 5.154 (150 steps: 0.300 and 4.841; the full 500-step recipe: 0.366
    # and 3.864, benchmarks/RESULTS.md "Demo and quick start"); assert a gain of 0.08 and a fall of 1 nat.
    assert trained["eval_mrr@10"] > untrained["eval_mrr@10"] + 0.08
    assert trained["eval_loss_gen"] < untrained["eval_loss_gen"] - 1.0
    _check_demo_printout(result.stdout, trained["eval_mrr@10"], untrained["eval_mrr@10"])


def _check_demo_printout(out: str, trained: float, untrained: float) -> None:
    """The quick start's final printout: held-out MRR@10 trained / untrained / BM25 on the same queries
    (the first two as the evaluation logged them), an example query with its top 3 passages, an answer."""
    figures = re.search(
        r"held-out MRR@10 on (\d+) queries \(Python [\d.]+'s docstrings\): trained ([\d.]+), "
        r"untrained ([\d.]+), BM25 ([\d.]+)",
        out,
    )
    assert figures, out[-3000:]
    assert int(figures[1]) > 250
    assert float(figures[2]) == pytest.approx(trained, abs=1e-3)
    assert float(figures[3]) == pytest.approx(untrained, abs=1e-3)
    assert 0.1 < float(figures[4]) <= 1  # BM25 on docstrings finds something
    lines = out[out.index("example query:") :].splitlines()
    assert [line[:5] for line in lines[1:4]] == ["  1. ", "  2. ", "  3. "]
    assert len({line[5:].removesuffix(" (the answer)") for line in lines[1:4]}) == 3  # no passage twice
    assert lines[4].startswith("generated: What does `")


def test_start_from_hugging_face_dir_or_converted_checkpoint(tmp_path, data_dir, compile_cache):
    """Training from a bf16 HF directory and from its `grit-convert hf-to-orbax` checkpoint starts from the
    same weights, loaded into their shards (data=2 x fsdp=4) as float32 master weights: the runs log
    identical values, two hosts through launch/local.sh log the same within gloo's summation order (the
    held-out evaluation too: every host ranks the same held-out set), the first checkpoint holds float32
    parameters and optimizer state, and no run equals one from scratch. The batches are packed
    (data.packing): every host packs the whole batch alike and reads the records of its own rows'
    sequences, some from the other host's share of the batch."""
    import orbax.checkpoint as ocp
    import torch

    from grit_jax.programs.grit_convert import hf_to_orbax
    from tests.hf_reference import make_torch_model, save

    model = make_torch_model("mistral", vocab_size=512, hidden_size=64, intermediate_size=128)
    hf_dir = save(model.to(torch.bfloat16), tmp_path / "hf")  # as real checkpoints are stored
    shutil.copyfile(os.path.join(data_dir, "tokenizer.model"), os.path.join(hf_dir, "tokenizer.model"))
    converted = hf_to_orbax(hf_dir, str(tmp_path / "converted"))
    mesh = (
        "--config.mesh.data=2",
        "--config.mesh.fsdp=4",
        "--config.num_steps=2",
        "--config.log.eval_every_steps=2",
        "--config.data.packing=True",
    )
    runs = {}
    for name, override in (
        ("hf", f"--config.model.hf_dir={hf_dir}"),
        ("orbax", f"--config.model.init_checkpoint={converted}"),
        ("scratch", None),
    ):
        workdir = str(tmp_path / f"run_{name}")
        ok(run_train(workdir, data_dir, compile_cache, *mesh, *([override] if override else [])))
        runs[name] = read_metrics(workdir)
    assert runs["hf"] == runs["orbax"]
    assert runs["hf"][1]["loss"] != runs["scratch"][1]["loss"]

    workdir = str(tmp_path / "two_hosts")
    env = dict(train_env(4, compile_cache), PYTHON=sys.executable, DEVICES_PER_HOST="4", KILL_AFTER="5")
    command = [
        "bash",
        "launch/local.sh",
        "2",
        *train_command(workdir, data_dir, *mesh)[3:],
        f"--config.model.hf_dir={hf_dir}",
    ]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    two_hosts = read_metrics(workdir)
    assert_close_runs(two_hosts, runs["hf"], (1, 2), rtol=1e-5)  # the real tokens too
    assert all(0.5 < two_hosts[step]["real_share"] <= 1 for step in (1, 2))
    for step in (0, 2):
        for key in ("eval_mrr@10", "eval_loss_gen"):
            np.testing.assert_allclose(two_hosts[step][key], runs["hf"][step][key], rtol=1e-5, err_msg=key)
    metadata = ocp.PyTreeCheckpointer().metadata(os.path.join(workdir, "checkpoints", "2", "state"))
    tree = getattr(getattr(metadata, "item_metadata", metadata), "tree", metadata)
    weights = {k: leaf for k, leaf in tree_leaves(tree) if k.split(".")[0] in ("params", "opt_state")}
    weights = {k: leaf for k, leaf in weights.items() if getattr(leaf, "shape", ())}  # not Adam's count
    assert any(k.startswith("opt_state") for k in weights) and any(k.startswith("params") for k in weights)
    assert {str(leaf.dtype) for leaf in weights.values()} == {"float32"}


def test_two_hosts_killed_resumed_and_restored_on_another_mesh(tmp_path, reference, data_dir, compile_cache):
    """launch/local.sh runs 2 processes x 4 CPU devices as 2 hosts (gloo): killed after a checkpoint and
    restarted on the same layout, it logs the losses of the 1-process x 8-device reference run; its
    checkpoint then restores onto a different mesh (data=2 x fsdp=4, one process) and continues alike.

    Tolerance 1e-5 relative: the same program on the same 8-device mesh, but the cross-host reductions run
    through gloo, whose summation order may differ from the in-process one."""
    workdir = str(tmp_path / "two_hosts")
    env = dict(
        train_env(4, compile_cache),
        PYTHON=sys.executable,
        DEVICES_PER_HOST="4",
        KILL_AFTER="5",
    )
    env.pop("LOG_DIR", None)  # local.sh writes its logs under the run's --workdir by default
    command = ["bash", "launch/local.sh", "2", *train_command(workdir, data_dir)[3:]]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    wait_for(
        lambda: os.path.isdir(os.path.join(workdir, "checkpoints", str(2 * EVERY))), process, timeout=400
    )
    os.killpg(process.pid, signal.SIGKILL)  # every host at once, no chance to save
    process.communicate()
    restart = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert restart.returncode == 0, restart.stdout[-3000:] + restart.stderr[-3000:]
    assert "resuming from checkpoint step" in restart.stdout
    logs = os.path.join(workdir, "logs")
    assert "resuming from checkpoint step" in open(os.path.join(logs, "process_0.log")).read()
    assert os.path.isfile(os.path.join(logs, "process_1.log"))
    two_hosts, single = read_metrics(workdir), read_metrics(reference)
    assert sorted(two_hosts) == sorted(single)
    assert_close_runs(two_hosts, single, single, rtol=1e-5)

    other_mesh = str(tmp_path / "other_mesh")
    shutil.copytree(workdir, other_mesh)
    shutil.rmtree(os.path.join(other_mesh, "checkpoints", str(STEPS)))  # resume from step 28 ...
    result = ok(
        run_train(other_mesh, data_dir, compile_cache, "--config.mesh.data=2", "--config.mesh.fsdp=4")
    )
    assert "resuming from checkpoint step 28 " in result.stdout  # ... onto data=2 x fsdp=4
    assert_close_runs(read_metrics(other_mesh), single, (29, 30), rtol=1e-4)


def test_trained_run_exports_to_transformers(tmp_path, reference):
    """The reference run's work directory, exported with grit-convert, loads in transformers and gives the
    logits of the trained JAX model (restored from the same checkpoint by GritLM) within 1e-4."""
    import torch
    from transformers import AutoModelForCausalLM

    from grit_jax import GritLM
    from grit_jax.model.masks import make_attn_mask
    from grit_jax.programs import grit_convert as convert

    out = str(tmp_path / "hf")
    convert.run(["orbax-to-hf", "--ckpt", reference, "--out", out])
    exported = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    model = GritLM.from_pretrained(reference).model
    tokens = np.random.default_rng(0).integers(3, 500, (2, 12)).astype(np.int32)
    ours = np.asarray(model.logits(model(tokens, make_attn_mask(np.ones((2, 12), bool), "causal")).hidden))
    with torch.no_grad():
        theirs = exported(torch.as_tensor(tokens).long()).logits.numpy()
    assert np.abs(ours - theirs).max() < 1e-4


def test_resuming_with_another_model_ends_with_one_line(tmp_path, reference, data_dir, compile_cache):
    """A work directory whose checkpoints hold another model: one line naming the checkpoint, no traceback,
    and the checkpoints left as they were."""
    workdir = str(tmp_path / "run")
    shutil.copytree(reference, workdir)
    before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    other = ("--config.model.preset=tiny_moe", "--config.resume_changes=model.preset")  # past the config
    result = run_train(workdir, data_dir, compile_cache, *other, timeout=180)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("grit-train: error: checkpoint step 30 ") and "does not match this config" in last
    ), last
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before


def test_second_start_hits_the_compilation_cache_and_a_profile_is_written(tmp_path, data_dir, compile_cache):
    """The same config started twice on one compilation cache compiles nothing the second time; a
    log.profile_steps trace is written under the work directory and the run goes on to the end."""
    cache = str(tmp_path / "cache")
    first = ok(
        run_train(
            str(tmp_path / "a"),
            data_dir,
            compile_cache,
            f"--config.compile_cache_dir={cache}",
            "--config.num_steps=4",
            "--config.log.profile_steps=2:3",
        )
    )
    traces = glob.glob(str(tmp_path / "a" / "profile" / "**" / "*.xplane.pb"), recursive=True)
    assert traces and "profile of steps 2-3" in first.stdout
    assert json.loads(open(tmp_path / "a" / "metrics.jsonl").readlines()[-1])["step"] == 4
    second = ok(
        run_train(
            str(tmp_path / "b"),
            data_dir,
            compile_cache,
            f"--config.compile_cache_dir={cache}",
            "--config.num_steps=4",
        )
    )
    hits, misses = re.search(r"compilation cache .*: (\d+) hits, (\d+) misses", second.stdout).groups()
    assert int(misses) == 0 and int(hits) > 0, second.stdout[-2000:]
