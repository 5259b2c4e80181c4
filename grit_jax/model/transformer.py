"""The decoder: embed -> stacked layers (scanned or looped, rematerialised) -> final norm -> hidden states.

Legend: B batch, T length, S key length, L layers, D model dim, V vocab, E experts, K kv heads, H head dim.
The attention is an input (a grit_jax.model.masks mask or a model.attention spec); the model has no notion of
causal or bidirectional.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from grit_jax import sharding
from grit_jax.choices import REMAT_POLICIES
from grit_jax.model.attention import AttentionSpec, mesh_platform
from grit_jax.model.layers import MLP, SAVED_OUTPUTS, Attention, Linear, RMSNorm, contract
from grit_jax.model.model_config import ModelConfig
from grit_jax.model.moe import SparseMoE
from grit_jax.model.rope import inverse_frequencies, rotary_tables


class KVCache(NamedTuple):
    """Keys and values of every layer: k, v [L,B,S,K,H]; index = number of positions already written."""

    k: jax.Array
    v: jax.Array
    index: jax.Array

    @classmethod
    def empty(cls, cfg: ModelConfig, batch: int, length: int, dtype=None):
        shape = (cfg.num_hidden_layers, batch, length, cfg.num_key_value_heads, cfg.head_dim)
        dtype = dtype or cfg.dtype
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((), jnp.int32))


class ModelOutput(NamedTuple):
    hidden: jax.Array  # [B,T,D] after the final norm
    router_logits: jax.Array | None  # [L,B,T,E] float32 for Mixtral
    cache: KVCache | None


class DecoderLayer(nnx.Module):
    """One pre-norm decoder layer; created with `stack=L` it holds all L layers' parameters stacked."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, stack: int | None = None):
        norm = dict(dim=cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=cfg.param_dtype, stack=stack)
        self.input_layernorm = RMSNorm(**norm)
        self.self_attn = Attention(cfg, rngs=rngs, stack=stack)
        self.post_attention_layernorm = RMSNorm(**norm)
        self.block_sparse_moe = SparseMoE(cfg, rngs=rngs, stack=stack) if cfg.is_moe else None
        self.mlp = None if cfg.is_moe else MLP(cfg, rngs=rngs, stack=stack)

    def __call__(self, x, mask, cos, sin, *, cache=None):
        attn_out, kv = self.self_attn(self.input_layernorm(x), mask, cos, sin, cache=cache)
        x = x + attn_out
        h = self.post_attention_layernorm(x)
        if self.block_sparse_moe is not None:
            ffn_out, router_logits = self.block_sparse_moe(h)
        else:
            ffn_out, router_logits = self.mlp(h), None
        x = sharding.constrain(x + ffn_out, ("batch", "length", "act_embed"))
        return x, router_logits, kv


# Up to this many layers, the layer scan is unrolled on CPU (scan_unroll).
CPU_UNROLL_LAYERS = 8


def scan_unroll(cfg: ModelConfig) -> int | bool:
    """How the layer scan is unrolled: fully on CPU for small models, else a rolled loop.

    A rolled loop stacks every layer's saved activations into [L,...] buffers that XLA's CPU backend
    fills with zeros, copies, updates and slices per layer: 12% of the CPU train step's op time in
    benchmarks/torch_reference_step.py (RESULTS.md, "Train step vs PyTorch"). Unrolled, each layer's
    activations stay where they were computed; same values. TPU and deep models keep the loop (compile
    time; the splash and remat paths are tuned for it)."""
    small = cfg.num_hidden_layers <= CPU_UNROLL_LAYERS
    return True if small and mesh_platform() == "cpu" else 1


