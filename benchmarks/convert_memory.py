"""Peak host memory of grit-convert on a model of a few GB (written straight to safetensors with numpy).

    python benchmarks/convert_memory.py --workdir /tmp/convert_mem [--dtype float32|bfloat16]

Each step runs in its own process started from this small parent (Linux carries the parent's RSS into a
child's ru_maxrss, so the parent never touches the model); a child's peak resident memory (ru_maxrss) is
compared with the size of the model and of its largest (stacked) parameter.
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONFIG = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=16,
              num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=4096, rope_theta=10000.0,
              rms_norm_eps=1e-5, tie_word_embeddings=False)


def write_model(path, dtype, shard_bytes=1 << 30):
    """A random Mistral in HF layout (config.json, sharded safetensors with index, a tokenizer file)."""
    import ml_dtypes
    from safetensors.numpy import save_file

    from grit_jax import hf
    from grit_jax.model import ModelConfig

    np_dtype = np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float32)
    cfg = ModelConfig(**CONFIG)
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
    largest = max(np.prod((cfg.num_hidden_layers,) * e.per_layer + shapes[e.path]) for e in hf.name_map(cfg))
    return total, int(largest) * np_dtype.itemsize


def measure(argv):
    """Peak RSS (bytes) and seconds of `python -m grit_jax.convert argv` in a child process."""
    start = time.time()
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    code = ("import resource, sys; from grit_jax import convert; convert.run(sys.argv[1:]); "
            "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code, *argv], env=env, check=True, capture_output=True, text=True)
    peak = int(out.stdout.split("PEAK")[-1]) * 1024
    return peak, time.time() - start


def baseline():
    code = ("import resource; import jax, orbax.checkpoint, safetensors; from grit_jax import convert, hf; "
            "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "JAX_PLATFORMS": "cpu"}, check=True,
                         capture_output=True, text=True)
    return int(out.stdout.split("PEAK")[-1]) * 1024


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="/tmp/convert_mem")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--write_only", default="")
    args = parser.parse_args()
    if args.write_only:
        print("SIZES", json.dumps(write_model(args.write_only, args.dtype)))
        return
    shutil.rmtree(args.workdir, ignore_errors=True)
    hf_dir, ckpt, out = (os.path.join(args.workdir, n) for n in ("hf", "ckpt", "hf_out"))
    written = subprocess.run([sys.executable, __file__, "--dtype", args.dtype, "--write_only", hf_dir], check=True,
                             capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    total, largest = json.loads(written.stdout.split("SIZES")[-1])
    gib = lambda b: f"{b / 2**30:.2f} GiB"
    print(f"model {gib(total)} ({args.dtype}), largest stacked parameter {gib(largest)}, "
          f"imports alone {gib(baseline())}")
    for name, argv in (("hf-to-orbax", ["hf-to-orbax", "--hf_dir", hf_dir, "--out", ckpt]),
                       ("orbax-to-hf", ["orbax-to-hf", "--ckpt", ckpt, "--out", out, "--max_shard_size", "1GB"])):
        peak, seconds = measure(argv)
        print(f"{name}: peak RSS {gib(peak)} = {peak / total:.2f} x model, {peak / largest:.2f} x largest "
              f"parameter; {seconds:.0f} s", flush=True)
    shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
