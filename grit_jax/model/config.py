"""ModelConfig: one frozen dataclass for Mistral and Mixtral, its presets, and Hugging Face config.json I/O.

Every field of a config.json is either honoured, checked to hold the only value we support, or known to be
metadata. Anything else is an error naming the file and the key: an ignored
`rope_theta` or `sliding_window` would be a silently wrong model.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from grit_jax.choices import DTYPES, REMAT_POLICIES
from grit_jax.errors import CheckpointError, UsageError

ARCHITECTURES = {"MistralForCausalLM": "mistral", "MixtralForCausalLM": "mixtral"}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 32768
    sliding_window: int | None = None
    tie_word_embeddings: bool = False
    num_local_experts: int = 0  # 0: dense Mistral MLP; > 0: Mixtral sparse MoE
    num_experts_per_tok: int = 2
    router_aux_loss_coef: float = 0.02
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int | None = None
    # Not in config.json: how we run it.
    dtype: str = "float32"  # compute dtype; bfloat16 for mixed precision
    param_dtype: str = "float32"  # master weights
    scan_layers: bool = True
    remat_policy: str = "none"

    def __post_init__(self):
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if self.num_attention_heads % self.num_key_value_heads:
            raise UsageError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2:
            raise UsageError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.remat_policy not in REMAT_POLICIES:
            allowed = tuple(REMAT_POLICIES)
            raise UsageError(f"remat_policy must be one of {allowed}, got {self.remat_policy!r}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise UsageError(f"{name} must be one of {DTYPES}, got {getattr(self, name)!r}")
        if self.num_local_experts and not 0 < self.num_experts_per_tok <= self.num_local_experts:
            raise UsageError(
                f"num_experts_per_tok ({self.num_experts_per_tok}) must be in 1..num_local_experts "
                f"({self.num_local_experts})"
            )

    @property
    def is_moe(self) -> bool:
        return self.num_local_experts > 0

    @property
    def architecture(self) -> str:
        return "MixtralForCausalLM" if self.is_moe else "MistralForCausalLM"

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def preset(cls, name: str, **changes) -> ModelConfig:
        if name not in PRESETS:
            raise UsageError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **changes})

    def num_params(self) -> int:
        d, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
        attn = d * self.head_dim * (2 * self.num_attention_heads + 2 * self.num_key_value_heads)
        mlp = 3 * d * f * max(1, self.num_local_experts) + d * self.num_local_experts
        return (
            v * d * (1 if self.tie_word_embeddings else 2) + self.num_hidden_layers * (attn + mlp + 2 * d) + d
        )

    # ---- Hugging Face config.json ----

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], source: str = "config.json", **changes) -> ModelConfig:
        """A config from a Hugging Face Mistral/Mixtral config.json dict; `source` names it in errors."""
        hf = dict(hf)

        def fail(key, why):
            raise CheckpointError(f"{source}: {key}: {why}")

        archs = hf.pop("architectures", None) or []
        model_type = hf.pop("model_type", None)
        if archs and (len(archs) != 1 or archs[0] not in ARCHITECTURES):
            fail("architectures", f"{archs} is not supported; grit_jax runs {sorted(ARCHITECTURES)}")
        if model_type not in (None, *ARCHITECTURES.values()):
            fail("model_type", f"{model_type!r} is not supported; expected 'mistral' or 'mixtral'")
        if not archs and model_type is None:
            fail("architectures", "missing (and no model_type): cannot tell which model this is")
        kind = ARCHITECTURES[archs[0]] if archs else model_type

        for key in _IGNORED_HF_KEYS:
            hf.pop(key, None)
        for key, allowed in _FIXED_HF_VALUES.items():
            if key in hf and hf.pop(key) not in allowed:
                fail(key, f"only {allowed} is supported")
        rope = hf.pop("rope_parameters", None) or hf.pop("rope_scaling", None)
        if rope:
            rope = dict(rope)
            if rope.pop("rope_type", rope.pop("type", "default")) != "default":
                fail("rope_parameters", "only rope_type 'default' is supported")
            if "rope_theta" in rope:
                hf.setdefault("rope_theta", rope.pop("rope_theta"))
            if rope:
                fail("rope_parameters", f"unsupported entries {sorted(rope)}")
        if hf.get("head_dim", 0) is None:
            hf.pop("head_dim")
        if kind == "mistral":
            for key in ("num_local_experts", "num_experts_per_tok", "router_aux_loss_coef"):
                if key in hf:
                    fail(key, "is a Mixtral field but the architecture is Mistral")
        elif "num_local_experts" not in hf:
            fail("num_local_experts", "missing (required for Mixtral)")

        fields = {f.name for f in dataclasses.fields(cls)} - _OUR_FIELDS
        unknown = sorted(set(hf) - fields)
        if unknown:
            fail(
                unknown[0],
                "is not a field grit_jax can honour" + (f" (also {unknown[1:]})" if unknown[1:] else ""),
            )
        for key in _REQUIRED_HF_KEYS:
            if key not in hf:
                fail(key, "missing (required)")
        try:
            return cls(**{**hf, **changes})
        except UsageError as e:  # a value the model cannot honour: name the file it came from
            raise CheckpointError(f"{source}: {e}") from None

    @classmethod
    def from_hf_json(cls, path: str, **changes) -> ModelConfig:
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        if not os.path.exists(path):
            raise CheckpointError(f"{path}: no such file (a Hugging Face model directory has a config.json)")
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"{path}: expected a JSON object")
        return cls.from_hf_dict(data, source=path, **changes)

    def to_hf_dict(self) -> dict[str, Any]:
        """The config.json that transformers reads back into the same model."""
        out = {
            "architectures": [self.architecture],
            "model_type": ARCHITECTURES[self.architecture],
            "hidden_act": "silu",
            "attention_dropout": 0.0,
            "torch_dtype": self.param_dtype,
        }
        for f in dataclasses.fields(self):
            if f.name not in _OUR_FIELDS:
                out[f.name] = getattr(self, f.name)
        if not self.is_moe:
            for key in ("num_local_experts", "num_experts_per_tok", "router_aux_loss_coef"):
                out.pop(key)
        return out


_OUR_FIELDS = {"dtype", "param_dtype", "scan_layers", "remat_policy"}
_REQUIRED_HF_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
)
# Metadata with no effect on the forward pass.
_IGNORED_HF_KEYS = (
    "transformers_version",
    "torch_dtype",
    "dtype",
    "initializer_range",
    "use_cache",
    "output_router_logits",
    "_name_or_path",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "use_return_dict",
)
# Options that change the model; we support exactly these values.
_FIXED_HF_VALUES = {
    "hidden_act": ("silu",),
    "attention_dropout": (0.0, 0),
    "router_jitter_noise": (0.0, 0),
    "attention_bias": (False,),
    "mlp_bias": (False,),
}

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
    ),
    "tiny_moe": dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        num_local_experts=4,
        num_experts_per_tok=2,
    ),
    # The quick-start demo: small enough to learn on a 2-core CPU in minutes (vocab of the demo tokenizer).
    "demo": dict(
        vocab_size=1024,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
    ),
    # A ~0.85B Mistral that fits one accelerator with AdamW state: for benchmarks of the step.
    "mistral_1b": dict(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=16,
        num_attention_heads=16,
        num_key_value_heads=4,
        max_position_embeddings=32768,
    ),
    # Mistral-7B-v0.1, the base of GritLM-7B.
    "mistral_7b": dict(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        max_position_embeddings=32768,
        sliding_window=4096,
    ),
    # Mixtral-8x7B-v0.1, the base of GritLM-8x7B.
    "mixtral_8x7b": dict(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        rms_norm_eps=1e-5,
        rope_theta=1e6,
        max_position_embeddings=32768,
        num_local_experts=8,
        num_experts_per_tok=2,
        router_aux_loss_coef=0.02,
    ),
}
