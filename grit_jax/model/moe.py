"""The sparse mixture of experts of Mixtral and Qwen3-MoE: a top-k softmax router (its top-k probabilities
renormalised for Mixtral, and for Qwen3-MoE with norm_topk_prob), SwiGLU experts, the load-balancing loss.

Legend as in layers.py, plus E experts, k experts per token.
`moe_impl` (choices.MOE_IMPLS) picks how the experts run: "dense" evaluates every expert on every token,
weighted by a combine matrix that is zero outside each token's top k (E/k times the routed FLOPs);
"ragged" computes only the routed work (grit_jax.model.moe_dispatch); "auto" picks per platform
(moe_dispatch.kernel_for). Both give the same outputs, router logits and gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from grit_jax import sharding
from grit_jax.model import moe_dispatch
from grit_jax.model.layers import Linear
from grit_jax.model.model_config import ModelConfig


class SparseMoE(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, stack: int | None = None):
        d, f, e = cfg.hidden_size, cfg.expert_intermediate_size, cfg.num_local_experts
        common = dict(rngs=rngs, dtype=cfg.param_dtype, stack=stack)
        self.gate = Linear(shape=(d, e), names=("embed", "experts_router"), **common)
        # Hugging Face's experts.{i}.w1 / w3 / w2 (Qwen3-MoE: gate_proj / up_proj / down_proj), stacked.
        self.w1 = Linear(shape=(e, d, f), names=("experts", "embed", "mlp"), **common)
        self.w3 = Linear(shape=(e, d, f), names=("experts", "embed", "mlp"), **common)
        self.w2 = Linear(shape=(e, f, d), names=("experts", "mlp", "embed"), **common)
        self.top_k, self.norm_topk_prob = cfg.num_experts_per_tok, cfg.norm_topk_prob
        self.moe_impl = cfg.moe_impl

    def __call__(self, x):
        """x [B,T,D] -> y [B,T,D], router_logits [B,T,E] (float32)."""
        dtype = x.dtype
        router_logits = self.gate("btd,de->bte", x).astype(jnp.float32)
        probs = jax.nn.softmax(router_logits, axis=-1)
        top_probs, top_index = jax.lax.top_k(probs, self.top_k)
        if self.norm_topk_prob:
            top_probs = top_probs / jnp.sum(top_probs, axis=-1, keepdims=True)
        kernel = moe_dispatch.kernel_for(self.moe_impl, moe_dispatch.mesh_platform(sharding.current_mesh()))
        if kernel is not None:
            w1, w3, w2 = (w.kernel[...].astype(dtype) for w in (self.w1, self.w3, self.w2))
            y = moe_dispatch.sharded_routed_experts(x, top_index, top_probs, w1, w3=w3, w2=w2, kernel=kernel)
            return y, router_logits
        combine = jnp.sum(jax.nn.one_hot(top_index, probs.shape[-1]) * top_probs[..., None], axis=-2)  # B,T,E
        gate = self.w1("btd,edf->btef", x)
        up = self.w3("btd,edf->btef", x)
        hidden = jax.nn.silu(gate) * up * combine.astype(dtype)[..., None]
        y = self.w2("btef,efd->btd", hidden)
        return y, router_logits


def load_balancing_loss(router_logits, top_k, token_mask=None):
    """The Switch-Transformer auxiliary loss as transformers' Mixtral and Qwen3-MoE compute `aux_loss`.

    router_logits [L,B,T,E] from every layer; token_mask [B,T] (True on real tokens) or None.
    Returns E * sum_e (fraction of top-k assignments to e) * (mean router probability of e).
    """
    num_experts = router_logits.shape[-1]
    probs = jax.nn.softmax(router_logits.astype(jnp.float32), axis=-1)  # L,B,T,E
    _, top_index = jax.lax.top_k(probs, top_k)
    assigned = jax.nn.one_hot(top_index, num_experts)  # L,B,T,k,E
    if token_mask is None:
        token_mask = jnp.ones(router_logits.shape[1:3], bool)
    weight = jnp.broadcast_to(token_mask[None, :, :].astype(jnp.float32), probs.shape[:3])  # L,B,T
    count = jnp.sum(weight)
    tokens_per_expert = jnp.einsum("lbtke,lbt->ke", assigned, weight) / count  # k,E
    prob_per_expert = jnp.einsum("lbte,lbt->e", probs, weight) / count  # E
    return jnp.sum(tokens_per_expert * prob_per_expert[None, :]) * num_experts
