"""Hugging Face checkpoints <-> grit_jax parameters: one declarative name map and its transforms.

Inside the model, parameters keep Hugging Face names and rotate-half RoPE, so every tensor converts by a
transpose and a reshape (no permutation of the query/key rows). Tensors are read one at a time
(grit_jax.safetensors_io), so memory stays near one tensor whatever the model's size.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterator

import jax.numpy as jnp
import numpy as np
from flax import nnx

from grit_jax import storage
from grit_jax.errors import CheckpointError
from grit_jax.model import ModelConfig, Transformer
from grit_jax.safetensors_io import SafetensorsDir


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


def to_ours(entry: Entry, tensor: np.ndarray, shape) -> np.ndarray:
    """A torch tensor ([out, in] for a Linear) to our layout."""
    if entry.in_ndim is None:
        return tensor
    return tensor.reshape(shape) if entry.in_ndim == 0 else tensor.T.reshape(shape)


def to_hf(entry: Entry, array: np.ndarray) -> np.ndarray:
    """Our array (one layer, one expert) to the torch layout; the inverse of to_ours."""
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


def read_hf_config(path: str, **changes) -> ModelConfig:
    """ModelConfig.from_hf_json for a local directory or a gs:// one (read through grit_jax.storage)."""
    file = storage.join(path, "config.json") if storage.isdir(path) else os.fspath(path)
    if not storage.isfile(file):
        raise CheckpointError(f"{file}: no such file (a Hugging Face model directory has a config.json)")
    try:
        data = json.loads(storage.read_text(file))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file}: expected a JSON object")
    return ModelConfig.from_hf_dict(data, source=file, **changes)


def read_hf_params(path: str, cfg: ModelConfig, dtype=None) -> dict[str, np.ndarray]:
    """Our flat {path: stacked array} from a Hugging Face directory, checking every name and shape."""
    params = {}
    for entry, stacked_shape, index, value in iter_hf_slices(path, cfg, dtype):
        if entry.path not in params:
            params[entry.path] = np.empty(stacked_shape, value.dtype)
        params[entry.path][index] = value
    return params


def check_hf_names(source: SafetensorsDir, cfg: ModelConfig) -> None:
    """Raise CheckpointError for a tensor of `source` that is not part of the model `cfg` describes."""
    expected = {name for entry in name_map(cfg) for _, name in hf_names(entry, cfg)}
    extra = sorted(n for n in source.names() - expected if not n.endswith(_IGNORED_HF_SUFFIXES))
    if extra:
        raise CheckpointError(
            f"{source.files[extra[0]]}: tensor {extra[0]!r} is not part of a {cfg.architecture} "
            "with this config" + (f" ({len(extra) - 1} more unexpected)" if len(extra) > 1 else "")
        )


def from_hf(path: str, dtype: str | None = None, **config_changes):
    """A grit_jax Transformer holding the weights of a Hugging Face directory (grit_jax.choices.MODEL_TYPES).

    `dtype` is the parameter dtype (float32 default); config_changes override ModelConfig fields
    (e.g. compute dtype, remat_policy).
    """
    if not storage.isdir(path):
        raise CheckpointError(f"{path}: not a directory (expected a Hugging Face model directory)")
    if dtype is not None:
        config_changes["param_dtype"] = dtype
    cfg = read_hf_config(path, **config_changes)
    params = read_hf_params(path, cfg, dtype=jnp.dtype(cfg.param_dtype))
    model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    load_flat_params(model, params)
    return model


def load_flat_params(model, params: dict[str, np.ndarray]):
    """Fills a (possibly abstract) model's parameters from {dotted path: array}."""
    state = nnx.state(model, nnx.Param)
    for path, variable in nnx.to_flat_state(state):
        key = ".".join(map(str, path))
        target = variable.get_value()
        if key not in params or params[key].shape != target.shape:
            got = params[key].shape if key in params else "nothing"
            raise CheckpointError(f"parameter {key}: expected shape {target.shape}, got {got}")
        variable.set_value(jnp.asarray(params[key], target.dtype))
    nnx.update(model, state)


def read_ours(source: SafetensorsDir, entry: Entry, name: str, shape) -> np.ndarray:
    """One Hugging Face tensor of `entry` in our layout, after checking its shape against the config; the
    file is unmapped after the read (its pages read so far would otherwise stay resident)."""
    tensor = source.get(name)
    source.close()
    if tensor.shape != hf_shape(entry, shape):
        raise CheckpointError(
            f"{source.files[name]}: tensor {name!r} has shape {tensor.shape}, "
            f"expected {hf_shape(entry, shape)} from the config"
        )
    return to_ours(entry, tensor, shape)


def iter_hf_slices(
    path: str, cfg: ModelConfig, dtype=None
) -> Iterator[tuple[Entry, tuple[int, ...], tuple[int, ...], np.ndarray]]:
    """(entry, stacked shape, index into the stacked array, one tensor in our layout) for every Hugging Face
    tensor, in name_map order: memory stays near one tensor, whatever the size of the stacked parameter.

    Unexpected tensor names are reported before anything is read; missing or mis-shaped ones when reached.
    """
    source = SafetensorsDir(path)
    check_hf_names(source, cfg)
    shapes = param_shapes(cfg)
    for entry in name_map(cfg):
        shape = shapes[entry.path]
        stack = (cfg.num_hidden_layers,) * entry.per_layer + (cfg.num_local_experts,) * entry.per_expert
        for index, name in hf_names(entry, cfg):
            # a contiguous copy (the writer may keep it); the transposed view and its original go with it
            value = np.ascontiguousarray(read_ours(source, entry, name, shape), dtype=dtype)
            yield entry, stack + shape, index, value
            del value