class Transformer(nnx.Module):
    """The decoder of every family (Mistral, Mixtral, Llama, Qwen2, Qwen3), with Hugging Face names."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        d, v = cfg.hidden_size, cfg.vocab_size
        self.embed_tokens = nnx.Embed(
            v,
            d,
            param_dtype=cfg.param_dtype,
            rngs=rngs,
            embedding_init=nnx.with_partitioning(
                nnx.initializers.normal(cfg.embedding_init_std), ("vocab", "embed"), eager_sharding=False
            ),
        )
        self.layers = DecoderLayer(cfg, rngs=rngs, stack=cfg.num_hidden_layers)
        self.norm = RMSNorm(dim=d, eps=cfg.rms_norm_eps, dtype=cfg.param_dtype)
        self.lm_head = (
            None
            if cfg.tie_word_embeddings
            else Linear(rngs=rngs, shape=(d, v), names=("embed", "vocab"), dtype=cfg.param_dtype)
        )

    def __call__(self, tokens, mask, positions=None, cache: KVCache | None = None) -> ModelOutput:
        """tokens [B,T] int; mask [B,T,S] bool, or an AttentionSpec (training, no cache); positions [B,T]
        (default: arange(T) after the cache)."""
        if cache is not None and isinstance(mask, AttentionSpec):
            raise ValueError("an AttentionSpec describes attention without a cache; pass a [B,T,S] mask")
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        if positions is None:
            start = 0 if cache is None else cache.index
            positions = jnp.broadcast_to(start + jnp.arange(tokens.shape[1]), tokens.shape)
        cos, sin = rotary_tables(positions, inverse_frequencies(cfg), dtype)
        x = self.embed_tokens.embedding[...].astype(dtype)[tokens]
        x = sharding.constrain(x, ("batch", "length", "act_embed"))

        graphdef, layer_state = nnx.split(self.layers)

        def layer_fn(x, per_layer):
            state, layer_cache = per_layer
            layer = nnx.merge(graphdef, state)
            cache_arg = None if layer_cache is None else (*layer_cache, cache.index)
            x, router_logits, kv = layer(x, mask, cos, sin, cache=cache_arg)
            return x, (router_logits, kv if cache is not None else None)

        unroll = scan_unroll(cfg) if cfg.scan_layers else 1
        if cfg.remat_policy != "none":
            policy = getattr(jax.checkpoint_policies, REMAT_POLICIES[cfg.remat_policy])
            if cfg.remat_policy in SAVED_OUTPUTS:  # a policy over the names layers.py gives outputs
                policy = policy(*SAVED_OUTPUTS[cfg.remat_policy])
            # a rolled loop cannot merge the recomputation with the forward; unrolled code can
            prevent_cse = not cfg.scan_layers or unroll is True
            layer_fn = jax.checkpoint(layer_fn, policy=policy, prevent_cse=prevent_cse)
        per_layer = (layer_state, None if cache is None else (cache.k, cache.v))
        if cfg.scan_layers:
            x, (router_logits, kv) = jax.lax.scan(layer_fn, x, per_layer, unroll=unroll)
        else:
            outputs = []
            for i in range(cfg.num_hidden_layers):
                x, out = layer_fn(x, jax.tree.map(lambda a, i=i: a[i], per_layer))
                outputs.append(out)
            router_logits, kv = jax.tree.map(lambda *a: jnp.stack(a), *outputs) if outputs else (None, None)

        new_cache = None if cache is None else KVCache(kv[0], kv[1], cache.index + tokens.shape[1])
        return ModelOutput(self.norm(x), router_logits, new_cache)

    def logits(self, hidden):
        """hidden [B,T,D] -> logits [B,T,V] in float32."""
        if self.config.tie_word_embeddings:
            kernel = self.embed_tokens.embedding[...].T
        else:
            kernel = self.lm_head.kernel[...]
        return contract("btd,dv->btv", hidden, kernel.astype(hidden.dtype)).astype(jnp.float32)


def abstract_model(cfg: ModelConfig):
    """(graphdef, abstract nnx.State) of the model, without allocating weights."""
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    return nnx.split(model)
