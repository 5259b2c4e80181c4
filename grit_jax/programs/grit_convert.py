"""`grit-convert`: Hugging Face <-> orbax checkpoints, streaming one parameter at a time.

    grit-convert hf-to-orbax --hf_dir D --out C [--dtype bfloat16]
    grit-convert orbax-to-hf --ckpt C --out D [--step N] [--dtype bfloat16] [--max_shard_size 2GB]
        [--tokenizer F] [--pooling_method mean] [--attn bbcc]
    grit-convert lora-to-peft --ckpt WORKDIR --out A [--step N]      (a LoRA run -> a PEFT adapter dir)
    grit-convert merge-adapter --base D --adapter A --out M [--max_shard_size 2GB]  (-> merged HF dir)
    grit-convert gguf-to-hf --gguf FILE --out D      (a llama.cpp GGUF model -> HF dir, float32)

Checkpoint layouts: grit_jax.weights.checkpoints. Memory: both directions move one Hugging Face tensor
(one layer,
one expert) at a time: orbax arrays are read and written in slices with tensorstore (no chunk cache),
safetensors output goes straight to disk with a pre-planned header, and freed memory is handed back to
the OS after each tensor. The peak stays near a few copies of the largest single tensor, whatever the
size of a stacked parameter (a Mixtral's [L,E,D,F] experts included) (benchmarks/RESULTS.md,
"Conversion memory"). Tensors are read through grit_jax.weights.loading, the reader the sharded loader uses;
the name map and per-tensor transforms are grit_jax.weights.hf's; there is no second map. Conversion
streams
rather than loading onto devices: it is a file-to-file transform that needs no accelerator, and one tensor
at a time keeps any model convertible on a small host.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile

from grit_jax import hardware, storage
from grit_jax.choices import ATTENTIONS, DTYPES, POOLINGS
from grit_jax.cli import ArgumentParser, run_command
from grit_jax.data.tokenizer import Tokenizer
from grit_jax.errors import UsageError
from grit_jax.weights import hf, open_weights
from grit_jax.weights.card import write_model_card
from grit_jax.weights.checkpoints import MODEL_CONFIG, PARAMS_ITEM
from grit_jax.weights.gguf_convert import gguf_to_hf
from grit_jax.weights.lora_export import lora_to_peft, merge_adapter
from grit_jax.weights.model_dir import (
    GRIT_CONFIG,
    copy_tokenizer,
    find_tokenizer,
    grit_settings,
    with_tokenizer_bos,
)
from grit_jax.weights.orbax_files import PyTreeWriter
from grit_jax.weights.safetensors_io import ShardWriter, numpy_dtype


def parse_size(text: str | int) -> int:
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)i?B?\s*", str(text), re.IGNORECASE)
    if not match:
        raise UsageError(f"--max_shard_size: cannot read {text!r}; use e.g. 2GB, 500MB or a byte count")
    return int(float(match.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[match.group(2).upper()])


def hf_to_orbax(hf_dir: str, out: str, dtype: str | None = None) -> str:
    """A Hugging Face directory -> an orbax checkpoint dir (params/, model_config.json, tokenizer)."""
    hf_dir, out = os.fspath(storage.as_path(hf_dir)), os.path.abspath(out)
    weights = open_weights(hf_dir, kind="hf")
    tokenizer = find_tokenizer([hf_dir])
    cfg = weights.config
    target = numpy_dtype(dtype)
    if os.path.exists(os.path.join(out, PARAMS_ITEM)):
        raise UsageError(f"{os.path.join(out, PARAMS_ITEM)} exists; choose a new --out")
    os.makedirs(out, exist_ok=True)
    staging = os.path.join(out, PARAMS_ITEM + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    writer, first = PyTreeWriter(staging), None
    try:
        for entry, shape, position, _, value in weights.tensors(target):
            first = first or str(value.dtype)
            writer.write(entry.path, shape, position, value)
            del value
        writer.close()
    except BaseException:  # a half-written checkpoint is never left where one is expected
        shutil.rmtree(staging, ignore_errors=True)
        raise
    os.replace(staging, os.path.join(out, PARAMS_ITEM))
    fields = dataclasses.asdict(cfg.replace(param_dtype=_dtype_name(first)))
    with open(os.path.join(out, MODEL_CONFIG), "w", encoding="utf-8") as f:
        json.dump(fields, f, indent=2)
    copy_tokenizer(tokenizer, out)
    if storage.isfile(storage.join(hf_dir, GRIT_CONFIG)):
        storage.write_text(
            os.path.join(out, GRIT_CONFIG), storage.read_text(storage.join(hf_dir, GRIT_CONFIG))
        )
    return out


def _dtype_name(dtype: str) -> str:
    return {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}.get(dtype, "float32")


def orbax_to_hf(
    ckpt: str,
    out: str,
    step: int | None = None,
    dtype: str | None = None,
    *,
    max_shard_size: str | int = "2GB",
    tokenizer: str | None = None,
    **grit_overrides,
) -> str:
    """An orbax checkpoint (hf-to-orbax dir or training checkpoint, any step) -> a Hugging Face directory."""
    params = open_weights(ckpt, step=step, kind="orbax")
    source = params.checkpoint
    tokenizer_model = find_tokenizer(source.search_dirs, tokenizer, source.tokenizer_file)
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    target, cfg = numpy_dtype(dtype), source.config
    stored = str(target or params.stored_dtype(hf.name_map(cfg)[0]))
    shapes = hf.param_shapes(cfg)
    plan = [
        (name, hf.hf_shape(entry, shapes[entry.path]), str(target or params.stored_dtype(entry)))
        for entry in hf.name_map(cfg)
        for _, name in hf.hf_names(entry, cfg)
    ]
    writer = ShardWriter(out, parse_size(max_shard_size), plan)
    for entry, _, _, name, value in params.tensors(target):  # one layer (and expert) at a time
        writer.add(name, hf.to_hf(entry, value))
        del value
    writer.close()
    hf_config = source.config.replace(param_dtype=_dtype_name(stored)).to_hf_dict()
    with open(os.path.join(out, "config.json"), "w", encoding="utf-8") as f:
        json.dump(hf_config, f, indent=2)
    with open(os.path.join(out, "generation_config.json"), "w", encoding="utf-8") as f:
        json.dump(
            {"bos_token_id": source.config.bos_token_id, "eos_token_id": source.config.eos_token_id},
            f,
            indent=2,
        )
    copy_tokenizer(tokenizer_model, out)
    settings = grit_settings(source, **grit_overrides)
    settings["chat_format"] = with_tokenizer_bos(settings["chat_format"], Tokenizer(tokenizer_model))
    with open(os.path.join(out, GRIT_CONFIG), "w", encoding="utf-8") as f:
        json.dump(settings, f, indent=2)
    write_model_card(out, settings, source.training_config)
    return out


def converted_to(out: str, convert) -> str:
    """convert(directory) into `out`; a gs:// `out` is written locally first and uploaded when complete
    (orbax's _METADATA last, so an interrupted upload is not taken for a checkpoint)."""
    if not storage.is_url(out):
        return convert(out)
    if storage.isdir(storage.join(out, PARAMS_ITEM)):
        raise UsageError(f"{storage.join(out, PARAMS_ITEM)} exists; choose a new --out")
    with tempfile.TemporaryDirectory(prefix="grit_jax_convert_") as local:
        convert(local)
        storage.upload_dir(local, out)
    return os.fspath(storage.as_path(out))


# what an earlier export left that a loader would read instead of (or beside) the new weights
EXPORT_FILES = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin*", "model.safetensors*")
EXPORT_DIRS = (PARAMS_ITEM, PARAMS_ITEM + ".partial")


def check_out(out: str, overwrite: bool, sources: list[str]) -> None:
    """Refuses a training work dir, a source, or a non-empty --out without --overwrite; with it, removes
    the earlier export's weight files and index first, so a loader never mixes two exports."""
    target = storage.as_path(out, "--out")
    if any(s and storage.as_path(s) == target for s in sources):
        raise UsageError(f"--out {out} is the checkpoint being converted; choose another --out")
    if not target.is_dir() or not any(target.iterdir()):
        return
    names = {p.name for p in target.iterdir()}
    if names & {"checkpoints", "metrics.jsonl", "run.lock"}:
        raise UsageError(f"--out {out} is a training work dir (it holds checkpoints/); choose another --out")
    if not overwrite:
        raise UsageError(
            f"--out {out} is not empty ({len(names)} entries, e.g. {sorted(names)[0]}); pass --overwrite to "
            "replace an earlier export (its weight files and index are removed first) or choose a new --out"
        )
    for path in {p for pattern in EXPORT_FILES for p in target.glob(pattern)}:
        path.unlink()
    for name in EXPORT_DIRS:
        if (target / name).is_dir():
            (target / name).rmtree()


LORA_COMMANDS = ("lora-to-peft", "merge-adapter")


def add_lora_commands(sub):
    c = sub.add_parser("lora-to-peft", help="a LoRA training run's adapters -> a PEFT adapter dir")
    c.add_argument("--ckpt", required=True, help="the LoRA run's work dir or one of its step dirs")
    c.add_argument("--out", required=True)
    c.add_argument("--step", type=int, default=None, help="with a work dir: the step (default: latest)")
    d = sub.add_parser("merge-adapter", help="Hugging Face base + PEFT LoRA adapter -> merged HF dir")
    d.add_argument("--base", required=True, help="the Hugging Face directory the adapter was trained on")
    d.add_argument("--adapter", required=True, help="a PEFT LoRA adapter dir (lora-to-peft's, or peft's)")
    d.add_argument("--out", required=True)
    d.add_argument("--max_shard_size", default="2GB")


def run_lora_command(args) -> str:
    if args.command == "lora-to-peft":
        return converted_to(args.out, lambda out: lora_to_peft(args.ckpt, out, args.step))
    size = parse_size(args.max_shard_size)
    return converted_to(args.out, lambda out: merge_adapter(args.base, args.adapter, out, size))


def parse_args(argv):
    parser = ArgumentParser(prog="grit-convert", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser(
        "hf-to-orbax",
        help="Hugging Face model dir (Mistral, Mixtral, Llama, Qwen2, Qwen3, Qwen3-MoE) -> orbax checkpoint",
    )
    a.add_argument("--hf_dir", required=True)
    a.add_argument("--out", required=True)
    a.add_argument(
        "--dtype",
        choices=DTYPES,
        default=None,
        help="parameter dtype to store (default: as in the safetensors files)",
    )
    b = sub.add_parser("orbax-to-hf", help="orbax checkpoint (any step) -> Hugging Face dir")
    b.add_argument("--ckpt", required=True, help="hf-to-orbax dir, training step dir, or training work dir")
    b.add_argument("--out", required=True)
    b.add_argument("--step", type=int, default=None, help="with a work dir: the step (default: latest)")
    b.add_argument("--dtype", choices=DTYPES, default=None)
    b.add_argument("--max_shard_size", default="2GB")
    b.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer.model or tokenizer.json to ship (default: found next to the checkpoint)",
    )
    b.add_argument("--pooling_method", default=None, choices=POOLINGS)
    b.add_argument("--attn", default=None, choices=tuple(ATTENTIONS))
    add_lora_commands(sub)
    g = sub.add_parser(
        "gguf-to-hf", help="llama.cpp GGUF file (Llama, Mistral, SmolLM2, Qwen2, Qwen3) -> Hugging Face dir"
    )
    g.add_argument("--gguf", required=True, help="the .gguf file (any tensor type the gguf package reads)")
    g.add_argument("--out", required=True)
    for command in sub.choices.values():  # every command writes --out: the same rule for all
        command.add_argument(
            "--overwrite",
            action="store_true",
            help="replace an earlier export in --out (its weight files and index are removed first)",
        )
    return parser.parse_args(argv)


def say_ignored_keys(hf_dir: str | None) -> None:
    """The keys of the source config.json read as metadata (no effect on the model), said once."""
    ignored = hf.ignored_config_keys(hf_dir) if hf_dir else []
    if ignored:
        print(f"{hf_dir}: config.json keys ignored (no effect on the model): {', '.join(ignored)}")


def run(argv=None) -> int:
    """The console script; returns the exit status (0, 1 for a failure, 2 for a usage error)."""
    hardware.quiet_platform()
    args = parse_args(sys.argv[1:] if argv is None else argv)

    def main():
        for flag in ("hf_dir", "ckpt", "out", "tokenizer", "base", "adapter"):
            if getattr(args, flag, None):
                storage.as_path(getattr(args, flag), f"--{flag}")  # local or gs://, nothing else
        sources = [getattr(args, name, None) for name in ("hf_dir", "ckpt", "base", "adapter", "gguf")]
        check_out(args.out, args.overwrite, sources)
        if args.command in LORA_COMMANDS:
            out = run_lora_command(args)
        elif args.command == "gguf-to-hf":
            out = converted_to(args.out, lambda out: gguf_to_hf(args.gguf, out, overwrite=True))
        elif args.command == "hf-to-orbax":
            out = converted_to(args.out, lambda out: hf_to_orbax(args.hf_dir, out, args.dtype))
        else:
            grit = dict(pooling_method=args.pooling_method, attn=args.attn)
            out = converted_to(
                args.out,
                lambda out: orbax_to_hf(
                    args.ckpt,
                    out,
                    args.step,
                    args.dtype,
                    max_shard_size=args.max_shard_size,
                    tokenizer=args.tokenizer,
                    **grit,
                ),
            )
        say_ignored_keys(getattr(args, "hf_dir", None) or getattr(args, "base", None))
        print(f"wrote {out}")

    return run_command("grit-convert", main)


if __name__ == "__main__":
    sys.exit(run())
