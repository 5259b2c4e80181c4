"""Hugging Face checkpoints <-> grit_jax parameters: one declarative name map and its transforms.

Inside the model, parameters keep Hugging Face names and rotate-half RoPE, so every tensor converts by a
transpose and a reshape (no permutation of the query/key rows). `read_block` reads any box of our layout
from one lazy safetensors tensor (grit_jax.weights.safetensors_io), touching only the rows and columns it
spans.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterator

import numpy as np

from grit_jax import storage
from grit_jax.errors import CheckpointError
from grit_jax.model import ModelConfig, hf_config
from grit_jax.weights.safetensors_io import LazyTensor, SafetensorsDir


@dataclasses.dataclass(frozen=True)
class Entry:
    """Our parameter `path`; its Hugging Face tensor name (with {i} for the layer, {j} for the expert);
    `in_ndim`: how many leading axes of our kernel form the torch Linear's input (None: copied as is,
    0: a bias, flat in torch, shaped by heads here)."""

    path: str
    hf: str
    in_ndim: int | None = None

    @property
    def per_layer(self):
        return "{i}" in self.hf

    @property
    def per_expert(self):
        return "{j}" in self.hf


_ATTENTION_AND_NORMS = [
    Entry("embed_tokens.embedding", "model.embed_tokens.weight"),
    Entry("norm.scale", "model.norm.weight"),
    Entry("layers.input_layernorm.scale", "model.layers.{i}.input_layernorm.weight"),
    Entry("layers.post_attention_layernorm.scale", "model.layers.{i}.post_attention_layernorm.weight"),
    Entry("layers.self_attn.q_proj.kernel", "model.layers.{i}.self_attn.q_proj.weight", 1),
    Entry("layers.self_attn.k_proj.kernel", "model.layers.{i}.self_attn.k_proj.weight", 1),
    Entry("layers.self_attn.v_proj.kernel", "model.layers.{i}.self_attn.v_proj.weight", 1),
    Entry("layers.self_attn.o_proj.kernel", "model.layers.{i}.self_attn.o_proj.weight", 2),
]
_DENSE_MLP = [
    Entry("layers.mlp.gate_proj.kernel", "model.layers.{i}.mlp.gate_proj.weight", 1),
    Entry("layers.mlp.up_proj.kernel", "model.layers.{i}.mlp.up_proj.weight", 1),
    Entry("layers.mlp.down_proj.kernel", "model.layers.{i}.mlp.down_proj.weight", 1),
]
_SPARSE_MOE = [
    Entry("layers.block_sparse_moe.gate.kernel", "model.layers.{i}.block_sparse_moe.gate.weight", 1),
    Entry("layers.block_sparse_moe.w1.kernel", "model.layers.{i}.block_sparse_moe.experts.{j}.w1.weight", 1),
    Entry("layers.block_sparse_moe.w2.kernel", "model.layers.{i}.block_sparse_moe.experts.{j}.w2.weight", 1),
    Entry("layers.block_sparse_moe.w3.kernel", "model.layers.{i}.block_sparse_moe.experts.{j}.w3.weight", 1),
]
_ATTENTION_BIASES = [
    Entry(f"layers.self_attn.{p}_proj.bias", f"model.layers.{{i}}.self_attn.{p}_proj.bias", 0) for p in "qkv"
]
_OUT_BIAS = [Entry("layers.self_attn.o_proj.bias", "model.layers.{i}.self_attn.o_proj.bias", 0)]
_QK_NORMS = [
    Entry(f"layers.self_attn.{p}_norm.scale", f"model.layers.{{i}}.self_attn.{p}_norm.weight") for p in "qk"
]
_MLP_BIASES = [
    Entry(f"layers.mlp.{p}_proj.bias", f"model.layers.{{i}}.mlp.{p}_proj.bias", 0)
    for p in ("gate", "up", "down")
]
_QWEN3_MOE = [
    Entry("layers.block_sparse_moe.gate.kernel", "model.layers.{i}.mlp.gate.weight", 1),
    Entry("layers.block_sparse_moe.w1.kernel", "model.layers.{i}.mlp.experts.{j}.gate_proj.weight", 1),
    Entry("layers.block_sparse_moe.w2.kernel", "model.layers.{i}.mlp.experts.{j}.down_proj.weight", 1),
    Entry("layers.block_sparse_moe.w3.kernel", "model.layers.{i}.mlp.experts.{j}.up_proj.weight", 1),
]
_LM_HEAD = Entry("lm_head.kernel", "lm_head.weight", 1)
# Buffers some older checkpoints carry; recomputed by the model.
_IGNORED_HF_SUFFIXES = ("rotary_emb.inv_freq",)


def name_map(cfg: ModelConfig) -> list[Entry]:
    entries = (
        _ATTENTION_AND_NORMS + _ATTENTION_BIASES * cfg.attention_bias + _OUT_BIAS * cfg.attention_out_bias
    )
    mlp = {"mixtral": _SPARSE_MOE, "qwen3_moe": _QWEN3_MOE}.get(cfg.model_type, _DENSE_MLP)
    entries += _QK_NORMS * cfg.qk_norm + mlp + _MLP_BIASES * cfg.mlp_bias
    return entries + ([] if cfg.tie_word_embeddings else [_LM_HEAD])


def param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Our parameter shapes, without the stacked layer and expert axes."""
    d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    n, k, h, e = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.num_local_experts
    fe = cfg.expert_intermediate_size
    return {
        "embed_tokens.embedding": (v, d),
        "norm.scale": (d,),
        "lm_head.kernel": (d, v),
        "layers.input_layernorm.scale": (d,),
        "layers.post_attention_layernorm.scale": (d,),
        "layers.self_attn.q_proj.kernel": (d, n, h),
        "layers.self_attn.k_proj.kernel": (d, k, h),
        "layers.self_attn.v_proj.kernel": (d, k, h),
        "layers.self_attn.o_proj.kernel": (n, h, d),
        "layers.self_attn.q_proj.bias": (n, h),
        "layers.self_attn.k_proj.bias": (k, h),
        "layers.self_attn.v_proj.bias": (k, h),
        "layers.self_attn.o_proj.bias": (d,),
        "layers.self_attn.q_norm.scale": (h,),
        "layers.self_attn.k_norm.scale": (h,),
        "layers.mlp.gate_proj.bias": (f,),
        "layers.mlp.up_proj.bias": (f,),
        "layers.mlp.down_proj.bias": (d,),
        "layers.mlp.gate_proj.kernel": (d, f),
        "layers.mlp.up_proj.kernel": (d, f),
        "layers.mlp.down_proj.kernel": (f, d),
        "layers.block_sparse_moe.gate.kernel": (d, e),
        "layers.block_sparse_moe.w1.kernel": (d, fe),
        "layers.block_sparse_moe.w3.kernel": (d, fe),
        "layers.block_sparse_moe.w2.kernel": (fe, d),
    }


