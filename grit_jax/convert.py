"""Hugging Face <-> orbax checkpoints, streaming one parameter at a time (`grit-convert`).

    grit-convert hf-to-orbax --hf_dir D --out C [--dtype bfloat16]
    grit-convert orbax-to-hf --ckpt C --out D [--step N] [--dtype bfloat16] [--max_shard_size 2GB] [--tokenizer F]

An hf-to-orbax directory C holds `params/` (an orbax PyTree checkpoint of the model's parameters as a pure
nested dict, the layout of `nnx.state(model, nnx.Param).to_pure_dict()`), `model_config.json` (every
ModelConfig field) and the tokenizer files. A training checkpoint is an orbax CheckpointManager step dir
`workdir/checkpoints/<step>/` whose `state` item holds {"params": nnx State, ...}, with the training
config in `workdir/config.json`. `load_params_from_checkpoint` reads both.

Memory: both directions move one Hugging Face tensor (one layer, one expert) at a time: orbax arrays are
read and written in slices with tensorstore (no chunk cache), safetensors output goes straight to disk
with a pre-planned header, and freed memory is handed back to the OS after each tensor. The peak stays
near a few copies of the largest single tensor, whatever the size of a stacked parameter (a Mixtral's
[L,E,D,F] experts included) (benchmarks/RESULTS.md, "Conversion memory"). The name map and per-tensor
transforms are grit_jax.hf's; there is no second map here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator

import numpy as np

from grit_jax import hf, platforms
from grit_jax.hf import CheckpointError
from grit_jax.model.config import ConfigError, ModelConfig

MODEL_CONFIG = "model_config.json"
PARAMS_ITEM = "params"
GRIT_CONFIG = "grit_config.json"
TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
# What an embedding user needs to know (written next to an exported model as grit_config.json).
DEFAULT_GRIT_CONFIG = {
    "pooling_method": "mean",
    "attn": "bbcc",  # first two letters: embedding attention (bb bidirectional, cc causal); last two: generation
    "normalized": True,
    "embed_instruction": False,  # instruction tokens (with BOS) are excluded from mean pooling
    "instruction_format": "<|user|>\n{instruction}\n<|embed|>\n",
    "instruction_format_without_instruction": "<|embed|>\n",
    "chat_format": "<s><|user|>\n{user}\n<|assistant|>\n",
    "projection": None,
}


class NotACheckpointError(CheckpointError):
    """A path that is neither an hf-to-orbax directory nor a training checkpoint."""


# ----------------------------------------------------------------------------- sizes and dtypes


def parse_size(text: str | int) -> int:
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)i?B?\s*", str(text), re.IGNORECASE)
    if not match:
        raise ValueError(f"--max_shard_size: cannot read {text!r}; use e.g. 2GB, 500MB or a byte count")
    return int(float(match.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[match.group(2).upper()])


def numpy_dtype(name: str | None):
    if name is None:
        return None
    import ml_dtypes

    table = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
    if name not in table:
        raise ValueError(f"--dtype must be one of {sorted(table)}, got {name!r}")
    return np.dtype(table[name])


# ----------------------------------------------------------------------------- finding checkpoints


@dataclasses.dataclass
class CheckpointSource:
    """Where a checkpoint's parameters live: an orbax PyTree dir, the key prefix of the parameters in it,
    the model config, and the directories to search for tokenizer / training config."""

    pytree_dir: str
    prefix: tuple[str, ...]
    config: ModelConfig
    search_dirs: list[str]
    training_config: dict | None = None
    tokenizer_file: str | None = None  # the training config's data.tokenizer, if set


def _is_pytree_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "_METADATA"))


def _step_dirs(path: str) -> list[tuple[int, str]]:
    if not os.path.isdir(path):
        return []
    return sorted((int(n), os.path.join(path, n)) for n in os.listdir(path) if n.isdigit())


def _training_source(item: str, config_path: str, training: dict) -> CheckpointSource:
    """The source of a training step: the ModelConfig as grit_jax.step builds it, and where the tokenizer is."""
    import ml_collections

    from grit_jax.step import model_config

    m, data = training.get("model") or {}, training.get("data") or {}
    if not m.get("hf_dir") and not m.get("preset"):
        raise ConfigError(
            f"{config_path}: model.preset and model.hf_dir are both empty: cannot tell the model"
        )
    cfg = model_config(ml_collections.ConfigDict(training))
    workdir = os.path.dirname(config_path)
    search = [workdir, data.get("data_dir") or os.path.join(workdir, "data"), m.get("hf_dir")]
    return CheckpointSource(
        item, ("params",), cfg, [d for d in search if d], training, data.get("tokenizer") or None
    )


def resolve_checkpoint(path: str, step: int | None = None) -> CheckpointSource:
    """An hf-to-orbax dir, a training step dir, `workdir/checkpoints` or `workdir` (latest or `step`)."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise NotACheckpointError(f"{path}: no such directory (expected an orbax checkpoint)")
    if os.path.isfile(os.path.join(path, MODEL_CONFIG)) and _is_pytree_dir(os.path.join(path, PARAMS_ITEM)):
        cfg = _read_model_config(os.path.join(path, MODEL_CONFIG))
        return CheckpointSource(os.path.join(path, PARAMS_ITEM), (), cfg, [path])
    for candidate in (os.path.join(path, "checkpoints"), path):
        steps = _step_dirs(candidate)
        if steps and not _is_pytree_dir(path):
            chosen = dict(steps).get(step) if step is not None else steps[-1][1]
            if chosen is None:
                raise NotACheckpointError(
                    f"{candidate}: no step {step}; steps there: {[s for s, _ in steps]}"
                )
            return resolve_checkpoint(chosen)
    item = next(
        (os.path.join(path, n) for n in ("state", "default", "") if _is_pytree_dir(os.path.join(path, n))),
        None,
    )
    if item is None:
        raise NotACheckpointError(
            f"{path}: not a checkpoint: expected `{PARAMS_ITEM}/` and `{MODEL_CONFIG}` (grit-convert hf-to-orbax), "
            f"a training step dir with a `state/` orbax item, or a work dir with `checkpoints/<step>/`"
        )
    # A training step dir: workdir/checkpoints/<step>/state; the config lives up the tree.
    search = [path, os.path.dirname(path), os.path.dirname(os.path.dirname(path))]
    for d in search:
        if os.path.isfile(os.path.join(d, MODEL_CONFIG)):
            return CheckpointSource(
                item, ("params",), _read_model_config(os.path.join(d, MODEL_CONFIG)), search
            )
        config_path = os.path.join(d, "config.json")
        if os.path.isfile(config_path):
            with open(config_path, encoding="utf-8") as f:
                data = json.load(f)
            if "model" in data:
                return _training_source(item, config_path, data)
            return CheckpointSource(
                item, ("params",), ModelConfig.from_hf_dict(data, source=config_path), search
            )
    raise NotACheckpointError(
        f"{path}: a checkpoint without a config: looked for {MODEL_CONFIG} or config.json in {search}"
    )


