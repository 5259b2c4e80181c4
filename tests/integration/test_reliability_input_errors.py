"""Every input error is one line, with file:line where there is one, and --skip_bad counts it; the Python API
raises ValueError (UsageError) naming the bad argument. Bytes that are not UTF-8 and JSON's escaped lone
surrogates in grit-data prepare, grit-embed and GritLM.encode; a write that fails half way through a
prepare; `gs:/bucket` with one slash; a tokenizer larger than the model's vocabulary; generate's
arguments; merge-adapter onto a dir it already merged."""

import json
import os
import shutil

import numpy as np
import pytest
from flax import nnx

from grit_jax import GritLM, storage
from grit_jax.data import sources
from grit_jax.data.tokenizer import Tokenizer
from grit_jax.errors import DataError, UsageError
from grit_jax.model import ModelConfig, Transformer
from grit_jax.programs import grit_convert, grit_data, grit_embed
from grit_jax.retrieval.corpus import read_qrels
from grit_jax.retrieval.embedding_store import read_manifest
from grit_jax.weights import hf, peft_adapter
from tests.grit_fixtures import make_hf_dir

SURROGATE = '{"query": "a broken \\ud800 text", "pos": ["an answer"]}'  # JSON's escape, as written
NOT_UTF8 = b'{"query": "caf\xe9", "pos": ["an answer"]}'  # latin-1


