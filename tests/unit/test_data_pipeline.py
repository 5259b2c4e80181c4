"""The grain pipeline on the stdlib demo corpus: contract, sampling rules, determinism, resume, hosts."""

import itertools
import json

import numpy as np
import pytest

from grit_jax.data import demo, heldout_sets, pipeline, sources, tfds_io
from grit_jax.errors import DataError, UsageError
from grit_jax.run_config import base_config


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    out = demo.prepare_demo_data(str(tmp_path_factory.mktemp("demo")), vocab_size=512)
    cfg = base_config().data
    cfg.update(
        data_dir=out["data_dir"],
        embedding_batch_size=8,
        generative_batch_size=4,
        query_max_len=64,
        passage_max_len=128,
        generative_max_len=128,
        train_group_size=3,
        num_threads=2,
        prefetch_buffer_size=2,
    )
    return cfg


def _take(iterator, n):
    return [next(iterator).named() for _ in range(n)]


def _equal(a, b):
    return all(a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a) for a, b in zip(a, b))


def test_batch_contract(config):
    batch = next(pipeline.make_train_iterator(config)).named()
    B, G, Bg = 8, 3, 4
    expected = {
        "query_tokens": (np.int32, (B, 64)),
        "query_mask": (bool, (B, 64)),
        "query_instruction_len": (np.int32, (B,)),
        "passage_tokens": (np.int32, (B * G, 128)),
        "passage_mask": (bool, (B * G, 128)),
        "passage_instruction_len": (np.int32, (B * G,)),
        "gen_tokens": (np.int32, (Bg, 128)),
        "gen_mask": (bool, (Bg, 128)),
        "gen_loss_mask": (bool, (Bg, 128)),
    }
    assert {k: (v.dtype, v.shape) for k, v in batch.items()} == {
        k: (np.dtype(d), s) for k, (d, s) in expected.items()
    }
    tok = pipeline.load_tokenizer(config)
    for tokens, mask, n in (
        (batch["query_tokens"], batch["query_mask"], batch["query_instruction_len"]),
        (batch["passage_tokens"], batch["passage_mask"], batch["passage_instruction_len"]),
    ):
        assert (tokens[:, 0] == tok.bos_id).all() and mask[:, 0].all()
        lengths = mask.sum(1)
        assert (mask == (np.arange(mask.shape[1]) < lengths[:, None])).all()  # padding on the right
        assert (n < lengths).all() and (tokens[~mask] == tok.pad_id).all()
        for row, k in zip(tokens, n):
            assert tok.decode(row[:k]).endswith("<|embed|>\n")
    assert not batch["gen_loss_mask"][:, 0].any() and not (batch["gen_loss_mask"] & ~batch["gen_mask"]).any()
    for row, target in zip(batch["gen_tokens"], batch["gen_loss_mask"]):
        assert "<|user|>" not in tok.decode(row[target])


def test_positive_first_and_negatives_from_the_query_record(config):
    cfg = config.copy_and_resolve_references()
    cfg.update(shuffle=False, train_group_size=4)
    batch = next(pipeline.make_train_iterator(cfg, mode="embedding")).named()
    manifest = sources.read_manifest(cfg.data_dir)
    source = tfds_io.open_source(f"{cfg.data_dir}/{manifest['train']['embedding'][0]['dir']}")
    for i in range(8):  # unshuffled: query i is record i of the first source
        record = source[i]
        passages = np.split(record["passages"], np.cumsum(record["passage_lens"])[:-1])
        rows = [
            list(r[m])
            for r, m in zip(
                batch["passage_tokens"][i * 4 : i * 4 + 4], batch["passage_mask"][i * 4 : i * 4 + 4]
            )
        ]
        assert rows[0] == list(passages[0][:128])
        negatives = [list(p[:128]) for p in passages[1:]]
        assert all(r in negatives for r in rows[1:])
        assert sorted(map(str, rows[1:])) == sorted(map(str, negatives))  # 3 of 3: each exactly once


