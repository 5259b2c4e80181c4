"""The GRIT objective against independent computations of the reference's formulas (numpy / torch)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from grit_jax import sharding
from grit_jax.choices import POOLINGS
from grit_jax.model import abstract_model, masks, pooling
from grit_jax.run_config import base_config
from grit_jax.train import objective
from grit_jax.train.state import TrainSetup, resolve_model_config
from grit_jax.train.synthetic import synthetic_batch


def tiny_config(**objective_overrides):
    c = base_config()
    c.data.update(
        embedding_batch_size=8,
        generative_batch_size=4,
        query_max_len=8,
        passage_max_len=12,
        generative_max_len=12,
        train_group_size=2,
    )
    c.objective.update(objective_overrides)
    return c


@pytest.fixture(scope="module")
def setup():
    c = tiny_config()
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1, "expert": 1})
    state = TrainSetup(c, mesh).create_state()
    graphdef, _ = abstract_model(resolve_model_config(c))
    batch = jax.tree.map(jnp.asarray, synthetic_batch(c, seed=1))
    return c, state, graphdef, batch


_loss = jax.jit(objective.loss_fn, static_argnums=(1, 3))  # module level: compiled once per config
_loss_and_grads = jax.jit(jax.value_and_grad(objective.loss_fn, has_aux=True), static_argnums=(1, 3))


def loss_only(c, state, graphdef, batch):
    return _loss(state.trainable, graphdef, batch, _Frozen(c.objective))


def loss_and_grads(c, state, graphdef, batch):
    """((loss, metrics), grads) and the compiled function's temp (scratch) bytes."""
    args = (state.trainable, graphdef, batch, _Frozen(c.objective))
    compiled = _loss_and_grads.lower(*args).compile()
    return compiled(state.trainable, batch), compiled.memory_analysis().temp_size_in_bytes


class _Frozen:
    """A hashable view of a ConfigDict group (static argument of jit in these tests)."""

    def __init__(self, cfg):
        self._d = dict(cfg)

    def __getattr__(self, k):
        return self._d[k]

    def __hash__(self):
        return hash(tuple(sorted(self._d.items())))

    def __eq__(self, other):
        return isinstance(other, _Frozen) and self._d == other._d


# ----------------------------------------------------------------------------- pooling


def numpy_pool(hidden, mask, inst, method):
    keep = mask.copy().astype(np.float64)
    for i, n in enumerate(inst):
        keep[i, :n] = 0
    if method == "cls":
        return hidden[:, 0]
    if method == "lasttoken":
        return np.stack([hidden[i, np.nonzero(keep[i])[0][-1]] for i in range(len(hidden))])
    if method == "weightedmean":
        keep = keep * np.cumsum(keep, axis=1)
    return (hidden * keep[..., None]).sum(1) / keep.sum(1, keepdims=True)


@pytest.mark.parametrize("method", POOLINGS)
def test_pooling_matches_reference_formulas(method):
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(3, 7, 5)).astype(np.float32)
    mask = np.arange(7)[None] < np.array([[7], [5], [3]])
    inst = np.array([2, 1, 0], np.int32)
    want = numpy_pool(hidden.astype(np.float64), mask, inst, method)
    got = pooling.pool(
        jnp.asarray(hidden, jnp.bfloat16).astype(jnp.float32), mask, inst, method, normalize=False
    )
    np.testing.assert_allclose(
        got,
        numpy_pool(np.asarray(jnp.asarray(hidden, jnp.bfloat16).astype(jnp.float32)), mask, inst, method),
        rtol=1e-5,
        atol=1e-6,
    )
    got = pooling.pool(hidden, mask, inst, method, normalize=True)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want / np.linalg.norm(want, axis=-1, keepdims=True), rtol=1e-5, atol=1e-6)


