"""Training attention as a structured spec, run by a fused kernel where one can express it.

Training needs only causal or bidirectional attention over right-padded rows, or over packed rows of
several sequences (segment ids: attention stays within a sequence), optionally within a sliding window.
``AttentionSpec`` says exactly that (kind, which tokens are real, segments, window), so a kernel
never materialises the [B,K,G,T,S] scores: Pallas splash attention on TPU, cuDNN flash attention on
GPU. The dense [B,T,S] mask of grit_jax.model.masks stays for inference and is the oracle of the tests.

``model.attention_impl``: ``auto`` (splash on TPU, cuDNN on GPU, dense elsewhere), ``dense``,
``splash`` (off TPU: Pallas's interpreter, for tests) or ``cudnn``. A kernel that cannot express a
call (length not a multiple of 128, float32 on cuDNN, ...) falls back to dense, logged once per reason.

Legend: B batch, T length, N heads, K kv heads, H head dim.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
from flax import struct
from jax.sharding import PartitionSpec

from grit_jax import sharding
from grit_jax.choices import ATTENTION_IMPLS
from grit_jax.errors import UsageError
from grit_jax.model import masks

logger = logging.getLogger(__name__)
SPLASH_BLOCKS = (512, 256, 128)  # the largest that divides T is used; splash needs a multiple of 128
_logged: set[str] = set()


@struct.dataclass
class AttentionSpec:
    """Who attends to whom without a cache: ``kind`` (causal | bidirectional) over the real tokens
    ``valid`` [B,T] (right padding: real tokens first), within ``window`` positions if not None.
    ``segments`` [B,T] int32 (packed rows: 0 = padding, 1.. = the sequences of a row) or None (one
    sequence per row): a token attends only to its own segment."""

    valid: jax.Array
    segments: jax.Array | None = None
    kind: str = struct.field(pytree_node=False, default="causal")
    window: int | None = struct.field(pytree_node=False, default=None)
    impl: str = struct.field(pytree_node=False, default="auto")

    def dense_mask(self):
        """The same attention as a boolean [B,T,T] mask (grit_jax.model.masks): the oracle."""
        return masks.make_attn_mask(self.valid, self.kind, sliding_window=self.window, segments=self.segments)


def attention_spec(
    padding, kind: str, sliding_window: int | None, impl: str, *, segments=None
) -> AttentionSpec:
    """The spec of a right-padded batch (padding [B,T] bool), or of packed rows (segments [B,T] int,
    0 = padding; padding is then segments > 0); a window no shorter than the row cuts nothing: dropped."""
    if kind not in ("causal", "bidirectional"):
        raise ValueError(f"an AttentionSpec is causal or bidirectional, not {kind!r}")
    if segments is not None:
        segments = jnp.asarray(segments, jnp.int32)
        padding = segments > 0
    length = padding.shape[1]
    window = sliding_window if sliding_window is not None and sliding_window < length else None
    return AttentionSpec(jnp.asarray(padding, bool), segments, kind, window, impl)


def check_platform(impl: str, platform: str) -> None:
    """Raise UsageError, before compiling, for an implementation this platform cannot run."""
    if impl not in ATTENTION_IMPLS:
        raise UsageError(f"model.attention_impl={impl!r}: expected one of {ATTENTION_IMPLS}")
    if impl == "cudnn" and platform != "gpu":
        raise UsageError(f"model.attention_impl='cudnn' needs a GPU, not {platform}; use auto or dense")


def mesh_platform() -> str:
    """The platform the step compiles for: the active mesh's devices (a TPU topology in grit-aot)."""
    mesh = sharding.current_mesh()
    devices = getattr(mesh, "devices", None)
    return devices.flat[0].platform if devices is not None else jax.default_backend()


