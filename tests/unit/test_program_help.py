"""Every program answers --help and -h with its own flags (exit 0, a screen or two, not absl's hundreds),
an unknown config field is one clean line with the suggestion, and GritLM's Python API rejects unknown
keyword arguments as Python functions do. In-process, through each program's run(argv)."""

import inspect

import pytest

from grit_jax.programs import grit_aot, grit_convert, grit_data, grit_embed, grit_eval, grit_train

ABSL = [
    (grit_train, "grit-train", ["--config", "--workdir"]),
    (grit_aot, "grit-aot", ["--config", "--topology"]),
]
ARGPARSE = [
    (grit_data, ["prepare", "--help"], ["--embedding", "--out"]),
    (grit_data, ["--help"], ["prepare", "demo"]),
    (grit_convert, ["hf-to-orbax", "-h"], ["--hf_dir", "--out"]),
    (grit_embed, ["-h"], ["--model", "--input", "--out"]),
    (grit_eval, ["retrieval", "--help"], ["--model", "--data"]),
]


def _exit_status(run, argv) -> int:
    with pytest.raises(SystemExit) as e:
        run(argv)
    return e.value.code


@pytest.mark.parametrize("module, program, names", ABSL)
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_absl_programs_help(capsys, module, program, names, flag):
    assert _exit_status(module.run, [program, flag]) == 0
    out = capsys.readouterr().out
    assert all(f"\n  {name} " in out for name in names), out
    assert "optimizer: " in out and "learning_rate=2e-05" in out  # the config groups with defaults
    assert "orbax" not in out and "jax_" not in out  # no library flags in the way
    assert len(out.splitlines()) < 60


def test_help_shows_the_named_recipe(capsys):
    assert _exit_status(grit_train.run, ["grit-train", "--config", "configs/gritlm.py:7b", "-h"]) == 0
    out = capsys.readouterr().out
    assert "config fields of configs/gritlm.py:7b" in out and "preset=mistral_7b" in out


@pytest.mark.parametrize("module, argv, names", ARGPARSE)
def test_argparse_programs_help(capsys, module, argv, names):
    assert _exit_status(module.run, argv) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in names), out


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "--config.optimizer.learning_rat=1",
            "grit-train: error: --config.optimizer.learning_rat: the config has no field 'learning_rat'; "
            "did you mean 'learning_rate'? grit_jax/run_config.py lists the fields (or --help)",
        ),
        (
            "--config.optimizr.learning_rate=1",
            "grit-train: error: --config.optimizr.learning_rate: the config has no field 'optimizr'; "
            "did you mean 'optimizer'? grit_jax/run_config.py lists the fields (or --help)",
        ),
    ],
)
def test_unknown_config_field_is_one_clean_line(capsys, override, message):
    argv = ["grit-train", "--config", "configs/tiny.py", override, "--workdir", "/nonexistent"]
    assert _exit_status(grit_train.run, argv) == 2
    assert capsys.readouterr().err.splitlines() == [message]


def test_gritlm_api_rejects_unknown_keywords():
    """encode(s, max_lenght=4) raised nothing before (a **unused catch-all); now a TypeError, as Python does,
    before anything loads or runs."""
    from grit_jax.inference.gritlm import GritLM

    for method, bad in [
        (GritLM.encode, dict(max_lenght=4)),
        (GritLM.generate, dict(max_new_token=4)),
        (GritLM.from_pretrained, dict(pooling="mean")),
    ]:
        with pytest.raises(TypeError, match="unexpected keyword argument"):
            inspect.signature(method).bind(None, "text", **bad)
    with pytest.raises(TypeError, match="max_lenght"):
        GritLM.encode(object(), "text", max_lenght=4)
    with pytest.raises(TypeError, match="pooling"):
        GritLM.from_pretrained("/nonexistent", pooling="mean")
