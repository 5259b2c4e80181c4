"""Hugging Face safetensors files: lazy reading of a (sharded) directory, and sharded writing that streams.

Reading uses safetensors' lazy numpy reader, one tensor at a time, never torch. Writing plans every
shard's header from names, shapes and dtypes first, then streams each tensor to disk as it arrives.
"""

from __future__ import annotations

import glob
import json
import os

import ml_dtypes
import numpy as np
from safetensors import safe_open

from grit_jax.errors import CheckpointError, UsageError

# safetensors' dtype names of the floating types a model may be stored in
SAFETENSORS_DTYPES = {"F32": np.float32, "BF16": ml_dtypes.bfloat16, "F16": np.float16, "F64": np.float64}


def numpy_dtype(name: str | None):
    """The numpy dtype of a dtype name (bfloat16 from ml_dtypes); None stays None."""
    if name is None:
        return None
    table = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
    if name not in table:
        raise UsageError(f"dtype must be one of {sorted(table)}, got {name!r}")
    return np.dtype(table[name])


def _open(file: str):
    try:
        return safe_open(file, framework="numpy")
    except Exception as e:  # safetensors' own error type: a truncated or corrupt file
        raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from None


class SafetensorsDir:
    """Lazy access to the tensors of a directory of *.safetensors files (sharded with an index, or not)."""

    def __init__(self, path: str):
        self.path = path
        index = os.path.join(path, "model.safetensors.index.json")
        if os.path.exists(index):
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
            self.files = {name: os.path.join(path, file) for name, file in weight_map.items()}
            for file in set(self.files.values()):
                if not os.path.exists(file):
                    raise CheckpointError(
                        f"{index}: names shard {os.path.basename(file)}, which does not exist"
                    )
        else:
            shards = sorted(glob.glob(os.path.join(path, "*.safetensors")))
            if not shards:
                raise CheckpointError(
                    f"{path}: no *.safetensors files (grit_jax reads safetensors checkpoints only)"
                )
            self.files = {}
            for file in shards:
                with _open(file) as f:
                    self.files.update({name: file for name in f.keys()})
        self._open = {}

    def names(self):
        return set(self.files)

    def close(self):
        """Closes (unmaps) the open files; later reads reopen them."""
        self._open.clear()

    def _file(self, name: str):
        file = self.files.get(name)
        if file is None:
            raise CheckpointError(f"{self.path}: tensor {name!r} is missing from the checkpoint")
        if file not in self._open:
            self._open[file] = _open(file)
        return file, self._open[file]

    def get(self, name: str) -> np.ndarray:
        file, handle = self._file(name)
        try:
            return handle.get_tensor(name)
        except Exception as e:  # header fine, data cut short
            raise CheckpointError(f"{file}: tensor {name!r} cannot be read ({e})") from None

    def lazy(self, name: str) -> LazyTensor:
        """Tensor `name` unread: its shape and dtype, and reads of any box of it (only those bytes)."""
        file, handle = self._file(name)
        return LazyTensor(file, name, handle.get_slice(name))


class LazyTensor:
    """One tensor of a safetensors file, read box by box: `tensor[a:b, c:d]` reads only that box."""

    def __init__(self, file: str, name: str, handle):
        self.file, self.name, self._handle = file, name, handle
        self.shape = tuple(handle.get_shape())
        self.dtype = np.dtype(SAFETENSORS_DTYPES.get(handle.get_dtype(), np.float32))

    def __getitem__(self, index) -> np.ndarray:
        try:
            return self._handle[index]
        except Exception as e:  # header fine, data cut short
            raise CheckpointError(f"{self.file}: tensor {self.name!r} cannot be read ({e})") from None


_SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


class ShardWriter:
    """Writes tensors straight to `model-00001-of-00003.safetensors`-style shards as they arrive.

    The layout (which tensor goes in which shard, at which offset) is planned from names, shapes and dtypes
    before any tensor is read, so each file's header is written first and tensors stream in after it.
    Tensors must arrive in the planned order.
    """

    def __init__(self, out_dir: str, max_shard_size: int, plan: list[tuple[str, tuple[int, ...], str]]):
        self.out_dir, self.shards, size = out_dir, [[]], 0
        for name, shape, dtype in plan:
            nbytes = int(np.prod(shape)) * np.dtype(numpy_dtype(dtype)).itemsize
            if self.shards[-1] and size + nbytes > max_shard_size:
                self.shards.append([])
                size = 0
            self.shards[-1].append((name, tuple(shape), dtype, nbytes))
            size += nbytes
        n = len(self.shards)
        self.names = [
            "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)
        ]
        self.queue = [(i, item) for i, shard in enumerate(self.shards) for item in shard]
        self.position, self.file, self.file_index = 0, None, -1

    def _open(self, i):
        if self.file:
            self.file.close()
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, shape, dtype, nbytes in self.shards[i]:
            header[name] = {
                "dtype": _SAFETENSORS_DTYPES[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + nbytes],
            }
            offset += nbytes
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        self.file = open(os.path.join(self.out_dir, self.names[i]), "wb")
        self.file.write(len(text).to_bytes(8, "little") + text)
        self.file_index = i

    def add(self, name: str, tensor: np.ndarray):
        i, (want, shape, dtype, _) = self.queue[self.position]
        if name != want or tuple(tensor.shape) != shape or str(tensor.dtype) != dtype:
            raise AssertionError(
                f"internal: expected {want} {shape} {dtype}, got {name} {tensor.shape} {tensor.dtype}"
            )
        if i != self.file_index:
            self._open(i)
        self.file.write(np.ascontiguousarray(tensor).reshape(-1).view(np.uint8).data)
        self.position += 1

    def close(self):
        if self.file:
            self.file.close()
        if self.position != len(self.queue):
            raise AssertionError(
                f"internal: {len(self.queue) - self.position} planned tensors were never written"
            )
        if len(self.names) > 1:
            weight_map = {name: self.names[i] for i, (name, *_) in self.queue}
            total = sum(item[3] for _, item in self.queue)
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            with open(os.path.join(self.out_dir, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
                json.dump(index, f, indent=2)
