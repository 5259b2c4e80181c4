"""grit-data prepare is all or nothing (grit_jax.data.sources, grit_jax.data.prepared_files): a prepare
that fails half way leaves the previous dataset whole and usable; a training run refuses prepared data
whose files changed after they were prepared."""

import glob
import json
import os

import pytest

from grit_jax.data import pipeline, sources, tfds_io
from grit_jax.data.tokenizer import train_tokenizer
from grit_jax.errors import DataError
from grit_jax.run_config import base_config


def _example(i):
    return {"query": f"question number {i}", "pos": [f"answer number {i}"], "neg": [f"other text {i}"]}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    texts = [f"question answer number other text {i}" for i in range(40)] * 3
    return train_tokenizer(texts, str(tmp_path_factory.mktemp("tok") / "t.model"), vocab_size=300)


def _write(path, records):
    with open(path, "w") as f:
        f.writelines((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)
    return str(path)


def _records(out, entry):
    source = tfds_io.open_source(os.path.join(out, entry["dir"]))
    return sorted(source[i]["query"].tolist() for i in range(len(source)))


def _data_config(out):
    config = base_config().data
    config.update(data_dir=out, query_max_len=16, passage_max_len=16, embedding_batch_size=2, num_threads=1)
    return config


def test_a_failed_prepare_leaves_the_previous_dataset_whole(tmp_path, tok):
    out = str(tmp_path / "out")
    a = _write(tmp_path / "a.jsonl", [_example(i) for i in range(3)])
    b = _write(tmp_path / "b.jsonl", [_example(i) for i in range(10, 12)])
    first = sources.prepare(out, tok, [a, b], query_max_len=16, passage_max_len=16)
    before = {e["name"]: _records(out, e) for e in first["train"]["embedding"]}

    _write(tmp_path / "a.jsonl", [_example(i) for i in range(20, 24)])  # a changed: rebuilt first
    _write(tmp_path / "b.jsonl", [_example(10), '{"query": "cut short'])  # b is bad: the prepare fails
    with pytest.raises(DataError, match="b.jsonl:2"):
        sources.prepare(out, tok, [a, b], query_max_len=16, passage_max_len=16)

    assert sources.read_manifest(out) == first
    assert {e["name"]: _records(out, e) for e in first["train"]["embedding"]} == before
    config = _data_config(out)
    pipeline.make_train_iterator(config, tok, mode="embedding").close()  # still usable as it was
    built = glob.glob(os.path.join(out, "train", "embedding", "*"))
    assert sorted(os.path.basename(d) for d in built) == sorted(
        os.path.basename(os.path.dirname(e["lengths"])) for e in first["train"]["embedding"]
    ), "the failed build's directories are removed"


def test_a_run_refuses_prepared_data_that_changed_after_it_was_prepared(tmp_path, tok):
    out = str(tmp_path / "out")
    a = _write(tmp_path / "a.jsonl", [_example(i) for i in range(3)])
    manifest = sources.prepare(out, tok, [a], query_max_len=16, passage_max_len=16)
    entry = manifest["train"]["embedding"][0]
    record_file = next(f for f in entry["files"] if ".array_record" in f)
    with open(os.path.join(out, record_file), "ab") as f:
        f.write(b"\0" * 10)
    config = _data_config(out)
    with pytest.raises(DataError, match="changed after it was prepared"):
        pipeline.make_train_iterator(config, tok, mode="embedding")
