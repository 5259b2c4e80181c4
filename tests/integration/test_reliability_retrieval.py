"""grit-embed and grit-eval do not trust what is on disk or in the input: a damaged part is embedded again,
a resume with other weights or with an input edited in place is refused, a store is read only once its run
finished, one grit-embed writes an --out at a time, ids that cannot round-trip and duplicate ids are
file:line errors, and BEIR files that would score nonsense (missing documents, fractional or infinite
relevance, empty or duplicate inputs) are one-line errors."""

import glob
import json
import os
import shutil

import numpy as np
import pytest
import safetensors.numpy

from grit_jax.errors import DataError
from grit_jax.programs import grit_embed, grit_eval
from grit_jax.programs.grit_embed import run as embed
from grit_jax.retrieval.corpus import read_qrels, read_records
from grit_jax.retrieval.embedding_store import EmbeddingStore, load_embeddings
from grit_jax.retrieval.ranking import load_beir
from tests.grit_fixtures import make_hf_dir, make_tokenizer, write_beir


def _write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return str(path)


def _docs(n):
    return [{"_id": f"d{i}", "text": f"document number {i} about json and os"} for i in range(n)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_tokenizer(root / "tokenizer.model")
    _, path = make_hf_dir(root / "a", root / "tokenizer.model")
    moved_on = str(root / "b")  # the same model a training step later: every weight a little changed
    shutil.copytree(path, moved_on)
    for file in glob.glob(os.path.join(moved_on, "*.safetensors")):
        tensors = safetensors.numpy.load_file(file)
        safetensors.numpy.save_file({k: v + 1e-3 for k, v in tensors.items()}, file, {"format": "pt"})
    return [path, moved_on]


def _embed(model, corpus, out):
    return embed(["--model", model, "--input", corpus, "--out", out, "--window", "4", "--batch_size", "4"])


def test_a_damaged_part_is_embedded_again_on_resume(tmp_path, models, capsys):
    corpus, out = _write(tmp_path / "c.jsonl", _docs(10)), str(tmp_path / "out")
    assert _embed(models[0], corpus, out) == 0
    ids, vectors = load_embeddings(out)
    with open(os.path.join(out, "part-00001.npy"), "r+b") as f:
        f.truncate(100)
    with pytest.raises(DataError, match="part-00001.npy: 100 bytes"):
        load_embeddings(out)  # the reader checks too
    capsys.readouterr()
    assert _embed(models[0], corpus, out) == 0
    assert "part-00001.npy: 100 bytes" in capsys.readouterr().err
    again_ids, again = load_embeddings(out)
    assert again_ids == ids == [d["_id"] for d in _docs(10)]
    np.testing.assert_array_equal(again, vectors)


def test_a_resume_with_other_weights_at_the_same_path_is_refused(tmp_path, models, capsys):
    model = str(tmp_path / "model")
    shutil.copytree(models[0], model)
    corpus, out = _write(tmp_path / "c.jsonl", _docs(6)), str(tmp_path / "out")
    assert _embed(model, corpus, out) == 0
    shutil.rmtree(model)
    shutil.copytree(models[1], model)  # the checkpoint moved on
    capsys.readouterr()
    assert _embed(model, corpus, out) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "model_weights" in err


def test_a_store_is_read_only_once_its_run_finished(tmp_path, models, monkeypatch, capsys):
    corpus, out = _write(tmp_path / "c.jsonl", _docs(10)), str(tmp_path / "out")

    def killed(*args):
        raise KeyboardInterrupt  # the run stops after its last part, before it says it finished

    with monkeypatch.context() as patch:
        patch.setattr(EmbeddingStore, "finish", killed)
        assert _embed(models[0], corpus, out) == 130
    with pytest.raises(DataError, match="incomplete .*complete=false"):
        load_embeddings(out)
    assert _embed(models[0], corpus, out) == 0
    assert load_embeddings(out)[0] == [d["_id"] for d in _docs(10)]


def test_one_grit_embed_per_out_directory(tmp_path, models, monkeypatch, capsys):
    corpus, out = _write(tmp_path / "c.jsonl", _docs(6)), str(tmp_path / "out")
    second, embed_corpus = [], grit_embed.embed_corpus

    def while_running(*args, **kwargs):  # a second grit-embed into the same --out while the first one embeds
        second.append(_embed(models[0], corpus, out))
        second.append(capsys.readouterr().err.strip())
        return embed_corpus(*args, **kwargs)

    monkeypatch.setattr(grit_embed, "embed_corpus", while_running)
    assert _embed(models[0], corpus, out) == 0
    assert second[0] == 2
    assert "\n" not in second[1] and second[1].startswith(f"grit-embed: error: --out {out} is in use by")
    assert f"pid {os.getpid()}" in second[1]
    assert load_embeddings(out)[0] == [d["_id"] for d in _docs(6)]


def test_an_input_edited_in_place_with_the_same_size_is_not_resumed(tmp_path, models, capsys):
    path, out = tmp_path / "c.jsonl", str(tmp_path / "out")
    corpus = _write(path, _docs(6))
    assert _embed(models[0], corpus, out) == 0
    edited = path.read_text().replace("number 3", "number 9")
    assert len(edited) == os.path.getsize(corpus)
    path.write_text(edited)
    capsys.readouterr()
    assert _embed(models[0], corpus, out) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "inputs differ; an input file changed since (content hash)" in err


def test_a_retrieval_result_names_the_weights_that_made_it(tmp_path, models):
    write_beir(tmp_path / "beir", n_docs=20, n_queries=3)
    corpus, result = str(tmp_path / "beir" / "corpus.jsonl"), tmp_path / "result.json"
    assert _embed(models[0], corpus, str(tmp_path / "emb")) == 0
    argv = ["retrieval", "--model", models[0], "--data", str(tmp_path / "beir"), "--out", str(result)]
    assert grit_eval.run(argv) == 0
    embedded = json.loads((tmp_path / "emb" / "manifest.json").read_text())["settings"]["model_weights"]
    assert json.loads(result.read_text())["model_weights"] == embedded  # one fingerprint for one model
    assert not list(tmp_path.glob("result.json.*")), "written under a temporary name, then renamed"


@pytest.mark.parametrize("rid", ["a b", "x\ry", "tab\there", "u\u2028v", "bell\x07"])
def test_an_id_that_cannot_round_trip_is_refused_with_file_and_line(tmp_path, rid):
    path = _write(tmp_path / "c.jsonl", [{"_id": "ok", "text": "t"}, {"_id": rid, "text": "t"}])
    with pytest.raises(DataError, match=r"c\.jsonl:2: id .* whitespace or a control character"):
        list(read_records([path]))


def test_a_duplicate_id_is_refused_with_file_and_line(tmp_path):
    path = _write(tmp_path / "c.jsonl", [{"_id": "1", "text": "a"}, {"_id": "2", "text": "b"}])
    other = _write(tmp_path / "d.jsonl", [{"_id": "3", "text": "c"}, {"_id": "1", "text": "d"}])
    with pytest.raises(DataError, match=r"d\.jsonl:2: duplicate id '1'"):
        list(read_records([path, other]))


def _beir(root, corpus, qrels, queries=({"_id": "q1", "text": "which json"},)):
    _write(root / "corpus.jsonl", corpus)
    _write(root / "queries.jsonl", list(queries))
    _write(root / "qrels" / "test.tsv", ["query-id\tcorpus-id\tscore", *qrels])
    return str(root)


def test_qrels_naming_documents_not_in_the_corpus_are_an_error_or_dropped_and_counted(tmp_path, capsys):
    data = _beir(tmp_path, _docs(2), ["q1\td0\t1", "q1\tgone\t1", "q1\talso_gone\t2"])
    with pytest.raises(DataError, match=r"judges 2 document\(s\) that .*corpus.jsonl lacks"):
        load_beir(data)
    corpus, queries, qrels = load_beir(data, drop_missing=True)
    assert qrels == {"q1": {"d0": 1}} and len(queries) == 1
    assert "dropped 2 judgement(s) of 2 document(s) not in the corpus" in capsys.readouterr().err


@pytest.mark.parametrize("score", ["0.9", "inf", "nan", "1e3", "x"])
def test_relevance_must_be_an_integer(tmp_path, score):
    path = _write(tmp_path / "test.tsv", ["query-id\tcorpus-id\tscore", "q1\td0\t1", f"q1\td1\t{score}"])
    with pytest.raises(DataError, match=rf"test\.tsv:3: relevance '{score}' is not an integer"):
        read_qrels(path)


@pytest.mark.parametrize(
    "corpus, qrels, message",
    [
        ([], ["q1\td0\t1"], "corpus.jsonl: no documents"),
        (_docs(2), [], "test.tsv: no judgements"),
        (_docs(2) + [{"_id": "d1", "text": "again"}], ["q1\td0\t1"], r"corpus.jsonl:3: duplicate id 'd1'"),
    ],
    ids=["empty corpus", "empty qrels", "duplicate document"],
)
def test_empty_inputs_and_duplicate_ids_are_one_line_errors(tmp_path, corpus, qrels, message):
    with pytest.raises(DataError, match=message) as raised:
        load_beir(_beir(tmp_path, corpus, qrels))
    assert "\n" not in str(raised.value)
