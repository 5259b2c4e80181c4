"""Length buckets (data.length_buckets): each global batch is padded to the smallest bucket that holds its
longest row, every host picks the same one, and the losses and updates equal those of max_len padding."""

import json
import os
import shutil

import numpy as np
import pytest

from grit_jax import sharding
from grit_jax.batch_layout import padded_layout
from grit_jax.data import heldout_sets, lengths, pipeline, sources
from grit_jax.data.tokenizer import Tokenizer
from grit_jax.errors import UsageError
from grit_jax.model import batch as batch_lib
from grit_jax.run_config import bucket_length, length_buckets, num_batch_shapes
from grit_jax.train import flops, step
from grit_jax.train.heldout import Evaluator
from grit_jax.train.state import TrainSetup
from tests.bucket_data import BUCKETS, LIMITS, LIMITS_BY_FIELD, data_config, prepare_mixed, take_steps


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return prepare_mixed(tmp_path_factory.mktemp("mixed"))


def test_bucket_choice_and_config_checks():
    config = data_config("", BUCKETS)
    assert length_buckets(config.data, "passage") == (32, 64)
    config.data.length_buckets.passage = (64, 16, 32, 16)  # any order; max_len is always the last
    assert length_buckets(config.data, "passage") == (16, 32, 64)
    assert length_buckets(config.data, "query") == (16, 32)
    assert [bucket_length((16, 32, 64), n) for n in (0, 16, 17, 64, 300)] == [16, 16, 32, 64, 64]
    assert num_batch_shapes(config) == 2 * 3 * 2 and num_batch_shapes(data_config("")) == 1
    config.objective.mode = "embedding"
    assert num_batch_shapes(config) == 2 * 3
    mesh = {"data": 1}
    for field, value, message in (
        ("passage", (16, 128), r"data.length_buckets.passage=\(16, 128\): 128 is not a length in 1..data"),
        ("query", (0,), r"data.length_buckets.query=\(0,\): 0 is not"),
        ("generative", ("16",), r"'16' is not a length"),
    ):
        with pytest.raises(UsageError, match=message):
            bad = data_config("")
            bad.data.length_buckets[field] = value
            TrainSetup(bad, sharding.make_mesh(mesh))
    with pytest.raises(
        UsageError, match=r"batch\['passage_tokens'\] has length 40, not one of \(16, 32, 64\)"
    ):
        passage = batch_lib.PaddedText(np.zeros((4, 40)), np.zeros((4, 40), bool), np.zeros(4))
        layout = {"passage": padded_layout(config.data, "embedding")["passage"]}
        batch_lib.check(layout, batch_lib.Batch(passage=passage))


def test_aot_takes_the_largest_shapes_and_flops_follow_the_bucket():
    config = data_config("", BUCKETS)
    setup = TrainSetup(config, sharding.make_mesh({"data": 1}))
    largest = {k: v.shape for k, v in step.abstract_batch(setup).named().items()}
    assert largest["query_tokens"] == (8, 32) and largest["passage_tokens"] == (16, 64)
    assert largest["gen_tokens"] == (8, 64)
    assert step.abstract_batch(setup, {"passage": 32}).named()["passage_mask"].shape == (16, 32)
    full = flops.train_step_flops(config, setup.model_config)
    assert flops.train_step_flops(config, setup.model_config, LIMITS_BY_FIELD) == full
    assert flops.train_step_flops(config, setup.model_config, {"passage": 32, "generative": 32}) < full


def test_each_batch_takes_the_smallest_bucket_of_its_longest_row(data_dir):
    plain = take_steps(data_config(data_dir), 12)
    bucketed = take_steps(data_config(data_dir, BUCKETS), 12)
    seen = set()
    for full, cut in zip(plain, bucketed):
        for field, names in (
            ("query", ("query_tokens", "query_mask")),
            ("passage", ("passage_tokens", "passage_mask")),
            ("generative", ("gen_tokens", "gen_mask", "gen_loss_mask")),
        ):
            width = cut[names[0]].shape[1]
            longest = int(full[names[1]].sum(1).max())
            assert width == bucket_length(length_buckets(data_config(data_dir, BUCKETS).data, field), longest)
            for name in names:  # the same rows, only less padding
                assert np.array_equal(cut[name], full[name][:, :width]), name
            seen.add((field, width))
        for name in ("query_instruction_len", "passage_instruction_len"):
            assert np.array_equal(cut[name], full[name])
    # the short source's batches use short buckets, the long source's the full length (the test can fail)
    assert seen == {
        ("query", 16),
        ("query", 32),
        ("passage", 32),
        ("passage", 64),
        ("generative", 32),
        ("generative", 64),
    }