def test_negative_sampling_repeats_short_lists():
    rng = np.random.default_rng(0)
    assert (
        sorted(pipeline.sample_negatives(5, 3, rng)) != []
        and len(set(pipeline.sample_negatives(5, 3, rng))) == 3
    )
    drawn = pipeline.sample_negatives(2, 5, rng)  # [0,1] repeated 3 times, 5 drawn without replacement
    assert len(drawn) == 5 and set(drawn) <= {0, 1} and max(np.bincount(drawn)) <= 3


def test_epoch_plan_single_source_batches():
    plan = pipeline.epoch_plan([21, 13, 5], 4, seed=1, epoch=0)
    assert plan.shape == (pipeline.steps_per_epoch([21, 13, 5], 4), 4, 2) == (9, 4, 2)
    mixed = [b for b in plan if len(set(b[:, 0])) > 1]
    assert len(mixed) <= 2  # tails 1 + 1 + 5 = 7 pooled -> one mixed batch, the rest dropped
    pairs = {tuple(p) for p in plan.reshape(-1, 2)}
    assert len(pairs) == 36  # no example twice in an epoch
    assert not np.array_equal(plan, pipeline.epoch_plan([21, 13, 5], 4, seed=1, epoch=1))


@pytest.mark.parametrize("seed", range(5))
def test_leftover_tails_are_shuffled_as_whole_blocks(seed):
    """The reference permutes the order of the per-source incomplete tails, each kept in one piece, then
    cuts mixed batches: some order of the mixed batches puts every source's tail in one contiguous run."""
    sizes, batch = [7, 3, 6, 5, 2, 9], 4  # 5 full batches; tails 3+3+2+1+2+1 = 12 -> 3 mixed batches
    plan = pipeline.epoch_plan(sizes, batch, seed=seed, epoch=0)
    mixed = [b for b in plan if len(set(b[:, 0])) > 1]
    assert len(plan) == pipeline.steps_per_epoch(sizes, batch) == 8 and len(mixed) == 3

    def contiguous(sources):
        starts = [s for k, s in enumerate(sources) if k == 0 or s != sources[k - 1]]
        return len(starts) == len(set(starts))

    orders = itertools.permutations(mixed)
    assert any(contiguous(list(np.concatenate(order)[:, 0])) for order in orders)


def test_demo_batches_come_from_one_source(config):
    it = pipeline.make_train_iterator(config, mode="embedding")
    sizes = it.batches.opened["embedding"].sizes
    plan = it.batches._plan(0)
    assert sum(len(set(b[:, 0])) > 1 for b in plan) <= sum(s % 8 for s in sizes) // 8


def test_unique_indices_cover_the_generative_set(config):
    it = pipeline.make_train_iterator(config, mode="generative")
    total = int(it.batches.gen_offsets[-1])
    steps = total // 4
    seen = [it.batches.generative_index(s, r) for s in range(steps) for r in range(4)]
    assert len(set(seen)) == len(seen) == steps * 4


def test_two_runs_identical_and_seed_matters(config):
    a = _take(pipeline.make_train_iterator(config), 3)
    b = _take(pipeline.make_train_iterator(config), 3)
    assert _equal(a, b)
    other = config.copy_and_resolve_references()
    other.seed = 1
    assert not _equal(a, _take(pipeline.make_train_iterator(other), 3))


def test_restored_state_continues_with_the_next_batch(config):
    it = pipeline.make_train_iterator(config)
    _take(it, 2)
    state = json.loads(json.dumps(it.get_state()))
    expected = _take(it, 2)
    fresh = pipeline.make_train_iterator(config)
    fresh.set_state(state)
    assert _equal(_take(fresh, 2), expected)
    other = config.copy_and_resolve_references()
    other.train_group_size = 2
    with pytest.raises(UsageError, match="another data config"):
        pipeline.make_train_iterator(other).set_state(state)