def test_padding_does_not_change_the_pooled_embedding():
    rng = np.random.default_rng(1)
    hidden = rng.normal(size=(1, 6, 4)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 0, 0]], bool)
    garbage = hidden.copy()
    garbage[:, 4:] = 1e3
    for method in POOLINGS:
        a = pooling.pool(hidden, mask, np.array([1]), method)
        b = pooling.pool(garbage, mask, np.array([1]), method)
        np.testing.assert_allclose(a, b, rtol=1e-6)


# ----------------------------------------------------------------------------- losses vs the reference


def test_contrastive_loss_matches_torch():
    rng = np.random.default_rng(2)
    b, g, d = 4, 3, 8
    q, p = rng.normal(size=(b, d)).astype(np.float32), rng.normal(size=(b * g, d)).astype(np.float32)
    scores = torch.from_numpy(q) @ torch.from_numpy(p).T / 0.05
    want = torch.nn.functional.cross_entropy(scores, torch.arange(b) * g).item()
    loss, acc = objective.contrastive_loss(q, p, 0.05)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(acc, (scores.argmax(-1) == torch.arange(b) * g).float().mean().item())


def torch_generative_loss(logits, tokens, loss_mask, loss_gen_type):
    """The reference: labels = ids with ignored positions at -100, shifted by one; mean or sum/sequences."""
    labels = torch.from_numpy(np.where(loss_mask, tokens, -100).astype(np.int64))
    logits = torch.from_numpy(np.asarray(logits, np.float32))
    shift_logits, shift_labels = logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
    if loss_gen_type == "mixed":
        return torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=-100).item()
    total = torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="sum")
    return (total / tokens.shape[0]).item()


@pytest.mark.parametrize("loss_gen_type", ["mixed", "token"])
def test_loss_fn_matches_reference_on_the_same_reps_and_logits(setup, loss_gen_type):
    c, state, graphdef, batch = setup
    c = tiny_config(loss_gen_type=loss_gen_type, loss_gen_factor=0.5)
    loss, metrics = loss_only(c, state, graphdef, batch)

    model = nnx.merge(graphdef, state.params)

    def reps(prefix):
        mask = np.asarray(batch.named()[f"{prefix}_mask"])
        hidden = model(batch.named()[f"{prefix}_tokens"], masks.make_attn_mask(mask, "bidirectional")).hidden
        r = numpy_pool(
            np.asarray(hidden, np.float64),
            mask,
            np.asarray(batch.named()[f"{prefix}_instruction_len"]),
            "mean",
        )
        return torch.from_numpy(r / np.linalg.norm(r, axis=-1, keepdims=True))

    q, p = reps("query"), reps("passage")
    g = c.data.train_group_size
    want_emb = torch.nn.functional.cross_entropy(q @ p.T / 0.02, torch.arange(q.shape[0]) * g).item()

    tokens = np.asarray(batch.named()["gen_tokens"])
    logits = model.logits(model(tokens, masks.make_attn_mask(batch.named()["gen_mask"], "causal")).hidden)
    want_gen = 0.5 * torch_generative_loss(
        logits, tokens, np.asarray(batch.named()["gen_loss_mask"]), loss_gen_type
    )

    np.testing.assert_allclose(metrics["loss_emb"], want_emb, rtol=2e-5)
    np.testing.assert_allclose(metrics["loss_gen"], want_gen, rtol=2e-5)
    np.testing.assert_allclose(loss, want_emb + want_gen, rtol=2e-5)
    assert metrics["loss_router"] == 0


def test_modes_select_the_losses(setup):
    _, state, graphdef, batch = setup
    c = tiny_config(loss_gen_factor=0.5)  # compiled already by the test above
    _, unified = loss_only(c, state, graphdef, batch)
    emb_batch = batch.replace(generative=None)
    loss, m = loss_only(tiny_config(mode="embedding", loss_gen_factor=0.5), state, graphdef, emb_batch)
    np.testing.assert_allclose(loss, unified["loss_emb"], rtol=1e-6)
    assert m["loss_gen"] == 0
    gen_batch = batch.replace(query=None, passage=None)
    loss, m = loss_only(tiny_config(mode="generative", loss_gen_factor=0.5), state, graphdef, gen_batch)
    np.testing.assert_allclose(loss, unified["loss_gen"], rtol=1e-6)
    assert m["loss_emb"] == 0
    _, causal = loss_only(tiny_config(mode="embedding", attn="cccc"), state, graphdef, emb_batch)
    assert abs(float(causal["loss_emb"]) - float(unified["loss_emb"])) > 1e-4  # attention differs


