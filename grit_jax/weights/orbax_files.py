"""An orbax checkpoint's files, below orbax's own API: whether a step's files are intact, and its arrays
read and written one slice at a time with tensorstore.

Intact steps (checked before a step is used). Orbax marks a step complete once every host wrote its files;
nothing tells later whether a file was since truncated or removed, and a damaged step then fails deep inside
tensorstore, or is misread as a config mismatch. So once a save has finished, process 0 writes FILES into the
step: every file of the step with its size (one listing, no file read back: a checkpoint can be many GB). A
step is intact when every listed file is there with that size. A step without FILES (killed between orbax's
commit and our listing, or written before FILES existed) gets the structural check only: every item there,
each orbax PyTree item with its `_METADATA` and `manifest.ocdbt`. Nothing here knows what the items hold, so
items added later are checked the same way.

Slices. orbax's PyTree layout (PyTreeCheckpointer.save, orbax-checkpoint 0.12): an OCDBT key-value store in
the item dir, one zarr (v2) array per leaf named by its dotted key path, and a `_METADATA` json tree. Reading
and writing the arrays with tensorstore directly moves one slice (one layer, one expert) at a time: orbax's
own save would copy each whole array twice over (~3x its size at the peak) and glibc would keep the freed
memory.
"""

from __future__ import annotations

import ctypes
import json
import os
import time

import numpy as np
import tensorstore as ts

from grit_jax import storage

# ----------------------------------------------------------------------------- intact steps


FILES = "grit_files.json"
PYTREE_MARKERS = ("_METADATA", "manifest.ocdbt")  # an orbax PyTree item cannot be read without these
DAMAGED = ".damaged"  # a damaged step is renamed <step>.damaged: orbax lists digit names only


def seal(step_dir: str) -> None:
    """Records every file of a finished step with its size (the step's FILES)."""
    sizes = {name: size for name, size in storage.file_sizes(step_dir).items() if name != FILES}
    storage.write_text(storage.join(step_dir, FILES), json.dumps(sizes, indent=0, sort_keys=True))


def is_sealed(step_dir: str) -> bool:
    return storage.isfile(storage.join(step_dir, FILES))


def problem(step_dir: str, items: tuple[str, ...]) -> str | None:
    """What is wrong with a step, in a few words, or None when it is intact."""
    sizes = storage.file_sizes(step_dir)
    if FILES in sizes:
        try:
            written = json.loads(storage.read_text(storage.join(step_dir, FILES)))
        except ValueError:
            return f"{FILES} is not valid JSON"
        for name, size in sorted(written.items()):
            if name not in sizes:
                return f"{name} is missing"
            if sizes[name] != size:
                return f"{name} has {sizes[name]} bytes, {size} were written"
        return None
    for item in items:
        files = {n.split("/", 1)[1] for n in sizes if n.startswith(item + "/")}
        if not files:
            return f"item {item!r} is missing"
        if any("/" in f for f in files):  # data files in subdirectories: an orbax PyTree item
            missing = [m for m in PYTREE_MARKERS if m not in files]
            if missing:
                return f"{item}/{missing[0]} is missing"
    return None


def set_aside(step_dir: str) -> str:
    """Renames a damaged step to <step>.damaged (kept for a look, never listed as a step again)."""
    target = step_dir.rstrip("/") + DAMAGED
    n = 1
    while storage.isdir(target):
        n += 1
        target = f"{step_dir.rstrip('/')}{DAMAGED}{n}"
    storage.move(step_dir, target)
    return target


# ----------------------------------------------------------------------------- tensorstore slices


_OCDBT_CONFIG = {
    "max_inline_value_bytes": 1024,
    "max_decoded_node_bytes": 100_000_000,
    "version_tree_arity_log2": 4,
    "compression": {"id": "zstd"},
}


def _ts_context():
    return ts.Context({"cache_pool": {"total_bytes_limit": 0}})  # no chunk cache: each chunk is read once


def _leaf_spec(
    pytree_dir: str, keys: tuple[str, ...], use_ocdbt: bool = True, use_zarr3: bool = False
) -> dict:
    name, base = ".".join(keys), storage.kvstore(pytree_dir)  # a local dir or gs://
    if use_ocdbt:
        kvstore = {"driver": "ocdbt", "base": {**base, "path": base["path"].rstrip("/") + "/"}, "path": name}
    else:
        kvstore = {**base, "path": base["path"].rstrip("/") + "/" + name}
    return {"driver": "zarr3" if use_zarr3 else "zarr", "kvstore": kvstore}


def release_memory():
    """Hands memory freed by numpy/tensorstore back to the OS (glibc keeps it in its arenas otherwise)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def leaf_opener(pytree_dir: str):
    """keys -> the tensorstore array of that leaf of an orbax PyTree checkpoint, whole or sliced."""
    meta = json.loads(storage.read_text(storage.join(pytree_dir, "_METADATA")))
    ocdbt, zarr3, context = meta.get("use_ocdbt", True), meta.get("use_zarr3", False), _ts_context()
    return lambda keys: ts.open(
        _leaf_spec(pytree_dir, keys, ocdbt, zarr3), open=True, read=True, context=context
    ).result()


class PyTreeWriter:
    """Writes an orbax PyTree checkpoint of a flat {dotted path: array} dict (read back as a nested dict of
    numpy arrays), one slice at a time: `write(path, shape, index, value)` sets array[index] = value; a new
    path starts a new array. Chunks are one slice, so no chunk is ever read back or held whole."""

    def __init__(self, directory: str):
        if storage.is_url(directory):
            storage.makedirs(directory)
        else:
            os.makedirs(directory)  # raises if it exists: never mixed with an older checkpoint
        self.directory, self.context, self.keys, self.array = directory, _ts_context(), [], None

    def write(self, path: str, shape: tuple[int, ...], index: tuple[int, ...], value: np.ndarray):
        keys = tuple(path.split("."))
        if not self.keys or self.keys[-1] != keys:
            self.keys.append(keys)
            spec = _leaf_spec(self.directory, keys)
            spec["kvstore"]["config"] = _OCDBT_CONFIG
            chunks = (1,) * (len(shape) - value.ndim) + tuple(value.shape)
            spec.update(
                dtype=str(value.dtype),
                metadata={
                    "shape": list(shape),
                    "chunks": list(chunks),
                    "compressor": {"id": "zstd", "level": 1},
                },
            )
            self.array = ts.open(spec, create=True, context=self.context).result()
        # value is never modified after this: tensorstore may keep a reference instead of copying it
        self.array[index].write(value, can_reference_source_data_indefinitely=True).result()

    def close(self):
        leaf = {"value_type": "np.ndarray", "skip_deserialize": False}
        tree = {
            str(keys): {"key_metadata": [{"key": k, "key_type": 2} for k in keys], "value_metadata": leaf}
            for keys in self.keys
        }
        meta = {
            "tree_metadata": tree,
            "use_ocdbt": True,
            "use_zarr3": False,
            "store_array_data_equal_to_fill_value": True,
            "custom_metadata": None,
        }
        storage.write_text(storage.join(self.directory, "_METADATA"), json.dumps(meta))
        handler, now = (
            "orbax.checkpoint._src.handlers.pytree_checkpoint_handler.PyTreeCheckpointHandler",
            time.time_ns(),
        )
        storage.write_text(
            storage.join(self.directory, "_CHECKPOINT_METADATA"),
            json.dumps(
                {
                    "item_handlers": handler,
                    "metrics": {},
                    "performance_metrics": {},
                    "custom_metadata": {},
                    "init_timestamp_nsecs": now,
                    "commit_timestamp_nsecs": now,
                }
            ),
        )
