"""Hugging Face config.json <-> ModelConfig fields, one table row per model family.

Every key of a config.json is honoured (a ModelConfig field), checked to hold the only value we support,
or known to be metadata; anything else is an error naming the file and the key: an ignored `rope_theta`,
`sliding_window` or `rope_scaling` would be a silently wrong model. The functions work on plain dicts so
that ModelConfig (grit_jax.model.model_config) can call them without an import cycle.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from grit_jax.choices import MODEL_TYPES
from grit_jax.errors import CheckpointError


@dataclasses.dataclass(frozen=True)
class Family:
    """What a family's config.json may say beyond the keys every family shares.

    bias_keys: HF key -> the ModelConfig fields it sets; fixed: ModelConfig fields the family's modeling code
    hard-wires; keys: further HF keys that are ModelConfig fields; sliding: Qwen's use_sliding_window /
    max_window_layers / layer_types; moe: the Mixtral expert fields."""

    bias_keys: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    fixed: dict[str, Any] = dataclasses.field(default_factory=dict)
    keys: tuple[str, ...] = ()
    sliding: bool = False
    moe: bool = False
    checked: dict[str, tuple] = dataclasses.field(default_factory=dict)  # HF key -> the values we run


# Llama's attention_bias puts a bias on q, k, v and o; mlp_bias on gate, up and down.
_LLAMA_BIASES = {"attention_bias": ("attention_bias", "attention_out_bias"), "mlp_bias": ("mlp_bias",)}
_NO_EXTRAS = {"attention_bias": False, "attention_out_bias": False, "mlp_bias": False, "qk_norm": False}
FAMILIES = {
    "mistral": Family(_LLAMA_BIASES, {**_NO_EXTRAS, "rope_type": "default"}, ("sliding_window",)),
    "mixtral": Family(
        _LLAMA_BIASES,
        {**_NO_EXTRAS, "rope_type": "default", "norm_topk_prob": True, "moe_intermediate_size": None},
        ("sliding_window",),
        moe=True,
    ),
    "llama": Family(_LLAMA_BIASES, fixed={"qk_norm": False}),
    # Qwen2 always has biases on q, k, v (never o) and takes no attention_bias key.
    "qwen2": Family(fixed={**_NO_EXTRAS, "attention_bias": True, "rope_type": "default"}, sliding=True),
    "qwen3": Family(
        bias_keys={"attention_bias": ("attention_bias", "attention_out_bias")},
        fixed={"mlp_bias": False, "qk_norm": True, "rope_type": "default"},
        sliding=True,
    ),
}
# Qwen3-MoE: every layer sparse (one scanned stack), experts of their own size.
FAMILIES["qwen3_moe"] = dataclasses.replace(
    FAMILIES["qwen3"],
    keys=("moe_intermediate_size", "norm_topk_prob"),
    moe=True,
    checked={"decoder_sparse_step": (1,), "mlp_only_layers": ([],)},
)
_SHARED_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "rope_theta",
    "max_position_embeddings",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)
_MOE_KEYS = ("num_local_experts", "num_experts_per_tok", "router_aux_loss_coef")
REQUIRED_KEYS = _SHARED_KEYS[:6]
# Keys that do not change the computation, ignored wherever they appear (and listed once to the user:
# grit-train's opening block, grit-convert's output): transformers' bookkeeping and runtime switches,
# token ids grit_jax never uses, and the hub's notes for other runtimes (SmolLM2's nanotron
# `is_llama_config`, transformers.js settings). pretraining_tp only splits Llama's matmuls (same sums).
IGNORED_KEYS = (
    "transformers_version",
    "torch_dtype",
    "dtype",
    "initializer_range",
    "use_cache",
    "output_router_logits",
    "_name_or_path",
    "_model_name_or_path",
    "_commit_hash",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "use_return_dict",
    "pretraining_tp",
    "unk_token_id",
    "sep_token_id",
    "is_llama_config",
    "transformers.js_config",
)
# Options that change the model; we support exactly these values (rope_interleaved: nanotron's
# pair-interleaved RoPE; use_mrope: Qwen2-VL's multimodal RoPE).
FIXED_VALUES = {
    "hidden_act": ("silu",),
    "attention_dropout": (0.0, 0),
    "router_jitter_noise": (0.0, 0),
    "rope_interleaved": (False,),
    "use_mrope": (False,),
}
LLAMA3_ROPE = {
    "factor": "rope_factor",
    "low_freq_factor": "rope_low_freq_factor",
    "high_freq_factor": "rope_high_freq_factor",
    "original_max_position_embeddings": "rope_original_max_position_embeddings",
}


class _Reader:
    def __init__(self, hf: dict[str, Any], source: str):
        self.hf, self.source, self.out = dict(hf), source, {}

    def fail(self, key, why):
        raise CheckpointError(f"{self.source}: {key}: {why}")

    def take(self, key):
        if key in self.hf:
            self.out[key] = self.hf.pop(key)


def family_of(hf: dict[str, Any], source: str) -> str:
    """The model_type of a config.json, from `architectures` (checked against `model_type`)."""
    by_arch = {arch: t for t, arch in MODEL_TYPES.items() if t in FAMILIES}
    archs, model_type = hf.get("architectures") or [], hf.get("model_type")
    if archs and (len(archs) != 1 or archs[0] not in by_arch):
        raise CheckpointError(
            f"{source}: architectures: {archs} is not supported; grit_jax runs {sorted(by_arch)}"
        )
    if model_type is not None and model_type not in FAMILIES:
        raise CheckpointError(
            f"{source}: model_type: {model_type!r} is not supported; known {sorted(FAMILIES)}"
        )
    if archs and model_type is not None and by_arch[archs[0]] != model_type:
        raise CheckpointError(f"{source}: model_type: {model_type!r} does not match {archs[0]}")
    if not archs and model_type is None:
        raise CheckpointError(f"{source}: architectures: missing (and no model_type): cannot tell the model")
    return by_arch[archs[0]] if archs else model_type


def ignored_keys(hf: dict[str, Any]) -> list[str]:
    """The keys of a config.json dict that grit_jax ignores (IGNORED_KEYS), sorted."""
    return sorted(k for k in hf if k in IGNORED_KEYS)


def fields_from_hf(hf: dict[str, Any], source: str) -> dict[str, Any]:
    """ModelConfig fields of a config.json dict; `source` names it in errors."""
    model_type = family_of(hf, source)
    family, r = FAMILIES[model_type], _Reader(hf, source)
    for key in ("architectures", "model_type", *IGNORED_KEYS):
        r.hf.pop(key, None)
    for key, allowed in FIXED_VALUES.items():
        if key in r.hf and (value := r.hf.pop(key)) not in allowed:
            r.fail(key, f"{value!r} is not supported (grit_jax runs only {allowed[0]!r})")
    _read_rope(r)
    if r.hf.get("head_dim", 0) is None:
        r.hf.pop("head_dim")
    for key, allowed in family.checked.items():
        if key in r.hf and r.hf.pop(key) not in allowed:
            r.fail(key, f"only {allowed} is supported (every layer one kind)")
    if "num_experts" in r.hf and family.moe:  # Qwen's name on the Hub; transformers 5 writes the other
        r.hf.setdefault("num_local_experts", r.hf.pop("num_experts"))
    for key, fields in family.bias_keys.items():
        if key in r.hf:
            value = r.hf.pop(key)
            r.out.update({f: bool(value) for f in fields})
    for key in (*_SHARED_KEYS, *family.keys, *(_MOE_KEYS if family.moe else ())):
        r.take(key)
    if family.sliding:
        _read_sliding(r)
    if family.moe and "num_local_experts" not in r.out:
        r.fail("num_local_experts", f"missing (required for {model_type})")
    if r.hf:
        unknown = sorted(r.hf)
        more = f" (also {unknown[1:]})" if unknown[1:] else ""
        r.fail(unknown[0], f"is not a {model_type} field grit_jax can honour{more}")
    for key in REQUIRED_KEYS:
        if key not in r.out:
            r.fail(key, "missing (required)")
    for field, value in family.fixed.items():
        if r.out.get(field, value) != value:
            key = "rope_parameters" if field == "rope_type" else field
            r.fail(key, f"a {model_type} supports only {value!r}")
    return {**{k: v for k, v in family.fixed.items() if k != "rope_type"}, **r.out, "model_type": model_type}


def _read_rope(r: _Reader) -> None:
    """rope_parameters (transformers 5) or rope_scaling (4.x) -> rope_theta and the llama3 fields."""
    key = "rope_parameters" if "rope_parameters" in r.hf else "rope_scaling"
    rope = dict(r.hf.pop(key, None) or {})
    r.hf.pop("rope_scaling" if key == "rope_parameters" else "rope_parameters", None)
    rope_type = rope.pop("rope_type", rope.pop("type", "default"))
    if "rope_theta" in rope:
        r.hf.setdefault("rope_theta", rope.pop("rope_theta"))
    if rope_type == "llama3":
        for name, field in LLAMA3_ROPE.items():
            if name not in rope:
                r.fail(key, f"llama3 RoPE needs {name!r}")
            r.out[field] = rope.pop(name)
        r.out["rope_type"] = "llama3"
    elif rope_type != "default":
        r.fail(key, f"rope_type {rope_type!r} is not supported (only 'default' and 'llama3')")
    if rope:
        r.fail(key, f"unsupported entries {sorted(rope)}")


def _read_sliding(r: _Reader) -> None:
    """Qwen's window as transformers reads it: sliding_window counts only with use_sliding_window, and
    then on the layers layer_types (default: those from max_window_layers on) marks as sliding."""
    use = r.hf.pop("use_sliding_window", False)
    window = r.hf.pop("sliding_window", None)
    window = window if use else None
    first = r.hf.pop("max_window_layers", 0)
    layers = r.out.get("num_hidden_layers", 0)
    types = r.hf.pop("layer_types", None)
    if types is None:
        types = [
            "sliding_attention" if window is not None and i >= first else "full_attention"
            for i in range(layers)
        ]
    sliding = {t == "sliding_attention" for t in types}
    if window is not None and sliding == {True, False}:
        r.fail("layer_types", "mixes sliding-window and full-attention layers; grit_jax needs one kind")
    r.out["sliding_window"] = window if True in sliding else None


def hf_from_fields(fields: dict[str, Any], param_dtype: str) -> dict[str, Any]:
    """The config.json that transformers reads back into the same model."""
    model_type = fields["model_type"]
    family = FAMILIES[model_type]
    for field, value in family.fixed.items():
        if fields[field] != value:
            raise CheckpointError(f"a {model_type} cannot express {field}={fields[field]!r} in config.json")
    if fields["sliding_window"] is not None and not (family.sliding or "sliding_window" in family.keys):
        raise CheckpointError(f"a {model_type} cannot express a sliding window in config.json")
    out = {
        "architectures": [MODEL_TYPES[model_type]],
        "model_type": model_type,
        "hidden_act": "silu",
        "attention_dropout": 0.0,
        "torch_dtype": param_dtype,
    }
    out.update({k: fields[k] for k in (*_SHARED_KEYS, *family.keys, *(_MOE_KEYS if family.moe else ()))})
    for key, ours in family.bias_keys.items():
        if len({fields[f] for f in ours}) > 1:
            raise CheckpointError(f"a {model_type} has one {key} for {ours}, which differ here")
        out[key] = fields[ours[0]]
    if fields["rope_type"] == "llama3":
        out["rope_scaling"] = {"rope_type": "llama3", **{k: fields[f] for k, f in LLAMA3_ROPE.items()}}
    if family.sliding:
        window = fields["sliding_window"]
        out.update(use_sliding_window=window is not None, sliding_window=window, max_window_layers=0)
    out.update({key: allowed[0] for key, allowed in family.checked.items()})
    return out
