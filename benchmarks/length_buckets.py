"""Length buckets (data.length_buckets): padded vs real tokens per step, and train-step time with and without.

    python -m benchmarks.length_buckets tokens [--steps 200]
    python -m benchmarks.length_buckets steps [--steps 8] [--workdir DIR]

tokens: (1) the demo corpus through the real pipeline (grain, one host), at the demo config's lengths and
at the lengths the corpus was prepared with; (2) a synthetic E5/MEDI + Tulu-like mix at the paper's
batch (2048 queries x 256, 4096 passages x 2048, 256 chats x 2048): lengths drawn from the p50/p90/p99/max
percentiles that `grit-data prepare` reports, per source (ASSUMED figures below, not measured on E5 here:
replace them with your manifest's), each global batch from one source as the pipeline plans it.
steps: seconds per train step of configs/tiny.py and configs/demo.py on the demo corpus, each on the same
batches with and without buckets, after every shape has been compiled once (compiles are not timed).
"""

from __future__ import annotations

import argparse
import importlib
import os
import tempfile
import time

import numpy as np

from grit_jax.data import demo, pipeline
from grit_jax.run_config import bucket_length, length_buckets

# Bucket lists per field (the field's max_len is always the last bucket).
TPU_BUCKETS = {"query": (64, 128), "passage": (128, 256, 512, 1024), "generative": (256, 512, 1024)}
# (weight, {field: (p50, p90, p99, max)}) of each source: ASSUMED E5/MEDI-like sources and Tulu-like chats.
E5_LIKE = {
    "short pairs (NLI, STS, titles)": (0.35, {"query": (24, 36, 50, 90), "passage": (22, 40, 70, 160)}),
    "web passages (MS MARCO-like)": (0.45, {"query": (28, 40, 60, 120), "passage": (90, 160, 260, 600)}),
    "long documents (wiki, ELI5-like)": (
        0.20,
        {"query": (40, 80, 160, 256), "passage": (300, 900, 1800, 2048)},
    ),
}
TULU_LIKE = {"generative": (380, 1300, 2048, 2048)}


def draw(percentiles, size, rng) -> np.ndarray:
    """Lengths whose p50/p90/p99/max are ``percentiles`` (log-linear between them, 8 tokens at p0)."""
    quantiles, values = [0.0, 0.5, 0.9, 0.99, 1.0], np.log([8, *percentiles])
    return np.exp(np.interp(rng.random(size), quantiles, values)).astype(int)


def synthetic_mix(steps: int, seed: int = 0) -> dict[str, tuple[int, int]]:
    """{field: (real tokens, padded tokens with buckets)} summed over ``steps`` paper-sized global batches."""
    rng, data = np.random.default_rng(seed), _paper_data()
    names = list(E5_LIKE)
    weights = np.asarray([E5_LIKE[n][0] for n in names])
    totals = {f: [0, 0, 0] for f in ("query", "passage", "generative")}
    for _ in range(steps):
        source = E5_LIKE[names[rng.choice(len(names), p=weights / weights.sum())]][1]
        rows = {"query": 2048, "passage": 4096}
        drawn = {f: draw(source[f], rows[f], rng) for f in rows}
        drawn["generative"] = draw(TULU_LIKE["generative"], 256, rng)
        for field, lengths in drawn.items():
            lengths = np.minimum(lengths, data[f"{field}_max_len"])
            width = bucket_length(length_buckets(data, field), int(lengths.max()))
            totals[field][0] += int(lengths.sum())
            totals[field][1] += width * len(lengths)
            totals[field][2] += data[f"{field}_max_len"] * len(lengths)
    return totals


def _paper_data(buckets=TPU_BUCKETS):
    from grit_jax.choices import PAPER_LENGTHS
    from grit_jax.run_config import base_config

    data = base_config().data
    data.update(PAPER_LENGTHS)
    data.length_buckets.update(buckets)
    return data


def pipeline_tokens(data_dir: str, lengths: dict, buckets: dict, steps: int) -> dict[str, list[int]]:
    """{field: [real, padded with buckets, padded to max_len]} over ``steps`` steps of the real pipeline."""
    from grit_jax.run_config import base_config

    data = base_config().data
    data.update(data_dir=data_dir, embedding_batch_size=32, generative_batch_size=8, num_threads=2, **lengths)
    data.length_buckets.update(buckets)
    iterator = pipeline.make_train_iterator(data)
    totals = {f: [0, 0, 0] for f in ("query", "passage", "generative")}
    for _ in range(steps):
        batch = next(iterator).named()
        for field, name in (("query", "query"), ("passage", "passage"), ("generative", "gen")):
            mask = batch[f"{name}_mask"]
            totals[field][0] += int(mask.sum())
            totals[field][1] += mask.size
            totals[field][2] += mask.shape[0] * data[f"{field}_max_len"]
    iterator.close()
    return totals


