"""GritLM's arguments checked before anything runs: each bad one is a UsageError (a ValueError) that
names it, not a traceback from deep inside a pass or a silently clamped token id."""

from __future__ import annotations

import math

import numpy as np

from grit_jax.errors import UsageError


def check_text(text, what: str) -> str:
    """A str that is valid Unicode (JSON's "\\ud800" decodes to a lone surrogate: no tokenizer takes it)."""
    if not isinstance(text, str):
        raise UsageError(f"{what} must be a string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UsageError(
            f"{what} holds a lone surrogate {text[e.start]!r} at character {e.start} (not valid Unicode text)"
        ) from None
    return text


def check_sentences(sentences: list, instruction) -> None:
    if not sentences:
        raise UsageError("encode got no sentences (an empty list)")
    check_text(instruction, "instruction")
    for i, sentence in enumerate(sentences):
        check_text(sentence, f"sentence {i}")


def check_token_ids(ids: list, vocab_size: int, what: str) -> list[int]:
    """Token ids as ints, each in [0, vocab_size)."""
    out = []
    for k, t in enumerate(ids):
        if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)):
            raise UsageError(f"{what}: token {k} is {t!r}, not an integer id")
        if not 0 <= t < vocab_size:
            raise UsageError(
                f"{what}: token {k} is {int(t)}, outside the model's vocabulary [0, {vocab_size})"
            )
        out.append(int(t))
    return out


def check_prompt_rows(rows: list[list[int]]) -> None:
    if not rows:
        raise UsageError("generate got no prompts (an empty list)")
    for i, row in enumerate(rows):
        if not row:
            raise UsageError(f"prompt {i} has no tokens")


def check_generation(max_new_tokens, do_sample, temperature, top_k, *, top_p) -> None:
    """The decoding settings: at least one new token, top_k >= 0 and top_p in (0, 1] (top_p=0 keeps no
    token at all), and with sampling a positive temperature."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)):
        raise UsageError(f"max_new_tokens must be an integer, got {max_new_tokens!r}")
    if max_new_tokens < 1:
        raise UsageError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    ok = isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0
    if do_sample and not ok:
        raise UsageError(f"temperature must be a positive number when sampling, got {temperature!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
        raise UsageError(f"top_k must be an integer >= 0 (0: no top-k), got {top_k!r}")
    if not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise UsageError(f"top_p must be in (0, 1] (1: no nucleus filtering), got {top_p!r}")


def check_vocabulary(tokenizer_size: int, model_size: int) -> None:
    """A tokenizer whose ids reach past the model's embedding table would be clamped, silently."""
    if tokenizer_size > model_size:
        raise UsageError(
            f"the tokenizer has {tokenizer_size} tokens but the model's vocabulary has {model_size}: ids "
            f">= {model_size} have no embedding; use the tokenizer the model was trained with"
        )
