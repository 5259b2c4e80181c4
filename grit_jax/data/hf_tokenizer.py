"""A Hugging Face `tokenizer.json` (Llama 3, Qwen) read with the `tokenizers` library.

Its BOS, EOS and pad tokens are those of the `tokenizer_config.json` beside it (Qwen names no BOS: then
there is none). Text is encoded without the tokenizer's own post-processing (no BOS/EOS added): the
callers add them as ids, as they do for sentencepiece (grit_jax.data.tokenizer).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from tokenizers import Tokenizer as _Tokenizer

from grit_jax.errors import CheckpointError

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
# Files that describe a tokenizer.json tokenizer (copied with it; the first two are required).
FILES = (TOKENIZER_JSON, TOKENIZER_CONFIG, "special_tokens_map.json", "added_tokens.json")


class TokenizerJson:
    """encode / encode_batch / decode / id_to_piece / vocab_size of a tokenizer.json, and its special ids."""

    def __init__(self, path: str):
        self.path = path
        try:
            self._tok = _Tokenizer.from_file(path)
        except Exception as e:  # the library's errors name no file
            raise CheckpointError(f"{path}: not a tokenizers tokenizer.json ({e})") from None
        config_path = os.path.join(os.path.dirname(path), TOKENIZER_CONFIG)
        if not os.path.isfile(config_path):
            raise CheckpointError(f"{config_path}: missing (it names the BOS/EOS tokens of {path})")
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
        self.special_ids = {
            name: self._special_id(config, f"{name}_token", config_path) for name in ("bos", "eos", "pad")
        }

    def _special_id(self, config: dict, key: str, config_path: str) -> int | None:
        token = config.get(key)
        if isinstance(token, dict):  # older files: {"content": "<s>", ...}
            token = token.get("content")
        if token is None:
            return None
        token_id = self._tok.token_to_id(token)
        if token_id is None:
            raise CheckpointError(f"{config_path}: {key}: {token!r} is not a token of {self.path}")
        return token_id

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)

    def id_to_piece(self, i: int) -> str:
        return self._tok.id_to_token(i)
