"""GRIT prompt formats, tokenized exactly as the reference builds them.

Embedding: `<s><|user|>\\n{instruction}\\n<|embed|>\\n{text}`, or `<s><|embed|>\\n{text}` without an
instruction; the instruction length (tokens excluded from pooling) counts BOS and the prefix up to and
including `<|embed|>\\n`. Chat: `<s>` + turns joined by `\\n`, each `<|user|>\\n{user}\\n<|assistant|>\\n
{assistant}</s>`; labels only on the assistant text and its `</s>`. `<s>`/`</s>` are the BOS/EOS ids
(no `<s>` for a tokenizer without BOS, e.g. Qwen's),
never text. Plain strings (neither pairs nor turns) are raw text as in the reference: no BOS, no marker,
no EOS, nothing left out of pooling, a generative one trained on whole; plain_strings="formatted" gives
them `<s><|embed|>\\n{text}` or `<s>{text}</s>` instead. Texts are cut to a number of characters before
tokenizing (the reference's `max_char_len`: 10x the largest token limit), then truncated to their limit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from grit_jax.data.tokenizer import Tokenizer
from grit_jax.errors import DataError, UsageError

EmbedText = str | Sequence[str]  # "text" or [instruction, text]
CHARS_PER_TOKEN_CUT = 10
PLAIN_STRINGS = ("raw", "formatted")  # the reference's raw text, or GRIT-formatted (grit_jax before)


def check_unicode(texts: Sequence[str], field: str) -> None:
    """DataError for a lone surrogate (JSON's escaped "\\ud800" decodes to one; no tokenizer encodes it)."""
    for text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise DataError(
                f"field {field!r} holds a lone surrogate {text[e.start]!r} (not valid Unicode)"
            ) from None


def clean_instruction(instruction: str) -> str:
    """The reference strips surrounding tabs, newlines, spaces and colons from instructions."""
    return instruction.strip("\t\n :")


def embed_prefix(instruction: str) -> str:
    """Text before the embedded text (BOS excluded); also the `instruction` GritLM.encode expects."""
    instruction = clean_instruction(instruction)
    return f"<|user|>\n{instruction}\n<|embed|>\n" if instruction else "<|embed|>\n"


def split_embed_text(item: EmbedText) -> tuple[str, str]:
    """Returns (instruction, text) of a string or an [instruction, text] pair."""
    if isinstance(item, str):
        return "", item
    instruction, text = item
    return instruction, text


def check_plain_strings(plain_strings: str) -> str:
    if plain_strings not in PLAIN_STRINGS:
        raise UsageError(f"plain_strings must be one of {PLAIN_STRINGS}, got {plain_strings!r}")
    return plain_strings


def embed_strings(item: EmbedText, max_chars: int, plain_strings="raw") -> tuple[str, str, bool]:
    """(prefix, prefix + text, raw) with instruction and text cut to max_chars; raw: no BOS, no prefix."""
    instruction, text = split_embed_text(item)
    if not text.strip():
        raise DataError("empty text")
    if isinstance(item, str) and check_plain_strings(plain_strings) == "raw":
        return "", text[:max_chars], True
    prefix = embed_prefix(instruction[:max_chars])
    return prefix, prefix + text[:max_chars], False


def encode_embedding(
    tokenizer: Tokenizer, item: EmbedText, max_len: int, max_chars: int | None = None, *, plain_strings="raw"
) -> tuple[np.ndarray, int]:
    """Token ids (truncated to max_len) and the instruction length of one text. max_chars defaults to
    10 x max_len; data preparation passes 10 x the largest of all three limits, as the reference does."""
    max_chars = CHARS_PER_TOKEN_CUT * max_len if max_chars is None else max_chars
    prefix, full, raw = embed_strings(item, max_chars, plain_strings)
    return finish_embedding(tokenizer, tokenizer.encode(prefix), tokenizer.encode(full), max_len, raw=raw)


def finish_embedding(
    tokenizer: Tokenizer, prefix_ids: Sequence[int], full_ids: Sequence[int], max_len: int, *, raw=False
) -> tuple[np.ndarray, int]:
    """Adds BOS (not to raw text), truncates and checks that something is left to embed."""
    if raw:
        return np.asarray(list(full_ids)[:max_len], np.int32), 0
    ids = np.asarray([*tokenizer.bos, *full_ids][:max_len], np.int32)
    instruction_len = len(tokenizer.bos) + len(prefix_ids)
    if len(ids) <= instruction_len:
        raise DataError(
            f"nothing left to embed after the instruction ({instruction_len} instruction "
            f"tokens, {len(ids)} tokens after truncation to {max_len})"
        )
    return ids, instruction_len


def user_turn(user: str, first: bool) -> str:
    """`<|user|>\\n{user}\\n<|assistant|>\\n`, after a `\\n` turn separator unless it is the first turn."""
    return ("" if first else "\n") + f"<|user|>\n{user}\n<|assistant|>\n"


def chat_segments(text: str | Sequence[str], max_len: int) -> list[tuple[str, str]]:
    """(untrained prefix, trained text) per segment; a plain string is one segment trained whole."""
    cut = CHARS_PER_TOKEN_CUT * max_len
    if isinstance(text, str):
        if not text.strip():
            raise DataError("empty text")
        return [("", text[:cut])]
    if len(text) == 0 or len(text) % 2:
        raise DataError(f"a chat must alternate user and assistant turns (got {len(text)} turns)")
    segments = []
    for k in range(0, len(text), 2):
        user, assistant = text[k], text[k + 1].strip()
        if not user.strip() or not assistant:
            raise DataError(f"empty {'user' if not user.strip() else 'assistant'} turn {k // 2}")
        segments.append((user_turn(user[:cut], first=k == 0), assistant[:cut]))
    return segments


def encode_chat(
    tokenizer: Tokenizer, text: str | Sequence[str], max_len: int, plain_strings="raw"
) -> tuple[np.ndarray, np.ndarray, int]:
    """Token ids, target mask and the start of the last trained segment of a generative example.

    target[t] is True where token t is a training target (predicted from t-1): assistant text and its
    EOS (or every token of a plain string), never t = 0. Truncated to max_len."""
    segments = chat_segments(text, max_len)
    encoded = tokenizer.encode_batch([p for p, _ in segments] + [p + a for p, a in segments], 1)
    n = len(segments)
    return finish_chat(
        tokenizer,
        encoded[:n],
        encoded[n:],
        isinstance(text, str),
        max_len=max_len,
        plain_strings=plain_strings,
    )


def finish_chat(
    tokenizer: Tokenizer,
    prefix_ids: Sequence[Sequence[int]],
    full_ids: Sequence[Sequence[int]],
    plain: bool,
    *,
    max_len: int,
    plain_strings="raw",
) -> tuple[np.ndarray, np.ndarray, int]:
    if plain and check_plain_strings(plain_strings) == "raw":  # the reference: labels = input ids
        ids = np.asarray(list(full_ids[0])[:max_len], np.int32)
        return ids, np.arange(len(ids)) > 0, 0
    ids = list(tokenizer.bos)
    target = [False] * len(ids)
    last_start = len(ids)
    for prefix, full in zip(prefix_ids, full_ids):
        n_prefix = 0 if plain else len(prefix)
        last_start = len(ids) + n_prefix
        ids.extend(full)
        ids.append(tokenizer.eos_id)
        target.extend([False] * n_prefix + [True] * (len(full) - n_prefix + 1))
    target[0] = False  # without BOS a plain string's first token has nothing to be predicted from
    return (np.asarray(ids[:max_len], np.int32), np.asarray(target[:max_len], bool), min(last_start, max_len))
