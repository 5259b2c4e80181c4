"""A run says what it is: one block at its start; a recipe naming a base model refuses to start without
weights unless model.random_init says so; the ETA leaves compiling steps out."""

import os
import shutil
import sys

import jax
import pytest

from configs import gritlm, tiny
from grit_jax import sharding
from grit_jax.errors import UsageError
from grit_jax.programs import grit_train
from grit_jax.train.run_summary import StepTimes, batch_tokens, check_weights, ignored_lines, summary
from grit_jax.train.state import TrainSetup

REFUSED = (
    "this recipe starts from mistralai/Mistral-7B-v0.1 but no weights are given: pass "
    "--config.model.hf_dir=DIR (its Hugging Face download) or --config.model.init_checkpoint=DIR, or "
    "--config.model.random_init=True to train it from random weights"
)


def test_recipe_without_weights_is_refused():
    config = gritlm.get_config("7b")
    with pytest.raises(UsageError) as e:
        check_weights(config)
    assert str(e.value) == REFUSED
    for field, value in [("hf_dir", "/m"), ("init_checkpoint", "/c"), ("random_init", True)]:
        allowed = gritlm.get_config("7b")
        allowed.model[field] = value
        check_weights(allowed)
    check_weights(tiny.get_config())  # no base model: the tiny preset is random by design
    assert {gritlm.get_config(v).model.base_model for v in gritlm.VARIANTS} >= {
        "mistralai/Mistral-7B-v0.1",
        "mistralai/Mixtral-8x7B-v0.1",
    }


def test_grit_train_refuses_in_one_line(tmp_path, capsys):
    argv = ["grit-train", "--config", "configs/gritlm.py:7b", "--workdir", str(tmp_path / "w")]
    with pytest.raises(SystemExit) as e:
        grit_train.run(argv)
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"grit-train: error: {REFUSED}"]
    assert sys.argv[0] != "grit-train"  # the in-process run gave sys.argv back


def test_summary_block():
    config = tiny.get_config()
    config.data.data_dir = "/data/prepared"
    setup = TrainSetup(config, sharding.make_mesh(config.mesh))
    manifest = {
        "train": {
            "embedding": [{"name": "medi2", "num_examples": 120}, {"name": "msmarco", "num_examples": 40}],
            "generative": [{"name": "tulu2", "num_examples": 80}],
        }
    }
    block = summary(
        config, setup, manifest, None, checkpoints="/w/checkpoints", compile_cache="/w/compile_cache"
    ).splitlines()
    assert block[0] == "run:"
    fields = {line.split(":")[0].strip(): line.split(":", 1)[1].strip() for line in block[1:]}
    assert fields["weights"] == "random init (model.preset tiny, seed 0)"
    params = sum(a.size for a in jax.tree.leaves(setup.abstract.params))
    assert fields["parameters"].startswith(f"{params / 1e3:.2f}k" if params < 1e6 else f"{params / 1e6:.2f}M")
    n = jax.device_count()  # conftest gives the CPU several devices
    assert fields["mesh"] == f"data={n} fsdp=1 tensor=1 expert=1 over {n} cpu device(s), 1 host(s)"
    # 20 steps x 8 per batch over 160 embedding examples: one epoch; over 80 generative: two
    assert fields["data embedding"] == "160 examples in 2 source(s) (medi2 120, msmarco 40); 1.00 epoch(s)"
    assert fields["data generative"] == "80 examples in 1 source(s) (tulu2 80); 2.00 epoch(s)"
    tokens = 8 * (32 + 2 * 64) + 8 * 64
    assert fields["global batch"] == (
        f"embedding 8 queries x 32 + 16 passages x 64; generative 8 x 64: up to {tokens:,} tokens per step"
    )
    assert fields["steps"] == "20 (from 0; checkpoint every 5, log every 1)"
    assert fields["compile cache"] == "/w/compile_cache"
    resumed = summary(config, setup, manifest, 10, checkpoints="/w/checkpoints", compile_cache="/c")
    assert "weights:       resumed from checkpoint step 10 in /w/checkpoints" in resumed
    config.objective.mode = "embedding"
    assert batch_tokens(config) == (["embedding 8 queries x 32 + 16 passages x 64"], 8 * (32 + 2 * 64))


def test_hub_config_metadata_is_listed_once(tmp_path):
    """A config.json as the hub publishes it (SmolLM2's nanotron and transformers.js keys) is read, and
    the keys read as metadata are named in the run block."""
    from grit_jax.train.state import resolve_model_config

    hub = os.path.join(
        os.path.dirname(__file__), "..", "fixtures", "hub_configs", "SmolLM2-135M-Instruct.json"
    )
    shutil.copyfile(hub, tmp_path / "config.json")
    config = tiny.get_config()
    config.model.hf_dir = str(tmp_path)
    assert (resolve_model_config(config).hidden_size, resolve_model_config(config).num_hidden_layers) == (
        576,
        30,
    )
    assert ignored_lines(config, None) == [
        "config.json:   ignored (no effect on the model): initializer_range, is_llama_config, "
        "pretraining_tp, torch_dtype, transformers.js_config, transformers_version, use_cache"
    ]
    assert ignored_lines(config, 10) == []  # resumed: the weights come from the checkpoint


def test_step_times_leave_compilation_out():
    times = StepTimes()
    times.add(300.0, ("a",))  # compiled
    assert times.per_step() is None
    times.add(2.0, ("a",))
    times.add(120.0, ("b",))  # a new batch shape: compiled again
    times.add(2.2, ("b",))
    times.add(2.1, ("a",))
    assert times.per_step() == 2.1


def test_progress_line_eta(tmp_path, capsys):
    from grit_jax.train.metrics_log import MetricsLog

    log = MetricsLog(str(tmp_path), 100_000, True)
    log.progress(1, {"loss": 1.0}, 300.0, None)  # only compiling steps so far
    log.progress(2, {"loss": 1.0}, 2.0, 2.0)
    log.close()
    first, second = capsys.readouterr().out.splitlines()
    assert first.endswith("300.000 s/step, ETA after compilation")
    assert second.endswith("2.000 s/step, ETA 55:33:16")  # 99,998 steps x 2 s, past a day