def _table(title: str, totals: dict) -> str:
    rows = [
        f"{title}",
        "| field | real tokens | padded, max_len | padded, buckets | real/padded: max_len → buckets |",
    ]
    rows.append("|---|---|---|---|---|")
    all_real = all_max = all_buckets = 0
    for field, (real, buckets, full) in totals.items():
        rows.append(
            f"| {field} | {real:,} | {full:,} | {buckets:,} | {real / full:.0%} → {real / buckets:.0%} |"
        )
        all_real, all_max, all_buckets = all_real + real, all_max + full, all_buckets + buckets
    rows.append(
        f"| all | {all_real:,} | {all_max:,} | {all_buckets:,} | {all_real / all_max:.0%} → "
        f"{all_real / all_buckets:.0%} ({all_max / all_buckets:.2f}x fewer positions) |"
    )
    return "\n".join(rows)


def tokens(args):
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = demo.prepare_demo_data(os.path.join(tmp, "demo"), vocab_size=1024)["data_dir"]
        demo_lengths = dict(query_max_len=32, passage_max_len=48, generative_max_len=64)
        demo_buckets = {"query": (16,), "passage": (16, 32), "generative": (16, 32, 48)}
        print(
            _table(
                f"demo corpus, configs/demo.py lengths 32/48/64, buckets {demo_buckets}, {args.steps} steps",
                pipeline_tokens(data_dir, demo_lengths, demo_buckets, args.steps),
            )
        )
        full = dict(query_max_len=128, passage_max_len=512, generative_max_len=512)
        full_buckets = {"query": (64,), "passage": (128, 256), "generative": (128, 256)}
        print(
            _table(
                f"demo corpus at its prepared lengths 128/512/512, buckets {full_buckets}, "
                f"{args.steps} steps",
                pipeline_tokens(data_dir, full, full_buckets, args.steps),
            )
        )
    print(
        _table(
            f"synthetic E5/MEDI + Tulu-like mix (assumed percentiles), paper batch, buckets {TPU_BUCKETS}, "
            f"{args.steps} steps",
            synthetic_mix(args.steps),
        )
    )


def _time_config(config_path: str, workdir: str, buckets: dict, num_steps: int) -> tuple[float, float, int]:
    """(seconds per step without buckets, with buckets, distinct bucketed shapes) on the same batches."""
    import jax

    from grit_jax import sharding
    from grit_jax.train import step
    from grit_jax.train.run_inputs import prepare_data
    from grit_jax.train.state import TrainSetup

    config = importlib.import_module(config_path).get_config()
    config.num_steps = num_steps
    config.data.demo_corpus = True
    if config.model.preset == "tiny":  # its vocabulary: 512 tokens
        config.data.demo_vocab_size = 512
    prepare_data(config, workdir)
    results = []
    for use in (False, True):
        if use:
            config.data.length_buckets.update(buckets)
        setup = TrainSetup(config, sharding.make_mesh(config.mesh))
        state, train_step = setup.create_state(), step.make_train_step(setup)
        iterator = pipeline.make_train_iterator(config.data)
        batches = [step.global_batch(setup, next(iterator)) for _ in range(num_steps)]
        iterator.close()
        shapes = {tuple(f.tokens.shape[1] for f in b.fields().values()) for b in batches}
        for batch in batches:  # compile every shape (not timed)
            state, metrics = train_step(state, batch)
        jax.block_until_ready(state)
        start = time.perf_counter()
        for batch in batches:
            state, metrics = train_step(state, batch)
        jax.block_until_ready(state)
        results.append(((time.perf_counter() - start) / num_steps, len(shapes)))
    return results[0][0], results[1][0], results[1][1]


def steps(args):
    from grit_jax import hardware

    hardware.quiet_platform()  # before jax starts: no libtpu probing on a CPU machine
    workdir = args.workdir or tempfile.mkdtemp()
    for name, buckets in (
        ("configs.tiny", {"query": (16,), "passage": (32,), "generative": (32,)}),
        ("configs.demo", {"query": (16,), "passage": (16, 32), "generative": (16, 32, 48)}),
    ):
        plain, bucketed, shapes = _time_config(name, os.path.join(workdir, name), buckets, args.steps)
        print(
            f"{name}: {plain:.3f} s/step at max_len, {bucketed:.3f} s/step with buckets {buckets} "
            f"({shapes} shapes over {args.steps} steps): {plain / bucketed:.2f}x"
        )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=("tokens", "steps"))
    parser.add_argument("--steps", type=int, default=0, help="steps (tokens: 200, steps: 8)")
    parser.add_argument("--workdir", default="", help="steps: where the demo corpus is built (kept)")
    args = parser.parse_args()
    args.steps = args.steps or (200 if args.what == "tokens" else 8)
    tokens(args) if args.what == "tokens" else steps(args)


if __name__ == "__main__":
    main()
