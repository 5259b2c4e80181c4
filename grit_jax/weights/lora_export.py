"""What `grit-convert lora-to-peft` and `merge-adapter` do: a LoRA run's adapters -> a PEFT adapter
directory, and a Hugging Face base + a PEFT adapter -> merged Hugging Face weights (W + alpha/r * A B),
streamed one tensor at a time as `orbax-to-hf` streams (grit_jax/programs/grit_convert.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np

from grit_jax import storage
from grit_jax.errors import CheckpointError, UsageError
from grit_jax.weights import hf, peft_adapter
from grit_jax.weights.card import write_merged_card
from grit_jax.weights.checkpoints import CheckpointSource, checkpoint_leaves, resolve_checkpoint
from grit_jax.weights.loading import HFParams, iter_tensors
from grit_jax.weights.model_dir import DEFAULT_GRIT_CONFIG, GRIT_CONFIG
from grit_jax.weights.orbax_files import leaf_opener
from grit_jax.weights.safetensors_io import ShardWriter

MERGED = "grit_merged_adapters.json"  # the adapters merge-adapter merged into a dir: none is merged twice
WEIGHT_FILES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json", ".pt")
CARD = "README.md"  # the base's card describes the base: the merged model gets its own


def checkpoint_adapters(ckpt: str, step: int | None = None) -> tuple[CheckpointSource, dict]:
    """(source, {module: (A, B)}) of a LoRA training run's checkpoint (work dir or step dir)."""
    source = resolve_checkpoint(ckpt, step)
    if not source.config.lora_rank:
        raise CheckpointError(f"{ckpt}: not a LoRA run (its model.lora.rank is 0); use orbax-to-hf")
    leaves, read = checkpoint_leaves(source), leaf_opener(source.pytree_dir)
    arrays = {}
    for name, (keys, *_) in sorted(leaves.items()):
        if name.endswith(".lora_a"):
            module = name.removesuffix(".lora_a")
            b_keys = leaves[f"{module}.lora_b"][0]
            a, b = (np.asarray(read(k).read().result(), np.float32) for k in (keys, b_keys))
            arrays[module] = (a, b)
    if not arrays:
        raise CheckpointError(f"{source.pytree_dir}: no LoRA adapters in this checkpoint")
    return source, arrays


def base_of(source: CheckpointSource) -> str:
    """The base model a training run's adapters belong to (its model.hf_dir or model.init_checkpoint)."""
    model = (source.training_config or {}).get("model") or {}
    return model.get("hf_dir") or model.get("init_checkpoint") or ""


def lora_to_peft(ckpt: str, out: str, step: int | None = None) -> str:
    source, arrays = checkpoint_adapters(ckpt, step)
    return peft_adapter.write_adapter(out, arrays, source.config, base_of(source))


def merge_adapter(base: str, adapter: str, out: str, max_shard_size: int) -> str:
    """A Hugging Face directory of `base` with the PEFT adapter `adapter` merged into its weights (stored
    in the base's dtypes); the base's config, tokenizer and grit_config.json are copied."""
    if not storage.isdir(base):
        raise CheckpointError(f"{base}: no such directory (expected the adapter's Hugging Face base)")
    cfg, arrays = peft_adapter.read_adapter(adapter, hf.read_hf_config(base))
    merged_before, digest = merged_adapters(base), adapter_digest(arrays)
    if digest in [m["sha256"] for m in merged_before]:
        raise UsageError(
            f"--base {base}: adapter {adapter} is already merged into it ({MERGED}); merging it again would "
            "add it twice: give the base the adapter was trained on"
        )
    params, scale = HFParams(base, cfg), cfg.lora_alpha / cfg.lora_rank
    shapes = hf.param_shapes(cfg)
    plan = [
        (name, hf.hf_shape(entry, shapes[entry.path]), str(params.stored_dtype(entry)))
        for entry in hf.name_map(cfg)
        for _, name in hf.hf_names(entry, cfg)
    ]
    os.makedirs(out, exist_ok=True)
    writer = ShardWriter(out, max_shard_size, plan)
    for entry, _, position, name, value in iter_tensors(params):  # one layer at a time
        writer.add(name, hf.to_hf(entry, peft_adapter.merged(entry, position, value, arrays, scale=scale)))
        del value
    writer.close()
    local = storage.local_copy(base, "base")
    for name in sorted(os.listdir(local)):
        if os.path.isfile(os.path.join(local, name)) and not name.endswith(WEIGHT_FILES + (CARD,)):
            shutil.copyfile(os.path.join(local, name), os.path.join(out, name))
    record = {"adapters": merged_before + [{"adapter": adapter, "sha256": digest}]}
    storage.write_text(os.path.join(out, MERGED), json.dumps(record, indent=1))
    settings = dict(DEFAULT_GRIT_CONFIG)  # the base's grit_config.json (copied) says how it embeds
    if os.path.isfile(os.path.join(out, GRIT_CONFIG)):
        with open(os.path.join(out, GRIT_CONFIG), encoding="utf-8") as f:
            settings.update(json.load(f))
    adapter_config = json.loads(storage.read_text(storage.join(adapter, peft_adapter.ADAPTER_CONFIG)))
    write_merged_card(out, settings, base, adapter, adapter_config=adapter_config)
    return out


def adapter_digest(arrays: dict) -> str:
    """sha256 of an adapter's tensors (names and values): the same adapter read from any copy of it."""
    digest = hashlib.sha256()
    for module in sorted(arrays):
        for value in arrays[module]:
            digest.update(module.encode() + np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


def merged_adapters(model_dir: str) -> list[dict]:
    """What merge-adapter recorded as merged into a Hugging Face dir (none for any other dir)."""
    path = storage.join(model_dir, MERGED)
    return json.loads(storage.read_text(path))["adapters"] if storage.isfile(path) else []
