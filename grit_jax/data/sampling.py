"""Which examples and passages each step sees: the epoch plan of global embedding batches and the
hard negatives of each row. Every random choice is a function of (seed, stream, epoch or step, row),
so any host can compute any row's choice without reading another host's data.

An epoch's plan follows the reference: each source's shuffled indices are cut into global batches,
the incomplete tails are shuffled as whole blocks (their order, not their items), joined and cut into
mixed batches (a last incomplete one is dropped), all batches are shuffled.
"""

from __future__ import annotations

import math

import numpy as np

from grit_jax.errors import DataError

EMBED_STREAM, GEN_STREAM, GEN_DRAW, PASSAGE = 1, 2, 3, 4


def rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


def epoch_plan(
    sizes: list[int], batch_size: int, seed: int, epoch: int, *, shuffle: bool = True
) -> np.ndarray:
    """[num_batches, batch_size, 2] (source, index) of one epoch's global embedding batches."""
    gen = rng(seed, EMBED_STREAM, epoch)
    full, tails = [], []
    for source, size in enumerate(sizes):
        order = gen.permutation(size) if shuffle else np.arange(size)
        pairs = np.stack([np.full(size, source), order], axis=1)
        cut = size // batch_size * batch_size
        full.extend(np.split(pairs[:cut], cut // batch_size) if cut else [])
        if cut < size:
            tails.append(pairs[cut:])
    if shuffle:  # the reference permutes the tails as whole blocks, each keeping its shuffled order
        tails = [tails[i] for i in gen.permutation(len(tails))]
    pooled = np.concatenate(tails) if tails else np.zeros((0, 2), np.int64)
    cut = len(pooled) // batch_size * batch_size
    batches = full + (np.split(pooled[:cut], cut // batch_size) if cut else [])
    if not batches:
        raise DataError(f"{sum(sizes)} embedding examples cannot fill one batch of {batch_size}")
    plan = np.stack(batches)
    return plan[gen.permutation(len(plan))] if shuffle else plan


def steps_per_epoch(sizes: list[int], batch_size: int) -> int:
    tails = sum(s % batch_size for s in sizes)
    return sum(s // batch_size for s in sizes) + tails // batch_size


def sample_negatives(num_neg: int, count: int, gen: np.random.Generator) -> np.ndarray:
    """count of range(num_neg) without replacement; the list repeated ceil(count/num_neg) times if short."""
    if count == 0:
        return np.zeros(0, np.int64)
    pool = np.arange(num_neg)
    if num_neg < count:
        pool = np.tile(pool, math.ceil(count / num_neg))
    return gen.choice(pool, count, replace=False)


def chosen_passages(
    seed: int, group: int, step: int, row: int, *, num_pos: int, num_passages: int
) -> list[int]:
    """The record's passages that global row ``row`` of ``step`` trains on: one positive, then
    group - 1 hard negatives (indices into the record's passages, positives first)."""
    gen = rng(seed, PASSAGE, step, row)
    chosen = [int(gen.integers(num_pos))]
    return chosen + [num_pos + int(k) for k in sample_negatives(num_passages - num_pos, group - 1, gen)]