def _read_model_config(path: str) -> ModelConfig:
    with open(path, encoding="utf-8") as f:
        fields = json.load(f)
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown ModelConfig fields {unknown}")
    return ModelConfig(**fields)


# ----------------------------------------------------------------------------- orbax checkpoint contents


def _strip(key: tuple[str, ...], prefix: tuple[str, ...]) -> str | None:
    """Our dotted parameter path of an orbax key path (nnx Variables add a trailing `value`)."""
    if key[: len(prefix)] != prefix:
        return None
    key = key[len(prefix) :]
    if key and key[-1] in ("value", "raw_value"):
        key = key[:-1]
    return ".".join(key)


def checkpoint_leaves(source: CheckpointSource) -> dict[str, tuple]:
    """{our dotted path: (orbax key path, shape, dtype, orbax metadata)} for every parameter leaf."""
    import jax
    import orbax.checkpoint as ocp

    metadata = ocp.PyTreeCheckpointer().metadata(source.pytree_dir)
    tree = getattr(getattr(metadata, "item_metadata", metadata), "tree", metadata)
    leaves = {}
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        keys = tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in key_path)
        name = _strip(keys, source.prefix)
        if name is not None and hasattr(leaf, "shape"):
            leaves[name] = (keys, tuple(leaf.shape), str(leaf.dtype), leaf)
    return leaves


def _check_leaves(source: CheckpointSource, leaves) -> None:
    cfg, shapes = source.config, hf.param_shapes(source.config)
    for entry in hf.name_map(cfg):
        stack = (cfg.num_hidden_layers,) * entry.per_layer + (cfg.num_local_experts,) * entry.per_expert
        want = stack + shapes[entry.path]
        if entry.path not in leaves:
            raise CheckpointError(
                f"{source.pytree_dir}: parameter {entry.path!r} is missing "
                f"(a {cfg.architecture} with this config needs it)"
            )
        if leaves[entry.path][1] != want:
            raise CheckpointError(
                f"{source.pytree_dir}: parameter {entry.path!r} has shape {leaves[entry.path][1]}, "
                f"the config says {want}"
            )
    expected = {e.path for e in hf.name_map(cfg)}
    extra = sorted(set(leaves) - expected)
    if extra:
        raise CheckpointError(
            f"{source.pytree_dir}: parameter {extra[0]!r} is not part of a {cfg.architecture} "
            f"with this config"
        )


