"""The train step on 8 faked CPU devices: meshes agree, negatives span shards, Mixtral with an expert axis."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from grit_jax import sharding
from grit_jax.errors import UsageError
from grit_jax.model import abstract_model, masks, pooling
from grit_jax.run_config import base_config
from grit_jax.train import objective, step
from grit_jax.train.state import TrainSetup, resolve_model_config
from grit_jax.train.synthetic import synthetic_batch

MESHES = {
    "1 device": dict(data=1, fsdp=1, tensor=1, expert=1),
    "8-way data": dict(data=8, fsdp=1, tensor=1, expert=1),
    "2x4 data x fsdp": dict(data=2, fsdp=4, tensor=1, expert=1),
}


def tiny_config(**objective_overrides):
    c = base_config()
    c.data.update(
        embedding_batch_size=16,
        generative_batch_size=8,
        query_max_len=8,
        passage_max_len=12,
        generative_max_len=12,
        train_group_size=2,
    )
    c.objective.update(objective_overrides)
    return c


def close(a, b, rtol=2e-5, atol=2e-5):
    """Elementwise, with atol relative to each array's largest entry (fp32 reduction order differs)."""
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol * max(np.abs(y).max(), 1e-30))


@pytest.fixture(scope="module")
def per_mesh():
    """Loss, metrics and gradients of one global batch on each mesh, from the same initial state."""
    c = tiny_config()
    host_batch = synthetic_batch(c, seed=3)
    state = TrainSetup(c, sharding.make_mesh(MESHES["1 device"])).create_state()
    results = {}
    for name, axes in MESHES.items():
        setup = TrainSetup(c, sharding.make_mesh(axes))
        placed = jax.device_put(state, setup.shardings)
        (loss, metrics), grads = step.make_loss_and_grad(setup)(
            placed.trainable, step.global_batch(setup, host_batch)
        )
        results[name] = jax.device_get((loss, metrics, grads))
        if name == "2x4 data x fsdp":  # the gradient is sharded like its parameter
            kernel = grads[0]["embed_tokens"]["embedding"][...]
            assert kernel.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    return c, state, host_batch, results


@pytest.mark.parametrize("name", ["8-way data", "2x4 data x fsdp"])
def test_losses_and_gradients_agree_across_meshes(per_mesh, name):
    _, _, _, results = per_mesh
    loss, metrics, grads = results[name]
    loss1, metrics1, grads1 = results["1 device"]
    np.testing.assert_allclose(loss, loss1, rtol=1e-5)
    for k in ("loss_emb", "loss_gen", "accuracy"):
        np.testing.assert_allclose(metrics[k], metrics1[k], rtol=1e-5, err_msg=k)
    close(grads, grads1)


def test_negatives_span_the_shards(per_mesh):
    """The 8-way loss is the global-batch loss, not the mean of per-shard losses with local negatives."""
    c, state, host_batch, results = per_mesh
    graphdef, _ = abstract_model(resolve_model_config(c))
    model = nnx.merge(graphdef, state.params)

    def reps(prefix):
        mask = host_batch.named()[f"{prefix}_mask"]
        hidden = model(
            host_batch.named()[f"{prefix}_tokens"], masks.make_attn_mask(mask, "bidirectional")
        ).hidden
        return pooling.pool(hidden, mask, host_batch.named()[f"{prefix}_instruction_len"])

    q, p = reps("query"), reps("passage")
    global_loss, _ = objective.contrastive_loss(q, p)
    local = [objective.contrastive_loss(qs, ps)[0] for qs, ps in zip(jnp.split(q, 8), jnp.split(p, 8))]
    sharded = results["8-way data"][1]["loss_emb"]
    np.testing.assert_allclose(sharded, global_loss, rtol=1e-5)
    assert abs(float(np.mean(local)) - float(sharded)) > 0.1, (np.mean(local), sharded)


@pytest.fixture(scope="module")
def moe_run():
    c = tiny_config()
    c.model.preset = "tiny_moe"
    c.optimizer.update(learning_rate=1e-3, warmup_ratio=0.0)
    c.objective.update(embedding_chunk_size=8, projection_dim=16)
    mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=1, expert=2))
    state = TrainSetup(c, mesh).create_state()
    train_step = step.make_train_step(TrainSetup(c, mesh))
    batch = step.global_batch(TrainSetup(c, mesh), synthetic_batch(c, seed=4))
    before = jax.device_get(state.params)
    state, metrics = train_step(state, batch)
    return c, mesh, train_step, batch, before, state, jax.device_get(metrics)


def test_mixtral_step_on_an_expert_mesh(moe_run):
    c, mesh, _, _, before, state, metrics = moe_run
    w1 = state.params["layers"]["block_sparse_moe"]["w1"]["kernel"][...]
    assert "expert" in str(w1.sharding.spec)
    for k in (
        "loss",
        "loss_emb",
        "loss_gen",
        "loss_router",
        "accuracy",
        "grad_norm",
        "param_norm",
        "learning_rate",
        "tokens",
        "nonfinite",
    ):
        assert np.isfinite(metrics[k]), k
    assert metrics["loss_router"] > 0 and metrics["nonfinite"] == 0
    np.testing.assert_allclose(
        metrics["loss"], metrics["loss_emb"] + metrics["loss_gen"] + metrics["loss_router"], rtol=1e-6
    )
    assert int(state.step) == 1 and state.projection["kernel"].shape == (64, 16)
    changed = jax.tree.map(lambda a, b: not np.allclose(a, b), before, jax.device_get(state.params))
    assert all(jax.tree.leaves(changed))


