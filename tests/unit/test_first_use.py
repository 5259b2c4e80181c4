"""Tried as a new user would (issue 32, class 5), the cases that end before anything loads: a mistyped
recipe variant, a config file that raises, and `grit-eval mteb` without the `eval` extra each say why in
one line. In process, through each program's run(argv). The other cases of that class are tested where
their code is: the LoRA demo's final report and a LoRA work dir loaded as a model
(e2e/test_lora_train.py), the export's and the merged model's cards (integration/test_model_card.py,
integration/test_lora_peft.py), slice sizes that do not exist (e2e/test_tpu_keep.py)."""

import sys

import pytest

from configs import gritlm
from grit_jax.programs import grit_aot, grit_eval, grit_train


def _exit_status(run, argv) -> int:
    with pytest.raises(SystemExit) as e:
        run(argv)
    return e.value.code


@pytest.mark.parametrize(
    "module, program, extra",
    [
        (grit_train, "grit-train", ["--workdir", "/nonexistent"]),
        (grit_aot, "grit-aot", ["--topology", "v5e-8"]),
    ],
)
@pytest.mark.parametrize("variant", ["7x", "7b,embeding"])
def test_a_bad_recipe_variant_says_why_in_one_line(capsys, module, program, extra, variant):
    argv = [program, "--config", f"configs/gritlm.py:{variant}", *extra]
    assert _exit_status(module.run, argv) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        f"{program}: error: --config: configs/gritlm.py:{variant}: expected VARIANT[,MODE] with VARIANT in "
        f"{sorted(gritlm.VARIANTS)} and MODE in ('unified', 'embedding', 'generative'), e.g. "
        "configs/gritlm.py:7b,embedding"
    ]


def test_a_config_file_that_raises_says_what_it_raised(tmp_path, capsys):
    config = tmp_path / "mine.py"
    config.write_text("def get_config():\n    raise RuntimeError('set MY_DATA first')\n")
    assert _exit_status(grit_train.run, ["grit-train", "--config", str(config), "--workdir", "/x"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "grit-train: error: --config: RuntimeError: set MY_DATA first"
    ]


def test_grit_eval_mteb_without_the_eval_extra_names_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mteb", None)  # what `import mteb` does where it is not installed
    argv = ["mteb", "--model", str(tmp_path), "--tasks", "SciFact", "--out", str(tmp_path / "out")]
    assert grit_eval.run(argv) == 2
    assert capsys.readouterr().err.splitlines() == [
        "grit-eval: error: grit-eval mteb needs mteb: pip install 'grit_jax[eval]'"
    ]