def hf_shape(entry: Entry, shape) -> tuple[int, ...]:
    if entry.in_ndim is None:
        return tuple(shape)
    if entry.in_ndim == 0:
        return (math.prod(shape),)
    return (math.prod(shape[entry.in_ndim :]), math.prod(shape[: entry.in_ndim]))


def to_hf(entry: Entry, array: np.ndarray) -> np.ndarray:
    """Our array (one layer, one expert) to the torch layout; the inverse of read_block."""
    if entry.in_ndim is None:
        return array
    if entry.in_ndim == 0:
        return np.ascontiguousarray(array.reshape(-1))
    return np.ascontiguousarray(array.reshape(math.prod(array.shape[: entry.in_ndim]), -1).T)


def hf_names(entry: Entry, cfg: ModelConfig) -> Iterator[tuple[tuple[int, ...], str]]:
    """(index into the stacked array, HF tensor name) for every tensor that makes up `entry`."""
    layers = range(cfg.num_hidden_layers) if entry.per_layer else [None]
    experts = range(cfg.num_local_experts) if entry.per_expert else [None]
    for i in layers:
        for j in experts:
            index = tuple(x for x in (i, j) if x is not None)
            yield index, entry.hf.format(i=i, j=j)


def _config_json(path: str) -> tuple[str, dict]:
    """(file, dict) of the config.json of a Hugging Face directory (local or gs://) or of that file."""
    file = storage.join(path, "config.json") if storage.isdir(path) else os.fspath(path)
    if not storage.isfile(file):
        raise CheckpointError(f"{file}: no such file (a Hugging Face model directory has a config.json)")
    try:
        data = json.loads(storage.read_text(file))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file}: expected a JSON object")
    return file, data


