"""SentencePiece tokenizer wrapper: loads a Mistral/Llama `tokenizer.model`, or trains a small one.

The GRIT prompt markers (`<|user|>`, `<|embed|>`, `<|assistant|>`) are ordinary text, tokenized like any
other text, as in the reference. `<s>`/`</s>` are never text: callers add `bos_id`/`eos_id` as ids.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable, Sequence

import sentencepiece as spm

from grit_jax.errors import CheckpointError, UsageError

MARKERS = ("<|user|>", "<|embed|>", "<|assistant|>")


class Tokenizer:
    """Encode/decode text with a SentencePiece model; exposes the BOS/EOS/pad ids.

    pad id: `pad_id` argument if given, else the model's pad piece, else the EOS id (the model's
    masks make the pad value irrelevant; it only has to be a valid id).
    """

    def __init__(
        self,
        model_path: str,
        *,
        bos_id: int | None = None,
        eos_id: int | None = None,
        pad_id: int | None = None,
    ):
        self.model_path = os.fspath(model_path)
        with open(self.model_path, "rb") as f:
            proto = f.read()
        self.fingerprint = hashlib.sha256(proto).hexdigest()[:16]
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=proto)
        except RuntimeError as e:  # sentencepiece's parse error names no file
            raise CheckpointError(f"{self.model_path}: not a sentencepiece tokenizer model ({e})") from None
        self.bos_id = self._sp.bos_id() if bos_id is None else bos_id
        self.eos_id = self._sp.eos_id() if eos_id is None else eos_id
        model_pad = self._sp.pad_id()
        self.pad_id = pad_id if pad_id is not None else (model_pad if model_pad >= 0 else self.eos_id)
        for name in ("bos_id", "eos_id", "pad_id"):
            value = getattr(self, name)
            if not 0 <= value < self.vocab_size:
                raise UsageError(
                    f"{self.model_path}: {name}={value} is not a valid id (vocab {self.vocab_size})"
                )

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without BOS/EOS."""
        return self._sp.encode(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = -1) -> list[list[int]]:
        return self._sp.encode(list(texts), num_threads=num_threads)

    def decode(self, ids: Iterable[int]) -> str:
        special = (self.bos_id, self.eos_id, self.pad_id)
        return self._sp.decode([int(i) for i in ids if int(i) not in special])

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(int(i))


def train_tokenizer(
    texts: Iterable[str],
    model_path: str,
    vocab_size: int = 2000,
    user_defined_symbols: Sequence[str] = MARKERS,
) -> Tokenizer:
    """Trains a small BPE SentencePiece model that keeps newlines and spaces exactly (identity
    normalisation, byte fallback, no dummy prefix); ids: unk 0, bos 1, eos 2, pad 3 (Llama layout + pad).
    The markers and "\\n" are user-defined symbols so prompts stay short; they are still plain text."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        character_coverage=1.0,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        split_by_whitespace=True,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        user_defined_symbols=list(user_defined_symbols) + ["\n"],
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        max_sentence_length=1 << 16,
        hard_vocab_limit=False,
        num_threads=2,
        minloglevel=2,
    )
    tmp = f"{model_path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(model.getvalue())
    os.replace(tmp, model_path)
    return Tokenizer(model_path)
