"""The dropless (ragged) MoE against the dense one: outputs, router logits and gradients, on one device
and under meshes that split the batch, the experts and the expert MLP; the megablox kernel (interpret
mode) against ragged_dot; which kernel `auto` picks; and the FLOPs XLA compiles for TPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from grit_jax import sharding
from grit_jax.model import ModelConfig, Transformer, moe_dispatch


def loss_and_grads(impl, mesh=None, preset="tiny_moe", **changes):
    """Loss and gradients of a tiny MoE decoder whose loss also reads the router logits."""
    model = Transformer(ModelConfig.preset(preset, moe_impl=impl, **changes), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    tokens = jnp.asarray(np.random.default_rng(0).integers(3, 512, size=(8, 6)), jnp.int32)
    mask = jnp.tril(jnp.ones((8, 6, 6), bool))

    def loss(state):
        m = nnx.merge(graphdef, state)
        out = m(tokens, mask)
        return jnp.mean(m.logits(out.hidden) ** 2) + jnp.mean(out.router_logits**2)

    @jax.jit
    def run(state):
        with sharding.use_mesh(mesh):
            return jax.value_and_grad(loss)(state)

    return run(state)


def assert_same_grads(a, b, atol=1e-7):
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=atol, err_msg=str(path))


@pytest.mark.parametrize(
    "mesh_sizes",
    [None, dict(data=2, fsdp=1, tensor=2, expert=2), dict(data=1, fsdp=2, tensor=1, expert=4)],
)
def test_ragged_equals_dense_loss_and_gradients(mesh_sizes):
    dense_loss, dense_grads = loss_and_grads("dense")
    mesh = sharding.make_mesh(mesh_sizes) if mesh_sizes else None
    ragged_loss, ragged_grads = loss_and_grads("ragged", mesh)
    np.testing.assert_allclose(float(ragged_loss), float(dense_loss), rtol=1e-6)
    assert_same_grads(ragged_grads, dense_grads)


def test_ragged_equals_dense_without_renormalised_top_k_and_more_experts():
    changes = dict(num_local_experts=8, num_experts_per_tok=3, norm_topk_prob=False, model_type="qwen3_moe")
    dense_loss, dense_grads = loss_and_grads("dense", **changes)
    ragged_loss, ragged_grads = loss_and_grads("ragged", **changes)
    np.testing.assert_allclose(float(ragged_loss), float(dense_loss), rtol=1e-6)
    assert_same_grads(ragged_grads, dense_grads)


def routed(kernel, interpret, x, top_index, weights, w1, w3, w2):
    def loss(args):
        y = moe_dispatch.routed_experts(
            args[0], top_index, args[1], args[2], w3=args[3], w2=args[4], kernel=kernel, interpret=interpret
        )
        return jnp.sum(y * jnp.cos(y)), y

    return jax.value_and_grad(loss, has_aux=True)((x, weights, w1, w3, w2))


def test_megablox_gmm_equals_ragged_dot_with_an_empty_expert():
    """The TPU kernel, run in Pallas' interpret mode on the CPU: outputs and every gradient."""
    n, k, e, d, f = 20, 2, 4, 32, 48
    keys = jax.random.split(jax.random.key(0), 5)
    x = jax.random.normal(keys[0], (n, d))
    top_index = jax.random.randint(keys[1], (n, k), 0, e - 1)  # expert e-1 gets no token
    top_index = top_index.at[:, 1].set((top_index[:, 0] + 1) % (e - 1))  # k distinct experts per token
    weights = jax.nn.softmax(jax.random.normal(keys[2], (n, k)))
    w1, w3 = (0.2 * jax.random.normal(kk, (e, d, f)) for kk in jax.random.split(keys[3]))
    w2 = 0.2 * jax.random.normal(keys[4], (e, f, d))
    args = (x, top_index, weights, w1, w3, w2)
    (_, y_gmm), g_gmm = routed(moe_dispatch.GMM, True, *args)
    (_, y_ref), g_ref = routed(moe_dispatch.RAGGED_DOT, False, *args)
    np.testing.assert_allclose(y_gmm, y_ref, rtol=1e-5, atol=1e-5)
    assert_same_grads(g_gmm, g_ref, atol=1e-5)
    assert float(jnp.abs(g_ref[4][e - 1]).max()) == 0.0 and float(jnp.abs(g_ref[4][0]).max()) > 0


def test_auto_picks_the_kernel_per_platform():
    assert moe_dispatch.kernel_for("auto", "tpu") == moe_dispatch.GMM
    assert moe_dispatch.kernel_for("auto", "cpu") is None
    assert moe_dispatch.kernel_for("ragged", "cpu") == moe_dispatch.RAGGED_DOT
    assert moe_dispatch.kernel_for("auto", "gpu") is None
    assert moe_dispatch.kernel_for("ragged", "gpu") == moe_dispatch.RAGGED_DOT
    assert all(moe_dispatch.kernel_for("dense", p) is None for p in ("cpu", "gpu", "tpu"))
    assert moe_dispatch.mesh_platform(None) == "cpu"
    assert moe_dispatch.mesh_platform(sharding.make_mesh(dict(data=-1))) == "cpu"


def test_moe_impl_is_checked_and_defaults_to_auto():
    from grit_jax.errors import UsageError
    from grit_jax.run_config import DEFAULTS

    assert DEFAULTS["model"]["moe_impl"] == "auto" and ModelConfig.preset("tiny_moe").moe_impl == "auto"
    with pytest.raises(UsageError, match="moe_impl must be one of"):
        ModelConfig.preset("tiny_moe", moe_impl="sparse")
