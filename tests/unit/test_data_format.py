"""Token-level tests of the GRIT prompt formats against the reference's rules."""

import pytest

from grit_jax.data import prompts as fmt
from grit_jax.data.tokenizer import Tokenizer, train_tokenizer
from grit_jax.errors import DataError, UsageError

TEXTS = [
    "Retrieve the documentation of a Python function.\nReturn a list of lines.",
    "What does json.dumps do?\n\nSerialize obj to a JSON formatted str.",
    "  indented\ttext with\n\nblank lines  and   spaces",
] * 20


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    return train_tokenizer(TEXTS, str(tmp_path_factory.mktemp("tok") / "t.model"), vocab_size=320)


def test_tokenizer_round_trips_whitespace_and_ids(tok):
    text = "<|user|>\n  two  spaces\n\n\ttab\n<|embed|>\nx"
    assert tok.decode(tok.encode(text)) == text
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 3)
    for marker in ("<|user|>", "<|embed|>", "<|assistant|>", "\n"):
        assert len(tok.encode(marker)) == 1  # user-defined symbols: short, still plain text


def test_instruction_prefix_and_length(tok):
    ids, n = fmt.encode_embedding(tok, [" :\tRetrieve docs:\n ", "some passage text"], 64)
    prefix = "<|user|>\nRetrieve docs\n<|embed|>\n"  # stripped of tabs, newlines, spaces, colons
    assert list(ids) == [tok.bos_id] + tok.encode(prefix + "some passage text")
    assert n == 1 + len(tok.encode(prefix))
    assert tok.decode(ids[:n]) == prefix and tok.decode(ids[n:]) == "some passage text"
    assert fmt.embed_prefix("Retrieve docs") == prefix


@pytest.mark.parametrize("item", [["", "plain text"], [" : \n", "plain text"]])
def test_no_instruction(tok, item):
    ids, n = fmt.encode_embedding(tok, item, 64)
    assert list(ids) == [tok.bos_id] + tok.encode("<|embed|>\nplain text")
    assert n == 1 + len(tok.encode("<|embed|>\n"))
    assert tok.decode(ids[n:]) == "plain text"


def test_plain_string_embedding_is_raw_text(tok):
    """The reference formats only [instruction, text] pairs: a plain string is embedded as it is (no BOS,
    no marker) and nothing is left out of pooling; plain_strings="formatted" keeps `<s><|embed|>\n`."""
    ids, n = fmt.encode_embedding(tok, "plain text", 64)
    assert list(ids) == tok.encode("plain text") and n == 0
    ids, n = fmt.encode_embedding(tok, "plain text", 64, plain_strings="formatted")
    assert list(ids) == [tok.bos_id] + tok.encode("<|embed|>\nplain text")
    assert n == 1 + len(tok.encode("<|embed|>\n"))
    assert len(fmt.encode_embedding(tok, "plain text " * 20, 8)[0]) == 8
    with pytest.raises(UsageError, match="plain_strings"):
        fmt.encode_embedding(tok, "plain text", 64, plain_strings="chat")


def test_truncation_and_character_cut(tok):
    text = "abcdefghij " * 100
    ids, n = fmt.encode_embedding(tok, ["Retrieve", text], 16)
    assert len(ids) == 16 and ids[0] == tok.bos_id
    full = [tok.bos_id] + tok.encode("<|user|>\nRetrieve\n<|embed|>\n" + text[:160])
    assert list(ids) == full[:16]
    _, full_text, _ = fmt.embed_strings(["Retrieve", text], 160)
    assert full_text.endswith(text[:160]) and not full_text.endswith(text[:161])


def test_nothing_left_to_embed_and_empty_text(tok):
    with pytest.raises(DataError, match="nothing left to embed"):
        fmt.encode_embedding(tok, ["a very long instruction that fills everything", "text"], 8)
    with pytest.raises(DataError, match="empty text"):
        fmt.encode_embedding(tok, ["instruction", "  \n"], 64)


def _segments(ids, mask):
    """Maximal runs of target tokens as id lists."""
    runs, run = [], []
    for i, m in zip(ids, mask):
        if m:
            run.append(int(i))
        elif run:
            runs.append(run)
            run = []
    return runs + ([run] if run else [])


def test_multi_turn_chat_labels(tok):
    turns = ["What does dumps do?", "  Serialize obj.\n", "And loads?", "Deserialize s."]
    ids, target, last_start = fmt.encode_chat(tok, turns, 256)
    expected = (
        [tok.bos_id]
        + tok.encode("<|user|>\nWhat does dumps do?\n<|assistant|>\nSerialize obj.")
        + [tok.eos_id]
        + tok.encode("\n<|user|>\nAnd loads?\n<|assistant|>\nDeserialize s.")
        + [tok.eos_id]
    )
    assert list(ids) == expected
    assert not target[0]
    runs = _segments(ids, target)
    assert runs == [tok.encode("Serialize obj.") + [tok.eos_id], tok.encode("Deserialize s.") + [tok.eos_id]]
    assert tok.decode(ids[last_start:]) == "Deserialize s."
    assert target[last_start:].all() and not target[last_start - 1]
    prefixlm = target.copy()
    prefixlm[:last_start] = False
    assert _segments(ids, prefixlm) == runs[1:]


def test_plain_text_trained_whole_and_truncated(tok):
    # The reference: raw text, no BOS, no EOS, every token a target (the first has nothing before it).
    ids, target, last_start = fmt.encode_chat(tok, "Return a list of lines.", 256)
    assert list(ids) == tok.encode("Return a list of lines.")
    assert not target[0] and target[1:].all() and last_start == 0
    ids, target, _ = fmt.encode_chat(tok, "Return a list of lines.", 256, plain_strings="formatted")
    assert list(ids) == [tok.bos_id] + tok.encode("Return a list of lines.") + [tok.eos_id]
    assert not target[0] and target[1:].all()
    assert len(fmt.encode_chat(tok, "Return a list of lines. " * 20, 8)[0]) == 8
    ids, target, _ = fmt.encode_chat(tok, ["question?", "answer " * 50], 12)
    assert len(ids) == len(target) == 12 and ids[-1] != tok.eos_id


@pytest.mark.parametrize("turns", [["only a user turn"], [], ["q", "  "], ["", "a"]])
def test_bad_chats(tok, turns):
    with pytest.raises(DataError):
        fmt.encode_chat(tok, turns, 64)
