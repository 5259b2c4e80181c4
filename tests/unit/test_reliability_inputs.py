"""Bad input ends in one line before anything is built: every number of the training config
(grit_jax.run_config.NUMBER_RANGES), and a demo vocabulary too small for the corpus."""

import math

import pytest

from grit_jax import run_config
from grit_jax.errors import UsageError

MESH = {"data": 1, "fsdp": 1, "tensor": 1, "expert": 1}


def _numbers(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _numbers(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield f"{prefix}{key}"


NUMBERS = sorted(_numbers(run_config.DEFAULTS))


def test_every_number_of_the_config_has_a_range():
    assert set(NUMBERS) - set(run_config.NUMBER_RANGES) == set()
    assert set(run_config.NUMBER_RANGES) - set(NUMBERS) == set()


def _bad_values(rule):
    low, high, integer = rule
    bad = [float("nan"), float("inf")] if not integer else [0.5]
    if low is not None:
        bad.append(low[0] if isinstance(low, list) else low - (1 if integer else 0.5))
    if high is not None:
        bad.append(high[0] if isinstance(high, list) else high + (1 if integer else 0.5))
    return bad


CASES = [(name, value) for name in NUMBERS for value in _bad_values(run_config.NUMBER_RANGES[name])]


@pytest.mark.parametrize("name, value", CASES, ids=[f"{n}={v}" for n, v in CASES])
def test_a_number_out_of_range_is_refused_naming_the_field(name, value):
    config = run_config.base_config()
    group, _, field = name.rpartition(".")
    with config.ignore_type():
        (config[group] if group else config)[field] = value
    with pytest.raises(UsageError) as raised:
        run_config.validate_config(config, MESH)
    assert str(raised.value).startswith(f"{name}=")


@pytest.mark.parametrize(
    "name, value",
    [("checkpoint.every_steps", 0), ("log.every_steps", 0), ("checkpoint.keep", 0)]
    + [("optimizer.learning_rate", -1e-4), ("optimizer.learning_rate", math.nan)],
)
def test_the_red_team_values_are_refused(name, value):
    config = run_config.base_config()
    group, _, field = name.rpartition(".")
    config[group][field] = value
    with pytest.raises(UsageError, match=name.replace(".", r"\.")):
        run_config.validate_config(config, MESH)


def test_defaults_pass():
    run_config.validate_config(run_config.base_config(), MESH)


def test_a_demo_vocabulary_too_small_for_the_corpus_is_one_line(tmp_path, capsys):
    from grit_jax.programs import grit_data

    status = grit_data.run(["demo", "--out", str(tmp_path / "demo"), "--vocab_size", "256"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and "\n" not in err
    assert err.startswith("grit-data: error: vocab_size=256 is too small") and "at least" in err
