"""Load time of starting weights from local disk and from a GCS emulator: the ~2.24 GiB fp32 Hugging Face
Mistral of benchmarks/load_memory.py (preset bench_load_0.6b), loaded by grit_jax.weights.loading (each host
reads what its devices hold) into an fsdp mesh by N processes of launch/local.sh, once from a local
directory and once from gs://bench/model served by fake-gcs-server (tests/gcs_emulator.py) on this machine.

    python -m benchmarks.load_gcs [--out /tmp/load_gcs] [--processes 1 2] [--write]

What the emulator measures: the byte-range path (one HTTP request per Hugging Face tensor, through gcsfs)
against mmap, on one machine; not a real bucket's bandwidth or latency.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from benchmarks.common import add_entry, machine, run_hosts, today
from benchmarks.load_memory import make_model
from grit_jax import storage
from tests import gcs_emulator


def load(model: str, processes: int, out: str) -> dict:
    """The slowest process's load of `model` (local path or gs://), by load_memory.py's worker."""
    argv = ["--worker", model, "sharded"]
    rows = run_hosts(processes, "benchmarks.load_memory", argv, os.path.join(out, "logs"), 1800)
    return max(rows, key=lambda r: r["seconds"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="/tmp/load_gcs")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    local = os.path.join(args.out, "model")
    size = make_model(local)
    server, env = gcs_emulator.start(tempfile.mkdtemp(dir=args.out), bucket="bench")
    try:
        start = time.perf_counter()
        storage.upload_dir(local, "gs://bench/model")
        print(f"uploaded {size:.2f} GiB in {time.perf_counter() - start:.1f} s", flush=True)
        lines = ["| processes | local disk | GCS emulator | emulator / local |", "|---|---|---|---|"]
        for n in args.processes:
            near, far = load(local, n, args.out), load("gs://bench/model", n, args.out)
            ratio = far["seconds"] / near["seconds"]
            lines.append(f"| {n} | {near['seconds']:.1f} s | {far['seconds']:.1f} s | {ratio:.2f} |")
            print(lines[-1], flush=True)
    finally:
        gcs_emulator.stop(server, env)
    text = "\n".join(lines)
    if args.write:
        add_entry(
            "Loading weights",
            f"### Loading weights from GCS (emulator) vs local disk ({today()})\n\n"
            f"`python -m benchmarks.load_gcs --write` ({machine()}, 4 faked devices per process, "
            f"{today()}): grit_jax.weights.loading loads the fp32 Hugging Face Mistral of load_memory.py "
            f"({size:.2f} GiB) into one fsdp mesh, from a local directory (safetensors mmap) and from "
            "gs://bench/model on fake-gcs-server on the same machine (one ranged request per tensor). "
            f"Slowest process.\n\n{text}\n",
        )


if __name__ == "__main__":
    main()