def test_two_hosts_split_the_global_batch(config):
    whole = _take(pipeline.make_train_iterator(config, process_index=0, process_count=1), 2)
    hosts = [
        _take(pipeline.make_train_iterator(config, process_index=p, process_count=2), 2) for p in range(2)
    ]
    for step in range(2):
        for key, value in whole[step].items():
            joined = np.concatenate([hosts[0][step][key], hosts[1][step][key]])
            assert np.array_equal(joined, value), key
        q0, q1 = (hosts[p][step]["query_tokens"] for p in range(2))
        assert not {r.tobytes() for r in q0} & {r.tobytes() for r in q1}  # disjoint shares


def test_limits_and_divisibility_are_checked(config):
    too_long = config.copy_and_resolve_references()
    too_long.passage_max_len = 4096
    with pytest.raises(DataError, match="passage_max_len"):
        pipeline.make_train_iterator(too_long)
    short = config.copy_and_resolve_references()
    short.query_max_len = 4
    with pytest.raises(DataError, match="query_max_len=4 leaves nothing to embed"):
        pipeline.make_train_iterator(short)
    with pytest.raises(UsageError, match="divisible"):
        pipeline.make_train_iterator(config, process_count=3)


def test_eval_data(config):
    retrieval = heldout_sets.eval_retrieval_arrays(config)
    assert retrieval["query_tokens"].shape[1] == 64 and retrieval["passage_tokens"].shape[1] == 128
    assert retrieval["relevant"].shape == (len(retrieval["query_tokens"]), len(retrieval["passage_tokens"]))
    assert (retrieval["relevant"].sum(1) == 1).all()
    # a passage that is one record's hard negative and another's positive is in the corpus once
    passages = zip(retrieval["passage_tokens"], retrieval["passage_instruction_len"])
    assert len({(row.tobytes(), n) for row, n in passages}) == len(retrieval["passage_tokens"])
    batches = heldout_sets.eval_generative_batches(config)
    assert batches and all(b["gen_tokens"].shape == (4, 128) for b in batches)


def test_demo_is_cached(config):
    import time

    start = time.time()
    demo.prepare_demo_data(config.data_dir, vocab_size=512)
    assert time.time() - start < 1.0


def test_demo_corpus_depends_on_the_python_version_alone(tmp_path):
    """The stdlib corpus is collected by a fresh interpreter and holds no object addresses: the same in a
    process that imported torch and jax (which touch stdlib modules) as in any other, from run to run, and
    from an interpreter at another path (another clone's venv: platform.architecture's default is it)."""
    import subprocess
    import sys

    from grit_jax.data.demo import stdlib_entries

    here = stdlib_entries()
    elsewhere = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, torch, jax; from grit_jax.data.demo import stdlib_entries; "
            "print(json.dumps(stdlib_entries()))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(elsewhere.stdout.strip().splitlines()[-1]) == here
    interpreter = tmp_path / "other_clone" / "python3"
    interpreter.parent.mkdir()
    interpreter.symlink_to(sys.executable)
    moved = subprocess.run(
        [str(interpreter), "-I", "-S", demo.STDLIB_DOCS_SCRIPT], capture_output=True, text=True, check=True
    )
    assert json.loads(moved.stdout) == here
    assert " at 0x" not in json.dumps(here) and len(here["functions"]) > 300 and len(here["modules"]) > 50


def test_demo_training_records_hold_no_held_out_text(tmp_path):
    """No held-out passage or name reaches a training record: not as a positive, not as another record's
    hard negative, not inside a chat; several hundred queries are held out."""
    from grit_jax.data.demo import build_jsonl

    files = build_jsonl(str(tmp_path))

    def records(role):
        return [json.loads(line) for path in files[role] for line in open(path, encoding="utf-8")]

    held_out = records("eval_embedding")
    training = records("embedding")
    train_text = json.dumps(training + records("generative"))
    assert 250 <= len(held_out) and len(training) > 3 * len(held_out)
    for record in held_out:
        name = record["query"][1].split("(")[0]
        assert json.dumps(record["pos"][0])[1:-1] not in train_text, name
        assert f"`{name}`" not in train_text
    # Held-out queries still rank among their neighbours, training passages among them.
    assert any(json.dumps(n)[1:-1] in train_text for r in held_out for n in r["neg"])
