"""A work dir holds what it was trained from (issue 32, class 1): export and GritLM.from_pretrained use the
model config and tokenizer the run recorded, not the base dir's or the data dir's files as they are later;
a resume that changes the run is refused by name unless resume_changes accepts it (then it is logged); a
work dir inside a dir the run reads is refused; with every checkpoint damaged a run does not start over
by itself (asked to, it does). Each case starts from a copy of the session's reference run
(tests/train_runs.py), in process; only the start-over runs steps (2)."""

import json
import os
import shutil

import pytest

from grit_jax.errors import CheckpointError, UsageError
from grit_jax.programs import grit_train
from tests.train_runs import EVERY, STEPS


@pytest.fixture
def run(tmp_path, reference):
    workdir = str(tmp_path / "run")
    shutil.copytree(reference, workdir, ignore=shutil.ignore_patterns("run.lock", "compile_cache"))
    return workdir


def _train(workdir, data_dir, cache, **changes):
    """grit_train.train as `grit-train --config configs/tiny.py` runs it, with dotted fields changed
    (`optimizer__learning_rate=0.5`); in process, so no absl flags (they can be parsed once only)."""
    from configs import tiny

    config = tiny.get_config()
    config.data.data_dir, config.num_steps = data_dir, STEPS
    config.checkpoint.every_steps = EVERY
    config.compile_cache_dir = cache  # the session's: an in-process run sets JAX's cache dir
    for name, value in changes.items():
        *groups, field = name.split("__")
        node = config
        for group in groups:
            node = node[group]
        node[field] = value
    return grit_train.train(config, workdir)


def _read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_export_and_from_pretrained_use_what_the_run_trained_with(run, tmp_path, tokenizer_model):
    from grit_jax.inference.gritlm import GritLM
    from grit_jax.model import ModelConfig
    from grit_jax.programs.grit_convert import orbax_to_hf

    recorded = json.load(open(f"{run}/origin/model_config.json"))
    tokenizer = _read(f"{run}/origin/tokenizer.model")
    assert json.load(open(f"{run}/base.json"))["base"].startswith("preset tiny")
    # Later: the data dir is re-prepared with another tokenizer, the base dir gets a new revision
    # (another rope theta); the run's config.json points at both.
    data, base = tmp_path / "data", tmp_path / "base"
    data.mkdir(), base.mkdir()
    shutil.copyfile(tokenizer_model, data / "tokenizer.model")
    revised = ModelConfig.preset("tiny").replace(rope_theta=123.0).to_hf_dict()
    (base / "config.json").write_text(json.dumps(revised))
    config = json.load(open(f"{run}/config.json"))
    config["model"]["hf_dir"], config["data"]["data_dir"] = str(base), str(data)
    open(f"{run}/config.json", "w").write(json.dumps(config))
    assert _read(tokenizer_model) != tokenizer

    out = orbax_to_hf(run, str(tmp_path / "export"))
    assert json.load(open(f"{out}/config.json"))["rope_theta"] == recorded["rope_theta"] != 123.0
    assert _read(f"{out}/tokenizer.model") == tokenizer
    model = GritLM.from_pretrained(run)
    assert model.config.rope_theta == recorded["rope_theta"]
    assert _read(model.tokenizer.model_path) == tokenizer


def test_a_resume_that_changes_the_run_is_refused_by_name_unless_accepted(
    run, data_dir, compile_cache, capsys
):
    config = open(f"{run}/config.json").read()
    changed = dict(optimizer__learning_rate=0.5, objective__pooling="lasttoken")
    with pytest.raises(UsageError) as refused:
        _train(run, data_dir, compile_cache, **changed)
    assert str(refused.value) == (
        f"--workdir {run}: resuming would change the run (objective.pooling: 'mean' -> 'lasttoken'; "
        "optimizer.learning_rate: 0.001 -> 0.5); rerun with the values it started with, use another "
        "--workdir, or accept the change with "
        "--config.resume_changes=objective.pooling,optimizer.learning_rate"
    )
    assert open(f"{run}/config.json").read() == config  # not rewritten
    capsys.readouterr()
    # the learning rate accepted by name (as --config.resume_changes=seed,optimizer.learning_rate arrives),
    # and a field that does not change the run: both logged
    accepted = dict(
        optimizer__learning_rate=0.5, resume_changes=("seed,optimizer.learning_rate",), log__every_steps=3
    )
    _train(run, data_dir, compile_cache, **accepted)
    out = capsys.readouterr().out
    assert f"resume at step {STEPS}: optimizer.learning_rate 0.001 -> 0.5 (resume_changes)" in out
    assert f"resume at step {STEPS}: log.every_steps 1 -> 3 (does not change the run)" in out
    logged = [json.loads(line) for line in open(f"{run}/config_changes.jsonl")]
    assert [(c["field"], c["old"], c["new"]) for c in logged] == [
        ("compile_cache_dir", "", compile_cache),
        ("log.every_steps", 1, 3),
        ("optimizer.learning_rate", 0.001, 0.5),
    ]
    assert json.load(open(f"{run}/config.json"))["optimizer"]["learning_rate"] == 0.5
    # the base's model config is part of the run (as if its config.json had a new revision since)
    recorded = json.load(open(f"{run}/origin/model_config.json"))
    theta = recorded["rope_theta"]
    open(f"{run}/origin/model_config.json", "w").write(json.dumps({**recorded, "rope_theta": 123.0}))
    with pytest.raises(UsageError, match=rf"\(model_config.rope_theta: 123.0 -> {theta}\); rerun"):
        _train(run, data_dir, compile_cache, optimizer__learning_rate=0.5)


def test_a_work_dir_inside_a_dir_the_run_reads_is_refused(tmp_path, data_dir, compile_cache):
    inside = os.path.join(data_dir, "run")
    with pytest.raises(UsageError) as refused:
        _train(inside, data_dir, compile_cache)
    assert str(refused.value) == (
        f"--workdir {inside} is inside data.data_dir={data_dir}, which this run reads; choose a work dir "
        "outside it"
    )
    assert not os.path.exists(inside)
    hf_dir = str(tmp_path / "hf")
    with pytest.raises(UsageError, match=f"--workdir {hf_dir} is model.hf_dir={hf_dir}, which"):
        _train(hf_dir, data_dir, compile_cache, model__hf_dir=hf_dir)


def test_with_every_checkpoint_damaged_a_run_does_not_start_over_by_itself(run, data_dir, compile_cache):
    steps = sorted(int(d) for d in os.listdir(f"{run}/checkpoints") if d.isdigit())
    for step in steps:
        os.remove(f"{run}/checkpoints/{step}/state/manifest.ocdbt")
    metrics = open(f"{run}/metrics.jsonl").read()
    for _ in range(2):  # the second time the damaged steps are already set aside
        with pytest.raises(CheckpointError) as refused:
            _train(run, data_dir, compile_cache)
        message = str(refused.value)
        assert message.startswith(f"{run}/checkpoints: no intact checkpoint left"), message
        assert message.endswith("pass --config.checkpoint.restart_when_damaged=True to start over")
        assert all(f"{s}.damaged" in message for s in steps)
    assert open(f"{run}/metrics.jsonl").read() == metrics
    # asked to, it starts over (2 steps here); the damaged steps stay set aside
    _train(run, data_dir, compile_cache, num_steps=2, checkpoint__restart_when_damaged=True)
    assert [json.loads(line)["step"] for line in open(f"{run}/metrics.jsonl")] == [1, 2]
    assert sorted(os.listdir(f"{run}/checkpoints")) == sorted(["2", *(f"{s}.damaged" for s in steps)])
