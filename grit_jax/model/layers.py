"""The building blocks of a decoder layer (Mistral, Llama, Qwen2, Qwen3), as Hugging Face computes them.

Legend: B batch, T query length, S key length, N heads, K kv heads, G = N/K, H head dim, D model dim,
F MLP dim, V vocab. Every parameter carries logical axis names (`out_sharding`), placed on the mesh by
grit_jax.sharding; a stacked parameter gets a leading "layers" axis.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from grit_jax.model import lora
from grit_jax.model.attention import AttentionSpec, attend
from grit_jax.model.dense_attention import dense_attention
from grit_jax.model.model_config import ModelConfig
from grit_jax.model.rope import apply_rotary

# remat_policy -> the outputs it saves, by their jax.ad_checkpoint.checkpoint_name below; splash names
# its output and log-sum-exp "attention" too (grit_jax.model.attention). "attention" keeps about a third
# of what "matmuls" keeps (the MLP's gate and up are [T, intermediate] each) and skips the attention
# block's recomputation, for chips where the MLP's outputs do not fit.
ATTENTION_OUTPUTS = ("query", "key", "value", "attention", "attention_out")
SAVED_OUTPUTS = {
    "matmuls": (*ATTENTION_OUTPUTS, "mlp_gate", "mlp_up"),
    "attention_up": (*ATTENTION_OUTPUTS, "mlp_up"),  # the backward recomputes only the gate projection
    "attention": ATTENTION_OUTPUTS,  # the gate and up projections are recomputed (the down one never is)
}


def make_param(
    shape: tuple[int, ...],
    names: tuple[str, ...],
    *,
    dtype,
    rngs: nnx.Rngs | None = None,
    stack: int | None = None,
    init: str = "normal",
) -> nnx.Param:
    """A parameter of `shape` (with a leading layer axis of size `stack`) named by logical axes."""
    if stack is not None:
        shape, names = (stack, *shape), ("layers", *names)
    if init in ("ones", "zeros"):
        value = (jnp.ones if init == "ones" else jnp.zeros)(shape, dtype)
    else:
        value = 0.02 * jax.random.normal(rngs.params(), shape, dtype)
    return nnx.Param(value, out_sharding=names, eager_sharding=False)


class RMSNorm(nnx.Module):
    def __init__(self, *, dim: int, eps: float, dtype, stack: int | None = None):
        self.scale = make_param((dim,), ("norm",), dtype=dtype, stack=stack, init="ones")
        self.eps = eps

    def __call__(self, x):
        input_dtype = x.dtype
        x = x.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(input_dtype) * x.astype(input_dtype)


class Attention(nnx.Module):
    """Grouped-query attention over an explicit mask; optionally reads and writes a key/value cache.
    Optional: biases on q/k/v and on o (Llama, Qwen2), RMSNorm of each head's q and k (Qwen3)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, stack: int | None = None):
        d, n, k, h, pdt = (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
            cfg.param_dtype,
        )
        common = dict(rngs=rngs, dtype=pdt, stack=stack)
        qkv_bias = cfg.attention_bias
        q_names, kv_names = ("embed", "heads", "head_dim"), ("embed", "kv_heads", "head_dim")
        self.q_proj = Linear(
            shape=(d, n, h), names=q_names, bias=qkv_bias, **common, **lora.options(cfg, "q_proj")
        )
        self.k_proj = Linear(
            shape=(d, k, h), names=kv_names, bias=qkv_bias, **common, **lora.options(cfg, "k_proj")
        )
        self.v_proj = Linear(
            shape=(d, k, h), names=kv_names, bias=qkv_bias, **common, **lora.options(cfg, "v_proj")
        )
        self.o_proj = Linear(
            shape=(n, h, d),
            names=("heads", "head_dim", "embed"),
            in_ndim=2,
            bias=cfg.attention_out_bias,
            **common,
            **lora.options(cfg, "o_proj"),
        )
        norm = dict(dim=h, eps=cfg.rms_norm_eps, dtype=pdt, stack=stack)
        self.q_norm = RMSNorm(**norm) if cfg.qk_norm else None
        self.k_norm = RMSNorm(**norm) if cfg.qk_norm else None
        self.num_kv_heads, self.head_dim = k, h

    def __call__(self, x, mask, cos, sin, *, cache=None):
        """x [B,T,D], mask [B,T,S] or an AttentionSpec (no cache); cache (k, v [B,S,K,H], index) or None.
        Returns y [B,T,D], (k, v)."""
        dtype = x.dtype
        q, k = self.q_proj("btd,dnh->btnh", x), self.k_proj("btd,dkh->btkh", x)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k = checkpoint_name(q, "query"), checkpoint_name(k, "key")
        v = checkpoint_name(self.v_proj("btd,dkh->btkh", x), "value")
        if cache is not None:
            cache_k, cache_v, index = cache
            k = jax.lax.dynamic_update_slice_in_dim(cache_k, k.astype(cache_k.dtype), index, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(cache_v, v.astype(cache_v.dtype), index, axis=1)
        if isinstance(mask, AttentionSpec):  # training: a kernel where one can run it, else dense
            out = attend(mask, q, k.astype(dtype), v.astype(dtype))
            if out is not None:
                return checkpoint_name(self.o_proj("btnh,nhd->btd", out), "attention_out"), (k, v)
            mask = mask.dense_mask()
        out = dense_attention(q, k, v, mask)
        y = checkpoint_name(self.o_proj("btnh,nhd->btd", checkpoint_name(out, "attention")), "attention_out")
        return y, (k, v)


def contract(equation: str, x, kernel):
    """``jnp.einsum(equation, x, kernel)``, as one 2-D matmul when the equation contracts x's trailing axes
    with the kernel's leading ones and keeps the others in order (all but the experts' w1 and w3).

    Flattening [B,T,...] into one axis makes the weight gradient of the backward a one-axis contraction;
    contracting B and T as two axes, XLA's CPU backend materialises transposed copies of the [B,T,F]
    activation gradients, each layer, each step (issue 13). The flattening is a free reshape.
    """
    inputs, out = equation.split("->")
    x_axes, k_axes = inputs.split(",")
    shared = "".join(a for a in x_axes if a in k_axes)
    m = len(shared)
    if not m or x_axes[-m:] != shared or k_axes[:m] != shared or out != x_axes[:-m] + k_axes[m:]:
        return jnp.einsum(equation, x, kernel)
    inner = math.prod(kernel.shape[:m])
    y = x.reshape(-1, inner) @ kernel.reshape(inner, -1)
    return y.reshape(*x.shape[:-m], *kernel.shape[m:])


class Linear(nnx.Module):
    """A projection whose kernel keeps its head structure (e.g. [D,N,H]) for sharding; with `bias`, a bias
    over the kernel's output axes (those after the first `in_ndim`).

    Called with an einsum equation between the input and the kernel: the kernel is cast to the input's
    (compute) dtype, so bf16 compute runs over fp32 master weights. With `lora_rank` > 0 it also holds
    LoRA adapters lora_a, lora_b (grit_jax/model/lora.py) and adds their scaled product.
    """

    def __init__(
        self,
        *,
        rngs: nnx.Rngs,
        shape: tuple[int, ...],
        names: tuple[str, ...],
        dtype,
        stack: int | None = None,
        in_ndim: int = 1,
        bias: bool = False,
        lora_rank: int = 0,
        lora_alpha: float = 16.0,
    ):
        self.kernel = make_param(shape, names, dtype=dtype, rngs=rngs, stack=stack)
        self.lora_a, self.lora_b = (
            lora.adapter_params(shape, names, in_ndim=in_ndim, rank=lora_rank, rngs=rngs, stack=stack)
            if lora_rank
            else (None, None)
        )
        self.lora_scale = lora_alpha / lora_rank if lora_rank else 0.0
        self.bias = (
            make_param(shape[in_ndim:], names[in_ndim:], dtype=dtype, stack=stack, init="zeros")
            if bias
            else None
        )

    def __call__(self, equation: str, x):
        y = contract(equation, x, self.kernel[...].astype(x.dtype))
        if self.lora_a is not None:
            y = y + lora.delta(x, self.lora_a[...], self.lora_b[...], self.lora_scale)
        if self.bias is not None:
            y = y + self.bias[...].astype(x.dtype)
        return y


@jax.checkpoint
def swiglu(gate, up):
    """silu(gate) * up, rematerialised: the backward keeps only gate and up (not the sigmoid and silu
    too), so two fewer [B,T,F] arrays per layer are stored and read back; the recomputation fuses into
    the gradient's elementwise pass. Same values and gradients."""
    return jax.nn.silu(gate) * up


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, stack: int | None = None):
        d, f = cfg.hidden_size, cfg.intermediate_size
        common = dict(rngs=rngs, dtype=cfg.param_dtype, stack=stack, bias=cfg.mlp_bias)
        self.gate_proj = Linear(
            shape=(d, f), names=("embed", "mlp"), **common, **lora.options(cfg, "gate_proj")
        )
        self.up_proj = Linear(shape=(d, f), names=("embed", "mlp"), **common, **lora.options(cfg, "up_proj"))
        self.down_proj = Linear(
            shape=(f, d), names=("mlp", "embed"), **common, **lora.options(cfg, "down_proj")
        )

    def __call__(self, x):
        gate = checkpoint_name(self.gate_proj("btd,df->btf", x), "mlp_gate")
        up = checkpoint_name(self.up_proj("btd,df->btf", x), "mlp_up")
        return self.down_proj("btf,fd->btd", swiglu(gate, up))
