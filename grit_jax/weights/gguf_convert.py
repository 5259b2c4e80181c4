"""A GGUF file (llama.cpp) -> a Hugging Face model directory: config.json, model.safetensors (float32),
the tokenizer (grit_jax.weights.gguf_tokenizer) and generation_config.json.

Architectures: GGUF `llama` (Llama, Mistral, SmolLM2, TinyLlama: written as a Hugging Face llama),
`qwen2` and `qwen3`. llama.cpp's converter reorders the query and key rows of a `llama` model for its
interleaved RoPE (convert_hf_to_gguf.py's `permute`: each head's two rotary halves interleaved pair by
pair); Hugging Face's rotate-half RoPE needs them back in halves, so those rows are un-permuted here.
Qwen GGUFs keep Hugging Face's order (llama.cpp runs them with NEOX RoPE). A file without `output.weight`
has tied embeddings. Metadata under the architecture's prefix that this module does not know is refused
by name: an ignored RoPE scaling or sliding window would be a silently different model.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np

from grit_jax.choices import MODEL_TYPES
from grit_jax.errors import CheckpointError, UsageError
from grit_jax.model import ModelConfig
from grit_jax.weights.gguf_file import GGUFFile
from grit_jax.weights.gguf_tokenizer import check_tokenizer, write_tokenizer
from grit_jax.weights.hf import hf_names, hf_shape, name_map, param_shapes
from grit_jax.weights.safetensors_io import ShardWriter

# GGUF architecture -> Hugging Face model_type
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
# GGUF tensor name -> Hugging Face name ({i}: the layer)
TENSOR_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.attn_q_norm.weight": "model.layers.{i}.self_attn.q_norm.weight",
    "blk.{i}.attn_k_norm.weight": "model.layers.{i}.self_attn.k_norm.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}
for _gguf_name, _hf_name in {"q": "q_proj", "k": "k_proj", "v": "v_proj", "output": "o_proj"}.items():
    for _kind in ("weight", "bias"):
        TENSOR_NAMES[f"blk.{{i}}.attn_{_gguf_name}.{_kind}"] = (
            f"model.layers.{{i}}.self_attn.{_hf_name}.{_kind}"
        )
# llama.cpp's own tables, recomputed by it from the metadata: never part of a Hugging Face checkpoint
DERIVED_TENSORS = ("rope_freqs.weight",)
# metadata under `{arch}.` that sets a config field
CONFIG_KEYS = {
    "block_count": "num_hidden_layers",
    "context_length": "max_position_embeddings",
    "embedding_length": "hidden_size",
    "feed_forward_length": "intermediate_size",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "attention.key_length": "head_dim",
    "rope.freq_base": "rope_theta",
}
REQUIRED_KEYS = ("block_count", "embedding_length", "feed_forward_length", "attention.head_count")
# metadata under `{arch}.` that is checked (below) or does not change the computation
CHECKED_KEYS = ("attention.value_length", "rope.dimension_count", "vocab_size", "rope.scaling.type")
NEUTRAL_KEYS = ("tensor_data_layout",)  # how the file was produced (the permutation is undone either way)


def model_config_dict(gf: GGUFFile) -> dict:
    """The Hugging Face config.json of the model in `gf` (checked by grit_jax's own config reader)."""
    arch = gf.require("general.architecture")
    if arch not in ARCHITECTURES:
        raise CheckpointError(
            f"{gf.path}: general.architecture {arch!r} is not supported; gguf-to-hf converts "
            f"{sorted(ARCHITECTURES)}"
        )
    prefix = f"{arch}."
    unknown = [
        k
        for k in gf.keys()
        if k.startswith(prefix) and k[len(prefix) :] not in (*CONFIG_KEYS, *CHECKED_KEYS, *NEUTRAL_KEYS)
    ]
    experts = [k for k in unknown if ".expert_" in k]  # Mixtral (a llama with experts)
    if experts:
        raise CheckpointError(
            f"{gf.path}: metadata {experts[0]!r}: mixture-of-experts GGUFs are not supported by gguf-to-hf "
            "(grit-convert hf-to-orbax reads their Hugging Face checkpoints)"
        )
    if unknown:
        raise CheckpointError(f"{gf.path}: metadata {unknown[0]!r} is not something gguf-to-hf can honour")
    hf = {"architectures": [MODEL_TYPES[ARCHITECTURES[arch]]], "model_type": ARCHITECTURES[arch]}
    for key, field in CONFIG_KEYS.items():
        value = gf.require(prefix + key) if key in REQUIRED_KEYS else gf.get(prefix + key)
        if isinstance(value, list):
            raise CheckpointError(
                f"{gf.path}: metadata {prefix + key!r} varies per layer; grit_jax needs one value"
            )
        if value is not None:
            hf[field] = value
    hf.setdefault("num_key_value_heads", hf.get("num_attention_heads"))
    hf.setdefault("rope_theta", 10000.0)
    _check_rope(gf, prefix, hf)
    if "rope_freqs.weight" in gf.tensors:
        hf["rope_scaling"] = llama3_rope_scaling(gf, hf["head_dim"], hf["rope_theta"])
    if "token_embd.weight" not in gf.tensors:
        raise CheckpointError(f"{gf.path}: tensor 'token_embd.weight' is missing")
    hf["vocab_size"] = gf.shape("token_embd.weight")[0]
    hf["tie_word_embeddings"] = "output.weight" not in gf.tensors
    if arch == "llama":
        hf["attention_bias"] = "blk.0.attn_q.bias" in gf.tensors
        hf["mlp_bias"] = "blk.0.ffn_up.bias" in gf.tensors
    for name in ("bos", "eos", "pad"):
        hf[f"{name}_token_id"] = gf.get(
            f"tokenizer.ggml.{name}_token_id" if name != "pad" else "tokenizer.ggml.padding_token_id"
        )
    for key in ("rms_norm_eps", "rope_theta"):  # float32 in the file: the decimal it was written from
        hf[key] = float(np.format_float_positional(np.float32(hf[key]), unique=True))
    return hf


def _check_rope(gf: GGUFFile, prefix: str, hf: dict) -> None:
    """RoPE over the whole head, without scaling: anything else is refused by name."""
    scaling = gf.get(prefix + "rope.scaling.type", "none")
    if scaling != "none":
        raise CheckpointError(f"{gf.path}: metadata {prefix}rope.scaling.type {scaling!r} is not supported")
    head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    hf["head_dim"] = head_dim
    for key in ("rope.dimension_count", "attention.value_length"):
        value = gf.get(prefix + key, head_dim)
        if value != head_dim:
            raise CheckpointError(
                f"{gf.path}: metadata {prefix + key} = {value} differs from the head size {head_dim}; "
                "grit_jax supports only full-head RoPE with equal key and value sizes"
            )


# Llama 3.1's RoPE scaling as every Llama 3.x release sets it, but for `factor` (8 for 3.1, 32 for 3.2)
LLAMA3_ROPE = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def llama3_factors(head_dim: int, theta: float, factor: float, low: float, *, high: float, context: int):
    """Per-frequency divisors of Llama 3.1's RoPE scaling (transformers' `llama3` rope_type), as llama.cpp
    stores them in `rope_freqs.weight`."""
    wavelength = 2 * np.pi * theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    smooth = (context / wavelength - low) / (high - low)
    mid = 1 / ((1 - smooth) / factor + smooth)
    return np.where(wavelength < context / high, 1.0, np.where(wavelength > context / low, factor, mid))


def llama3_rope_scaling(gf: GGUFFile, head_dim: int, theta: float) -> dict | None:
    """rope_scaling recovered from llama.cpp's `rope_freqs.weight` table: none for all ones, Llama 3.1's
    `llama3` scaling when the table is exactly that (with the usual low/high factors and context);
    anything else is refused by name."""
    table = gf.tensor("rope_freqs.weight").astype(np.float64)
    if np.all(table == 1.0):
        return None
    factor = float(table.max())
    low, high, context = LLAMA3_ROPE.values()
    expected = llama3_factors(head_dim, theta, factor, low, high=high, context=context)
    if table.shape != expected.shape or not np.allclose(table, expected, rtol=1e-5, atol=0):
        raise CheckpointError(
            f"{gf.path}: tensor 'rope_freqs.weight' scales the RoPE frequencies in a way gguf-to-hf cannot "
            "name (it recognises Llama 3.1's llama3 scaling)"
        )
    factor = float(np.format_float_positional(np.float32(factor), unique=True))
    return {"rope_type": "llama3", "factor": factor, **LLAMA3_ROPE}


def _unpermute(rows: np.ndarray, heads: int) -> np.ndarray:
    """Undo convert_hf_to_gguf.py's `permute` of query/key rows (or biases): within each head, llama.cpp
    interleaves the two rotary halves row by row; Hugging Face keeps the first half, then the second."""
    shape = rows.shape
    return rows.reshape(heads, shape[0] // heads // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def tensor_plan(gf: GGUFFile, cfg: ModelConfig) -> list[tuple[str, str, int | None]]:
    """(GGUF name, Hugging Face name, heads to un-permute by or None) for every tensor of the model, in
    the order of grit_jax's name map; a tensor the model lacks or does not use is an error naming it."""
    patterns = {
        re.compile(g.replace(".", r"\.").replace("{i}", r"(\d+)") + "$"): h for g, h in TENSOR_NAMES.items()
    }
    by_hf = {}
    for name in gf.tensors:
        if name in DERIVED_TENSORS:  # read into the config (model_config_dict)
            continue
        hf = next(
            (
                h.format(i=m.group(1)) if m.groups() else h
                for p, h in patterns.items()
                if (m := p.match(name))
            ),
            None,
        )
        if hf is None:
            raise CheckpointError(
                f"{gf.path}: tensor {name!r} is not part of a {cfg.model_type} gguf-to-hf knows"
            )
        by_hf[hf] = name
    plan, arch = [], gf.get("general.architecture")
    for entry in name_map(cfg):
        want = hf_shape(entry, param_shapes(cfg)[entry.path])
        for _, hf in hf_names(entry, cfg):
            name = by_hf.pop(hf, None)
            if name is None:
                raise CheckpointError(f"{gf.path}: no tensor for {hf} (the model's config needs it)")
            if gf.shape(name) != want:
                raise CheckpointError(
                    f"{gf.path}: tensor {name!r} has shape {gf.shape(name)}, expected {want}"
                )
            heads = {"q_proj": cfg.num_attention_heads, "k_proj": cfg.num_key_value_heads}.get(
                hf.split(".")[-2]
            )
            plan.append((name, hf, heads if arch == "llama" else None))
    if by_hf:
        name = next(iter(by_hf.values()))
        raise CheckpointError(
            f"{gf.path}: tensor {name!r} is not used by a {cfg.model_type} with this config"
        )
    return plan


def gguf_to_hf(
    gguf_path: str, out_dir: str, *, overwrite: bool = False, max_shard_size: int = 5 * 2**30
) -> str:
    """Converts the GGUF file `gguf_path` into the Hugging Face directory `out_dir` (float32 weights, the
    tokenizer, config.json) and returns `out_dir`. A non-empty `out_dir` is refused unless `overwrite`;
    then an earlier model's weight files are removed once the new ones are complete. Everything is
    written to a staging folder inside `out_dir` first: a failure leaves `out_dir` as it was."""
    gf = GGUFFile(gguf_path)
    cfg = ModelConfig.from_hf_dict(model_config_dict(gf), source=gf.path)
    plan = tensor_plan(gf, cfg)
    check_tokenizer(gf)
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise UsageError(
            f"{out_dir}: not empty; choose a new output directory (or overwrite=True / --overwrite)"
        )
    staging, created = os.path.join(out_dir, ".gguf_to_hf.partial"), not os.path.exists(out_dir)
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    try:
        _write(gf, cfg, plan, staging, max_shard_size=max_shard_size)
    except BaseException:  # nothing half-written is left where a model is expected
        shutil.rmtree(out_dir if created else staging, ignore_errors=True)
        raise
    for name in os.listdir(out_dir):  # an earlier model's shards or tokenizer would be read beside the new
        if name.endswith((".safetensors", ".safetensors.index.json")) or name.startswith("pytorch_model"):
            os.remove(os.path.join(out_dir, name))
        elif name in ("tokenizer.json", "tokenizer.model", "added_tokens.json"):
            os.remove(os.path.join(out_dir, name))
    for name in os.listdir(staging):
        os.replace(os.path.join(staging, name), os.path.join(out_dir, name))
    os.rmdir(staging)
    return out_dir


def _write(gf: GGUFFile, cfg: ModelConfig, plan, out: str, *, max_shard_size: int) -> None:
    writer = ShardWriter(out, max_shard_size, [(hf, gf.shape(g), "float32") for g, hf, _ in plan])
    for name, hf, heads in plan:  # one tensor in memory at a time
        value = gf.tensor(name)
        writer.add(hf, _unpermute(value, heads) if heads else value)
        del value
    writer.close()
    config = cfg.to_hf_dict()
    with open(os.path.join(out, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    generation = {
        k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config.get(k) is not None
    }
    with open(os.path.join(out, "generation_config.json"), "w", encoding="utf-8") as f:
        json.dump(generation, f, indent=2)
    write_tokenizer(gf, out)
