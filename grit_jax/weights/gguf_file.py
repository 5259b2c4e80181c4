"""A GGUF file (llama.cpp's format) read with the `gguf` package: its metadata as Python values and its
tensors dequantised to float32 in Hugging Face orientation ([out, in] for a Linear).

GGUF lists a tensor's dimensions fastest-first (ggml's ne0 = the row length), so the numpy shape is the
reverse; quantised rows are stored as blocks of bytes that `gguf.quants.dequantize` expands. Metadata
values are decoded here from the reader's raw parts (not `ReaderField.contents`, which older `gguf`
releases lack).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from grit_jax.errors import CheckpointError


def _gguf():
    """The `gguf` package, or a one-line error saying how to install it."""
    try:
        import gguf
    except ImportError:
        raise CheckpointError("reading GGUF files needs the `gguf` package: pip install gguf") from None
    return gguf


class GGUFFile:
    """Metadata and tensors of one GGUF file; every error names the file."""

    def __init__(self, path: str):
        self.path = os.fspath(path)
        if "://" in self.path:
            raise CheckpointError(f"{self.path}: a GGUF file is read from local disk; copy it here first")
        if not os.path.isfile(self.path):
            raise CheckpointError(f"{self.path}: no such GGUF file")
        with open(self.path, "rb") as f:
            magic = f.read(4)
        if magic != b"GGUF":
            raise CheckpointError(f"{self.path}: not a GGUF file (it starts with {magic!r}, not b'GGUF')")
        gguf = _gguf()
        try:
            self._reader = gguf.GGUFReader(self.path)
        except (ValueError, IndexError, OSError) as e:  # truncated or of an unknown version
            raise CheckpointError(f"{self.path}: not a readable GGUF file ({e})") from None
        self._types = gguf.GGUFValueType
        self.tensors = {t.name: t for t in self._reader.tensors}

    def keys(self) -> list[str]:
        return [k for k in self._reader.fields if not k.startswith("GGUF.")]

    def get(self, key: str, default: Any = None) -> Any:
        """The value of metadata `key` (str, int, float, bool or a list of them), or `default`."""
        field = self._reader.fields.get(key)
        if field is None:
            return default
        kind = field.types[0] if field.types else None
        if kind == self._types.ARRAY:
            if field.types[-1] == self._types.STRING:
                return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
            return [field.parts[i].tolist()[0] for i in field.data]
        if kind == self._types.STRING:
            return bytes(field.parts[-1]).decode("utf-8")
        return field.parts[-1].tolist()[0]

    def require(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise CheckpointError(f"{self.path}: metadata {key!r} is missing")
        return value

    def shape(self, name: str) -> tuple[int, ...]:
        """The numpy (Hugging Face) shape of tensor `name`: GGUF's dimensions reversed."""
        return tuple(int(d) for d in reversed(self.tensors[name].shape.tolist()))

    def type_name(self, name: str) -> str:
        return self.tensors[name].tensor_type.name

    def tensor(self, name: str) -> np.ndarray:
        """Tensor `name` dequantised to float32, in numpy (Hugging Face) shape."""
        tensor, gguf = self.tensors[name], _gguf()
        try:
            values = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)
        except NotImplementedError:
            raise CheckpointError(
                f"{self.path}: tensor {name!r} has type {tensor.tensor_type.name}, which the installed gguf "
                "package cannot dequantise (a newer gguf may)"
            ) from None
        return np.asarray(values, dtype=np.float32).reshape(self.shape(name))
