"""Load time of starting weights from local disk and from a GCS emulator: the ~2.24 GiB fp32 Hugging Face
Mistral of benchmarks/load_memory.py, loaded by grit_jax.weights.loader (each host reads what its devices
hold)
into an fsdp mesh by N processes of launch/local.sh, once from a local directory and once from
gs://bench/model served by fake-gcs-server (tests/gcs_emulator.py) on this machine.

    python benchmarks/load_gcs.py [--out /tmp/load_gcs] [--processes 1 2] [--write]

What the emulator measures: the byte-range path (one HTTP request per Hugging Face tensor, through gcsfs)
against mmap, on one machine; not a real bucket's bandwidth or latency.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.load_memory import make_model  # noqa: E402
from grit_jax import storage  # noqa: E402
from tests import gcs_emulator  # noqa: E402


def load(model: str, processes: int, out: str) -> dict:
    """The slowest process's load of `model` (local path or gs://), from load_memory.py's worker."""
    env = dict(
        os.environ,
        PYTHON=sys.executable,
        DEVICES_PER_HOST="4",
        JAX_PLATFORMS="cpu",
        GRIT_LOCAL_MODULE="benchmarks.load_memory",
        LOG_DIR=os.path.join(out, "logs"),
        PYTHONPATH=ROOT,
    )
    result = subprocess.run(
        ["bash", "launch/local.sh", str(processes), "--worker", model, "sharded"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    rows = [
        json.loads(line.split("RESULT ", 1)[1]) for line in result.stdout.splitlines() if "RESULT " in line
    ]
    if result.returncode or len(rows) != processes:
        raise SystemExit(f"{model} x{processes} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
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
        machine = f"2-core CPU ({platform.machine()})"
        with open(os.path.join(ROOT, "benchmarks", "RESULTS.md"), "a", encoding="utf-8") as f:
            f.write(
                f"\n## Loading weights from GCS (emulator) vs local disk\n\n`python benchmarks/load_gcs.py "
                f"--write` ({machine}, 4 faked devices per process, {datetime.date(2026, 11, 27)}): "
                f"grit_jax.weights.loader loads the fp32 Hugging Face Mistral of load_memory.py "
                f"({size:.2f} GiB) "
                "into one fsdp mesh, from a local directory (safetensors mmap) and from gs://bench/model on "
                "fake-gcs-server on the same machine (one ranged request per tensor). Slowest process.\n\n"
                f"{text}\n"
            )


if __name__ == "__main__":
    main()
