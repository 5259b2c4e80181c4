"""LoRA on a frozen base (grit_jax/model/lora.py): fresh adapters compute the base; a step changes the
adapters (and the projection) only, and the optimizer holds state for them only; scanned or not, with
GradCache chunks and on a 2x4 mesh the step is the same."""

import jax
import numpy as np
import pytest
from flax import nnx

from grit_jax import sharding
from grit_jax.errors import UsageError
from grit_jax.model import ModelConfig, Transformer, lora, masks
from grit_jax.run_config import base_config
from grit_jax.train import step
from grit_jax.train.state import TrainSetup
from grit_jax.train.synthetic import synthetic_batch

ONE = dict(data=1, fsdp=1, tensor=1, expert=1)


def lora_config(preset="tiny", rank=4, **model):
    c = base_config()
    c.model.preset = preset
    c.model.update(model)
    c.model.lora.update(rank=rank, alpha=8.0)
    c.data.update(
        embedding_batch_size=8,
        generative_batch_size=8,
        query_max_len=8,
        passage_max_len=12,
        generative_max_len=12,
        train_group_size=2,
    )
    c.objective.projection_dim = 16
    c.optimizer.update(learning_rate=1e-2, warmup_ratio=0.0)
    return c


def _base_state(c):
    """The random base weights the LoRA runs start from (the same for every mesh and layout)."""
    full = base_config()
    full.model.update(preset=c.model.preset)
    return jax.device_get(TrainSetup(full, sharding.make_mesh(ONE)).create_state().params)


def test_fresh_adapters_compute_the_base():
    cfg = ModelConfig.preset("tiny")
    base = Transformer(cfg, rngs=nnx.Rngs(0))
    adapted = Transformer(cfg.replace(lora_rank=4, lora_alpha=8.0), rngs=nnx.Rngs(1))
    adapters, _ = lora.split_adapters(nnx.state(adapted))
    nnx.update(adapted, nnx.state(base))  # the base's weights, fresh adapters
    assert {str(p[-1]) for p in nnx.to_flat_state(adapters).paths} == {"lora_a", "lora_b"}
    tokens = np.arange(20).reshape(2, 10) % 500
    mask = masks.make_attn_mask(np.ones((2, 10), bool), "causal")
    forward = nnx.jit(lambda model: model(tokens, mask).hidden)
    want, got = forward(base), forward(adapted)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def _one_step(c, mesh_axes, base):
    setup = TrainSetup(c, sharding.make_mesh(mesh_axes))
    state = setup.create_state(base)
    before = jax.device_get(state)
    batch = step.global_batch(setup, synthetic_batch(c, seed=1))
    new_state, metrics = step.make_train_step(setup)(state, batch)
    return before, jax.device_get(new_state), jax.device_get(metrics)


@pytest.fixture(scope="module")
def run():
    c = lora_config()
    base = _base_state(c)
    return c, base, _one_step(c, ONE, base)


def test_a_step_changes_the_adapters_only(run):
    c, base, (before, after, metrics) = run
    assert not metrics["nonfinite"] and np.isfinite(metrics["loss"])
    flat = dict(nnx.to_flat_state(after.params))
    assert flat and all(str(p[-1]) in ("lora_a", "lora_b") for p in flat)
    for path, v in nnx.to_flat_state(before.params):
        # Every B moved off zero; A's first gradient is zero (it is multiplied by B = 0), as in PEFT.
        moved = not np.allclose(v.get_value(), flat[path].get_value())
        assert moved == (path[-1] == "lora_b"), path
    for (path, v), (_, w) in zip(nnx.to_flat_state(after.frozen), nnx.to_flat_state(before.frozen)):
        np.testing.assert_array_equal(v.get_value(), w.get_value(), err_msg=str(path))
    got = {p: v.get_value() for p, v in nnx.to_flat_state(after.frozen)}
    for path, v in nnx.to_flat_state(base):  # the frozen base is the given weights
        np.testing.assert_array_equal(got[path], v.get_value())
    assert not np.allclose(before.projection["kernel"], after.projection["kernel"])
    # The optimizer's moments cover the adapters and the projection, nothing of the base.
    adam = after.opt_state[1][0]
    n_trainable = sum(x.size for x in jax.tree.leaves((after.params, after.projection)))
    assert sum(x.size for x in jax.tree.leaves(adam.mu)) == n_trainable
    assert n_trainable < sum(x.size for x in jax.tree.leaves(after.frozen)) / 5


def test_base_dtype_is_kept_and_adapters_train_in_float32():
    c = lora_config(param_dtype="bfloat16", dtype="bfloat16")
    setup = TrainSetup(c, sharding.make_mesh(ONE))
    state = setup.abstract
    assert {str(x.dtype) for x in jax.tree.leaves(state.frozen)} == {"bfloat16"}
    assert {str(x.dtype) for x in jax.tree.leaves((state.params, state.opt_state)) if x.ndim} == {"float32"}


@pytest.mark.parametrize(
    "variant",
    [
        dict(model=dict(scan_layers=False), mesh=dict(data=2, fsdp=4, tensor=1, expert=1)),
        dict(model=dict(remat_policy="full"), objective=dict(embedding_chunk_size=4)),
    ],
    ids=["unscanned on 2x4", "remat+gradcache"],
)
def test_same_step_in_every_layout(run, variant):
    c, base, (_, want, want_metrics) = run
    c = lora_config(**variant.get("model", {}))
    c.objective.update(variant.get("objective", {}))
    _, got, metrics = _one_step(c, variant.get("mesh", ONE), base)
    np.testing.assert_allclose(metrics["loss"], want_metrics["loss"], rtol=1e-5)
    for x, y in zip(
        jax.tree.leaves((got.params, got.projection)), jax.tree.leaves((want.params, want.projection))
    ):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


def test_moe_adapts_the_attention():
    c = lora_config(preset="tiny_moe")
    setup = TrainSetup(c, sharding.make_mesh(ONE))
    names = {".".join(map(str, p[:-1])) for p, _ in nnx.to_flat_state(setup.abstract.params)}
    assert names == {f"layers.self_attn.{t}" for t in ("q_proj", "k_proj", "v_proj", "o_proj")}


def test_unknown_target_is_refused():
    c = lora_config()
    c.model.lora.targets = ("q_proj", "qkv")
    with pytest.raises(UsageError, match="qkv"):
        TrainSetup(c, sharding.make_mesh(ONE))


def test_base_fingerprint_is_the_same_on_any_mesh_and_differs_for_another_base(run):
    from grit_jax.train import lora_base

    c, base, _ = run
    prints = []
    for axes in (ONE, dict(data=2, fsdp=4, tensor=1, expert=1)):
        setup = TrainSetup(c, sharding.make_mesh(axes))
        prints.append(lora_base.fingerprint(setup, jax.device_put(base, setup.base_shardings)))
    assert prints[0] == prints[1]
    other = jax.tree.map(lambda x: x, base)
    embedding = other["embed_tokens"]["embedding"]
    embedding.set_value(np.asarray(embedding.get_value()).copy())
    embedding.get_value()[0, 0] += 1e-3
    assert lora_base.fingerprint(setup, jax.device_put(other, setup.base_shardings)) != prints[0]
