"""Packing (data.packing): real tokens / computed positions, and train-step time packed vs padded.

    python -m benchmarks.packing tokens [--steps 20]
    python -m benchmarks.packing cost [--steps 20]
    python -m benchmarks.packing steps [--steps 6]
    python -m benchmarks.packing data --data_dir DIR [--config configs/gritlm.py:7b] [--shards 64 --hosts 16]
    python -m benchmarks.packing aot --variant padded|packed|largest [--topology v5e-64]

tokens: real tokens / computed positions per field and overall, padded to max_len, with length buckets and
packed: (1) the demo corpus through the real pipeline at configs/demo.py's sizes; (2) the synthetic
E5/MEDI + Tulu-like mix of benchmarks/length_buckets.py (ASSUMED percentiles) at the 7B recipe's batch
(configs/gritlm.py: 2048 queries x 256, 4096 passages x 2048, 256 chats x 2048) on v5e-64 and v5e-8 (64 and
8 batch shards), the shapes decided exactly as the pipeline decides them (grit_jax.data.packing).
cost: model FLOPs per step and per real token, and hours for 1253 steps at 50% MFU on v5e-64, of the 7B
recipe padded and packed on that synthetic mix (analytic: grit_jax.train.flops; attention within sequences).
steps: seconds per train step of configs/demo.py on this machine, padded and packed, on the same examples
(the padded batches of the pipeline, and the same sequences packed), after compiling every shape.
data: the real share that packing reaches on YOUR prepared data (`grit-data prepare` output) with a
recipe's batch on a slice of ``shards`` batch shards and ``hosts`` hosts, from its length index alone.
aot: the 7B recipe's step compiled for a TPU slice by libtpu (the aot extra): padded to max_len, packed at
the grid's row counts at or above the synthetic mix's mean, or at its largest shape (one sequence a row);
per-chip GiB of the compiled step. One variant per process (about 4 CPU-minutes each on a 2-core
machine); each writes its row to RESULTS.md "Packing".
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from benchmarks.length_buckets import E5_LIKE, TPU_BUCKETS, TULU_LIKE, _paper_data, draw
from grit_jax.batch_layout import packing_layout
from grit_jax.data import demo, pipeline
from grit_jax.data.packing import plan_field
from grit_jax.run_config import bucket_length, length_buckets

FIELDS = {"query": "query", "passage": "passage", "generative": "gen"}


def _gritlm_7b():
    import importlib

    config = importlib.import_module("configs.gritlm").get_config("7b")
    return config


def synthetic_mix(steps: int, shards: int = 64, seed: int = 0, shapes=None) -> dict:
    """{field: [real, max_len, buckets, packed, attended pairs]} summed over ``steps`` 7B-recipe batches:
    positions, then the (query, key) pairs attention needs within each sequence (causal: half).
    shapes: a dict that gets {field: [the packed (rows, row length) of every step]}."""
    rng, data = np.random.default_rng(seed), _paper_data(TPU_BUCKETS)
    config = _gritlm_7b()
    layout = packing_layout(config, shards)
    names = list(E5_LIKE)
    weights = np.asarray([E5_LIKE[n][0] for n in names])
    totals = {f: [0, 0, 0, 0, 0] for f in FIELDS}
    for _ in range(steps):
        source = E5_LIKE[names[rng.choice(len(names), p=weights / weights.sum())]][1]
        drawn = {f: draw(source[f], layout[f].sequences, rng) for f in ("query", "passage")}
        drawn["generative"] = draw(TULU_LIKE["generative"], layout["generative"].sequences, rng)
        for field, lengths in drawn.items():
            f = layout[field]
            lengths = np.minimum(lengths, f.length)
            rows, row_length = plan_field(lengths, f).shape
            width = bucket_length(length_buckets(data, field), int(lengths.max()))
            squares = (lengths.astype(np.int64) ** 2).sum()
            pairs = (squares + lengths.sum()) // 2 if field == "generative" else squares
            for k, n in enumerate(
                (lengths.sum(), f.length * len(lengths), width * len(lengths), rows * row_length, pairs)
            ):
                totals[field][k] += int(n)
            if shapes is not None:
                shapes.setdefault(field, []).append((rows, row_length))
    return totals


def pipeline_positions(data_dir: str, config, steps: int) -> dict:
    """{field: [real, max_len (= padded), packed]} over ``steps`` batches of the real pipeline."""
    layout = packing_layout(config, 1)
    padded = pipeline.make_train_iterator(config.data)
    packed = pipeline.make_train_iterator(config.data, layout=layout)
    totals = {f: [0, 0, 0] for f in FIELDS}
    for _ in range(steps):
        full, pack = next(padded).named(), next(packed).named()
        for field, prefix in FIELDS.items():
            mask = full[f"{prefix}_mask"]
            assert int((pack[f"{prefix}_segments"] > 0).sum()) == int(mask.sum())  # the same tokens
            for k, n in enumerate((mask.sum(), mask.size, pack[f"{prefix}_segments"].size)):
                totals[field][k] += int(n)
    padded.close()
    packed.close()
    return totals


def _table(title: str, totals: dict, columns: tuple[str, ...]) -> str:
    head = " | ".join(f"real / {c}" for c in columns)
    rows = [title, f"| field | real tokens | {head} |", "|---" * (2 + len(columns)) + "|"]
    sums = np.zeros(len(columns) + 1)
    for field, values in totals.items():
        sums += values
        rows.append(
            f"| {field} | {values[0]:,} | " + " | ".join(f"{values[0] / v:.1%}" for v in values[1:]) + " |"
        )
    rows.append(f"| all | {int(sums[0]):,} | " + " | ".join(f"{sums[0] / v:.1%}" for v in sums[1:]) + " |")
    return "\n".join(rows)


def _demo_config(data_dir: str):
    import importlib

    config = importlib.import_module("configs.demo").get_config()
    config.data.update(data_dir=data_dir, demo_corpus=False)
    return config


def tokens(args):
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = demo.prepare_demo_data(os.path.join(tmp, "demo"), vocab_size=1024)["data_dir"]
        config = _demo_config(data_dir)
        d = config.data
        print(
            _table(
                f"demo corpus, configs/demo.py ({d.embedding_batch_size} queries x {d.query_max_len}, "
                f"{d.embedding_batch_size * d.train_group_size} passages x {d.passage_max_len}, "
                f"{d.generative_batch_size} chats x {d.generative_max_len}), {args.steps} steps",
                pipeline_positions(data_dir, config, args.steps),
                ("max_len", "packed"),
            )
        )
    for shards, slice_name in ((64, "v5e-64"), (8, "v5e-8")):
        print(
            _table(
                f"synthetic E5/MEDI + Tulu-like mix (assumed percentiles), configs/gritlm.py 7b batch on "
                f"{slice_name} ({shards} batch shards), buckets {TPU_BUCKETS}, {args.steps} steps",
                {f: t[:4] for f, t in synthetic_mix(args.steps, shards).items()},
                ("max_len", "buckets", "packed"),
            )
        )


def cost(args):
    """Model FLOPs per real token and hours for the 7B recipe on v5e-64, padded vs packed (analytic)."""
    from grit_jax import hardware
    from grit_jax.train import flops
    from grit_jax.train.state import resolve_model_config

    config = _gritlm_7b()
    cfg = resolve_model_config(config)
    totals = synthetic_mix(args.steps)
    real = sum(t[0] for t in totals.values()) / args.steps

    def computed(positions: int) -> float:  # every computed position; attention within each sequence
        counts = {f: (t[positions] / args.steps, t[4] / args.steps) for f, t in totals.items()}
        return flops.step_flops(cfg, counts)

    chips, peak, mfu = 64, hardware.PEAK_FLOPS["TPU v5e"], 0.5
    rows = [
        ("padded to max_len (today's recipe without packing)", flops.train_step_flops(config, cfg)),
        ("packed (data.packing, the recipe's default)", computed(3)),
        ("real tokens only (no padding at all)", computed(0)),
    ]
    print(
        f"7B recipe (configs/gritlm.py:7b) on v5e-64 at {mfu:.0%} MFU, synthetic E5/Tulu-like mix, "
        f"{args.steps} steps; {real:,.0f} real tokens per step"
    )
    print(
        f"| computed | model FLOPs per step | per real token | s per step | hours, {config.num_steps} steps |"
    )
    print("|---|---|---|---|---|")
    for name, step_flops in rows:
        seconds = step_flops / (chips * peak * mfu)
        hours = seconds * config.num_steps / 3600
        print(f"| {name} | {step_flops:.3e} | {step_flops / real:.3e} | {seconds:.1f} | {hours:.1f} |")


def _time(train_step, state, batches):
    import jax

    for batch in batches:  # compile every shape (not timed)
        state, _ = train_step(state, batch)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for batch in batches:
        state, _ = train_step(state, batch)
    jax.block_until_ready(state)
    return (time.perf_counter() - start) / len(batches), state


def steps(args):
    from grit_jax import hardware

    hardware.quiet_platform()  # before jax starts: no libtpu probing on a CPU machine
    from grit_jax import sharding
    from grit_jax.data.packing import pack_padded_batch
    from grit_jax.train import step
    from grit_jax.train.state import TrainSetup

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = demo.prepare_demo_data(os.path.join(tmp, "demo"), vocab_size=1024)["data_dir"]
        config = _demo_config(data_dir)
        config.data.packing = False
        iterator = pipeline.make_train_iterator(config.data)
        host_batches = [next(iterator) for _ in range(args.steps)]
        iterator.close()
    timings = {}
    for packing in (False, True):
        config.data.packing = packing
        setup = TrainSetup(config, sharding.make_mesh(config.mesh))
        batches = [pack_padded_batch(b, setup.layout) if packing else b for b in host_batches]
        batches = [step.global_batch(setup, b) for b in batches]
        timings[packing], _ = _time(step.make_train_step(setup), setup.create_state(), batches)
    print(
        f"configs/demo.py on this CPU, {args.steps} steps on the same examples: "
        f"padded {timings[False]:.3f} s/step, packed {timings[True]:.3f} s/step: "
        f"{timings[False] / timings[True]:.2f}x"
    )


def data(args):
    import importlib

    from grit_jax.data.pipeline import planned_counts

    path, _, arg = args.config.partition(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    config = module.get_config(arg) if arg else module.get_config()
    config.data.update(data_dir=args.data_dir, packing=True)
    layout = packing_layout(config, args.shards)
    totals = planned_counts(config.data, layout, args.steps, hosts=args.hosts, mode=config.objective.mode)
    padded = {f: [t[0], layout[f].sequences * layout[f].length * args.steps, t[1]] for f, t in totals.items()}
    print(
        _table(
            f"{args.data_dir}, {args.config} batch, {args.shards} batch shards on {args.hosts} hosts, "
            f"{args.steps} steps",
            padded,
            ("max_len", "packed"),
        )
    )


AOT_PREAMBLE = (
    "### `python -m benchmarks.packing aot`: the 7B step compiled for TPU, padded vs packed\n\n"
    "configs/gritlm.py:7b (splash attention, full remat, GradCache chunks of 256, 4 generative "
    "micro-batches) compiled by libtpu for the slice: per-chip memory of the compiled step. padded: one "
    "sequence a row of max_len; packed: per field the shape of most positions met on 20 steps of the "
    "synthetic E5/Tulu-like mix (the tokens table above); largest: per field the shape of the largest "
    "GradCache chunk or micro-batch a packed batch can take (grit_jax/batch_layout.py). FLOPs: the cost "
    "table above (analytic): XLA's cost analysis counts a loop body once (the scanned layers, the GradCache "
    "chunks), so it does not give this step's FLOPs.\n\n"
    "| variant | slice | rows x length: query, passage, generative | GiB per chip: total (arguments + "
    "temporaries) "
    "| of HBM | compile | machine, date |\n"
    "|---|---|---|---|---|---|---|\n"
)


def aot(args):
    """The 7B step compiled for a TPU slice: per-chip memory, padded or packed."""
    from benchmarks.common import add_row, machine, today
    from grit_jax import sharding
    from grit_jax.hardware import GiB, parse_accelerator
    from grit_jax.programs.grit_aot import topology_devices, total_bytes
    from grit_jax.run_config import data_parallel_size
    from grit_jax.train.state import TrainSetup
    from grit_jax.train.step import abstract_batch, make_train_step

    accelerator = parse_accelerator(args.topology)
    config = _gritlm_7b()
    mesh = sharding.make_mesh(config.mesh, devices=topology_devices(accelerator))
    shards = data_parallel_size(dict(mesh.shape))
    layout = packing_layout(config, shards)
    shapes = {  # padded: one sequence a row of max_len; largest: the shape of the largest chunk
        field: f.largest_shape() if args.variant == "largest" else (f.sequences, f.length)
        for field, f in layout.items()
    }
    if args.variant == "packed":  # per field, the shape of most positions met on the synthetic mix
        met: dict = {}
        synthetic_mix(args.steps, shards, shapes=met)
        shapes = {f: max(s, key=lambda s: (s[0] * s[1], s[1])) for f, s in met.items()}
    config.data.packing = args.variant != "padded"
    setup = TrainSetup(config, mesh)
    start = time.perf_counter()
    batch = abstract_batch(setup, shapes if config.data.packing else None)
    memory = make_train_step(setup).lower(setup.abstract_state(), batch).compile().memory_analysis()
    minutes = (time.perf_counter() - start) / 60
    total = total_bytes(memory)[0]
    row = (
        f"| {args.variant} | {accelerator.name} | "
        + ", ".join(f"{r} x {n}" for r, n in (shapes[f] for f in ("query", "passage", "generative")))
        + " | "
        f"{total / GiB:.2f} ({memory.argument_size_in_bytes / GiB:.2f} + "
        f"{memory.temp_size_in_bytes / GiB:.2f}) | {total / accelerator.hbm_bytes:.0%} | "
        f"{minutes:.0f} min | {machine()}, {today()} |\n"
    )
    print(row, end="")
    add_row("Packing", AOT_PREAMBLE, row)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=("tokens", "cost", "steps", "data", "aot"))
    parser.add_argument("--steps", type=int, default=0, help="steps (tokens, data: 20, steps: 6)")
    parser.add_argument("--data_dir", default="", help="data: a grit-data prepare output")
    parser.add_argument("--config", default="configs/gritlm.py:7b", help="data: the recipe (its batch)")
    parser.add_argument("--shards", type=int, default=64, help="data: batch shards (data-parallel size)")
    parser.add_argument("--hosts", type=int, default=16, help="data: hosts (each takes whole rows)")
    parser.add_argument("--topology", default="v5e-64", help="aot: the TPU slice")
    parser.add_argument("--variant", default="packed", choices=("padded", "packed", "largest"), help="aot")
    args = parser.parse_args()
    args.steps = args.steps or (6 if args.what == "steps" else 20)
    {"tokens": tokens, "cost": cost, "steps": steps, "data": data, "aot": aot}[args.what](args)


if __name__ == "__main__":
    main()
