"""Hugging Face safetensors files: lazy reading of a (sharded) directory, and sharded writing that streams.

Reading uses safetensors' lazy numpy reader, one tensor at a time, never torch. Writing plans every
shard's header from names, shapes and dtypes first, then streams each tensor to disk as it arrives.
"""

from __future__ import annotations

import json
import math
import os

import ml_dtypes
import numpy as np
from safetensors import safe_open

from grit_jax import storage
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


_NUMPY_OF = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": ml_dtypes.bfloat16, "I64": "<i8", "I32": "<i4"}
_NUMPY_OF.update({"I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"})


class RemoteSafetensors:
    """A safetensors file behind a URL, which `safetensors` cannot memory-map: the 8-byte little-endian
    header length and the JSON header are read once, then each tensor is one byte-range request."""

    def __init__(self, file: str):
        self.file = file
        try:
            size = int.from_bytes(storage.read_range(file, 0, 8), "little")
            self.header = json.loads(storage.read_range(file, 8, 8 + size))
        except ValueError as e:
            raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from None
        self.header.pop("__metadata__", None)
        self.data_start = 8 + size

    def keys(self):
        return list(self.header)

    def get_tensor(self, name: str) -> np.ndarray:
        return self.get_slice(name)[...]

    def get_slice(self, name: str) -> _RemoteTensor:
        return _RemoteTensor(self, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass  # nothing held open between requests


class _RemoteTensor:
    """One tensor of a RemoteSafetensors file, as safetensors' get_slice gives it: a box is one byte-range
    request spanning the rows of its first dimension (the dimension every sharding rule here cuts)."""

    def __init__(self, remote: RemoteSafetensors, name: str):
        self.remote, self.info = remote, remote.header[name]

    def get_shape(self) -> list[int]:
        return list(self.info["shape"])

    def get_dtype(self) -> str:
        return self.info["dtype"]

    def __getitem__(self, index) -> np.ndarray:
        shape, dtype = tuple(self.info["shape"]), np.dtype(_NUMPY_OF[self.info["dtype"]])
        index = index if isinstance(index, tuple) else (index,)
        index = () if index == (Ellipsis,) else index
        rows = index[0] if index and shape else slice(None)
        first, last, step = rows.indices(shape[0]) if shape else (0, 1, 1)
        row_bytes = math.prod(shape[1:]) * dtype.itemsize
        start = self.remote.data_start + self.info["data_offsets"][0] + first * row_bytes
        data = storage.read_range(self.remote.file, start, start + (last - first) * row_bytes)
        if len(data) != (last - first) * row_bytes:
            raise ValueError(f"{(last - first) * row_bytes} bytes expected, {len(data)} read")
        block = np.frombuffer(data, dtype).reshape((last - first, *shape[1:]) if shape else ())
        return block[(slice(None, None, step), *index[1:])] if shape else block


def _open(file: str):
    if storage.is_url(file):
        return RemoteSafetensors(file)
    try:
        return safe_open(file, framework="numpy")
    except Exception as e:  # safetensors' own error type: a truncated or corrupt file
        raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from None


class SafetensorsDir:
    """Lazy access to the tensors of a directory of *.safetensors files (sharded with an index, or not)."""

    def __init__(self, path: str):
        self.path = path
        index = storage.join(path, "model.safetensors.index.json")
        if storage.isfile(index):
            weight_map = json.loads(storage.read_text(index))["weight_map"]
            self.files = {name: storage.join(path, file) for name, file in weight_map.items()}
            for file in set(self.files.values()):
                if not storage.isfile(file):
                    raise CheckpointError(
                        f"{index}: names shard {storage.as_path(file).name}, which does not exist"
                    )
        else:
            shards = sorted(os.fspath(p) for p in storage.as_path(path).glob("*.safetensors"))
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
        self.file = storage.as_path(storage.join(self.out_dir, self.names[i])).open("wb")
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
            storage.write_text(
                storage.join(self.out_dir, "model.safetensors.index.json"), json.dumps(index, indent=2)
            )
