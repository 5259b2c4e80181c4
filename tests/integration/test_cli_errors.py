"""grit-data, grit-convert, grit-embed and grit-eval answer a missing path, a bad checkpoint, a corrupt
safetensors file and an unknown flag with one line that names the thing to fix, the right exit status
(2: usage, 1: failure) and no traceback: in process, through each program's run(argv). (grit-train and
grit-aot, and one subprocess per program: tests/e2e/test_cli_errors.py.)

grit-data reads no checkpoint: its "bad checkpoint" is a tokenizer file that is not one.
"""

import json
import os

import pytest

from grit_jax.programs import grit_convert, grit_data, grit_embed, grit_eval
from tests.grit_fixtures import bad_inputs, write_beir

PROGRAMS = {
    "grit-data": grit_data.run,
    "grit-convert": grit_convert.run,
    "grit-embed": grit_embed.run,
    "grit-eval": grit_eval.run,
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return bad_inputs(tmp_path_factory.mktemp("cli"))


class Result:
    def __init__(self, returncode, stderr):
        self.returncode, self.stderr = returncode, stderr


@pytest.fixture
def run(capsys):
    """Runs a program in process: its exit status (returned, or raised by argparse) and stderr."""

    def call(program, *args):
        capsys.readouterr()
        try:
            status = PROGRAMS[program](list(map(str, args)))
        except SystemExit as e:
            status = e.code
        return Result(status, capsys.readouterr().err)

    return call


def assert_one_line(result, program, status, *named):
    assert result.returncode == status, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"{program}: error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    for name in named:
        assert name in errors[0], errors[0]


def test_grit_data(inputs, run):
    out = inputs["root"] / "prepared"
    assert_one_line(
        run(
            "grit-data",
            "prepare",
            "--embedding",
            inputs["missing"],
            "--tokenizer",
            inputs["tokenizer"],
            "--out",
            out,
        ),
        "grit-data",
        1,
        inputs["missing"],
    )
    chats = str(inputs["root"] / "chats.jsonl")
    assert_one_line(
        run(
            "grit-data",
            "prepare",
            "--generative",
            chats,
            "--tokenizer",
            inputs["bad_tokenizer"],
            "--out",
            out,
        ),
        "grit-data",
        1,
        inputs["bad_tokenizer"],
    )
    assert_one_line(
        run(
            "grit-data",
            "prepare",
            "--generative",
            chats,
            "--tokenizer",
            inputs["tokenizer"],
            "--out",
            out,
            "--bogus_flag",
        ),
        "grit-data",
        2,
        "--bogus_flag",
    )


def test_grit_convert(inputs, run):
    out = inputs["root"] / "converted"
    assert_one_line(
        run("grit-convert", "hf-to-orbax", "--hf_dir", inputs["missing"], "--out", out),
        "grit-convert",
        1,
        inputs["missing"],
    )
    assert_one_line(
        run("grit-convert", "orbax-to-hf", "--ckpt", inputs["empty"], "--out", out),
        "grit-convert",
        1,
        inputs["empty"],
        "not a checkpoint",
    )
    assert_one_line(
        run("grit-convert", "hf-to-orbax", "--hf_dir", inputs["corrupt_hf"], "--out", out),
        "grit-convert",
        1,
        inputs["shard"],
    )
    assert not os.path.exists(out / "params") and not os.path.exists(
        out / "params.partial"
    )  # nothing half-written
    assert_one_line(
        run("grit-convert", "hf-to-orbax", "--hf_dir", inputs["corrupt_hf"], "--out", out, "--bogus_flag"),
        "grit-convert",
        2,
        "--bogus_flag",
    )


def test_grit_embed(inputs, run):
    corpus = inputs["root"] / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": f"doc {i}"}) + "\n" for i in range(4)))
    out = inputs["root"] / "embedded"
    assert_one_line(
        run("grit-embed", "--model", inputs["corrupt_hf"], "--input", inputs["missing"], "--out", out),
        "grit-embed",
        1,
        inputs["missing"],
    )
    assert_one_line(
        run("grit-embed", "--model", inputs["empty"], "--input", corpus, "--out", out),
        "grit-embed",
        1,
        inputs["empty"],
    )
    assert_one_line(
        run("grit-embed", "--model", inputs["corrupt_hf"], "--input", corpus, "--out", out),
        "grit-embed",
        1,
        inputs["shard"],
    )
    assert_one_line(
        run("grit-embed", "--model", inputs["empty"], "--input", corpus, "--out", out, "--bogus_flag"),
        "grit-embed",
        2,
        "--bogus_flag",
    )


def test_grit_eval(inputs, run):

    beir = inputs["root"] / "beir"
    if not beir.exists():
        write_beir(beir, n_docs=8, n_queries=2)
    retrieval = ("grit-eval", "retrieval", "--model")
    assert_one_line(
        run(*retrieval, inputs["corrupt_hf"], "--data", inputs["missing"]), "grit-eval", 1, inputs["missing"]
    )
    assert_one_line(run(*retrieval, inputs["empty"], "--data", beir), "grit-eval", 1, inputs["empty"])
    assert_one_line(run(*retrieval, inputs["corrupt_hf"], "--data", beir), "grit-eval", 1, inputs["shard"])
    assert_one_line(
        run(*retrieval, inputs["empty"], "--data", beir, "--bogus_flag"), "grit-eval", 2, "--bogus_flag"
    )
