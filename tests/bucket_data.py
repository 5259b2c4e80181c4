"""Data of mixed lengths for the length-bucket tests: two embedding sources (short, long) and chats."""

import collections
import json
import os

import numpy as np

from grit_jax.data import pipeline, sources
from grit_jax.run_config import base_config
from tests.grit_fixtures import make_tokenizer, tokenizer_texts

LIMITS = dict(query_max_len=32, passage_max_len=64, generative_max_len=64)

LIMITS_BY_FIELD = {"query": 32, "passage": 64, "generative": 64}

BUCKETS = dict(query=(16,), passage=(32,), generative=(32,))


def _words(rng, low, high, vocabulary):
    return " ".join(rng.choice(vocabulary, rng.integers(low, high + 1)))


def write_mixed_lengths(directory, seed=0):
    """Two embedding sources, one of short texts and one of long ones (batches come from one source),
    and chats of every length: JSONL files in ``directory``."""
    rng = np.random.default_rng(seed)
    counts = collections.Counter(w for t in tokenizer_texts() for w in t.split() if w.isalpha())
    vocabulary = [w for w, _ in counts.most_common(100)]  # mostly one token each
    files = {}
    for name, (query, passage) in {"short": ((1, 2), (1, 4)), "long": ((10, 30), (20, 60))}.items():
        records = [
            {
                "query": _words(rng, *query, vocabulary),
                "pos": [_words(rng, *passage, vocabulary)],
                "neg": [_words(rng, *passage, vocabulary) for _ in range(3)],
            }
            for _ in range(24)
        ]
        files[name] = records
    files["chat"] = [
        {"text": [_words(rng, 1, 2, vocabulary), _words(rng, 1, int(rng.choice([2, 40])), vocabulary)]}
        for _ in range(64)
    ]
    for name, records in files.items():
        with open(os.path.join(directory, f"{name}.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    return {name: os.path.join(directory, f"{name}.jsonl") for name in files}


def data_config(data_dir, buckets=None, **changes):
    config = base_config()
    config.data.update(data_dir=data_dir, embedding_batch_size=8, generative_batch_size=8, num_threads=1)
    config.data.update(LIMITS, **changes)
    config.data.length_buckets.update(buckets or {})
    return config


def take_steps(config, count, **kwargs):
    iterator = pipeline.make_train_iterator(config.data, **kwargs)
    return [next(iterator).named() for _ in range(count)]


def prepare_mixed(root):
    """write_mixed_lengths prepared under `root` (a pathlib.Path): the prepared data dir."""
    files = write_mixed_lengths(str(root))
    out = str(root / "data")
    sources.prepare(
        out,
        make_tokenizer(root / "tok"),
        embedding=[files["short"], files["long"]],
        generative=[files["chat"]],
        eval_embedding=[files["short"]],
        eval_generative=[files["chat"]],
        **LIMITS,
    )
    return out