# ----------------------------------------------------------------------------- arrays, slice by slice, with tensorstore

# orbax's layout (PyTreeCheckpointer.save, orbax-checkpoint 0.12): an OCDBT key-value store in the item dir,
# one zarr (v2) array per leaf named by its dotted key path, and a `_METADATA` json tree. Reading and writing
# the arrays with tensorstore directly lets us move one slice (one layer, one expert) at a time: orbax's
# save would copy each whole array twice over (~3x its size at the peak) and glibc would keep the freed memory.
_OCDBT_CONFIG = {
    "max_inline_value_bytes": 1024,
    "max_decoded_node_bytes": 100_000_000,
    "version_tree_arity_log2": 4,
    "compression": {"id": "zstd"},
}


def _ts_context():
    import tensorstore as ts

    return ts.Context({"cache_pool": {"total_bytes_limit": 0}})  # no chunk cache: each chunk is read once


def _leaf_spec(
    pytree_dir: str, keys: tuple[str, ...], use_ocdbt: bool = True, use_zarr3: bool = False
) -> dict:
    name = ".".join(keys)
    kvstore = (
        {"driver": "ocdbt", "base": f"file://{pytree_dir}/", "path": name}
        if use_ocdbt
        else {"driver": "file", "path": os.path.join(pytree_dir, name)}
    )
    return {"driver": "zarr3" if use_zarr3 else "zarr", "kvstore": kvstore}


