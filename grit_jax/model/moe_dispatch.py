"""Dropless routed experts: every token's top-k assignments sorted by expert, one grouped matmul per
projection (w1, w3, w2), unsorted, and weighted over the top k. Only the routed work is computed: k of
E experts per token, none dropped.

The grouped matmul is `jax.lax.ragged_dot` off TPU and the Pallas megablox `gmm` on TPU, where
ragged_dot (jax 0.10.2) compiles to every expert on every row. Sort and unsort are gathers by a
permutation (argsort + take), so their gradients are exact.

Under a mesh, `shard_map` over the batch axes: each shard routes its own tokens through every expert,
whose weights are gathered for the layer like FSDP gathers `embed` (they are stored split over the
`expert` axis); an `mlp` dimension split over `tensor` stays split and its partial sums are added.

Legend: N tokens (B*T), D model dim, F expert MLP dim, E experts, k experts per token.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from grit_jax import sharding

# grouped-matmul kernels
RAGGED_DOT, GMM = "ragged_dot", "gmm"
# gmm tiles (rows, contraction, output): MaxText's defaults, clipped to small problems
_GMM_TILING = (512, 1024, 1024)


def mesh_platform(mesh) -> str:
    """The platform the program is compiled for: the mesh's devices (a TPU topology compiled on a CPU
    host says "tpu"), else the default backend."""
    devices = getattr(mesh, "devices", None)
    if devices is not None and getattr(devices, "size", 0):
        return devices.flat[0].platform
    return jax.default_backend()


def kernel_for(moe_impl: str, platform: str) -> str | None:
    """None for the dense path; else the grouped-matmul kernel that `moe_impl` runs on `platform`.

    auto: megablox gmm on TPU; dense elsewhere: on CPU ragged_dot's forward + backward is as slow as
    dense at 8 experts and slower with more (benchmarks/RESULTS.md), and GPUs are not measured yet.
    """
    if moe_impl == "dense" or (moe_impl == "auto" and platform != "tpu"):
        return None
    return GMM if platform == "tpu" else RAGGED_DOT


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def gmm(lhs, rhs, group_sizes, interpret: bool = False):
    """megablox gmm: rows padded to a whole row tile; the padding joins the last group (zero rows)."""
    from jax.experimental.pallas.ops.tpu.megablox import ops  # Pallas: imported only where it runs

    m, k = lhs.shape
    n = rhs.shape[-1]
    tm = min(_GMM_TILING[0], _round_up(m, 128))  # whole (8, 128) / (16, 128) TPU tiles in any dtype
    padded = _round_up(m, tm)
    lhs = jnp.pad(lhs, ((0, padded - m), (0, 0)))
    group_sizes = group_sizes.at[-1].add(padded - m)
    tiling = (tm, min(_GMM_TILING[1], k), min(_GMM_TILING[2], n))
    out = ops.gmm(lhs, rhs, group_sizes, lhs.dtype, tiling, None, None, False, interpret)
    return out[:m]


def grouped_matmul(lhs, rhs, group_sizes, kernel: str, *, interpret: bool = False):
    """lhs [M,X] (rows sorted by group), rhs [E,X,Y], group_sizes [E] -> [M,Y]: row block e times rhs[e]."""
    if kernel == GMM:
        return gmm(lhs, rhs, group_sizes, interpret)
    return jax.lax.ragged_dot(lhs, rhs, group_sizes)


def routed_experts(x, top_index, top_weights, w1, *, w3, w2, kernel: str, interpret: bool = False):
    """x [N,D], top_index / top_weights [N,k], w1 / w3 [E,D,F], w2 [E,F,D] -> y [N,D]:
    sum over each token's k experts of weight * w2(silu(w1 x) * w3 x), as Hugging Face's Mixtral."""
    n, k = top_index.shape
    num_experts = w1.shape[0]
    flat = top_index.reshape(n * k)
    order = jnp.argsort(flat, stable=True)  # assignments grouped by expert
    group_sizes = jnp.bincount(flat, length=num_experts).astype(jnp.int32)
    rows = jnp.take(x, order // k, axis=0)  # [N*k, D]: the token of each sorted assignment
    gate = grouped_matmul(rows, w1, group_sizes, kernel, interpret=interpret)
    up = grouped_matmul(rows, w3, group_sizes, kernel, interpret=interpret)
    out = grouped_matmul(jax.nn.silu(gate) * up, w2, group_sizes, kernel, interpret=interpret)  # [N*k, D]
    out = jnp.take(out, jnp.argsort(order), axis=0).reshape(n, k, -1)  # back to token order
    return jnp.einsum("nkd,nk->nd", out, top_weights.astype(out.dtype))


def sharded_routed_experts(x, top_index, top_weights, w1, *, w3, w2, kernel: str):
    """x [B,T,D], top_index / top_weights [B,T,k] -> y [B,T,D], under the current mesh if any."""
    b, t, d = x.shape

    def local(x, top_index, top_weights, w1, w3, w2, mlp_axes=None):
        lb, lt, _ = x.shape
        flat = (lb * lt, -1)
        y = routed_experts(
            x.reshape(flat),
            top_index.reshape(flat),
            top_weights.reshape(flat),
            w1,
            w3=w3,
            w2=w2,
            kernel=kernel,
        )
        if mlp_axes:  # each shard holds a slice of F: its w2 product is a partial sum
            y = jax.lax.psum(y, mlp_axes)
        return y.reshape(lb, lt, d)

    mesh = sharding.current_mesh()
    if mesh is None or mesh.size == 1:
        return local(x, top_index, top_weights, w1, w3, w2)
    sizes = dict(mesh.shape)
    batch = sharding.logical_to_spec(("batch",), (b,), sizes)[0]
    mlp = sharding.logical_to_spec(("mlp",), (w1.shape[-1],), sizes)[0]
    mlp_axes = () if mlp is None else (mlp,) if isinstance(mlp, str) else tuple(mlp)
    tokens = P(batch, None, None)
    run = jax.shard_map(
        lambda *a: local(*a, mlp_axes=mlp_axes),
        mesh=mesh,
        in_specs=(tokens, tokens, tokens, P(None, None, mlp), P(None, None, mlp), P(None, mlp, None)),
        out_specs=tokens,
        check_vma=False,  # Pallas calls (gmm) carry no varying-axes types; the tests check the gradients
    )
    return run(x, top_index, top_weights, w1, w3, w2)
