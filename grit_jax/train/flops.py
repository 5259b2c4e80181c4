"""Analytic model FLOPs of one train step, for MFU (model FLOPs, no rematerialisation counted).

Bidirectional attention is counted in full (every query against every key); causal attention as the
half it needs. A step is three forward passes' worth (forward + backward): over the padded shapes, or over
a packed batch's real tokens.
"""

from __future__ import annotations

from grit_jax.model import ModelConfig


def token_flops(cfg: ModelConfig, with_logits: bool) -> float:
    """Forward FLOPs of one token, attention aside (projections, MLP or experts, router, logits)."""
    d, f, h = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    n, k = cfg.num_attention_heads, cfg.num_key_value_heads
    experts = cfg.num_experts_per_tok if cfg.is_moe else 1
    f = cfg.expert_intermediate_size if cfg.is_moe else f
    per_token = 2 * d * h * (2 * n + 2 * k) + 2 * 3 * d * f * experts + 2 * d * cfg.num_local_experts
    return float(cfg.num_hidden_layers * per_token + (2 * d * cfg.vocab_size if with_logits else 0))


def pair_flops(cfg: ModelConfig) -> float:
    """Forward FLOPs of one (query, key) pair of attention: scores and weighted values, every layer."""
    return float(cfg.num_hidden_layers * 2 * 2 * cfg.num_attention_heads * cfg.head_dim)


def forward_flops(cfg: ModelConfig, batch: int, length: int, causal: bool, *, with_logits: bool) -> float:
    keys = length / 2 if causal else length
    return float(batch * length * (token_flops(cfg, with_logits) + keys * pair_flops(cfg)))


def step_flops(cfg: ModelConfig, counts) -> float:
    """Model FLOPs of one step from counts {field: (tokens, attended (query, key) pairs)}: each field of
    the batch counts its own (grit_jax.model.batch: padded positions, or a packed batch's real tokens
    and the keys within each sequence)."""
    flops = 0.0
    for field, (tokens, pairs) in counts.items():
        flops = flops + tokens * token_flops(cfg, field == "generative") + pairs * pair_flops(cfg)
    return 3.0 * flops


def train_step_flops(config, cfg: ModelConfig, lengths=None) -> float:
    """Model FLOPs of one step of `config` (the training config) for the model `cfg`; lengths
    {field: padded length} of a length-bucketed batch (default: every field's max_len)."""
    data, objective = config.data, config.objective
    lengths = lengths or {}
    query, passage, gen = (lengths.get(f, data[f"{f}_max_len"]) for f in ("query", "passage", "generative"))
    causal_embedding = objective.attn == "cccc"
    flops = 0.0
    if objective.mode in ("unified", "embedding"):
        b = data.embedding_batch_size
        flops += forward_flops(cfg, b, query, causal_embedding, with_logits=False)
        flops += forward_flops(cfg, b * data.train_group_size, passage, causal_embedding, with_logits=False)
    if objective.mode in ("unified", "generative"):
        flops += forward_flops(cfg, data.generative_batch_size, gen, True, with_logits=True)
    return 3.0 * flops
