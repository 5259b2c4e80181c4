"""The one tokenizer interface: a sentencepiece `tokenizer.model` (Mistral, Llama 2) or a Hugging Face
`tokenizer.json` (Llama 3, Qwen; grit_jax.data.hf_tokenizer); and training a small sentencepiece model.

The GRIT prompt markers (`<|user|>`, `<|embed|>`, `<|assistant|>`) are ordinary text, tokenized like any
other text, as in the reference. BOS/EOS are never text: callers add `bos_id`/`eos_id` as ids (no BOS
where the tokenizer has none).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
from collections.abc import Iterable, Sequence

import sentencepiece as spm

from grit_jax.data import hf_tokenizer
from grit_jax.errors import CheckpointError, UsageError

MARKERS = ("<|user|>", "<|embed|>", "<|assistant|>")


SENTENCEPIECE = "tokenizer.model"


def tokenizer_file(path: str) -> str:
    """The tokenizer file `path` names: itself, or in a directory its tokenizer.model, else tokenizer.json."""
    if os.path.isdir(path):
        for name in (SENTENCEPIECE, hf_tokenizer.TOKENIZER_JSON):
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        raise CheckpointError(f"{path}: holds neither {SENTENCEPIECE} nor {hf_tokenizer.TOKENIZER_JSON}")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such tokenizer file")
    return path


class _SentencePiece:
    def __init__(self, proto: bytes, path: str):
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=proto)
        except RuntimeError as e:  # sentencepiece's parse error names no file
            raise CheckpointError(f"{path}: not a sentencepiece tokenizer model ({e})") from None
        ids = {"bos": self._sp.bos_id(), "eos": self._sp.eos_id(), "pad": self._sp.pad_id()}
        self.special_ids = {k: v if v >= 0 else None for k, v in ids.items()}
        self.vocab_size = self._sp.get_piece_size()
        self.encode, self.decode, self.id_to_piece = self._sp.encode, self._sp.decode, self._sp.id_to_piece

    def encode_batch(self, texts: Sequence[str], num_threads: int = -1) -> list[list[int]]:
        return self._sp.encode(list(texts), num_threads=num_threads)


class Tokenizer:
    """Encode/decode text with a sentencepiece `tokenizer.model` or a Hugging Face `tokenizer.json` (a file,
    or a directory holding one); exposes the BOS/EOS/pad ids.

    bos_id is None where the tokenizer has no BOS (Qwen): the prompt formats then start without one.
    pad id: `pad_id` argument if given, else the tokenizer's pad token, else the EOS id (the model's
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
        self.model_path = tokenizer_file(os.fspath(model_path))
        with open(self.model_path, "rb") as f:
            data = f.read()
        if self.model_path.endswith(".json"):
            self._backend = hf_tokenizer.TokenizerJson(self.model_path)
            data += repr(sorted(self._backend.special_ids.items())).encode()  # the config chooses them
        else:
            self._backend = _SentencePiece(data, self.model_path)
        self.fingerprint = hashlib.sha256(data).hexdigest()[:16]
        special = self._backend.special_ids
        self.bos_id = special["bos"] if bos_id is None else bos_id
        self.eos_id = special["eos"] if eos_id is None else eos_id
        if self.eos_id is None:
            raise CheckpointError(f"{self.model_path}: the tokenizer has no EOS token (pass eos_id)")
        self.pad_id = next(i for i in (pad_id, special["pad"], self.eos_id) if i is not None)
        for name in ("bos_id", "eos_id", "pad_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise UsageError(
                    f"{self.model_path}: {name}={value} is not a valid id (vocab {self.vocab_size})"
                )

    @property
    def vocab_size(self) -> int:
        return self._backend.vocab_size

    @property
    def bos(self) -> list[int]:
        """[BOS id], or [] for a tokenizer without BOS: what every prompt format starts with."""
        return [] if self.bos_id is None else [self.bos_id]

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without BOS/EOS."""
        return self._backend.encode(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = -1) -> list[list[int]]:
        if isinstance(self._backend, _SentencePiece):
            return self._backend.encode_batch(texts, num_threads)
        return self._backend.encode_batch(texts)

    def decode(self, ids: Iterable[int]) -> str:
        special = (self.bos_id, self.eos_id, self.pad_id)
        return self._backend.decode([int(i) for i in ids if int(i) not in special])

    def id_to_piece(self, i: int) -> str:
        return self._backend.id_to_piece(int(i))

    def files(self) -> list[str]:
        """The files that make up this tokenizer (a tokenizer.json comes with its tokenizer_config.json)."""
        if isinstance(self._backend, _SentencePiece):
            return [self.model_path]
        folder = os.path.dirname(self.model_path)
        siblings = [os.path.join(folder, name) for name in hf_tokenizer.FILES[1:]]
        return [self.model_path] + [p for p in siblings if os.path.isfile(p)]

    def copy_to(self, out_dir: str) -> str:
        """Copies files() into out_dir under their standard names; returns the copy of model_path."""
        main = SENTENCEPIECE if isinstance(self._backend, _SentencePiece) else hf_tokenizer.TOKENIZER_JSON
        files = self.files()
        for src, name in zip(files, [main] + [os.path.basename(p) for p in files[1:]]):
            target = os.path.join(out_dir, name)
            if os.path.abspath(src) != os.path.abspath(target):
                try:  # whole or not at all: a write that fails leaves the earlier copy
                    shutil.copyfile(src, target + ".tmp")
                    os.replace(target + ".tmp", target)
                finally:
                    if os.path.exists(target + ".tmp"):
                        os.remove(target + ".tmp")
        return os.path.join(out_dir, main)


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
    try:
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
    except RuntimeError as e:  # sentencepiece: "... smaller than required_chars. 256 vs 366. ..."
        needed = re.search(r"required_chars\. \d+ vs (\d+)", str(e))
        if not needed:
            raise
        raise UsageError(
            f"vocab_size={vocab_size} is too small for these texts: their characters, the markers and the "
            f"special tokens alone need {needed.group(1)}; use a vocab_size of at least {needed.group(1)}"
        ) from None
    tmp = f"{model_path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(model.getvalue())
    os.replace(tmp, model_path)
    return Tokenizer(model_path)
