"""Token lengths of every prepared example, so that any host can find the longest row of a whole global
batch (and so its length bucket) without reading the records of the other hosts' rows.

Written by `grit-data prepare` beside each source (manifest entry "lengths"); for data prepared before
that, computed once from the records when a run with data.length_buckets starts.
Embedding: query [N], passage_lens (flat, every passage of every record), passage_offsets [N+1] into
it, num_pos [N]. Generative: tokens [N].
"""

from __future__ import annotations

import logging
import os

import numpy as np

from grit_jax.errors import DataError

LENGTHS_FILE = "lengths.npz"


def example_lengths(kind: str, examples) -> dict[str, np.ndarray]:
    """The length index of a sequence of stored examples (dicts of grit_jax.data.sources' fields)."""
    if kind == "generative":
        return {"tokens": np.asarray([len(e["tokens"]) for e in examples], np.int32)}
    counts, query, num_pos, passage_lens = [], [], [], []
    for e in examples:
        query.append(len(e["query"]))
        num_pos.append(int(e["num_pos"]))
        counts.append(len(e["passage_lens"]))
        passage_lens.append(np.asarray(e["passage_lens"], np.int32))
    return {
        "query": np.asarray(query, np.int32),
        "num_pos": np.asarray(num_pos, np.int32),
        "passage_lens": np.concatenate(passage_lens) if passage_lens else np.zeros(0, np.int32),
        "passage_offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
    }


def write_lengths(kind: str, examples, directory: str) -> str:
    """Writes the length index of ``examples`` into ``directory``; returns the file's path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, LENGTHS_FILE)
    np.savez(path, **example_lengths(kind, examples))
    return path


def with_passage_bounds(lengths: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Adds per record the shortest positive and the longest passage: the bounds of what the sampled
    positive and negatives can be, so that most batches need no sampling to find their bucket."""
    starts, lens = lengths["passage_offsets"][:-1], lengths["passage_lens"]
    padded = np.append(lens, 0)  # reduceat's indices must stay inside the array
    bounds = np.stack([starts, starts + lengths["num_pos"]], axis=1).reshape(-1)
    return {
        **lengths,
        "shortest_positive": np.minimum.reduceat(padded, bounds)[::2],
        "longest_passage": np.maximum.reduceat(padded, starts),
    }


def load_lengths(kind: str, data_dir: str, entry: dict, source) -> dict[str, np.ndarray]:
    """The length index of one manifest entry: its file, or read from the records of ``source``."""
    lengths = _read_lengths(kind, data_dir, entry, source)
    return lengths if kind == "generative" else with_passage_bounds(lengths)


def _read_lengths(kind: str, data_dir: str, entry: dict, source) -> dict[str, np.ndarray]:
    key = "tokens" if kind == "generative" else "query"
    if entry.get("lengths"):
        path = os.path.join(data_dir, entry["lengths"])
        try:
            with np.load(path) as stored:
                lengths = {k: stored[k] for k in stored.files}
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: unreadable length index ({e}); prepare the data again") from None
        if key not in lengths or len(lengths[key]) != len(source):
            raise DataError(f"{path}: holds no lengths of the {len(source)} examples of {entry['name']!r}")
        return lengths
    logging.warning("%s: no length index (prepared before it had one); reading every record", entry["name"])
    return example_lengths(kind, (source[i] for i in range(len(source))))


def per_row(indexes: list[dict[str, np.ndarray]], key: str, plan: np.ndarray) -> np.ndarray:
    """``key`` of the length index of each (source, index) row of ``plan`` (a batch may mix sources)."""
    out = np.zeros(len(plan), np.int64)
    for source in np.unique(plan[:, 0]):
        rows = plan[:, 0] == source
        out[rows] = indexes[source][key][plan[rows, 1]]
    return out
