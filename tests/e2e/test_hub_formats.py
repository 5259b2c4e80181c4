"""grit-data prepare reads the public data as the hub publishes it: GritLM/MEDI2-layout JSONL and parquet
shards, allenai/tulu-v2-sft-mixture-layout parquet (`messages`), as files, directories or globs, local
or gs:// (the GCS emulator); each prepares to the same examples as the same records written as the
reference's JSONL."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from grit_jax.data import hub_formats, sources, tfds_io
from grit_jax.data.tokenizer import train_tokenizer
from grit_jax.errors import DataError

# GritLM/MEDI2: [instruction, text] pairs; `neg` null where a set has no negatives; extra columns.
MEDI2 = [
    {
        "query": ["Represent this question to retrieve a passage", f"what does json.dumps do {i}"],
        "pos": [["Represent this passage", f"Serialize obj to a JSON formatted string {i}."]],
        "neg": None if i % 3 == 0 else [["Represent this passage", f"Deserialize s {i}."]],
        "task_name": "stackexchange",
    }
    for i in range(7)
]
# allenai/tulu-v2-sft-mixture: dataset, id, messages [{role, content}]; a system turn now and then.
TULU2 = [
    {
        "dataset": "flan_v2",
        "id": f"flan_{i}",
        "messages": ([{"role": "system", "content": "Be brief."}] if i == 2 else [])
        + [
            {"role": "user", "content": f"What does it do {i}?"},
            {"role": "assistant", "content": f"It serializes {i}."},
        ]
        + ([{"role": "user", "content": "More?"}, {"role": "assistant", "content": "No."}] if i == 4 else []),
    }
    for i in range(6)
]


def as_reference_jsonl(record: dict) -> dict:
    """The same record in the reference's JSONL format."""
    if "messages" in record:
        turns = [m["content"] for m in record["messages"] if m["role"] != "system"]
        system = [m["content"] for m in record["messages"] if m["role"] == "system"]
        if system:
            turns[0] = f"{system[0]}\n\n{turns[0]}"
        return {"text": turns}
    return {k: v for k, v in record.items() if k in ("query", "pos", "neg") and v is not None}


def write_jsonl(path, records):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return str(path)


def write_parquet_shards(directory, records, shards):
    """Hub layout: data/train-0000K-of-0000N.parquet."""
    os.makedirs(directory / "data", exist_ok=True)
    for k in range(shards):
        part = records[k::shards]
        pq.write_table(pa.Table.from_pylist(part), directory / f"data/train-{k:05d}-of-{shards:05d}.parquet")
    return str(directory)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    texts = ["Serialize obj to a JSON formatted string.", "Represent this passage", "What does it do?"] * 20
    return train_tokenizer(texts, str(tmp_path_factory.mktemp("tok") / "t.model"), vocab_size=300)


def examples(out: str, manifest: dict, kind: str) -> list[dict]:
    """Every prepared example of a kind, in a canonical order (TFDS stores its own order)."""
    rows = []
    for entry in manifest["train"][kind]:
        stored = tfds_io.open_source(os.path.join(out, entry["dir"]))
        rows += [{k: np.asarray(v).tolist() for k, v in stored[i].items()} for i in range(len(stored))]
    return sorted(rows, key=json.dumps)


def prepare(tmp_path, tok, name, embedding=(), generative=()):
    out = str(tmp_path / name)
    manifest = sources.prepare(
        out, tok, list(embedding), list(generative), query_max_len=128, passage_max_len=128
    )
    return out, manifest