def read_hf_config(path: str, **changes) -> ModelConfig:
    """The ModelConfig of a Hugging Face config.json, in a local directory or a gs:// one (storage.py)."""
    file, data = _config_json(path)
    return ModelConfig.from_hf_dict(data, source=file, **changes)


def ignored_config_keys(path: str) -> list[str]:
    """The keys of a directory's config.json that grit_jax ignores: metadata that does not change the
    computation (grit_jax.model.hf_config.IGNORED_KEYS), for the user to see once."""
    return hf_config.ignored_keys(_config_json(path)[1])


def check_hf_names(source: SafetensorsDir, cfg: ModelConfig) -> None:
    """Raise CheckpointError for a tensor of `source` that is not part of the model `cfg` describes."""
    expected = {name for entry in name_map(cfg) for _, name in hf_names(entry, cfg)}
    extra = sorted(n for n in source.names() - expected if not n.endswith(_IGNORED_HF_SUFFIXES))
    if extra:
        raise CheckpointError(
            f"{source.files[extra[0]]}: tensor {extra[0]!r} is not part of a {cfg.architecture} "
            "with this config" + (f" ({len(extra) - 1} more unexpected)" if len(extra) > 1 else "")
        )


def _span(index: tuple[slice, ...], dims: tuple[int, ...]) -> slice:
    """The range of the flattened `dims` that the box `index` lies in: its first dimension's range, the
    others whole (exact when only the first is cut, as every sharding rule here cuts)."""
    inner = math.prod(dims[1:])
    return slice(index[0].start * inner, index[0].stop * inner)


def _spanned(index: tuple[slice, ...], dims: tuple[int, ...]) -> tuple[int, ...]:
    return (index[0].stop - index[0].start,) + tuple(dims[1:])


def read_block(tensor: LazyTensor, entry: Entry, shape, index: tuple[slice, ...]) -> np.ndarray:
    """The box `index` of our layout (shape `shape`) of one Hugging Face tensor, checked against the config,
    reading only the torch rows and columns the box spans (never the whole tensor unless the box is)."""
    if tensor.shape != hf_shape(entry, shape):
        raise CheckpointError(
            f"{tensor.file}: tensor {tensor.name!r} has shape {tensor.shape}, "
            f"expected {hf_shape(entry, shape)} from the config"
        )
    if entry.in_ndim is None:
        return tensor[index]
    if entry.in_ndim == 0:  # a bias: flat in torch
        block = tensor[_span(index, shape)].reshape(_spanned(index, shape))
        return block[(slice(None),) + index[1:]]
    k = entry.in_ndim  # torch [out, in] -> ours [in..., out...]
    block = tensor[_span(index[k:], shape[k:]), _span(index[:k], shape[:k])].T
    block = block.reshape(_spanned(index[:k], shape[:k]) + _spanned(index[k:], shape[k:]))
    return block[(slice(None),) + index[1:k] + (slice(None),) + index[k + 1 :]]
