"""Preparation: validation of bad input (file and line reported, stop or skip-and-count) and the build."""

import json
import os

import pytest

from grit_jax.data import sources, tfds_io
from grit_jax.data.tokenizer import Tokenizer, train_tokenizer
from grit_jax.errors import DataError
from grit_jax.programs.grit_data import report, run

GOOD = {
    "query": ["Retrieve docs", "json.dumps"],
    "pos": ["Serialize obj to a JSON string."],
    "neg": ["Deserialize s.", ["Represent the passage", "Parse a file."]],
}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    texts = ["Serialize obj to a JSON formatted string.", "Retrieve docs", "What does it do?"] * 20
    return train_tokenizer(texts, str(tmp_path_factory.mktemp("tok") / "t.model"), vocab_size=300)


def _write(path, lines):
    with open(path, "wb") as f:
        for line in lines:
            f.write(line if isinstance(line, bytes) else (json.dumps(line) + "\n").encode())
    return str(path)


BAD_LINES = [
    (b'{"query": "q", "pos": ["p"]\n', "invalid JSON"),
    ({"pos": ["p"]}, "missing field 'query'"),
    ({"query": "q", "pos": "p"}, "field 'pos' must be a list"),
    ({"query": 3, "pos": ["p"]}, "field 'query' must be a string"),
    ({"query": "q", "pos": [""]}, "empty text"),
    ({"query": ["a long instruction " * 5, "q"], "pos": ["p"]}, "nothing left to embed"),
    (b'{"query": "caf\xe9", "pos": ["p"]}\n', "not UTF-8"),
]


@pytest.mark.parametrize("line,message", BAD_LINES)
def test_bad_record_stops_with_file_and_line(tmp_path, tok, line, message):
    path = _write(tmp_path / "e.jsonl", [GOOD, GOOD, line, GOOD])
    with pytest.raises(DataError, match=message) as error:
        sources.prepare(str(tmp_path / "out"), tok, [path], query_max_len=16)
    assert f"{path}:3:" in str(error.value)


def test_bad_generative_records(tmp_path, tok):
    path = _write(
        tmp_path / "g.jsonl",
        [{"text": "ok"}, {"text": ["user only"]}, {"txt": "x"}, {"text": 5}, {"text": ""}],
    )
    with pytest.raises(DataError) as error:
        sources.prepare(str(tmp_path / "out"), tok, generative=[path])
    for line in (2, 3, 4, 5):
        assert f"{path}:{line}:" in str(error.value)


def test_skip_bad_counts_every_skipped_record(tmp_path, tok):
    path = _write(tmp_path / "e.jsonl", [GOOD] + [line for line, _ in BAD_LINES] + [GOOD])
    manifest = sources.prepare(str(tmp_path / "out"), tok, [path], skip_bad=True, query_max_len=16)
    entry = manifest["train"]["embedding"][0]
    assert entry["num_examples"] == 2 and entry["num_skipped"] == len(BAD_LINES)
    assert [s.split(":")[1] for s in entry["skipped"]] == [str(n) for n in range(2, 2 + len(BAD_LINES))]


def test_cli_reports_error_and_skip(tmp_path, tok, capsys):
    directory = tmp_path / "jsonl"
    directory.mkdir()
    _write(directory / "a.jsonl", [GOOD, {"query": "q"}])
    _write(directory / "b.jsonl", [GOOD] * 3)
    gen = _write(tmp_path / "chat.jsonl", [{"text": ["hi", "hello"]}, {"text": "plain"}])
    args = [
        "prepare",
        "--embedding",
        str(directory),
        "--generative",
        gen,
        "--tokenizer",
        tok.model_path,
        "--out",
        str(tmp_path / "out"),
        "--query_max_len",
        "32",
    ]
    assert run(args) == 1
    assert f"{directory / 'a.jsonl'}:2: missing field 'pos'" in capsys.readouterr().err
    assert run(args + ["--skip_bad"]) == 0
    out = capsys.readouterr().out
    assert "skipped=1" in out and "p50" in out and "b " in out.replace("b   ", "b ")
    manifest = sources.read_manifest(str(tmp_path / "out"))
    assert [e["num_examples"] for e in manifest["train"]["embedding"]] == [1, 3]
    assert manifest["train"]["generative"][0]["num_examples"] == 2


