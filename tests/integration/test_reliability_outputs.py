"""Degenerate outputs are refused where they are made (grit_jax.inference.output_checks): a model with one
non-finite weight, or a --max_length that leaves nothing after the instruction, ends grit-embed and
grit-eval in one line naming the first bad document or query (exit 1), with nothing written or scored;
GritLM.encode and generate raise OutputError naming the first bad sentence or prompt."""

import glob
import json
import os
import shutil

import numpy as np
import pytest
import safetensors.numpy

from grit_jax import GritLM
from grit_jax.errors import DataError, OutputError
from grit_jax.programs import grit_embed, grit_eval
from grit_jax.retrieval.embedding_store import load_embeddings
from tests.grit_fixtures import INSTRUCTION, make_hf_dir, make_tokenizer, write_beir


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(a tiny Hugging Face dir, its copy with one weight of the last layer set to NaN)."""
    root = tmp_path_factory.mktemp("outputs")
    make_tokenizer(root / "tokenizer.model")
    _, good = make_hf_dir(root / "good", root / "tokenizer.model")
    nan = str(root / "nan")
    shutil.copytree(good, nan)
    for file in sorted(glob.glob(os.path.join(nan, "*.safetensors"))):
        tensors = safetensors.numpy.load_file(file)
        name = next((k for k in tensors if "layers.1.mlp.down_proj" in k), None)
        if name:
            tensors[name][0, 0] = np.nan
            safetensors.numpy.save_file(tensors, file, {"format": "pt"})
            return good, nan
    raise AssertionError("no down_proj weight found")


def _corpus(path, n=6):
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": f"text number {i}"}) + "\n" for i in range(n)))
    return str(path)


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_a_model_with_a_nan_weight_is_refused_not_written_or_scored(tmp_path, models, capsys):
    good, nan = models
    out = str(tmp_path / "emb")
    argv = ["--model", nan, "--input", _corpus(tmp_path / "c.jsonl"), "--out", out, "--window", "4"]
    assert grit_embed.run(argv) == 1
    err = _one_line(capsys)
    assert err.startswith("grit-embed: error: document 'd0': the embedding is not finite"), err
    assert not glob.glob(os.path.join(out, "part-*")), "nothing of the window is written"
    with pytest.raises(DataError, match="manifest.json"):
        load_embeddings(out)  # nothing to read

    write_beir(tmp_path / "beir", n_docs=20, n_queries=3)
    assert grit_eval.run(["retrieval", "--model", nan, "--data", str(tmp_path / "beir")]) == 1
    captured = capsys.readouterr()
    assert "ndcg" not in captured.out  # nothing is scored
    assert captured.err.strip() == (
        "grit-eval: error: document 'doc0': the embedding is not finite (NaN or inf): a non-finite "
        "weight, or an overflow in the compute dtype"
    )

    model = GritLM.from_pretrained(nan)
    with pytest.raises(OutputError, match="^sentence 0: the embedding is not finite"):
        model.encode(["a", "b"])
    with pytest.raises(OutputError, match="^prompt 0: the logits for generated token 0 are not finite"):
        model.generate([[1, 5, 6], [1, 7]], max_new_tokens=3)
    # the same calls on the good model pass the checks
    assert np.isfinite(GritLM.from_pretrained(good).encode(["a", "b"])).all()


def test_nothing_left_after_the_instruction_is_refused_naming_the_first_such_row(tmp_path, models, capsys):
    good, _ = models
    model = GritLM.from_pretrained(good)
    # an empty sentence leaves nothing after the instruction: the second row is named, not the first
    with pytest.raises(OutputError, match="^sentence 1: nothing left to embed after the instruction"):
        model.encode(["some text", "", "more"], instruction="<|embed|>\n")
    skip = model.instruction_length(INSTRUCTION)
    with pytest.raises(OutputError, match=f"takes {skip}; raise max_length"):
        model.encode(["some text"], instruction=INSTRUCTION, max_length=skip)

    corpus, out = _corpus(tmp_path / "c.jsonl"), str(tmp_path / "emb")
    argv = ["--model", good, "--input", corpus, "--out", out, "--instruction", INSTRUCTION]
    assert grit_embed.run([*argv, "--max_length", str(skip)]) == 1
    err = _one_line(capsys)
    assert err.startswith("grit-embed: error: document 'd0': nothing left to embed after the instruction")
    assert grit_embed.run([*argv, "--max_length", str(skip + 4)]) == 0  # the same store, now finished
    ids, vectors = load_embeddings(out)
    assert ids == [f"d{i}" for i in range(6)] and np.isfinite(vectors).all()
