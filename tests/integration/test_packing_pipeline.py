"""data.packing in the data pipeline: every packed batch holds exactly the sequences of the padded batch of
the same step (in the same order for embeddings, through their slots), in fewer positions, with a shape
of the static grid; two hosts' rows together are exactly one host's batch (the whole batch is packed
alike on every host, each host reading the records of its rows); a restored iterator continues exactly."""

import json

import numpy as np
import pytest

from grit_jax import sharding
from grit_jax.batch_layout import MAX_SLOTS, packing_layout
from grit_jax.data import pipeline, sources
from grit_jax.data.pipeline import planned_counts
from grit_jax.errors import UsageError
from grit_jax.model.batch import Batch, PackedText
from grit_jax.run_config import base_config
from grit_jax.train import flops, step
from grit_jax.train.state import TrainSetup
from tests.grit_fixtures import make_tokenizer, tokenizer_texts

LIMITS = dict(query_max_len=32, passage_max_len=64, generative_max_len=128)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("packing")
    rng = np.random.default_rng(0)
    words = sorted({w for t in tokenizer_texts() for w in t.split() if w.isalpha()})[:200]

    def text(low, high):
        return " ".join(rng.choice(words, rng.integers(low, high + 1)))

    records = {
        "pairs": [
            {"query": text(1, 3), "pos": [text(1, 8)], "neg": [text(1, 8) for _ in range(3)]}
            for _ in range(48)
        ],
        "chat": [{"text": [text(1, 2), text(1, 8)]} for _ in range(64)],
    }
    for name, rows in records.items():
        with open(root / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    out = str(root / "data")
    sources.prepare(
        out,
        make_tokenizer(root / "tok"),
        embedding=[str(root / "pairs.jsonl")],
        generative=[str(root / "chat.jsonl")],
        **LIMITS,
    )
    return out


def data_config(data_dir, packing=True):
    c = base_config()
    c.data.update(
        data_dir=data_dir, embedding_batch_size=16, generative_batch_size=16, num_threads=1, packing=packing
    )
    c.data.update(LIMITS)
    c.objective.update(embedding_chunk_size=8, generative_accumulation_steps=2)
    return c


def steps(iterator, count):
    return [next(iterator).named() for _ in range(count)]


def packed_steps(c, count, data_parallel=2, host=0, hosts=1):
    layout = packing_layout(c, data_parallel)
    iterator = pipeline.make_train_iterator(c.data, layout=layout, process_index=host, process_count=hosts)
    return steps(iterator, count)


def sequences(batch, prefix, order_by_slot):
    """The sequences of a packed field: by slot (embeddings), else (tokens, loss mask) sorted."""
    tokens, segments = batch[f"{prefix}_tokens"], batch[f"{prefix}_segments"]
    found = []
    for r in range(len(tokens)):
        for s in range(1, segments[r].max() + 1):
            where = segments[r] == s
            assert np.all(batch[f"{prefix}_positions"][r][where] == np.arange(where.sum()))
            extra = tuple(batch["gen_loss_mask"][r][where]) if prefix == "gen" else ()
            found.append(((r * min(tokens.shape[1], MAX_SLOTS) + s - 1), tuple(tokens[r][where]), extra))
    if order_by_slot:
        by_slot = {slot: t for slot, t, _ in found}
        return [by_slot[int(slot)] for slot in batch[f"{prefix}_slot"]]
    return sorted((t, e) for _, t, e in found)


def padded_sequences(batch, prefix, order):
    mask = batch[f"{prefix}_mask"]
    rows = [tuple(batch[f"{prefix}_tokens"][i][mask[i]]) for i in range(len(mask))]
    if order:
        return rows
    return sorted((t, tuple(batch["gen_loss_mask"][i][mask[i]])) for i, t in enumerate(rows))


def test_packed_batches_hold_the_padded_sequences_in_fewer_rows(data_dir):
    padded = steps(pipeline.make_train_iterator(data_config(data_dir, False).data), 4)
    packed = packed_steps(data_config(data_dir), 4)
    layout = packing_layout(data_config(data_dir), 2)
    for full, pack in zip(padded, packed):
        for field, f in layout.items():
            rows, row_length = pack[f"{f.prefix}_tokens"].shape
            assert (rows, row_length) in f.shape_grid()
            assert rows * row_length < f.sequences * f.length, field
            order = field != "generative"
            assert sequences(pack, f.prefix, order) == padded_sequences(full, f.prefix, order), field
        for name in ("query_instruction_len", "passage_instruction_len"):
            assert np.array_equal(pack[name], full[name])


def test_two_hosts_rows_are_one_hosts_batch_and_a_restored_iterator_continues(data_dir):
    c = data_config(data_dir)
    one = packed_steps(c, 3)
    halves = [packed_steps(c, 3, host=p, hosts=2) for p in (0, 1)]
    for whole, first, second in zip(one, *halves):
        assert set(first) == set(second) == set(whole)
        for k, v in whole.items():
            np.testing.assert_array_equal(np.concatenate([first[k], second[k]]), v, err_msg=k)
    layout = packing_layout(c, 2)
    iterator = pipeline.make_train_iterator(c.data, layout=layout)
    whole = steps(iterator, 5)
    restored = pipeline.make_train_iterator(c.data, layout=layout)
    restored.set_state({**iterator.get_state(), "next_step": 2})
    for batch in whole[2:]:
        again = next(restored).named()
        assert all(np.array_equal(v, again[k]) for k, v in batch.items())


def test_packing_config_checks():
    c = data_config("")
    c.data.length_buckets.passage = (32,)
    with pytest.raises(UsageError, match="data.packing packs rows of"):
        TrainSetup(c, sharding.make_mesh(dict(data=1)))


def test_planned_counts_are_what_the_pipeline_packs(data_dir):
    """grit-aot and benchmarks/packing.py count real tokens and packed positions from the length index
    alone: the same as the packed batches hold."""
    c = data_config(data_dir)
    layout = packing_layout(c, 2)
    planned = planned_counts(c.data, layout, 3)
    batches = packed_steps(c, 3)
    for field, f in layout.items():
        real = sum(int((b[f"{f.prefix}_segments"] > 0).sum()) for b in batches)
        positions = sum(b[f"{f.prefix}_segments"].size for b in batches)
        assert planned[field][:2] == [real, positions], field


def test_mfu_counts_real_tokens():
    """A packed step's model FLOPs count its real tokens and the pairs within each sequence: rows that
    each hold one full-length sequence cost what the padded step costs (bidirectional embedding)."""
    c = data_config("")
    c.objective.update(mode="embedding", embedding_chunk_size=0)
    setup = TrainSetup(c, sharding.make_mesh(dict(data=1)))
    batch = {}
    for name, f in setup.layout.items():
        segments = np.ones((f.sequences, f.length), np.int32)
        positions = np.broadcast_to(np.arange(f.length), (f.sequences, f.length))
        batch[name] = PackedText(segments, segments, positions, np.zeros(f.sequences), np.zeros(f.sequences))
    counts = step.step_counts(setup, Batch(**batch))
    full = flops.step_flops(setup.model_config, counts)
    np.testing.assert_allclose(full, flops.train_step_flops(c, setup.model_config), rtol=1e-6)
    for field in batch.values():  # half of each row: a quarter of the attention, half of the rest
        field.segments[:, field.segments.shape[1] // 2 :] = 0
    half = flops.step_flops(setup.model_config, step.step_counts(setup, Batch(**batch)))
    assert full / 2 > half > full / 4