def test_the_bucket_of_sampled_negatives_is_exact(data_dir):
    """Rows whose longest passage could pass the positives' bucket are sampled: the bucket is the one of
    the longest passage actually in the batch, for small batches whose negatives decide it."""
    buckets = {"passage": (8, 12, 16, 20, 24, 28)}
    config = data_config(data_dir, buckets, embedding_batch_size=2, train_group_size=3)
    plain = take_steps(data_config(data_dir, embedding_batch_size=2, train_group_size=3), 24)
    host = pipeline.make_train_iterator(config.data, mode="embedding").batches
    decided_by_negatives = 0
    for step_number, full in enumerate(plain):
        plan = host._plan(step_number // host.epoch_steps)[step_number % host.epoch_steps]
        longest = int(full["passage_mask"].sum(1).max())
        expected = bucket_length((*buckets["passage"], 64), longest)
        assert host.former.embedding_lengths(host, step_number, plan)[1] == expected
        positives = int(full["passage_mask"][::3].sum(1).max())
        decided_by_negatives += bucket_length(buckets["passage"], positives) < longest
    assert decided_by_negatives >= 3, "no batch whose negatives set the bucket: the test shows nothing"


def test_hosts_agree_on_the_bucket_and_a_restored_iterator_continues(data_dir):
    config = data_config(data_dir, BUCKETS)
    whole = take_steps(config, 8)
    halves = [take_steps(config, 8, process_index=p, process_count=2) for p in (0, 1)]
    for batch, first, second in zip(whole, *halves):
        for name in batch:  # same lengths on both hosts, and together they are the global batch
            assert np.array_equal(np.concatenate([first[name], second[name]]), batch[name]), name
    iterator = pipeline.make_train_iterator(config.data)
    [next(iterator) for _ in range(3)]
    state = iterator.get_state()
    restored = pipeline.make_train_iterator(config.data)
    restored.set_state(state)
    for batch in whole[3:]:
        again = next(restored).named()
        assert all(np.array_equal(v, again[k]) for k, v in batch.items())


def test_length_index_is_written_at_prepare_and_rebuilt_for_older_data(data_dir):
    manifest = sources.read_manifest(data_dir)
    for kind in ("embedding", "generative"):
        for entry in manifest["train"][kind]:
            source = pipeline.tfds_io.open_source(os.path.join(data_dir, entry["dir"]))
            stored = lengths.load_lengths(kind, data_dir, entry, source)
            rebuilt = lengths.load_lengths(kind, data_dir, {**entry, "lengths": ""}, source)
            assert stored.keys() == rebuilt.keys()
            assert all(np.array_equal(stored[k], rebuilt[k]) for k in stored)
            assert os.path.isfile(os.path.join(data_dir, entry["lengths"]))
    record = source[5]  # the chat source's
    assert int(stored["tokens"][5]) == len(record["tokens"])


def test_eval_batches_are_bucketed_and_score_alike(data_dir):
    plain = heldout_sets.eval_generative_batches(data_config(data_dir).data, batch_size=2)
    cut = heldout_sets.eval_generative_batches(data_config(data_dir, BUCKETS).data, batch_size=2)
    assert {b["gen_tokens"].shape[1] for b in plain} == {64}
    assert {b["gen_tokens"].shape[1] for b in cut} == {32, 64}
    for full, short in zip(plain, cut):
        width = short["gen_tokens"].shape[1]
        assert all(np.array_equal(short[k], full[k][:, :width]) for k in full)
    configs = [data_config(data_dir), data_config(data_dir, BUCKETS)]
    setup = TrainSetup(configs[0], sharding.make_mesh({"data": 8}))
    state, pad_id = setup.create_state(), pipeline.load_tokenizer(configs[0].data).pad_id
    evaluators = [Evaluator(c, setup.mesh, setup.graphdef, pad_id) for c in configs]
    scores = [evaluate(state) for evaluate in evaluators]
    assert scores[0].keys() == {"eval_mrr@10", "eval_recall@1", "eval_loss_gen"}
    for name, value in scores[0].items():
        np.testing.assert_allclose(scores[1][name], value, rtol=1e-5, err_msg=name)
    # per held-out item (paper_claims' paired intervals): one reciprocal rank a query, one loss a chat
    items = [e.items for e in evaluators]
    assert len(items[0]["reciprocal_rank"]) == len(evaluators[0].retrieval["query_tokens"])
    assert len(items[0]["chat_loss"]) == sum(int(b["gen_loss_mask"].any(1).sum()) for b in plain)
    np.testing.assert_allclose(np.mean(items[0]["reciprocal_rank"]), scores[0]["eval_mrr@10"], rtol=1e-6)
    np.testing.assert_allclose(items[1]["chat_loss"], items[0]["chat_loss"], rtol=1e-5)


def test_preparing_older_data_again_adds_its_length_index(data_dir, tmp_path):
    """Data prepared before the length index existed gets one from `grit-data prepare` (sources reused)."""
    copy = str(tmp_path / "data")
    shutil.copytree(data_dir, copy)
    manifest = sources.read_manifest(copy)
    for entry in manifest["train"]["embedding"] + manifest["train"]["generative"]:
        os.remove(os.path.join(copy, entry.pop("lengths")))
    with open(os.path.join(copy, sources.MANIFEST), "w") as f:
        json.dump(manifest, f)
    root = os.path.dirname(data_dir)
    again = sources.prepare(
        copy,
        Tokenizer(os.path.join(copy, "tokenizer.model")),
        embedding=[os.path.join(root, "short.jsonl"), os.path.join(root, "long.jsonl")],
        generative=[os.path.join(root, "chat.jsonl")],
        **LIMITS,
    )
    for kind in ("embedding", "generative"):
        for old, new in zip(sources.read_manifest(data_dir)["train"][kind], again["train"][kind]):
            assert new["hash"] == old["hash"] and new["lengths"] == old["lengths"]
            with (
                np.load(os.path.join(copy, new["lengths"])) as built,
                np.load(os.path.join(data_dir, old["lengths"])) as first,
            ):
                assert all(np.array_equal(built[k], first[k]) for k in first.files)