# ----------------------------------------------------------------------------- chunking, accumulation, 1/W


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    """Elementwise, with atol relative to each array's largest entry (fp32 summation order differs)."""
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol * max(np.abs(y).max(), 1e-30))


def test_chunked_embedding_and_accumulated_generative_passes_equal_one_pass(setup):
    c, state, graphdef, batch = setup
    ((loss, m), grads), temp = loss_and_grads(c, state, graphdef, batch)
    chunked = tiny_config(embedding_chunk_size=2, generative_accumulation_steps=2)
    ((loss_c, m_c), grads_c), temp_c = loss_and_grads(chunked, state, graphdef, batch)
    assert temp_c < temp, (temp_c, temp)  # peak scratch memory falls (benchmarks/chunk_memory.py: numbers)
    np.testing.assert_allclose(loss_c, loss, rtol=1e-6)
    np.testing.assert_allclose(m_c["loss_emb"], m["loss_emb"], rtol=1e-6)
    np.testing.assert_allclose(m_c["loss_gen"], m["loss_gen"], rtol=1e-6)
    assert_trees_close(grads_c, grads, rtol=1e-4, atol=1e-5)


def test_reference_world_size_scales_the_embedding_gradient_by_one_over_w():
    """Same loss value; gradient exact / W. Differentiated w.r.t. the projection only (a small backward)."""
    c = tiny_config(mode="embedding", projection_dim=8)
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1, "expert": 1})
    state = TrainSetup(c, mesh).create_state()
    graphdef, _ = abstract_model(resolve_model_config(c))
    batch = jax.tree.map(jnp.asarray, synthetic_batch(c, seed=2))
    reference = tiny_config(mode="embedding", projection_dim=8, reference_world_size=4)

    @jax.jit
    def both(projection):
        grad = jax.value_and_grad(lambda pr, o: objective.loss_fn((state.params, pr), graphdef, batch, o)[0])
        return grad(projection, _Frozen(c.objective)), grad(projection, _Frozen(reference.objective))

    (loss, grads), (loss_ref, grads_ref) = both(state.projection)
    np.testing.assert_allclose(loss_ref, loss, rtol=1e-7)
    assert_trees_close(grads_ref, jax.tree.map(lambda g: g / 4, grads), rtol=1e-6, atol=1e-7)


def test_the_models_sliding_window_reaches_both_passes(setup):
    """A config.json sliding_window is honoured by the training losses, not only by the model tests."""
    from grit_jax.model import ModelConfig, Transformer

    c, state, graphdef, batch = setup
    windowed = nnx.split(
        nnx.eval_shape(lambda: Transformer(ModelConfig.preset("tiny", sliding_window=4), rngs=nnx.Rngs(0)))
    )[0]
    _, with_window = loss_only(c, state, windowed, batch)
    _, without = loss_only(c, state, graphdef, batch)
    model = nnx.merge(windowed, state.params)
    tokens = np.asarray(batch.named()["gen_tokens"])
    logits = model.logits(
        model(tokens, masks.make_attn_mask(batch.named()["gen_mask"], "causal", sliding_window=4)).hidden
    )
    want = torch_generative_loss(logits, tokens, np.asarray(batch.named()["gen_loss_mask"]), "mixed")
    np.testing.assert_allclose(with_window["loss_gen"], want, rtol=2e-5)
    assert abs(float(with_window["loss_gen"]) - float(without["loss_gen"])) > 1e-4
    assert abs(float(with_window["loss_emb"]) - float(without["loss_emb"])) > 1e-4
