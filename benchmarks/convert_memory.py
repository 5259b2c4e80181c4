"""Peak host memory of grit-convert on a model of a few GB (written straight to safetensors with numpy).

    python -m benchmarks.convert_memory --workdir /tmp/convert_mem [--dtype float32|bfloat16] [--moe]

The model: preset bench_convert_1b (a 0.85 B Mistral), or bench_convert_moe_0.5b with --moe (a small
Mixtral whose stacked expert weights [L,E,D,F] dwarf any single Hugging Face tensor).
Each step runs in its own process started from this small parent (Linux carries the parent's RSS into a
child's ru_maxrss, so the parent never touches the model). Two peaks per child, compared with the size of
the model and of its largest (stacked) parameter:
- peak RSS (ru_maxrss): all resident pages, file-backed ones included (shared libraries, mmapped files);
- peak anonymous memory: RssAnon of /proc/self/status, sampled every 2 ms by a thread. This is the
  honest metric for "does it fit": file-backed pages are clean and the kernel drops them under pressure,
  anonymous pages (heap, numpy/tensorstore buffers) it cannot (no swap).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

from benchmarks.common import ROOT, cpu_env, model_config, module_command

PRESET, MOE_PRESET = "bench_convert_1b", "bench_convert_moe_0.5b"


def largest_stacked(cfg, itemsize):
    from grit_jax.weights import hf

    shapes = hf.param_shapes(cfg)

    def stack(e):
        return (cfg.num_hidden_layers,) * e.per_layer + (cfg.num_local_experts,) * e.per_expert

    return int(max(np.prod(stack(e) + shapes[e.path]) for e in hf.name_map(cfg))) * itemsize


def write_model(path, dtype, moe=False, shard_bytes=1 << 30):
    """A random Mistral in HF layout (config.json, sharded safetensors with index, a tokenizer file)."""
    import ml_dtypes
    from safetensors.numpy import save_file

    from grit_jax.weights import hf

    np_dtype = np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float32)
    cfg = model_config(MOE_PRESET if moe else PRESET)
    os.makedirs(path, exist_ok=True)
    shapes, rng = hf.param_shapes(cfg), np.random.default_rng(0)
    pending, size, files, weight_map = {}, 0, [], {}

    def flush():
        nonlocal pending, size
        name = f"model-{len(files) + 1:05d}.safetensors"
        save_file(pending, os.path.join(path, name), metadata={"format": "pt"})
        files.append(name)
        weight_map.update({k: name for k in pending})
        pending, size = {}, 0

    total = 0
    for entry in hf.name_map(cfg):
        for _, name in hf.hf_names(entry, cfg):
            shape = hf.hf_shape(entry, shapes[entry.path])
            tensor = (0.02 * rng.standard_normal(shape, np.float32)).astype(np_dtype)
            if size + tensor.nbytes > shard_bytes and pending:
                flush()
            pending[name], size, total = tensor, size + tensor.nbytes, total + tensor.nbytes
    flush()
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({**cfg.to_hf_dict(), "torch_dtype": dtype}, f)
    with open(os.path.join(path, "tokenizer.model"), "wb") as f:
        f.write(b"placeholder: conversion copies the tokenizer file, it does not parse it")
    return total, largest_stacked(cfg, np_dtype.itemsize)


def model_sizes(path):
    """(bytes of all tensors, bytes of the largest stacked parameter) of a model written by write_model."""

    from grit_jax.weights.hf import read_hf_config

    cfg = read_hf_config(path)
    with open(os.path.join(path, "model.safetensors.index.json")) as f:
        total = json.load(f)["metadata"]["total_size"]
    itemsize = 2 if json.load(open(os.path.join(path, "config.json"))).get("torch_dtype") == "bfloat16" else 4
    return total, largest_stacked(cfg, itemsize)


def measure(argv):
    """Peak RSS (bytes) and seconds of `python -m grit_jax.programs.grit_convert argv` in a child process."""
    start = time.time()
    out = subprocess.run(
        module_command("benchmarks.convert_memory", "--child", *argv),
        cwd=ROOT,
        env=cpu_env(),
        check=True,
        capture_output=True,
        text=True,
    )
    peak, anon = map(int, out.stdout.split("PEAK")[-1].split())
    return peak * 1024, anon * 1024, time.time() - start


def child(argv):
    """The measured process: grit-convert with argv, its RssAnon sampled every 2 ms by a thread; prints
    `PEAK ru_maxrss_kib anon_kib`. Before the conversion only numpy (which grit-convert imports anyway) and
    the standard library are loaded."""
    import threading

    from benchmarks.common import anon_rss_kib, peak_rss_mib

    peak_anon = [0]

    def sample():
        while True:
            peak_anon[0] = max(peak_anon[0], anon_rss_kib())
            time.sleep(0.002)

    threading.Thread(target=sample, daemon=True).start()
    from grit_jax.programs import grit_convert as convert

    convert.run(argv)
    time.sleep(0.01)
    print("PEAK", round(peak_rss_mib() * 1024), peak_anon[0])


def baseline():
    code = (
        "import resource; import jax, orbax.checkpoint, safetensors; "
        "from grit_jax.programs import grit_convert; from grit_jax.weights import hf; "
        "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=cpu_env(),
        check=True,
        capture_output=True,
        text=True,
    )
    return int(out.stdout.split("PEAK")[-1]) * 1024


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(sys.argv[2:])
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="/tmp/convert_mem")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--moe", action="store_true", help=f"a small Mixtral ({MOE_PRESET}) instead")
    parser.add_argument("--write_only", default="")
    parser.add_argument("--hf_dir", default="", help="reuse a model written by --write_only (not deleted)")
    args = parser.parse_args()
    if args.write_only:
        print("SIZES", json.dumps(write_model(args.write_only, args.dtype, args.moe)))
        return
    shutil.rmtree(args.workdir, ignore_errors=True)
    hf_dir, ckpt, out = (os.path.join(args.workdir, n) for n in ("hf", "ckpt", "hf_out"))
    if args.hf_dir:
        hf_dir = args.hf_dir
        total, largest = model_sizes(hf_dir)
    else:
        argv = ["--dtype", args.dtype, "--write_only", hf_dir] + ["--moe"] * args.moe
        written = subprocess.run(
            module_command("benchmarks.convert_memory", *argv),
            cwd=ROOT,
            env=cpu_env(),
            check=True,
            capture_output=True,
            text=True,
        )
        total, largest = json.loads(written.stdout.split("SIZES")[-1])

    def gib(b):
        return f"{b / 2**30:.2f} GiB"

    from grit_jax.weights import hf
    from grit_jax.weights.hf import read_hf_config

    cfg = read_hf_config(hf_dir)
    itemsize = largest // largest_stacked(cfg, 1)
    single = int(max(np.prod(hf.param_shapes(cfg)[e.path]) for e in hf.name_map(cfg))) * itemsize
    print(
        f"model {gib(total)} ({args.dtype}), largest stacked parameter {gib(largest)}, largest single "
        f"tensor {gib(single)}, "
        f"imports alone {gib(baseline())}"
    )
    for name, argv in (
        ("hf-to-orbax", ["hf-to-orbax", "--hf_dir", hf_dir, "--out", ckpt]),
        ("orbax-to-hf", ["orbax-to-hf", "--ckpt", ckpt, "--out", out, "--max_shard_size", "1GB"]),
    ):
        peak, anon, seconds = measure(argv)
        print(
            f"{name}: peak RSS {gib(peak)} = {peak / total:.2f} x model, {peak / largest:.2f} x largest "
            f"parameter; peak anonymous {gib(anon)} = {anon / total:.2f} x model; {seconds:.0f} s",
            flush=True,
        )
    shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
