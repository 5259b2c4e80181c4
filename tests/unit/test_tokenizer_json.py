"""A Hugging Face tokenizer.json without BOS (as Qwen's) behind the one Tokenizer interface: the GRIT
formats checked token by token, `grit-data prepare --tokenizer DIR`, and an export that AutoTokenizer reads
with the same ids."""

import json
import os

import numpy as np
import pytest

from grit_jax import GritLM
from grit_jax.data import prompts as fmt
from grit_jax.data import sources
from grit_jax.data.tokenizer import Tokenizer
from grit_jax.programs import grit_convert as convert
from grit_jax.programs.grit_data import run as grit_data
from tests.hf_reference import make_torch_model, save

TEXTS = ["Retrieve docs about hello world"] * 20 + ["hello world, the docs say hello"] * 20
EOS = "<|endoftext|>"


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A byte-level BPE trained on TEXTS with one special token, EOS (also pad); no BOS, like Qwen's."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    path = tmp_path_factory.mktemp("tokjson")
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator(
        TEXTS, trainers.BpeTrainer(vocab_size=300, special_tokens=[EOS], initial_alphabet=alphabet)
    )
    tok.save(str(path / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": EOS,
        "pad_token": EOS,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return str(path)


def pieces(tok, ids):
    return [tok.id_to_piece(i) for i in ids]


def marker(name):
    """A GRIT marker as this tokenizer splits it: plain text, one byte-level character at a time."""
    return ["<", "|", *name, "|", ">"]


def test_grit_formats_without_bos(tokenizer_dir):
    tok = Tokenizer(tokenizer_dir)
    assert tok.model_path.endswith("tokenizer.json")
    assert tok.bos_id is None and tok.bos == [] and tok.eos_id == tok.pad_id == 0 and tok.vocab_size == 288
    ids, instruction_len = fmt.encode_embedding(tok, ["Retrieve docs", "hello world"], max_len=64)
    # By hand: the markers are text (byte-level characters), "\n" is Ċ, and no BOS comes first.
    prefix = [*marker("user"), "Ċ", "Retrieve", "Ġdocs", "Ċ", *marker("embed"), "Ċ"]
    assert pieces(tok, ids) == prefix + ["hello", "Ġworld"]
    assert instruction_len == len(prefix) == 22
    ids, target, last_start = fmt.encode_chat(tok, ["hello", "hello world"], max_len=64)
    user = [*marker("user"), "Ċ", "hello", "Ċ", *marker("assistant"), "Ċ"]
    assert pieces(tok, ids) == user + ["hello", "Ġworld", EOS]
    assert target.tolist() == [False] * len(user) + [True] * 3 and last_start == len(user)
    ids, target, _ = fmt.encode_chat(tok, "hello world", max_len=64, plain_strings="formatted")
    assert pieces(tok, ids) == ["hello", "Ġworld", EOS] and target.tolist() == [False, True, True]


def test_grit_data_prepare_takes_a_directory(tmp_path, tokenizer_dir):
    data = tmp_path / "train.jsonl"
    data.write_text(
        json.dumps({"query": ["Retrieve docs", "hello"], "pos": ["hello world"], "neg": ["docs"]})
    )
    out = tmp_path / "prepared"
    assert (
        grit_data(["prepare", "--tokenizer", tokenizer_dir, "--embedding", str(data), "--out", str(out)]) == 0
    )
    manifest = sources.read_manifest(str(out))
    assert manifest["bos_id"] is None and manifest["eos_id"] == 0
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(out))
    assert Tokenizer(str(out)).fingerprint == Tokenizer(tokenizer_dir).fingerprint == manifest["tokenizer"]


def test_export_ships_tokenizer_json_that_autotokenizer_reads(tmp_path, tokenizer_dir):
    from transformers import AutoTokenizer

    hf_dir = tmp_path / "hf"
    save(make_torch_model("qwen2", vocab_size=300, tie_word_embeddings=True), hf_dir)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (hf_dir / name).write_bytes(open(os.path.join(tokenizer_dir, name), "rb").read())
    convert.run(["hf-to-orbax", "--hf_dir", str(hf_dir), "--out", str(tmp_path / "ckpt")])
    convert.run(["orbax-to-hf", "--ckpt", str(tmp_path / "ckpt"), "--out", str(tmp_path / "back")])
    back = str(tmp_path / "back")
    assert not os.path.exists(os.path.join(back, "tokenizer.model"))
    grit_config = json.load(open(os.path.join(back, "grit_config.json")))
    assert grit_config["chat_format"] == "<|user|>\n{user}\n<|assistant|>\n"  # no "<s>": there is no BOS
    theirs = AutoTokenizer.from_pretrained(back)
    ours = Tokenizer(back)
    text = "<|user|>\nRetrieve docs\n<|embed|>\nhello world, the docs"
    assert theirs(text, add_special_tokens=False).input_ids == ours.encode(text)
    assert theirs.bos_token_id is None and theirs.eos_token_id == ours.eos_id
    model = GritLM.from_pretrained(back)
    assert model.tokenizer.bos_id is None
    assert model.chat_prompt([{"role": "user", "content": "hello"}]) == ours.encode(
        "<|user|>\nhello\n<|assistant|>\n"
    )
    embedding = model.encode(["hello world"], instruction="<|embed|>\n")
    assert embedding.shape == (1, 64) and np.isfinite(embedding).all()