def _lines(path, lines: list) -> str:
    with open(path, "wb") as f:
        f.writelines((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines)
    return str(path)


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def _good(i):
    return json.dumps({"query": f"question {i}", "pos": [f"answer {i}"]})


@pytest.fixture(scope="module")
def model(tokenizer_model):
    return GritLM(Transformer(ModelConfig.preset("tiny"), rngs=nnx.Rngs(0)), Tokenizer(tokenizer_model))


def test_text_that_is_not_unicode_is_a_file_line_error_or_skipped_and_counted(
    tmp_path, tokenizer_model, model, capsys
):
    data = _lines(tmp_path / "e.jsonl", [_good(0), SURROGATE, _good(1), NOT_UTF8, _good(2)])
    argv = ["prepare", "--embedding", data, "--tokenizer", tokenizer_model, "--out", str(tmp_path / "p")]
    assert grit_data.run(argv) == 1
    err = _one_line(capsys)
    assert f"{data}:2: field 'query' holds a lone surrogate '\\ud800'" in err
    assert f"{data}:4: not UTF-8" in err
    assert grit_data.run([*argv, "--skip_bad"]) == 0
    [entry] = sources.read_manifest(str(tmp_path / "p"))["train"]["embedding"]
    assert (entry["num_examples"], entry["num_skipped"]) == (3, 2)

    docs = [json.dumps({"id": f"d{i}", "text": f"text {i}"}) for i in range(3)]
    corpus = _lines(tmp_path / "c.jsonl", [docs[0], '{"id": "x", "text": "\\udfff"}', NOT_UTF8, docs[1]])
    hf_dir = make_hf_dir(tmp_path / "hf", tokenizer_model)[1]
    capsys.readouterr()
    argv = ["--model", hf_dir, "--input", corpus, "--out", str(tmp_path / "emb")]
    assert grit_embed.run(argv) == 1
    assert f"{corpus}:2: the text holds a lone surrogate" in _one_line(capsys)
    assert grit_embed.run([*argv, "--skip_bad"]) == 0
    manifest = read_manifest(str(tmp_path / "emb" / "manifest.json"))
    assert manifest["count"] == 2 and manifest["skipped"] == 2
    assert f"{corpus}:3: not UTF-8" in manifest["skipped_examples"][1]

    qrels = _lines(tmp_path / "qrels.tsv", [b"q1\td0\t1", b"q\xe9\td1\t1"])
    with pytest.raises(DataError, match=f"{qrels}:2: not UTF-8"):
        read_qrels(qrels)

    with pytest.raises(ValueError, match="sentence 1 holds a lone surrogate '\\\\udfff' at character 2"):
        model.encode(["fine", "ab\udfff"])
    with pytest.raises(ValueError, match="sentence 0 must be a string, got int"):
        model.encode([3])


def test_a_write_that_fails_half_way_leaves_the_previous_dataset_whole(
    tmp_path, tokenizer_model, monkeypatch, capsys
):
    out = tmp_path / "p"
    argv = ["prepare", "--tokenizer", tokenizer_model, "--out", str(out), "--embedding"]
    assert grit_data.run([*argv, _lines(tmp_path / "a.jsonl", [_good(i) for i in range(3)])]) == 0
    before = {p: p.read_bytes() for p in out.iterdir() if p.is_file()}
    real = shutil.copyfile

    def disk_full(src, dst, **kwargs):  # half the bytes, then the disk is full
        with open(src, "rb") as f, open(dst, "wb") as g:
            g.write(f.read()[:100])
        raise OSError(28, "No space left on device", dst)

    monkeypatch.setattr(shutil, "copyfile", disk_full)
    capsys.readouterr()
    assert grit_data.run([*argv, _lines(tmp_path / "b.jsonl", [_good(i) for i in range(5)])]) == 1
    assert "No space left on device" in _one_line(capsys)
    monkeypatch.setattr(shutil, "copyfile", real)
    assert {p: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # the tokenizer too
    assert sources.read_manifest(str(out))["train"]["embedding"][0]["num_examples"] == 3


def test_a_url_with_one_slash_is_refused_by_every_layer(tmp_path, capsys):
    for path in ("gs:/bucket/data", "s3:/bucket"):
        with pytest.raises(UsageError, match="a URL needs two slashes"):
            storage.as_path(path)
        with pytest.raises(UsageError, match="a URL needs two slashes"):
            storage.kvstore(path)
    argv = ["prepare", "--embedding", "x.jsonl", "--tokenizer", "t.model", "--out", "gs:/bucket/p"]
    assert grit_data.run(argv) == 2
    assert "gs:/bucket/p: a URL needs two slashes (gs://BUCKET/PATH)" in _one_line(capsys)
    assert storage.is_url("gs://bucket/p") and not storage.is_url(str(tmp_path / "gs_bucket"))


def test_bad_arguments_of_the_api_are_value_errors_naming_them(tokenizer_model, model):
    small = Transformer(ModelConfig.preset("tiny", vocab_size=256), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="the tokenizer has 400 tokens but the model's vocabulary has 256"):
        GritLM(small, Tokenizer(tokenizer_model))
    cases = [
        (dict(inputs=[[1, 5, 512]]), "prompt 0: token 2 is 512, outside the model's vocabulary"),
        (dict(inputs=[[1, 5], [1, -1]]), "prompt 1: token 1 is -1, outside"),
        (dict(inputs=[1, 2.5]), "prompt 0: token 1 is 2.5, not an integer id"),
        (dict(inputs=[[1, 5]], max_new_tokens=-1), "max_new_tokens must be at least 1, got -1"),
        (dict(inputs=[[1, 5]], do_sample=True, top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(inputs=[[1, 5]], do_sample=True, temperature=0), "temperature must be a positive number"),
        (dict(inputs=[]), "generate got no prompts"),
        (dict(inputs=[[1, 5], []]), "prompt 1 has no tokens"),
        (dict(inputs="text \ud800"), "prompt 0 holds a lone surrogate"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            model.generate(**kwargs)
    with pytest.raises(ValueError, match="encode got no sentences"):
        model.encode([])
    assert len(model.generate([[1, 5]], max_new_tokens=2, do_sample=True, top_p=0.5)[0]) == 2


def test_merge_adapter_onto_a_dir_it_already_merged_is_refused(tmp_path, tokenizer_model, capsys):
    base = make_hf_dir(tmp_path / "base", tokenizer_model)[1]
    cfg = hf.read_hf_config(base).replace(lora_rank=2, lora_alpha=4.0, lora_targets=("q_proj",))
    shapes, rng = hf.param_shapes(cfg), np.random.default_rng(0)
    arrays = {}
    for module, entry in peft_adapter._kernel_entries(cfg).items():
        if module.endswith("q_proj"):
            shape = shapes[entry.path]
            fan_in, fan_out = np.prod(shape[: entry.in_ndim]), np.prod(shape[entry.in_ndim :])
            a = rng.normal(size=(cfg.num_hidden_layers, fan_in, 2)).astype(np.float32)
            arrays[module] = (a, rng.normal(size=(cfg.num_hidden_layers, 2, fan_out)).astype(np.float32))
    adapter = peft_adapter.write_adapter(str(tmp_path / "adapter"), arrays, cfg, base)
    merged, twice = str(tmp_path / "merged"), str(tmp_path / "twice")
    assert grit_convert.run(["merge-adapter", "--base", base, "--adapter", adapter, "--out", merged]) == 0
    capsys.readouterr()
    assert grit_convert.run(["merge-adapter", "--base", merged, "--adapter", adapter, "--out", twice]) == 2
    err = _one_line(capsys)
    assert f"--base {merged}: adapter {adapter} is already merged into it" in err
    assert not os.path.exists(twice) or not os.listdir(twice)
