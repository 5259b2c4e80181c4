"""data.packing: the packed form of a batch gives the losses and gradients of the padded form (rtol 1e-5),
on 1 device and on a 2x4 mesh, for embedding, generative and unified modes, with GradCache chunks and
accumulation micro-batches; pooling per segment equals pooling each sequence alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grit_jax import sharding
from grit_jax.batch_layout import packing_layout
from grit_jax.data.packing import best_fit, pack_padded_batch
from grit_jax.model import pooling
from grit_jax.model.batch import Batch
from grit_jax.run_config import base_config
from grit_jax.train import step
from grit_jax.train.state import TrainSetup

ONE, MESH_2X4 = dict(data=1, fsdp=1, tensor=1, expert=1), dict(data=2, fsdp=4, tensor=1, expert=1)
SHORT = {"query": 8, "passage": 12, "gen": 12}  # the longest sequence of each field (rows are 16 and 24)


def config(mode, packing, **objective):
    c = base_config()
    c.data.update(
        embedding_batch_size=32,
        generative_batch_size=32,
        query_max_len=16,
        passage_max_len=24,
        generative_max_len=24,
        train_group_size=2,
        packing=packing,
    )
    c.objective.update(mode=mode, **objective)
    return c


def padded_batch(c, seed=0):
    """A right-padded batch of short sequences (2..SHORT tokens), 1-2 instruction tokens."""
    rng = np.random.default_rng(seed)
    d, out = c.data, {}
    fields = {
        "query": (d.embedding_batch_size, d.query_max_len),
        "passage": (d.embedding_batch_size * d.train_group_size, d.passage_max_len),
        "gen": (d.generative_batch_size, d.generative_max_len),
    }
    for prefix, (n, length) in fields.items():
        lengths = rng.integers(3, SHORT[prefix] + 1, n)
        out[f"{prefix}_tokens"] = rng.integers(3, 250, (n, length)).astype(np.int32)
        out[f"{prefix}_mask"] = np.arange(length)[None, :] < lengths[:, None]
        if prefix != "gen":
            out[f"{prefix}_instruction_len"] = rng.integers(1, 3, n).astype(np.int32)
    out["gen_loss_mask"] = out["gen_mask"] & (np.arange(d.generative_max_len)[None, :] >= 2)
    keep = {"embedding": ("query", "passage"), "generative": ("gen",), "unified": ("query", "passage", "gen")}
    return Batch.from_named({k: v for k, v in out.items() if k.split("_")[0] in keep[c.objective.mode]})


def loss_and_grads(c, mesh_axes, batch, state):
    setup = TrainSetup(c, sharding.make_mesh(mesh_axes))
    placed = jax.device_put(state, setup.shardings)
    out = step.make_loss_and_grad(setup)(placed.trainable, step.global_batch(setup, batch))
    return jax.device_get(out)


def assert_same(got, want):
    (loss, metrics), grads = got
    (want_loss, want_metrics), want_grads = want
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    for name in want_metrics:
        np.testing.assert_allclose(metrics[name], want_metrics[name], rtol=1e-5, atol=1e-7, err_msg=name)
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * max(np.abs(w).max(), 1e-30))


LASTTOKEN = dict(pooling="lasttoken", projection_dim=8)
CHUNKED = dict(embedding_chunk_size=16, generative_accumulation_steps=2)
CASES = {  # (mode, mesh, objective, model preset)
    "unified, chunks and micro-batches, 1 device": ("unified", ONE, CHUNKED, "tiny"),
    "unified, chunks and micro-batches, 2x4": ("unified", MESH_2X4, CHUNKED, "tiny"),
    "embedding, lasttoken, projection": ("embedding", ONE, LASTTOKEN, "tiny"),
    # Mixtral: the load-balancing loss of each micro-batch sees the same real tokens packed
    "generative, Mixtral, token loss, micro-batches": (
        "generative",
        ONE,
        dict(loss_gen_type="token", generative_accumulation_steps=2),
        "tiny_moe",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_packed_equals_padded(case):
    mode, mesh_axes, objective, preset = CASES[case]
    padded_config, packed_config = config(mode, False, **objective), config(mode, True, **objective)
    padded_config.model.preset = packed_config.model.preset = preset
    batch = padded_batch(padded_config, seed=len(case))
    layout = packing_layout(packed_config, sharding.make_mesh(mesh_axes).size, moe=preset == "tiny_moe")
    packed = pack_padded_batch(batch, layout)
    # fewer rows than sequences: padding really left out
    for f in layout.values():
        assert packed.named()[f"{f.prefix}_tokens"].shape[0] < f.sequences, f.field
    state = TrainSetup(padded_config, sharding.make_mesh(ONE)).create_state()
    want = loss_and_grads(padded_config, mesh_axes, batch, state)
    assert preset != "tiny_moe" or want[0][1]["loss_router"] > 0
    assert_same(loss_and_grads(packed_config, mesh_axes, packed, state), want)


@pytest.mark.parametrize("method", ["mean", "weightedmean", "lasttoken", "cls"])
def test_pooling_per_segment_equals_pooling_alone(method):
    rng = np.random.default_rng(0)
    lengths, inst = [5, 3, 7, 2, 6], [2, 1, 3, 0, 1]
    rows = best_fit(lengths, 12, max_segments=3)
    hidden = rng.normal(size=(len(rows), 12, 4)).astype(np.float32)
    segments = np.zeros((len(rows), 12), np.int32)
    positions = np.zeros((len(rows), 12), np.int32)
    slot_inst = np.zeros((len(rows), 3), np.int32)
    where = {}
    for r, members in enumerate(rows):
        start = 0
        for k, i in enumerate(members):
            segments[r, start : start + lengths[i]] = k + 1
            positions[r, start : start + lengths[i]] = np.arange(lengths[i])
            slot_inst[r, k] = inst[i]
            where[i] = (r, k, start)
            start += lengths[i]
    packed = np.asarray(
        pooling.pool_segments(jnp.asarray(hidden), segments, positions, slot_inst, method=method)
    )
    for i, n in enumerate(lengths):
        r, k, start = where[i]
        alone = hidden[r : r + 1, start : start + n]
        want = pooling.pool(jnp.asarray(alone), np.ones((1, n), bool), np.asarray([inst[i]]), method)
        np.testing.assert_allclose(packed[r, k], np.asarray(want)[0], rtol=1e-6, atol=1e-7)


def test_best_fit_fills_rows_and_keeps_every_sequence():
    lengths = [7, 3, 5, 2, 8, 1, 4]
    rows = best_fit(lengths, 10)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 10 for row in rows)
    assert len(rows) == 3  # 30 tokens in rows of 10
    assert all(len(row) <= 2 for row in best_fit(lengths, 10, max_segments=2))