def test_build_stores_tokens_and_is_reused(tmp_path, tok):
    path = _write(tmp_path / "e.jsonl", [GOOD] * 3)
    out = str(tmp_path / "out")
    manifest = sources.prepare(out, tok, [path], query_max_len=32, passage_max_len=32)
    entry = manifest["train"]["embedding"][0]
    record = tfds_io.open_source(os.path.join(out, entry["dir"]))[0]
    query = [tok.bos_id] + tok.encode("<|user|>\nRetrieve docs\n<|embed|>\njson.dumps")
    assert list(record["query"]) == query
    assert record["query_instruction_len"] == 1 + len(tok.encode("<|user|>\nRetrieve docs\n<|embed|>\n"))
    # Plain strings are raw text (the reference), pairs are formatted.
    assert list(record["passage_lens"]) == [
        len(tok.encode(GOOD["pos"][0])),
        len(tok.encode("Deserialize s.")),
        min(32, 1 + len(tok.encode("<|user|>\nRepresent the passage\n<|embed|>\nParse a file."))),
    ]
    assert list(record["passage_instruction_lens"][:2]) == [0, 0]
    assert record["num_pos"] == 1 and len(record["passages"]) == sum(record["passage_lens"])
    stamp = os.path.getmtime(os.path.join(out, entry["dir"], "dataset_info.json"))
    again = sources.prepare(out, tok, [path], query_max_len=32, passage_max_len=32)
    assert again["train"]["embedding"][0]["dir"] == entry["dir"]
    assert os.path.getmtime(os.path.join(out, entry["dir"], "dataset_info.json")) == stamp


def test_missing_path_is_an_error(tmp_path, tok):
    with pytest.raises(DataError, match="no such file"):
        sources.prepare(str(tmp_path / "out"), tok, [str(tmp_path / "nope.jsonl")])


class RecordingTokenizer(Tokenizer):
    """The real tokenizer, remembering every string it was asked to encode."""

    def encode_batch(self, texts, num_threads=-1):
        self.seen = getattr(self, "seen", []) + list(texts)
        return super().encode_batch(texts, num_threads)


def test_embedding_texts_cut_at_ten_times_the_largest_limit(tmp_path, tok):
    """The reference cuts every embedding text at 10 x max(query, passage, generative limit) characters."""
    recorder = RecordingTokenizer(tok.model_path)
    long = "".join(f"word{i} " for i in range(400))  # > 2,000 characters
    path = _write(tmp_path / "e.jsonl", [{"query": ["Retrieve docs", long], "pos": [long]}])
    sources.prepare(
        str(tmp_path / "out"), recorder, [path], query_max_len=16, passage_max_len=32, generative_max_len=64
    )
    query = "<|user|>\nRetrieve docs\n<|embed|>\n" + long[:640]
    assert query in recorder.seen and long[:640] in recorder.seen  # not long[:160] / long[:320]
    assert not any(long[:641] in s for s in recorder.seen)


def test_generative_records_with_a_too_long_first_prompt_are_dropped(tmp_path, tok, capsys):
    long_user = "What does it do? " * 40
    path = _write(
        tmp_path / "g.jsonl",
        [{"text": ["hi", "hello"]}, {"text": [long_user, "answer"]}, {"text": ["ok", "fine"]}],
    )
    # The first prompt `<|user|>\n{user}\n<|assistant|>\n` (no BOS) reaching the limit drops the record.
    limit = len(tok.encode(f"<|user|>\n{long_user}\n<|assistant|>\n"))
    manifest = sources.prepare(str(tmp_path / "out"), tok, generative=[path], generative_max_len=limit)
    entry = manifest["train"]["generative"][0]
    assert entry["num_examples"] == 2 and entry["num_dropped"] == 1 and entry["num_skipped"] == 0
    assert "dropped=1" in report(manifest)
    kept = sources.prepare(str(tmp_path / "out2"), tok, generative=[path], generative_max_len=limit + 1)
    assert kept["train"]["generative"][0]["num_examples"] == 3


def test_plain_strings_raw_by_default_formatted_on_request(tmp_path, tok):
    path = _write(tmp_path / "g.jsonl", [{"text": "Serialize obj to a JSON formatted string."}])
    emb = _write(tmp_path / "e.jsonl", [{"query": "What does it do?", "pos": ["Retrieve docs"]}])
    text = "Serialize obj to a JSON formatted string."
    for flag, want, query in (
        ([], tok.encode(text), tok.encode("What does it do?")),
        (
            ["--plain_strings", "formatted"],
            [tok.bos_id] + tok.encode(text) + [tok.eos_id],
            [tok.bos_id] + tok.encode("<|embed|>\nWhat does it do?"),
        ),
    ):
        out = str(tmp_path / f"out{len(flag)}")
        args = ["prepare", "--generative", path, "--embedding", emb, "--tokenizer", tok.model_path]
        assert run(args + ["--out", out] + flag) == 0
        manifest = sources.read_manifest(out)
        record = tfds_io.open_source(os.path.join(out, manifest["train"]["generative"][0]["dir"]))[0]
        assert list(record["tokens"]) == want
        assert list(record["targets"]) == [0] + [1] * (len(want) - 1)
        record = tfds_io.open_source(os.path.join(out, manifest["train"]["embedding"][0]["dir"]))[0]
        assert list(record["query"]) == query
        assert record["query_instruction_len"] == (1 + len(tok.encode("<|embed|>\n")) if flag else 0)
