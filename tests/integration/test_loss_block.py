"""objective.gen_loss_block: the next-token loss over blocks of positions, each block's logits recomputed
in the backward pass, equals the whole loss (values and gradients, rtol 1e-5, float32) for padded and
packed rows, both loss types, micro-batches, blocks that divide the row and blocks that do not, tied
embeddings, LoRA, Mixtral and a 2x4 mesh; and its compiled gradient needs far less scratch memory."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from grit_jax import sharding
from grit_jax.batch_layout import packing_layout
from grit_jax.data.packing import pack_padded_batch
from grit_jax.errors import UsageError
from grit_jax.model import ModelConfig, Transformer, abstract_model
from grit_jax.model.batch import Batch, PaddedChat
from grit_jax.run_config import base_config, validate_config
from grit_jax.train import objective, step
from grit_jax.train.state import TrainSetup

ONE, MESH_2X4 = dict(data=1, fsdp=1, tensor=1, expert=1), dict(data=2, fsdp=4, tensor=1, expert=1)
ROWS, LENGTH = 16, 24


def config(packing, model=None, **objective_fields):
    c = base_config()
    c.data.update(generative_batch_size=ROWS, generative_max_len=LENGTH, packing=packing)
    c.objective.update(mode="generative", **objective_fields)
    c.model.update(model or {})
    return c


def padded_chat(seed, vocab=512, rows=ROWS, length=LENGTH):
    """Right-padded chats of 3..14 tokens (several fit a packed row of 24), targets after a 2-token prompt."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 15, rows)
    mask = np.arange(length)[None, :] < lengths[:, None]
    tokens = rng.integers(3, vocab, (rows, length)).astype(np.int32)
    return PaddedChat(tokens=tokens, mask=mask, loss_mask=mask & (np.arange(length)[None, :] >= 2))


def loss_and_grads(c, mesh_axes, batch, state):
    setup = TrainSetup(c, sharding.make_mesh(mesh_axes))
    placed = jax.device_put(state, setup.shardings)
    fn = step.make_loss_and_grad(setup)
    return jax.device_get(fn(placed.trainable, step.global_batch(setup, batch), placed.frozen))


def assert_same(got, want):
    (loss, metrics), grads = got
    (want_loss, want_metrics), want_grads = want
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    for name in want_metrics:
        np.testing.assert_allclose(metrics[name], want_metrics[name], rtol=1e-5, atol=1e-7, err_msg=name)
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * max(np.abs(w).max(), 1e-30))


MICRO = dict(generative_accumulation_steps=2)
CASES = {  # (packing, mesh, objective fields, model fields)
    "padded, mixed, block 5 (does not divide 24)": (False, ONE, dict(gen_loss_block=5), None),
    "padded, token, micro-batches, block 8": (
        False,
        ONE,
        dict(loss_gen_type="token", gen_loss_block=8, **MICRO),
        None,
    ),
    "packed, mixed, micro-batches, block 7": (True, ONE, dict(gen_loss_block=7, **MICRO), None),
    "packed, token, block 8, 2x4 mesh": (True, MESH_2X4, dict(loss_gen_type="token", gen_loss_block=8), None),
    "packed, Mixtral, token, micro-batches, block 5": (
        True,
        ONE,
        dict(loss_gen_type="token", gen_loss_block=5, **MICRO),
        dict(preset="tiny_moe"),
    ),
    "padded, LoRA, block 16": (False, ONE, dict(gen_loss_block=16), dict(lora=dict(rank=4))),
}


@pytest.mark.parametrize("case", list(CASES))
def test_blocked_loss_equals_whole_loss(case):
    packing, mesh_axes, fields, model = CASES[case]
    whole, blocked = (
        config(packing, model, **{**fields, "gen_loss_block": 0}),
        config(packing, model, **fields),
    )
    batch = Batch(generative=padded_chat(seed=len(case)))
    if packing:
        layout = packing_layout(whole, sharding.make_mesh(mesh_axes).size, moe=bool(model))
        batch = pack_padded_batch(batch, layout)
        positions = np.asarray(batch.generative.positions)
        assert (positions[:, fields["gen_loss_block"]] > 0).any()  # a sequence crosses a block boundary
    state = TrainSetup(whole, sharding.make_mesh(ONE)).create_state()
    want = loss_and_grads(whole, mesh_axes, batch, state)
    assert model is None or "lora" in model or want[0][1]["loss_router"] > 0
    assert_same(loss_and_grads(blocked, mesh_axes, batch, state), want)


def generative_loss_fn(graphdef, chat, block):
    fields = dict(loss_gen_type="mixed", loss_gen_factor=1.0, router_aux_loss_coef=0.0)
    obj = types.SimpleNamespace(gen_loss_block=block, **fields)
    return lambda params: objective.generative_loss(graphdef, params, chat, obj, steps=1)[0]


def test_tied_embeddings_and_block_sizes():
    """A tied lm head (the embedding's gradient gathers both uses); blocks of 1, of a size that does not
    divide 12, and larger than the row (the shorter rows of length buckets). One compile."""
    model = Transformer(ModelConfig.preset("tiny", tie_word_embeddings=True), rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    chat = jax.tree.map(jnp.asarray, padded_chat(seed=3, rows=4, length=12))
    blocks = (0, 1, 5, 13)
    every = jax.jit(lambda p: [jax.value_and_grad(generative_loss_fn(graphdef, chat, b))(p) for b in blocks])
    (want_loss, want), *others = every(params)
    for block, (loss, grads) in zip(blocks[1:], others, strict=True):
        np.testing.assert_allclose(loss, want_loss, rtol=1e-5, err_msg=str(block))
        for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * np.abs(w).max(), err_msg=str(block))


def test_blocked_gradient_needs_far_less_scratch_memory():
    """Vocab 16384, hidden 32, 4 rows of 512: the whole float32 logits are 32 MiB (and their gradient as
    much); blocks of 64 positions hold 4 MiB at a time. Compiled only (abstract arrays); 2-core CPU: 299 MB of
    scratch whole, 65 MB in blocks."""
    cfg = ModelConfig.preset(
        "tiny",
        vocab_size=16384,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
    )
    graphdef, abstract = abstract_model(cfg)
    rows, length = 4, 512
    chat = PaddedChat(
        tokens=jax.ShapeDtypeStruct((rows, length), jnp.int32),
        mask=jax.ShapeDtypeStruct((rows, length), jnp.bool_),
        loss_mask=jax.ShapeDtypeStruct((rows, length), jnp.bool_),
    )

    def temp_bytes(block):
        def grad(params, chat):
            return jax.grad(generative_loss_fn(graphdef, chat, block))(params)

        return jax.jit(grad).lower(abstract, chat).compile().memory_analysis().temp_size_in_bytes

    whole, blocked = temp_bytes(0), temp_bytes(64)
    logits = rows * length * cfg.vocab_size * 4
    assert whole >= logits, (whole, logits)  # the whole logits are live at once
    assert blocked < whole / 4, (blocked, whole)


def test_negative_block_is_refused_by_name():
    c = config(False, gen_loss_block=-1)
    with pytest.raises(UsageError, match=r"^objective\.gen_loss_block=-1: expected an integer >= 0$"):
        validate_config(c, {"data": 1})