def test_medi2_and_tulu2_layouts_equal_reference_jsonl(tmp_path, tok):
    hub = tmp_path / "hub"
    medi2_parquet = write_parquet_shards(hub / "MEDI2", MEDI2, shards=3)
    medi2_jsonl = write_jsonl(hub / "MEDI2-jsonl/stackexchange.jsonl", MEDI2)  # extra columns, null neg
    tulu2 = write_parquet_shards(hub / "tulu-v2-sft-mixture", TULU2, shards=2)
    os.makedirs(hub / "tulu-v2-sft-mixture/.cache/huggingface")  # a hub download's own folder: skipped
    write_jsonl(hub / "tulu-v2-sft-mixture/.cache/huggingface/x.jsonl", [{"junk": 1}])
    ref_emb = write_jsonl(tmp_path / "ref/medi2.jsonl", [as_reference_jsonl(r) for r in MEDI2])
    ref_gen = write_jsonl(tmp_path / "ref/tulu2.jsonl", [as_reference_jsonl(r) for r in TULU2])

    ref_out, ref = prepare(tmp_path, tok, "ref", [ref_emb], [ref_gen])
    for name, emb, gen in [
        ("dirs", [medi2_parquet], [tulu2]),
        ("globs", [str(hub / "MEDI2/data/train-*.parquet")], [str(hub / "tulu-v2-sft-mixture/**/*.parquet")]),
        ("jsonl", [medi2_jsonl], [tulu2]),
    ]:
        out, manifest = prepare(tmp_path, tok, name, emb, gen)
        for kind, count in (("embedding", len(MEDI2)), ("generative", len(TULU2))):
            assert sum(e["num_examples"] for e in manifest["train"][kind]) == count
            assert examples(out, manifest, kind) == examples(ref_out, ref, kind), (name, kind)
    assert [e["name"] for e in manifest["train"]["generative"]] == [
        "train_00000_of_00002",
        "train_00001_of_00002",
    ]


def test_gcs_paths_read_like_local_ones(tmp_path, tok, monkeypatch):
    from tests import gcs_emulator

    server, env = gcs_emulator.start(str(tmp_path))
    try:
        from grit_jax import storage

        local = write_parquet_shards(tmp_path / "MEDI2", MEDI2, shards=2)
        bucket = f"gs://{gcs_emulator.BUCKET}/hub/MEDI2"
        storage.upload_dir(local, bucket)
        for path in (bucket, f"{bucket}/data/*.parquet", f"{bucket}/data/train-00001-of-00002.parquet"):
            files = hub_formats.expand_paths([path])
            assert [os.path.basename(f) for f in files] == (
                ["train-00001-of-00002.parquet"]
                if path.endswith("2.parquet")
                else ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
            )
        out, manifest = prepare(tmp_path, tok, "gcs", [bucket])
        ref_out, ref = prepare(tmp_path, tok, "local", [local])
        assert examples(out, manifest, "embedding") == examples(ref_out, ref, "embedding")
        with pytest.raises(DataError, match="no such file or directory"):
            hub_formats.expand_paths([f"{bucket}/nope.parquet"])
    finally:
        gcs_emulator.stop(server, env)


def test_bad_hub_records_name_file_and_row(tmp_path, tok):
    rows = [TULU2[0], {"messages": [{"role": "assistant", "content": "hi"}]}, {"messages": "x"}]
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist(rows[:2]), path)
    with pytest.raises(DataError) as e:
        prepare(tmp_path, tok, "bad", generative=[str(path)])
    assert f"{path}:2: field 'messages' must alternate user and assistant turns" in str(e.value)
    with pytest.raises(DataError, match="must be a list of"):
        hub_formats.messages_to_text(rows[2])
    (tmp_path / "empty").mkdir()
    for given, message in [
        (str(tmp_path / "empty"), "directory holds no *.jsonl or *.parquet file"),
        (str(tmp_path / "none-*.parquet"), "the pattern matches no *.jsonl or *.parquet file"),
    ]:
        with pytest.raises(DataError, match=message.replace("*", r"\*")):
            hub_formats.expand_paths([given])
    (tmp_path / "fake.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="not a parquet file"):
        list(hub_formats.read_parquet(str(tmp_path / "fake.parquet"), dict))
