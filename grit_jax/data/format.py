"""GRIT prompt formats, tokenized exactly as the reference builds them.

Embedding: `<s><|user|>\\n{instruction}\\n<|embed|>\\n{text}`, or `<s><|embed|>\\n{text}` without an
instruction; the instruction length (tokens excluded from pooling) counts BOS and the prefix up to and
including `<|embed|>\\n`. Chat: `<s>` + turns joined by `\\n`, each `<|user|>\\n{user}\\n<|assistant|>\\n
{assistant}</s>`; labels only on the assistant text and its `</s>`. A plain string is trained on whole.
`<s>`/`</s>` are the BOS/EOS ids, never text. Each text is cut to 10x its token limit in characters
before tokenizing, then truncated to the limit (the reference's `max_char_len`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import numpy as np

from grit_jax.data.tokenizer import Tokenizer
from grit_jax.errors import DataError

EmbedText = Union[str, Sequence[str]]  # "text" or [instruction, text]
CHARS_PER_TOKEN_CUT = 10


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


def embed_strings(item: EmbedText, max_len: int) -> tuple[str, str]:
    """(prefix, prefix + text) with both parts cut to 10x max_len characters."""
    instruction, text = split_embed_text(item)
    cut = CHARS_PER_TOKEN_CUT * max_len
    if not text.strip():
        raise DataError("empty text")
    prefix = embed_prefix(instruction[:cut])
    return prefix, prefix + text[:cut]


def encode_embedding(tokenizer: Tokenizer, item: EmbedText, max_len: int) -> tuple[np.ndarray, int]:
    """Token ids (BOS first, truncated to max_len) and the instruction length of one text."""
    prefix, full = embed_strings(item, max_len)
    return finish_embedding(tokenizer, tokenizer.encode(prefix), tokenizer.encode(full), max_len)


def finish_embedding(
    tokenizer: Tokenizer, prefix_ids: Sequence[int], full_ids: Sequence[int], max_len: int
) -> tuple[np.ndarray, int]:
    """Adds BOS, truncates and checks that something is left to embed after the instruction."""
    ids = np.asarray([tokenizer.bos_id, *full_ids][:max_len], np.int32)
    instruction_len = 1 + len(prefix_ids)
    if len(ids) <= instruction_len:
        raise DataError(
            f"nothing left to embed after the instruction ({instruction_len} instruction "
            f"tokens, {len(ids)} tokens after truncation to {max_len})"
        )
    return ids, instruction_len


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
        newline = "\n" if k else ""
        segments.append((f"{newline}<|user|>\n{user[:cut]}\n<|assistant|>\n", assistant[:cut]))
    return segments


def encode_chat(
    tokenizer: Tokenizer, text: str | Sequence[str], max_len: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Token ids, target mask and the start of the last trained segment of a generative example.

    target[t] is True where token t is a training target (predicted from t-1): assistant text and its
    EOS (or the whole plain string and its EOS), never t = 0. Truncated to max_len."""
    segments = chat_segments(text, max_len)
    encoded = tokenizer.encode_batch([p for p, _ in segments] + [p + a for p, a in segments], 1)
    n = len(segments)
    return finish_chat(tokenizer, encoded[:n], encoded[n:], isinstance(text, str), max_len)


def finish_chat(
    tokenizer: Tokenizer,
    prefix_ids: Sequence[Sequence[int]],
    full_ids: Sequence[Sequence[int]],
    plain: bool,
    max_len: int,
) -> tuple[np.ndarray, np.ndarray, int]:
    ids, target = [tokenizer.bos_id], [False]
    last_start = 1
    for prefix, full in zip(prefix_ids, full_ids):
        n_prefix = 0 if plain else len(prefix)
        last_start = len(ids) + n_prefix
        ids.extend(full)
        ids.append(tokenizer.eos_id)
        target.extend([False] * n_prefix + [True] * (len(full) - n_prefix + 1))
    return (np.asarray(ids[:max_len], np.int32), np.asarray(target[:max_len], bool), min(last_start, max_len))
