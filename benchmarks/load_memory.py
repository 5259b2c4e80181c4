"""Peak memory per host while loading starting weights: N processes (launch/local.sh, N = 1, 2, 4) each load
the same ~2.4 GB fp32 Hugging Face Mistral into an fsdp mesh over all their devices.

    python -m benchmarks.load_memory [--out /tmp/load_memory] [--processes 1 2 4] [--modes sharded whole]
        [--write]

`sharded` is grit_jax.weights.loading (each host reads what its devices hold); `pretrained` the same loader as
`GritLM.from_pretrained(path, mesh=...)` calls it (weights.load_model, with `--modes sharded pretrained`);
`whole` reads every parameter whole on every host first (what grit_jax did before), then places the same
shards. Per process: resident memory after building the mesh and abstract state (baseline) and the peak
while loading; the growth should stay near (model / N) + one tensor for `sharded`. The model is the
bench_load_0.6b preset. --write puts the table first under "Loading weights" in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from benchmarks.common import (
    add_entry,
    current_rss_mib,
    machine,
    model_config,
    peak_rss_mib,
    result_line,
    run_hosts,
    today,
)

MODES = ("sharded", "pretrained", "whole")
PRESET = "bench_load_0.6b"


def make_model(path: str) -> float:
    """A random fp32 Mistral written as safetensors shards (numpy only); returns its size in GiB."""
    from safetensors.numpy import save_file

    from grit_jax.weights import hf

    cfg = model_config(PRESET)
    if os.path.exists(os.path.join(path, "config.json")):
        return cfg.num_params() * 4 / 2**30
    os.makedirs(path)
    rng, shapes, shard, weight_map, n = np.random.default_rng(0), hf.param_shapes(cfg), {}, {}, 0
    for entry in hf.name_map(cfg):
        for _, name in hf.hf_names(entry, cfg):
            shard[name] = rng.standard_normal(hf.hf_shape(entry, shapes[entry.path]), np.float32) * 0.02
            if sum(t.nbytes for t in shard.values()) > 2**28:
                n += 1
                save_file(shard, os.path.join(path, f"model-{n:05d}.safetensors"), metadata={"format": "pt"})
                weight_map.update(dict.fromkeys(shard, f"model-{n:05d}.safetensors"))
                shard = {}
    n += 1
    save_file(shard, os.path.join(path, f"model-{n:05d}.safetensors"), metadata={"format": "pt"})
    weight_map.update(dict.fromkeys(shard, f"model-{n:05d}.safetensors"))
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg.to_hf_dict(), f)
    return cfg.num_params() * 4 / 2**30


def worker(model: str, mode: str):
    """One host: build the setup, load the weights, print one JSON line."""
    from grit_jax import distributed

    distributed.initialize_from_env()
    import jax
    from flax import nnx

    from grit_jax import sharding
    from grit_jax.run_config import base_config
    from grit_jax.train.state import TrainSetup
    from grit_jax.weights import open_weights

    config = base_config()
    config.model.update(preset="", hf_dir=model)
    config.mesh.update(data=1, fsdp=-1)
    config.data.update(embedding_batch_size=64, generative_batch_size=64)  # divisible by every mesh here
    setup = TrainSetup(config, sharding.make_mesh(config.mesh))
    baseline, start = current_rss_mib(), time.perf_counter()
    weights = open_weights(model, config=setup.model_config)
    if mode == "sharded":
        params = weights.load(setup.shardings.params)
    elif mode == "pretrained":  # what GritLM.from_pretrained(path, mesh=...) runs
        params = nnx.state(weights.model(setup.mesh))
    else:
        whole = weights.read(np.float32)
        shards = {".".join(map(str, k)): v.get_value() for k, v in nnx.to_flat_state(setup.shardings.params)}
        params = {
            p: jax.make_array_from_callback(a.shape, shards[p], lambda i, a=a: a[i]) for p, a in whole.items()
        }
    jax.block_until_ready(params)
    result_line(
        dict(
            process=jax.process_index(),
            processes=jax.process_count(),
            mode=mode,
            baseline_mib=baseline,
            peak_mib=peak_rss_mib(),
            seconds=time.perf_counter() - start,
        )
    )


def run(args) -> list[dict]:
    size = make_model(os.path.join(args.out, "model"))
    print(f"model: {size:.2f} GiB fp32 (preset {PRESET})", flush=True)
    rows = []
    for mode in args.modes:
        for n in args.processes:
            argv = ["--worker", os.path.join(args.out, "model"), mode]
            found = run_hosts(n, "benchmarks.load_memory", argv, os.path.join(args.out, "logs"), 1200)
            for r in found:
                r["growth_gib"] = (r["peak_mib"] - r["baseline_mib"]) / 1024
                r["model_gib"] = size
            rows.extend(found)
            worst = max(found, key=lambda r: r["growth_gib"])
            print(
                f"{mode:8} N={n}: growth {worst['growth_gib']:.2f} GiB per process "
                f"(model / N = {size / n:.2f} GiB), {worst['seconds']:.1f} s",
                flush=True,
            )
    return rows


def table(rows) -> str:
    lines = [
        "| loader | processes | model / N | peak growth per process (worst) | load time |",
        "|---|---|---|---|---|",
    ]
    for mode in dict.fromkeys(r["mode"] for r in rows):
        for n in sorted({r["processes"] for r in rows}):
            group = [r for r in rows if r["mode"] == mode and r["processes"] == n]
            worst = max(group, key=lambda r: r["growth_gib"])
            lines.append(
                f"| {mode} | {n} | {worst['model_gib'] / n:.2f} GiB | {worst['growth_gib']:.2f} GiB "
                f"| {worst['seconds']:.1f} s |"
            )
    return "\n".join(lines)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        return worker(sys.argv[2], sys.argv[3])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="/tmp/load_memory")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--modes", nargs="+", default=["sharded", "whole"], choices=MODES)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    rows = run(args)
    text = table(rows)
    print(text)
    if args.write:
        add_entry(
            "Loading weights",
            f"### Loading weights on N hosts ({today()})\n\n`python -m benchmarks.load_memory --write` "
            f"({machine()}, 4 faked devices per process, {today()}): N processes of launch/local.sh each "
            f"load the same fp32 Hugging Face Mistral ({rows[0]['model_gib']:.2f} GiB) into one fsdp mesh "
            "over all devices. Growth = peak resident memory while loading minus resident memory after "
            f"building the mesh and abstract state.\n\n{text}\n",
        )


if __name__ == "__main__":
    main()
