"""A GGUF file's tokenizer -> the Hugging Face files that describe it.

`tokenizer.ggml.model` says which kind: `gpt2` (byte-level BPE: Llama 3, Qwen, SmolLM2) becomes a
tokenizer.json with the file's tokens and merges and the pre-tokenizer that `tokenizer.ggml.pre` names
(llama.cpp's names, each mapped here to the splitting rules llama.cpp applies for it); `llama`
(SentencePiece: Llama 2, Mistral, TinyLlama) becomes a SentencePiece tokenizer.model rebuilt from the
pieces, scores and piece types. Either way tokenizer_config.json names the BOS/EOS/pad/unknown tokens and
carries the chat template. Anything else is refused by name.
"""

from __future__ import annotations

import json
import os

from grit_jax.errors import CheckpointError
from grit_jax.weights.gguf_file import GGUFFile

# GGUF token types (llama.cpp's llama_token_type, also SentencePiece's piece types)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
_LLAMA3 = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
# tokenizer.ggml.pre -> how text is split before BPE: "bytelevel" (GPT-2's own pattern), "digits" (each
# digit alone, then GPT-2's pattern), or a regex whose matches are the pieces (then bytes mapped as GPT-2's)
PRE_TOKENIZERS = {
    **dict.fromkeys(("gpt-2", "gpt2", "phi-2"), "bytelevel"),
    **dict.fromkeys(("smollm", "starcoder", "refact", "codeshell", "command-r"), "digits"),
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "smaug-bpe", "falcon3"), _LLAMA3),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen"), _QWEN2),
}
# pre-tokenizers whose vocabularies llama.cpp matches whole words against before merging (ignore_merges)
_WHOLE_WORDS_FIRST = ("llama3", "llama-v3", "llama-bpe", "smaug-bpe", "falcon3")


def check_tokenizer(gf: GGUFFile) -> str:
    """The file's tokenizer kind, `gpt2` or `llama`; anything this module cannot write is an error naming
    the key (checked before anything is written)."""
    kind = gf.get("tokenizer.ggml.model")
    if kind is None or gf.get("tokenizer.ggml.tokens") is None:
        raise CheckpointError(f"{gf.path}: holds no tokenizer (tokenizer.ggml.model / tokens missing)")
    if kind not in ("gpt2", "llama"):
        raise CheckpointError(
            f"{gf.path}: tokenizer.ggml.model {kind!r} is not supported; gguf-to-hf converts 'gpt2' "
            "(byte-level BPE) and 'llama' (SentencePiece) tokenizers"
        )
    pre = gf.get("tokenizer.ggml.pre", "default")
    if kind == "gpt2" and pre not in PRE_TOKENIZERS:
        raise CheckpointError(
            f"{gf.path}: tokenizer.ggml.pre {pre!r} is not supported; known: {sorted(PRE_TOKENIZERS)}"
        )
    return kind


def write_tokenizer(gf: GGUFFile, out: str) -> None:
    """tokenizer.json (gpt2) or tokenizer.model (llama), and tokenizer_config.json, into `out`."""
    kind, tokens = check_tokenizer(gf), gf.get("tokenizer.ggml.tokens")
    types = gf.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    if kind == "gpt2":
        _bpe_tokenizer(gf, tokens, types).save(os.path.join(out, "tokenizer.json"))
        tokenizer_class = "PreTrainedTokenizerFast"
    else:
        with open(os.path.join(out, "tokenizer.model"), "wb") as f:
            f.write(_sentencepiece_model(gf, tokens, types))
        tokenizer_class = "LlamaTokenizer"
    _write_config(gf, tokens, types, tokenizer_class, out=out)


def _special(gf: GGUFFile, tokens: list[str], name: str) -> str | None:
    key = "tokenizer.ggml.padding_token_id" if name == "pad" else f"tokenizer.ggml.{name}_token_id"
    token_id = gf.get(key)
    if token_id is None:
        return None
    if not 0 <= token_id < len(tokens):
        raise CheckpointError(f"{gf.path}: metadata {key} = {token_id} is not a token id")
    return tokens[token_id]