def test_nonfinite_loss_skips_the_update(moe_run):
    c, mesh, train_step, batch, _, state, _ = moe_run
    poisoned = jax.tree.map(lambda a: a, state)  # a copy: the step donates its input
    kernel = poisoned.params["norm"]["scale"]
    kernel[...] = kernel[...].at[0].set(jnp.nan)
    before = jax.device_get((poisoned.params, poisoned.opt_state))
    new_state, metrics = train_step(poisoned, batch)
    assert int(metrics["nonfinite"]) == 1 and int(new_state.step) == 2
    after = jax.device_get((new_state.params, new_state.opt_state))
    for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before)):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- misconfiguration


def test_misconfigurations_fail_before_compiling_and_say_what_to_change():
    mesh8 = sharding.make_mesh(MESHES["8-way data"])
    c = tiny_config()
    c.data.embedding_batch_size = 12
    with pytest.raises(
        UsageError, match="embedding_batch_size=12 is not divisible by the data-parallel size 8"
    ):
        step.make_train_step(TrainSetup(c, mesh8))
    c = tiny_config()
    c.data.generative_batch_size = 4
    with pytest.raises(UsageError, match="generative_batch_size=4"):
        step.make_train_step(TrainSetup(c, mesh8))
    c = tiny_config(embedding_chunk_size=4)
    with pytest.raises(
        UsageError, match="embedding_chunk_size=4 must be a multiple of the data-parallel size 8"
    ):
        step.make_train_step(TrainSetup(c, mesh8))
    c = tiny_config()
    c.data.train_group_size = 4  # the data provide a positive and one negative per query
    host_batch = synthetic_batch(tiny_config(), seed=0)
    with pytest.raises(UsageError, match="lower data.train_group_size to 2"):
        step.global_batch(TrainSetup(c, mesh8), host_batch)
    with pytest.raises(UsageError, match="needs 16 devices but only 8"):
        sharding.make_mesh(dict(data=4, fsdp=4, tensor=1, expert=1))
    c = tiny_config(pooling="max")
    with pytest.raises(UsageError, match="objective.pooling='max'"):
        step.make_train_step(TrainSetup(c, mesh8))


# ----------------------------------------------------------------------------- the reference's choices


def _one_step(c, mesh_axes, seed=5):
    setup = TrainSetup(c, sharding.make_mesh(mesh_axes))
    state = setup.create_state()
    new_state, metrics = step.make_train_step(setup)(
        state, step.global_batch(setup, synthetic_batch(c, seed=seed))
    )
    return new_state, jax.device_get(metrics)


def test_reference_world_size_divides_the_embedding_gradient_on_any_mesh():
    """objective.reference_world_size=W: the logged pre-clip gradient norm is 1/W of the exact one and the
    loss is unchanged, and the same config gives the same numbers on 1 device and on 8."""
    exact, scaled = tiny_config(mode="embedding"), tiny_config(mode="embedding", reference_world_size=4)
    _, m_exact = _one_step(exact, MESHES["1 device"])
    _, m_scaled = _one_step(scaled, MESHES["1 device"])
    np.testing.assert_allclose(m_scaled["loss"], m_exact["loss"], rtol=1e-7)
    np.testing.assert_allclose(m_scaled["grad_norm"], m_exact["grad_norm"] / 4, rtol=1e-5)
    _, m_eight = _one_step(scaled, MESHES["8-way data"])
    np.testing.assert_allclose(m_eight["loss"], m_scaled["loss"], rtol=2e-5)
    np.testing.assert_allclose(m_eight["grad_norm"], m_scaled["grad_norm"], rtol=2e-5)


def test_bfloat16_parameters_train_with_bfloat16_optimizer_state():
    """The reference trains bf16 parameters with bf16 AdamW moments: model.param_dtype=bfloat16."""
    c = tiny_config()
    c.model.update(param_dtype="bfloat16", dtype="bfloat16")
    c.optimizer.update(learning_rate=1e-2, warmup_ratio=0.0)
    setup = TrainSetup(c, sharding.make_mesh(MESHES["2x4 data x fsdp"]))
    state = setup.create_state()
    before = jax.device_get(state.params)
    state, metrics = step.make_train_step(setup)(state, step.global_batch(setup, synthetic_batch(c, seed=6)))
    assert metrics["nonfinite"] == 0 and np.isfinite(metrics["loss"])
    dtypes = {str(x.dtype) for x in jax.tree.leaves((state.params, state.opt_state)) if x.ndim}
    assert dtypes == {"bfloat16"}, dtypes
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), before, jax.device_get(state.params))
    assert all(jax.tree.leaves(changed))
