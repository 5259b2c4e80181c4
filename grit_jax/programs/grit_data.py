"""`grit-data prepare ...` (or `python -m grit_jax.programs.grit_data`): validate and build data."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

from grit_jax import hardware, storage
from grit_jax.choices import PAPER_LENGTHS
from grit_jax.cli import ArgumentParser, run_command
from grit_jax.data import sources
from grit_jax.data.demo import prepare_demo_data
from grit_jax.data.tokenizer import Tokenizer
from grit_jax.errors import UsageError


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="grit-data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare", help="validate JSONL, tokenize, write TFDS array_record")
    prepare.add_argument(
        "--embedding",
        nargs="*",
        default=[],
        metavar="PATH",
        help="JSONL files or directories of them: {query, pos, neg}",
    )
    prepare.add_argument(
        "--generative",
        nargs="*",
        default=[],
        metavar="PATH",
        help="JSONL files or directories of them: {text}",
    )
    prepare.add_argument("--eval_embedding", nargs="*", default=[], metavar="PATH")
    prepare.add_argument("--eval_generative", nargs="*", default=[], metavar="PATH")
    prepare.add_argument(
        "--tokenizer",
        required=True,
        metavar="PATH",
        help="a sentencepiece tokenizer.model, a tokenizer.json or a Hugging Face model directory",
    )
    prepare.add_argument("--out", required=True, metavar="DIR")
    prepare.add_argument("--skip_bad", action="store_true", help="skip and count bad records")
    prepare.add_argument("--query_max_len", type=int, default=PAPER_LENGTHS["query_max_len"])
    prepare.add_argument("--passage_max_len", type=int, default=PAPER_LENGTHS["passage_max_len"])
    prepare.add_argument("--generative_max_len", type=int, default=PAPER_LENGTHS["generative_max_len"])
    prepare.add_argument("--pad_id", type=int, default=None)
    prepare.add_argument(
        "--plain_strings",
        choices=("raw", "formatted"),
        default="raw",
        help="texts that are neither [instruction, text] pairs nor chat turns: raw text as the reference "
        "(default), or formatted with BOS and <|embed|> (embedding) or BOS and EOS (generative)",
    )
    demo = commands.add_parser("demo", help="build the stdlib-docstring demo corpus and tokenizer")
    demo.add_argument("--out", required=True, metavar="DIR")
    demo.add_argument("--vocab_size", type=int, default=1024)
    return parser


def report(manifest: dict) -> str:
    """Counts per source and token-length percentiles, one line per source."""
    lines = []
    for split in ("train", "eval"):
        for kind in ("embedding", "generative"):
            for e in manifest.get(split, {}).get(kind, []):
                stats = {k: e[k] for k in ("query_tokens", "passage_tokens", "tokens") if k in e}
                lines.append(
                    f"{split:5} {kind:10} {e['name']:24} examples={e['num_examples']:<8} "
                    f"skipped={e['num_skipped']:<5} dropped={e.get('num_dropped', 0):<5} " + json.dumps(stats)
                )
                lines.extend(f"      skipped {s}" for s in e["skipped"][:5])
                lines.extend(
                    f"      dropped {s} (first prompt reaches the length limit)"
                    for s in e.get("dropped", [])[:5]
                )
    return "\n".join(lines)


def run(argv=None) -> int:
    """The console script; returns the exit status (0, 1 for bad data, 2 for a usage error)."""
    hardware.quiet_platform()
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    return run_command("grit-data", lambda: _run(args))


def _run(args):
    """array_record writes local files: a gs:// --out is prepared in a local directory, then uploaded."""
    if not storage.is_url(args.out):
        return _prepare(args, args.out)
    storage.as_path(args.out, "--out")
    with tempfile.TemporaryDirectory(prefix="grit_jax_data_") as local:
        _prepare(args, local)
        storage.upload_dir(local, args.out)
    print(f"uploaded to {args.out}")


def _prepare(args, out_dir: str):
    if args.command == "demo":
        out = prepare_demo_data(out_dir, vocab_size=args.vocab_size)
        print(report(sources.read_manifest(out["data_dir"])))
        return
    if not args.embedding and not args.generative:
        raise UsageError("nothing to prepare: give --embedding and/or --generative")
    manifest = sources.prepare(
        out_dir,
        Tokenizer(args.tokenizer, pad_id=args.pad_id),
        args.embedding,
        args.generative,
        eval_embedding=args.eval_embedding,
        eval_generative=args.eval_generative,
        skip_bad=args.skip_bad,
        query_max_len=args.query_max_len,
        passage_max_len=args.passage_max_len,
        generative_max_len=args.generative_max_len,
        plain_strings=args.plain_strings,
    )
    print(report(manifest))


if __name__ == "__main__":
    sys.exit(run())
