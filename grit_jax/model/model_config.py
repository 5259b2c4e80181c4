"""ModelConfig: one frozen dataclass for every family the decoder runs (Mistral, Mixtral, Llama, Qwen2,
Qwen3), its presets, and Hugging Face config.json I/O (whose key rules are grit_jax.model.hf_config's).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from grit_jax.choices import (
    ATTENTION_IMPLS,
    DTYPES,
    LORA_TARGETS,
    MODEL_TYPES,
    MOE_IMPLS,
    MOE_MODEL_TYPES,
    REMAT_POLICIES,
    ROPE_TYPES,
)
from grit_jax.errors import CheckpointError, UsageError
from grit_jax.model import hf_config


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
    num_local_experts: int = 0  # 0: dense MLP; > 0: sparse MoE (Mixtral, Qwen3-MoE)
    num_experts_per_tok: int = 2
    router_aux_loss_coef: float = 0.02
    moe_intermediate_size: int | None = None  # an expert's MLP dim; None: intermediate_size (Mixtral)
    norm_topk_prob: bool = True  # renormalise the top-k router probabilities (Mixtral always does)
    bos_token_id: int | None = 1
    eos_token_id: int | tuple[int, ...] | None = 2
    pad_token_id: int | None = None
    # The family (choices.MODEL_TYPES); None: mistral, or mixtral with experts. It fixes the HF names.
    model_type: str | None = None
    attention_bias: bool = False  # biases on q, k and v
    attention_out_bias: bool = False  # a bias on o
    mlp_bias: bool = False
    qk_norm: bool = False  # Qwen3: RMSNorm over each head's query and key, before RoPE
    rope_type: str = "default"  # choices.ROPE_TYPES; the rope_* fields below are llama3's
    rope_factor: float = 8.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position_embeddings: int = 8192
    # Not in config.json: how we initialise and run it.
    # Standard deviation of randomly initialised token embeddings (every other weight: 0.02, transformers'
    # initializer_range). Trained from scratch, larger embeddings keep each token's identity through
    # the layers, so a mean-pooled embedding starts as a bag of words (benchmarks/RESULTS.md, "Demo and
    # quick start").
    embedding_init_std: float = 0.02
    dtype: str = "float32"  # compute dtype; bfloat16 for mixed precision
    param_dtype: str = "float32"  # master weights
    scan_layers: bool = True
    remat_policy: str = "none"
    attention_impl: str = "auto"  # choices.ATTENTION_IMPLS: the kernel of training's attention
    moe_impl: str = "auto"  # choices.MOE_IMPLS
    # LoRA adapters (grit_jax/model/lora.py) on a frozen base: rank 0 = none; scale lora_alpha / lora_rank.
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = LORA_TARGETS

    def __post_init__(self):
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if self.model_type is None:
            object.__setattr__(self, "model_type", "mixtral" if self.is_moe else "mistral")
        if isinstance(self.eos_token_id, list):  # Llama 3 instruct models list several
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        if self.model_type not in MODEL_TYPES:
            raise UsageError(f"model_type must be one of {tuple(MODEL_TYPES)}, got {self.model_type!r}")
        if self.is_moe != (self.model_type in MOE_MODEL_TYPES):
            raise UsageError(
                f"a {self.model_type} model cannot have num_local_experts={self.num_local_experts}"
            )
        if self.rope_type not in ROPE_TYPES:
            raise UsageError(f"rope_type must be one of {ROPE_TYPES}, got {self.rope_type!r}")
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
        if self.attention_impl not in ATTENTION_IMPLS:
            raise UsageError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {self.attention_impl!r}")
        if self.moe_impl not in MOE_IMPLS:
            raise UsageError(f"moe_impl must be one of {MOE_IMPLS}, got {self.moe_impl!r}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise UsageError(f"{name} must be one of {DTYPES}, got {getattr(self, name)!r}")
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        unknown = [t for t in self.lora_targets if t not in LORA_TARGETS]
        if self.lora_rank < 0 or unknown:
            raise UsageError(
                f"LoRA: rank must be >= 0 (got {self.lora_rank}), targets in {LORA_TARGETS} (got {unknown})"
            )
        if self.num_local_experts and not 0 < self.num_experts_per_tok <= self.num_local_experts:
            raise UsageError(
                f"num_experts_per_tok ({self.num_experts_per_tok}) must be in 1..num_local_experts "
                f"({self.num_local_experts})"
            )

    @property
    def is_moe(self) -> bool:
        return self.num_local_experts > 0

    @property
    def expert_intermediate_size(self) -> int:
        return self.moe_intermediate_size or self.intermediate_size

    @property
    def architecture(self) -> str:
        return MODEL_TYPES[self.model_type]

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def preset(cls, name: str, **changes) -> ModelConfig:
        if name not in PRESETS:
            raise UsageError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **changes})

    def num_params(self) -> int:
        d, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
        n, k, h = self.num_attention_heads, self.num_key_value_heads, self.head_dim
        attn = d * h * (2 * n + 2 * k) + self.attention_bias * h * (n + 2 * k) + self.attention_out_bias * d
        attn += self.qk_norm * 2 * h
        if self.is_moe:
            mlp = 3 * d * self.expert_intermediate_size * self.num_local_experts + d * self.num_local_experts
        else:
            mlp = 3 * d * f + self.mlp_bias * (2 * f + d)
        return (
            v * d * (1 if self.tie_word_embeddings else 2) + self.num_hidden_layers * (attn + mlp + 2 * d) + d
        )

    # ---- Hugging Face config.json (grit_jax.model.hf_config) ----

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], source: str = "config.json", **changes) -> ModelConfig:
        """A config from a Hugging Face config.json dict; `source` names it in errors."""
        try:
            return cls(**{**hf_config.fields_from_hf(hf, source), **changes})
        except UsageError as e:  # a value the model cannot honour: name the file it came from
            raise CheckpointError(f"{source}: {e}") from None

    def to_hf_dict(self) -> dict[str, Any]:
        """The config.json that transformers reads back into the same model."""
        return hf_config.hf_from_fields(dataclasses.asdict(self), self.param_dtype)


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
        embedding_init_std=0.25,  # from scratch: starts as a bag of words (MRR@10 0.16 untrained, not 0.04)
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
# Llama-3.1-8B: GQA 32/8, RoPE theta 500k with Llama 3.1's scaling of the 8k original context.
PRESETS["llama3.1_8b"] = dict(
    model_type="llama",
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    max_position_embeddings=131072,
    rope_type="llama3",
    rope_factor=8.0,
    rope_low_freq_factor=1.0,
    rope_high_freq_factor=4.0,
    rope_original_max_position_embeddings=8192,
    bos_token_id=128000,
    eos_token_id=128001,
)
# Qwen3-8B(-Base): q/k RMSNorm, head_dim 128 (= hidden / heads here), no biases.
PRESETS["qwen3_8b"] = dict(
    model_type="qwen3",
    vocab_size=151936,
    hidden_size=4096,
    intermediate_size=12288,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    rms_norm_eps=1e-6,
    rope_theta=1e6,
    max_position_embeddings=32768,
    qk_norm=True,
    bos_token_id=151643,
    eos_token_id=151643,
)
# Qwen2.5-0.5B: q/k/v biases, tied embeddings; small enough for one GPU or a v5e-8.
PRESETS["qwen2.5_0.5b"] = dict(
    model_type="qwen2",
    vocab_size=151936,
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    rms_norm_eps=1e-6,
    rope_theta=1e6,
    max_position_embeddings=32768,
    tie_word_embeddings=True,
    attention_bias=True,
    bos_token_id=151643,
    eos_token_id=151643,
)
# SmolLM2-135M(-Instruct): Llama-shaped, tied embeddings; configs/smollm2.py's model, installable offline.
PRESETS["smollm2_135m"] = dict(
    model_type="llama",
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    rms_norm_eps=1e-5,
    rope_theta=100000.0,
    max_position_embeddings=8192,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
)
# Qwen3-30B-A3B(-Base): 128 experts of 768, 8 per token, renormalised; q/k RMSNorm.
PRESETS["qwen3_30b_a3b"] = dict(
    PRESETS["qwen3_8b"],
    model_type="qwen3_moe",
    hidden_size=2048,
    intermediate_size=6144,
    num_hidden_layers=48,
    num_attention_heads=32,
    num_key_value_heads=4,
    num_local_experts=128,
    num_experts_per_tok=8,
    moe_intermediate_size=768,
    norm_topk_prob=True,
    router_aux_loss_coef=0.001,
)
# The shapes benchmarks/ measures (random weights; not published models). Every figure in
# benchmarks/RESULTS.md was measured with exactly these numbers, so changing one breaks its history.
_BENCH = dict(vocab_size=32000, num_attention_heads=16, num_key_value_heads=4)
PRESETS.update(
    {
        # grit-embed throughput and grit-embed vs the reference (whose vocabulary is its tokenizer's).
        "bench_embed_256": dict(
            vocab_size=1000,
            hidden_size=256,
            intermediate_size=768,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=4,
            max_position_embeddings=4096,
        ),
        # Train step vs PyTorch (issue 13): 4 heads sharing one KV head, no sliding window.
        "bench_step_256": dict(
            vocab_size=8000,
            hidden_size=256,
            intermediate_size=1024,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=1,
            max_position_embeddings=2048,
        ),
        # RAG caching: a stand-in for GritLM-7B whose buffers hold a 4,000-token segment.
        "bench_rag_512": dict(
            vocab_size=2000,
            hidden_size=512,
            intermediate_size=1536,
            num_hidden_layers=8,
            num_attention_heads=8,
            num_key_value_heads=4,
            max_position_embeddings=16384,
        ),
        # Loading weights (hosts, GCS): 0.60 B parameters, 2.24 GiB in fp32.
        "bench_load_0.6b": dict(
            _BENCH,
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=32,
            num_attention_heads=8,
            num_key_value_heads=8,
        ),
        # Conversion memory: mistral_1b (0.85 B) with a 4096-token context, and a small Mixtral whose
        # stacked expert weights [L,E,D,F] dwarf any single Hugging Face tensor.
        "bench_convert_1b": dict(PRESETS["mistral_1b"], max_position_embeddings=4096),
        "bench_convert_moe_0.5b": dict(
            _BENCH,
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=4,
            max_position_embeddings=4096,
            num_local_experts=8,
            num_experts_per_tok=2,
        ),
        # One MoE layer, dense vs dropless on CPU (tiny_moe is the third shape measured).
        "bench_moe_8x256": dict(
            PRESETS["tiny_moe"], hidden_size=256, intermediate_size=1024, num_local_experts=8
        ),
        "bench_moe_128x256": dict(
            PRESETS["tiny_moe"],
            hidden_size=256,
            intermediate_size=128,
            num_local_experts=128,
            num_experts_per_tok=8,
        ),
    }
)
