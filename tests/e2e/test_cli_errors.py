"""grit-train and grit-aot (absl programs) answer a missing path, a bad checkpoint, a corrupt safetensors
file and an unknown flag with one line that names the thing to fix, the right exit status (2: usage, 1:
failure) and no traceback; every program does so as a subprocess. The argparse programs' cases run in
process: tests/integration/test_cli_errors.py.

grit-data reads no checkpoint: its "bad checkpoint" is a tokenizer file that is not one. grit-aot reads
a model's config.json but never its tensors, so a corrupt safetensors file is not its concern.
"""

import json
import os
import subprocess
import sys

import pytest

from grit_jax.data import sources
from grit_jax.data.tokenizer import Tokenizer
from tests.grit_fixtures import ROOT, bad_inputs, xla_flags

PROGRAMS = {
    "grit-train": "grit_jax.programs.grit_train",
    "grit-data": "grit_jax.programs.grit_data",
    "grit-convert": "grit_jax.programs.grit_convert",
    "grit-aot": "grit_jax.programs.grit_aot",
    "grit-embed": "grit_jax.programs.grit_embed",
    "grit-eval": "grit_jax.programs.grit_eval",
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """bad_inputs, and a small prepared data dir."""
    out = bad_inputs(tmp_path_factory.mktemp("cli"))
    records = out["root"] / "pairs.jsonl"
    records.write_text(
        "".join(
            json.dumps({"query": f"q {i}", "pos": [f"p {i}"], "neg": [f"n {i}"]}) + "\n" for i in range(16)
        )
    )
    out["data"] = str(out["root"] / "data")
    sources.prepare(
        out["data"],
        Tokenizer(out["tokenizer"]),
        [str(records)],
        [out["chats"]],
        query_max_len=32,
        passage_max_len=64,
        generative_max_len=64,
    )
    return out


def run(program, *args, cwd=ROOT):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = xla_flags(4)
    return subprocess.run(
        [sys.executable, "-m", PROGRAMS[program], *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_one_line(result, program, status, *named):
    assert result.returncode == status, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"{program}: error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    for name in named:
        assert name in errors[0], errors[0]


def train(inputs, *overrides):
    workdir = inputs["root"] / "run"
    return run(
        "grit-train",
        "--config",
        "configs/tiny.py",
        f"--workdir={workdir}",
        f"--config.data.data_dir={inputs['data']}",
        *overrides,
    )


def test_grit_train(inputs):
    assert_one_line(
        train(inputs, f"--config.data.data_dir={inputs['missing']}"), "grit-train", 2, inputs["missing"]
    )
    assert_one_line(
        train(inputs, f"--config.model.init_checkpoint={inputs['empty']}"),
        "grit-train",
        1,
        inputs["empty"],
        "not a checkpoint",
    )
    assert_one_line(
        train(inputs, f"--config.model.hf_dir={inputs['corrupt_hf']}"), "grit-train", 1, inputs["shard"]
    )
    assert_one_line(train(inputs, "--bogus_flag=1"), "grit-train", 2, "bogus_flag")
    url = run("grit-train", "--config", "configs/tiny.py", "--workdir=s3://bucket/run")
    assert_one_line(url, "grit-train", 2, "--workdir=s3://bucket/run", "expected a local path or gs://")
    assert not os.path.exists(os.path.join(ROOT, "s3:"))  # nothing written to a local folder named s3:


def test_grit_aot(inputs):
    aot = ("grit-aot", "--config", "configs/tiny.py", "--topology", "v5e-4")
    missing_config = os.path.join(inputs["missing"], "config.py")
    assert_one_line(
        run("grit-aot", "--config", missing_config, "--topology", "v5e-4"), "grit-aot", 2, missing_config
    )
    assert_one_line(
        run(*aot, f"--config.model.init_checkpoint={inputs['empty']}"),
        "grit-aot",
        2,
        inputs["empty"],
        "not a checkpoint",
    )
    assert_one_line(run(*aot, "--bogus_flag=1"), "grit-aot", 2, "bogus_flag")


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_every_program_says_what_is_required_in_one_line(program):
    """One subprocess per program, as a user starts it (its subcommand, nothing else): exit status 2 and
    one line naming what is required."""
    args = {"grit-data": ["prepare"], "grit-convert": ["hf-to-orbax"], "grit-eval": ["retrieval"]}.get(
        program, []
    )
    assert_one_line(run(program, *args), program, 2, "required")