def _write_config(gf: GGUFFile, tokens, types, tokenizer_class: str, *, out: str) -> None:
    """tokenizer_config.json as transformers writes it, special_tokens_map.json beside it."""
    special = {f"{name}_token": _special(gf, tokens, name) for name in ("bos", "eos", "unk", "pad")}
    special = {k: v for k, v in special.items() if v is not None}
    added = {
        str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
        | {"special": kind == CONTROL}
        for i, (t, kind) in enumerate(zip(tokens, types, strict=True))
        if kind in (CONTROL, USER_DEFINED)
    }
    config = {
        "add_bos_token": bool(gf.get("tokenizer.ggml.add_bos_token", tokenizer_class == "LlamaTokenizer")),
        "add_eos_token": bool(gf.get("tokenizer.ggml.add_eos_token", False)),
        "added_tokens_decoder": added,
        **special,
        "clean_up_tokenization_spaces": False,
        "model_max_length": gf.get(f"{gf.get('general.architecture')}.context_length", 2048),
        "tokenizer_class": tokenizer_class,
    }
    if tokenizer_class == "LlamaTokenizer":  # transformers' own default is to prepend a space
        config["add_prefix_space"] = bool(gf.get("tokenizer.ggml.add_space_prefix", True))
        config["legacy"] = False
    template = gf.get("tokenizer.chat_template")
    if template is not None:
        config["chat_template"] = template
    with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
    with open(os.path.join(out, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump(special, f, indent=2, ensure_ascii=False)


def _bpe_tokenizer(gf: GGUFFile, tokens: list[str], types: list[int]):
    """A byte-level BPE `tokenizers.Tokenizer` of the file's vocabulary and merges."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    pre = gf.get("tokenizer.ggml.pre", "default")
    merges = [tuple(m.split(" ", 1)) for m in gf.get("tokenizer.ggml.merges") or []]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise CheckpointError(f"{gf.path}: tokenizer.ggml.tokens repeats a token")
    model = models.BPE(vocab, merges, fuse_unk=False, ignore_merges=pre in _WHOLE_WORDS_FIRST)
    tokenizer = Tokenizer(model)
    prefix = bool(gf.get("tokenizer.ggml.add_space_prefix", False))
    rule = PRE_TOKENIZERS[pre]
    if rule == "bytelevel":
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix, use_regex=True)
    elif rule == "digits":
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=prefix, use_regex=True),
            ]
        )
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(rule), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=prefix, use_regex=False),
            ]
        )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_tokens(
        [
            AddedToken(t, special=kind == CONTROL, normalized=False)
            for t, kind in zip(tokens, types, strict=True)
            if kind in (CONTROL, USER_DEFINED)
        ]
    )
    tokenizer.post_processor = _post_processor(gf, tokens, processors)
    return tokenizer


def _post_processor(gf: GGUFFile, tokens: list[str], processors):
    """BOS/EOS added around a text as the file asks (add_bos_token / add_eos_token)."""
    ends = [
        (name, _special(gf, tokens, name))
        for name in ("bos", "eos")
        if gf.get(f"tokenizer.ggml.add_{name}_token", False)
    ]
    ends = [(name, t) for name, t in ends if t is not None]
    if not ends:
        return processors.ByteLevel(trim_offsets=False)
    bos = [f"{t}:0" for name, t in ends if name == "bos"]
    eos = [f"{t}:0" for name, t in ends if name == "eos"]
    return processors.TemplateProcessing(
        single=" ".join([*bos, "$A:0", *eos]),
        pair=" ".join([*bos, "$A:0", *eos, *[b.replace(":0", ":1") for b in bos], "$B:1", *eos]),
        special_tokens=[(t, tokens.index(t)) for _, t in ends],
    )


def _sentencepiece_model(gf: GGUFFile, tokens: list[str], types: list[int]) -> bytes:
    """A serialised SentencePiece ModelProto (BPE) of the file's pieces, scores and types."""
    try:
        from sentencepiece import sentencepiece_model_pb2 as sp_pb2
    except ImportError:  # needs protobuf
        raise CheckpointError(
            f"{gf.path}: writing its SentencePiece tokenizer needs the protobuf package: pip install protobuf"
        ) from None
    scores = gf.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    proto = sp_pb2.ModelProto()
    for token, score, kind in zip(tokens, scores, types, strict=True):
        proto.pieces.add(piece=token, score=score, type=kind if kind in range(1, 7) else NORMAL)
    spec = proto.trainer_spec
    spec.model_type = sp_pb2.TrainerSpec.BPE
    spec.vocab_size = len(tokens)
    spec.byte_fallback = BYTE in types
    spec.allow_whitespace_only_pieces = True  # as Llama's and Mistral's: runs of spaces stay one piece
    for name, field in (("unk", "unk_id"), ("bos", "bos_id"), ("eos", "eos_id"), ("pad", "pad_id")):
        key = "tokenizer.ggml.padding_token_id" if name == "pad" else f"tokenizer.ggml.{name}_token_id"
        setattr(spec, field, gf.get(key, -1))
    norm = proto.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = bool(gf.get("tokenizer.ggml.add_space_prefix", True))
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    return proto.SerializeToString()