def release_memory():
    """Hands memory freed by numpy/tensorstore back to the OS (glibc keeps it in its arenas otherwise)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def leaf_opener(pytree_dir: str):
    """keys -> the tensorstore array of that leaf of an orbax PyTree checkpoint, to read whole or in slices."""
    import tensorstore as ts

    with open(os.path.join(pytree_dir, "_METADATA"), encoding="utf-8") as f:
        meta = json.load(f)
    ocdbt, zarr3, context = meta.get("use_ocdbt", True), meta.get("use_zarr3", False), _ts_context()
    return lambda keys: ts.open(
        _leaf_spec(pytree_dir, keys, ocdbt, zarr3), open=True, read=True, context=context
    ).result()


class PyTreeWriter:
    """Writes an orbax PyTree checkpoint of a flat {dotted path: array} dict (read back as a nested dict of
    numpy arrays), one slice at a time: `write(path, shape, index, value)` sets array[index] = value; a new
    path starts a new array. Chunks are one slice, so no chunk is ever read back or held whole."""

    def __init__(self, directory: str):
        os.makedirs(directory)
        self.directory, self.context, self.keys, self.array = directory, _ts_context(), [], None

    def write(self, path: str, shape: tuple[int, ...], index: tuple[int, ...], value: np.ndarray):
        import tensorstore as ts

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
        with open(os.path.join(self.directory, "_METADATA"), "w", encoding="utf-8") as f:
            json.dump(meta, f)
        handler, now = (
            "orbax.checkpoint._src.handlers.pytree_checkpoint_handler.PyTreeCheckpointHandler",
            time.time_ns(),
        )
        with open(os.path.join(self.directory, "_CHECKPOINT_METADATA"), "w", encoding="utf-8") as f:
            json.dump(
                {
                    "item_handlers": handler,
                    "metrics": {},
                    "performance_metrics": {},
                    "custom_metadata": {},
                    "init_timestamp_nsecs": now,
                    "commit_timestamp_nsecs": now,
                },
                f,
            )


def iter_checkpoint_params(source: CheckpointSource, dtype=None) -> Iterator[tuple[str, np.ndarray]]:
    """(our dotted path, array) for every parameter, one at a time, after checking names and shapes."""
    leaves = checkpoint_leaves(source)
    _check_leaves(source, leaves)
    open_leaf = leaf_opener(source.pytree_dir)
    for entry in hf.name_map(source.config):
        array = open_leaf(leaves[entry.path][0]).read().result()
        yield entry.path, (array if dtype is None else array.astype(dtype, copy=False))
        del array
        release_memory()


def load_params_from_checkpoint(
    path: str, cfg: ModelConfig | None = None, step: int | None = None, dtype=None
) -> dict[str, np.ndarray]:
    """{dotted path: array} from an hf-to-orbax dir or a training checkpoint (step dir or work dir).

    `cfg` (optional) must agree with the checkpoint's own config on every shape; `dtype` defaults to
    cfg.param_dtype when cfg is given, else the stored dtype.
    """
    source = resolve_checkpoint(path, step)
    if cfg is not None:
        source.config = cfg
        dtype = dtype or numpy_dtype(cfg.param_dtype)
    return dict(iter_checkpoint_params(source, dtype))


# ----------------------------------------------------------------------------- safetensors output, shard by shard


_SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


class ShardWriter:
    """Writes tensors straight to `model-00001-of-00003.safetensors`-style shards as they arrive, nothing buffered.

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
            raise CheckpointError(
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
            raise CheckpointError(
                f"internal: {len(self.queue) - self.position} planned tensors were never written"
            )
        if len(self.names) > 1:
            weight_map = {name: self.names[i] for i, (name, *_) in self.queue}
            total = sum(item[3] for _, item in self.queue)
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            with open(os.path.join(self.out_dir, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
                json.dump(index, f, indent=2)


# ----------------------------------------------------------------------------- tokenizer and GRIT settings


def find_tokenizer(dirs: list[str], explicit: str | None = None, hint: str | None = None) -> str:
    """The tokenizer.model to use: `explicit`, else `hint` or the first found in `dirs`; an error names every
    path tried."""
    candidates = (
        [explicit]
        if explicit
        else [hint] * bool(hint) + [os.path.join(d, "tokenizer.model") for d in dirs if d]
    )
    for c in candidates:
        if os.path.isfile(c):
            return c
    raise FileNotFoundError(
        f"no tokenizer: {' nor '.join(candidates)} exists (pass --tokenizer PATH/tokenizer.model)"
    )


def copy_tokenizer(tokenizer_model: str, out: str):
    src = os.path.dirname(os.path.abspath(tokenizer_model))
    shutil.copyfile(tokenizer_model, os.path.join(out, "tokenizer.model"))
    for name in TOKENIZER_FILES[1:]:
        if os.path.isfile(os.path.join(src, name)):
            shutil.copyfile(os.path.join(src, name), os.path.join(out, name))
    if not os.path.isfile(os.path.join(out, "tokenizer_config.json")):
        with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(
                {
                    "tokenizer_class": "LlamaTokenizer",
                    "bos_token": "<s>",
                    "eos_token": "</s>",
                    "unk_token": "<unk>",
                    "add_bos_token": True,
                    "add_eos_token": False,
                    "padding_side": "right",
                },
                f,
                indent=2,
            )


def grit_settings(source: CheckpointSource | None, **overrides) -> dict:
    """GRIT settings for grit_config.json: defaults, then the training config's objective, then overrides."""
    out = dict(DEFAULT_GRIT_CONFIG)
    for d in source.search_dirs if source else []:
        if d and os.path.isfile(os.path.join(d, GRIT_CONFIG)):
            with open(os.path.join(d, GRIT_CONFIG), encoding="utf-8") as f:
                out.update(json.load(f))
            break
    objective = (source.training_config or {}).get("objective") if source else None
    if objective:
        out.update(
            pooling_method=objective.get("pooling", out["pooling_method"]),
            attn=objective.get("attn", out["attn"]),
            normalized=objective.get("normalize", out["normalized"]),
            projection=objective.get("projection_dim") or None,
        )
    out.update({k: v for k, v in overrides.items() if v is not None})
    return out


# ----------------------------------------------------------------------------- the two directions


def hf_to_orbax(hf_dir: str, out: str, dtype: str | None = None) -> str:
    """A Hugging Face Mistral/Mixtral directory -> an orbax checkpoint dir (params/, model_config.json, tokenizer)."""
    hf_dir, out = os.path.abspath(hf_dir), os.path.abspath(out)
    if not os.path.isdir(hf_dir):
        raise NotACheckpointError(f"{hf_dir}: no such directory (expected a Hugging Face model directory)")
    tokenizer = find_tokenizer([hf_dir])
    cfg = ModelConfig.from_hf_json(hf_dir)
    target = numpy_dtype(dtype)
    if os.path.exists(os.path.join(out, PARAMS_ITEM)):
        raise FileExistsError(f"{os.path.join(out, PARAMS_ITEM)} exists; choose a new --out")
    os.makedirs(out, exist_ok=True)
    staging = os.path.join(out, PARAMS_ITEM + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    writer, first = PyTreeWriter(staging), None
    for entry, shape, index, value in hf.iter_hf_slices(hf_dir, cfg, dtype=target):
        first = first or str(value.dtype)
        writer.write(entry.path, shape, index, value)
        del value
        release_memory()
    writer.close()
    os.replace(staging, os.path.join(out, PARAMS_ITEM))
    fields = dataclasses.asdict(cfg.replace(param_dtype=_dtype_name(first)))
    with open(os.path.join(out, MODEL_CONFIG), "w", encoding="utf-8") as f:
        json.dump(fields, f, indent=2)
    copy_tokenizer(tokenizer, out)
    if os.path.isfile(os.path.join(hf_dir, GRIT_CONFIG)):
        shutil.copyfile(os.path.join(hf_dir, GRIT_CONFIG), os.path.join(out, GRIT_CONFIG))
    return out


def _dtype_name(dtype: str) -> str:
    return {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}.get(dtype, "float32")


def orbax_to_hf(
    ckpt: str,
    out: str,
    step: int | None = None,
    dtype: str | None = None,
    max_shard_size: str | int = "2GB",
    tokenizer: str | None = None,
    **grit_overrides,
) -> str:
    """An orbax checkpoint (hf-to-orbax dir or training checkpoint, any step) -> a Hugging Face directory."""
    source = resolve_checkpoint(ckpt, step)
    tokenizer_model = find_tokenizer(source.search_dirs, tokenizer, source.tokenizer_file)
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    leaves = checkpoint_leaves(source)
    _check_leaves(source, leaves)
    target, cfg = numpy_dtype(dtype), source.config
    stored = str(target or leaves[hf.name_map(cfg)[0].path][2])
    plan = [
        (name, hf.hf_shape(entry, hf.param_shapes(cfg)[entry.path]), str(target or leaves[entry.path][2]))
        for entry in hf.name_map(cfg)
        for _, name in hf.hf_names(entry, cfg)
    ]
    writer, open_leaf = ShardWriter(out, parse_size(max_shard_size), plan), leaf_opener(source.pytree_dir)
    for entry in hf.name_map(cfg):
        array = open_leaf(leaves[entry.path][0])
        for index, name in hf.hf_names(entry, cfg):
            value = array[index].read().result()  # one layer (and expert) at a time
            writer.add(name, hf.to_hf(entry, value if target is None else value.astype(target, copy=False)))
            del value
        release_memory()
    writer.close()
    hf_config = source.config.replace(param_dtype=_dtype_name(stored)).to_hf_dict()
    with open(os.path.join(out, "config.json"), "w", encoding="utf-8") as f:
        json.dump(hf_config, f, indent=2)
    with open(os.path.join(out, "generation_config.json"), "w", encoding="utf-8") as f:
        json.dump(
            {"bos_token_id": source.config.bos_token_id, "eos_token_id": source.config.eos_token_id},
            f,
            indent=2,
        )
    copy_tokenizer(tokenizer_model, out)
    with open(os.path.join(out, GRIT_CONFIG), "w", encoding="utf-8") as f:
        json.dump(grit_settings(source, **grit_overrides), f, indent=2)
    return out


# ----------------------------------------------------------------------------- command line


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="grit-convert", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("hf-to-orbax", help="Hugging Face Mistral/Mixtral dir -> orbax checkpoint")
    a.add_argument("--hf_dir", required=True)
    a.add_argument("--out", required=True)
    a.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default=None,
        help="parameter dtype to store (default: as in the safetensors files)",
    )
    b = sub.add_parser("orbax-to-hf", help="orbax checkpoint (any step) -> Hugging Face dir")
    b.add_argument("--ckpt", required=True, help="hf-to-orbax dir, training step dir, or training work dir")
    b.add_argument("--out", required=True)
    b.add_argument("--step", type=int, default=None, help="with a work dir: the step (default: latest)")
    b.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None)
    b.add_argument("--max_shard_size", default="2GB")
    b.add_argument(
        "--tokenizer", default=None, help="tokenizer.model to ship (default: found next to the checkpoint)"
    )
    b.add_argument("--pooling_method", default=None, choices=("mean", "weightedmean", "lasttoken", "cls"))
    b.add_argument("--attn", default=None, choices=("bbcc", "cccc"))
    return parser.parse_args(argv)


def run(argv=None):
    platforms.quiet_platform()
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "hf-to-orbax":
            out = hf_to_orbax(args.hf_dir, args.out, args.dtype)
        else:
            out = orbax_to_hf(
                args.ckpt,
                args.out,
                args.step,
                args.dtype,
                args.max_shard_size,
                args.tokenizer,
                pooling_method=args.pooling_method,
                attn=args.attn,
            )
    except (ConfigError, CheckpointError, FileNotFoundError, FileExistsError, ValueError) as e:
        raise SystemExit(f"grit-convert {args.command}: error: {e}") from None
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    run()