def log_once(message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        logger.warning(message)


def choose_kernel(spec: AttentionSpec, q_shape, dtype, platform: str) -> str:
    """ "splash", "cudnn" or "dense" for queries of q_shape [B,T,N,H] in dtype on platform."""
    impl = spec.impl
    if impl == "auto":
        impl = {"tpu": "splash", "gpu": "cudnn"}.get(platform, "dense")
    if impl == "dense":
        return "dense"
    why = splash_limits(q_shape) if impl == "splash" else cudnn_limits(spec, q_shape, dtype)
    if why:
        log_once(f"attention: {impl} cannot run {why}; dense attention instead")
        return "dense"
    return impl


def splash_limits(q_shape) -> str:
    """Why splash cannot run this shape ("" if it can)."""
    length = q_shape[1]
    return "" if length % SPLASH_BLOCKS[-1] == 0 else f"length {length} (not a multiple of 128)"


def cudnn_limits(spec: AttentionSpec, q_shape, dtype) -> str:
    """Why cuDNN flash attention cannot run this call ("" if it can)."""
    if jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
        return f"{jnp.dtype(dtype).name} (bfloat16 or float16 only)"
    if q_shape[-1] % 8 or q_shape[-1] > 128:
        return f"head_dim {q_shape[-1]} (a multiple of 8, at most 128)"
    if spec.window is not None and spec.kind == "bidirectional":
        return "a bidirectional sliding window (cuDNN windows are causal)"
    if spec.segments is not None:
        return "packed rows (jax.nn.dot_product_attention takes no segment ids)"
    return ""


def attend(spec: AttentionSpec, q, k, v):
    """q [B,T,N,H], k and v [B,T,K,H] -> [B,T,N,H], or None where the dense path must run."""
    platform = mesh_platform()
    kernel = choose_kernel(spec, q.shape, q.dtype, platform)
    if kernel == "splash":
        if platform != "tpu":
            log_once(f"attention: splash runs in Pallas's interpreter on {platform} (slow: for tests)")
        return splash_attention(spec, q, k, v, interpret=platform != "tpu")
    if kernel == "cudnn":
        return cudnn_attention(spec, q, k, v)
    return None


# ----------------------------------------------------------------------------- cuDNN


def cudnn_attention(spec: AttentionSpec, q, k, v, *, implementation="cudnn"):
    """cuDNN flash attention with per-row lengths (right padding); windows only causal."""
    # at least 1: a row of padding only (evaluation fills its last batch with them) stays finite
    lengths = jnp.maximum(jnp.sum(spec.valid, axis=1, dtype=jnp.int32), 1)
    causal = spec.kind == "causal"
    return jax.nn.dot_product_attention(
        q,
        k,
        v,
        is_causal=causal,
        query_seq_lengths=lengths,
        key_value_seq_lengths=lengths,
        local_window_size=None if spec.window is None else (spec.window - 1, 0),
        implementation=implementation,
    )


# ----------------------------------------------------------------------------- splash (TPU)


@functools.lru_cache(maxsize=64)
def splash_kernel(kind: str, length: int, window: int | None, heads: int, *, interpret: bool):
    """A splash kernel for one row: q [N,T,H], k and v [K,T,H] (grouped-query heads), segment ids."""
    from jax.experimental.pallas.ops.tpu import splash_attention as sa  # imports libtpu's Pallas

    shape = (length, length)
    if window is not None:
        base = sa.LocalMask(shape, (window - 1, 0 if kind == "causal" else window - 1), offset=0)
    else:
        base = sa.CausalMask(shape) if kind == "causal" else sa.FullMask(shape)
    block = next(b for b in SPLASH_BLOCKS if length % b == 0)
    sizes = sa.BlockSizes(
        block_q=block,
        block_kv=block,
        block_kv_compute=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_kv_dkv_compute=block,
        block_q_dq=block,
        block_kv_dq=block,
    )
    mask = sa.MultiHeadMask([base] * heads)
    # concrete mask tables, never one trace's tracers: the kernel is cached across traces
    with jax.ensure_compile_time_eval():
        kernel = sa.make_splash_mha(
            mask,
            block_sizes=sizes,
            head_shards=1,
            q_seq_shards=1,
            interpret=interpret,
            residual_checkpoint_name="attention",  # what remat_policy="matmuls" keeps of the kernel
        )
    return kernel, sa.SegmentIds


def _head_split(mesh, num_heads: int, num_kv_heads: int) -> tuple[str | None, int]:
    """(mesh axis for the heads, factor to repeat kv heads by) so that every shard holds whole groups."""
    tensor = dict(mesh.shape).get("tensor", 1) if mesh is not None else 1
    if tensor == 1 or num_heads % tensor:
        return None, 1
    if num_kv_heads % tensor:  # e.g. 8 kv heads on 16 tensor shards: one kv head per query head
        return "tensor", num_heads // num_kv_heads
    return "tensor", 1


def splash_attention(spec: AttentionSpec, q, k, v, *, interpret: bool = False):
    """Splash attention under shard_map: rows over the batch axes, heads over ``tensor``."""
    b, t, n, h = q.shape
    mesh = sharding.current_mesh()
    head_axis, repeat = _head_split(mesh, n, k.shape[2])
    if repeat > 1:
        k, v = jnp.repeat(k, repeat, axis=2), jnp.repeat(v, repeat, axis=2)
    q = q * jnp.asarray(1.0 / h**0.5, q.dtype)  # splash does not scale the scores
    # padding = segment 0: real tokens never see it; packed rows: each sequence its own segment
    segments = spec.valid.astype(jnp.int32) if spec.segments is None else spec.segments
    local_heads = n // (dict(mesh.shape)["tensor"] if head_axis else 1)
    kernel, segment_ids = splash_kernel(spec.kind, t, spec.window, local_heads, interpret=interpret)

    def per_shard(q, k, v, segments):
        def row(q, k, v, seg):  # [T,N,H] -> [N,T,H] and back
            out = kernel(q.swapaxes(0, 1), k.swapaxes(0, 1), v.swapaxes(0, 1), segment_ids(seg, seg))
            return out.swapaxes(0, 1)

        return jax.vmap(row)(q, k, v, segments)

    if mesh is None or getattr(mesh, "devices", None) is None:
        return per_shard(q, k, v, segments)
    sizes = dict(mesh.shape)
    batch = sharding.logical_to_spec(("batch",), (b,), sizes)[0]
    heads = PartitionSpec(batch, None, head_axis, None)
    return jax.shard_map(
        per_shard,
        mesh=mesh,
        in_specs=(heads, heads, heads, PartitionSpec(batch, None)),
        out_specs=heads,
        check_vma=False,
    )(q, k, v, segments)
