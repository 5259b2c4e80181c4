"""`grit-embed` (or `python -m grit_jax.programs.grit_embed`): embed a JSONL corpus into numpy shards,
resumably.

    grit-embed --model MODEL_DIR --input corpus.jsonl --out embeddings/ --field title+text

Records are `{"id", "text"}` or BEIR `{"_id", "title", "text"}`. The input is cut into windows of
`--window` good records; within a window texts are packed several to a row, longest first (little
padding: grit_jax.inference.text_packing), and each window becomes one part
(grit_jax.retrieval.embedding_store: `part-NNNNN.npy` + `.ids`, `manifest.json`).
Run it again with the same arguments after a kill and it continues at the first missing part (the same
weights and input contents: other ones are refused). One grit-embed writes an --out at a time
(OUT/embed.lock). Several hosts (launch/local.sh, a TPU pod) each embed windows index % process_count ==
process_index.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time

from grit_jax import hardware, storage
from grit_jax.cli import ArgumentParser, run_command
from grit_jax.errors import UsageError
from grit_jax.inference.output_checks import BadRow
from grit_jax.retrieval.corpus import FIELDS, Skipped, count_lines, read_records
from grit_jax.retrieval.embedding_store import EmbeddingStore, embed_token_rows, merge_hosts
from grit_jax.train.workdir_lock import WorkdirLock


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="grit-embed", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, metavar="PATH", help="Hugging Face dir or orbax checkpoint")
    p.add_argument(
        "--adapter", default=None, metavar="DIR", help="a PEFT LoRA adapter dir trained on --model"
    )
    p.add_argument("--input", required=True, nargs="+", metavar="FILE", help="JSONL files")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument(
        "--instruction",
        default="<|embed|>\n",
        help="text before each document, left out of the pooling (default: the reference's for documents)",
    )
    p.add_argument("--field", choices=FIELDS, default="text", help="title+text: BEIR title, space, text")
    p.add_argument(
        "--batch_size",
        type=int,
        default=64,
        help="documents of the window's longest length per pass (shorter ones: more, as many tokens)",
    )
    p.add_argument("--max_length", type=int, default=512, help="tokens per document, BOS included")
    p.add_argument("--window", type=int, default=16384, help="records per part, sorted by length within")
    p.add_argument("--skip_bad", action="store_true", help="skip and count bad records")
    p.add_argument("--dtype", default="float32", help="compute dtype (float32, bfloat16)")
    p.add_argument(
        "--mesh",
        default=None,
        metavar="AXIS=N,...",
        help="shard the model over this host's devices: data=-1, fsdp=4,tensor=2 (default: one device)",
    )
    return p


def run(argv=None) -> int:
    hardware.quiet_platform()
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    return run_command("grit-embed", lambda: _run(args))


def _run(args):
    for name in ("batch_size", "max_length", "window"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be positive, got {getattr(args, name)}")
    from grit_jax import distributed

    distributed.initialize_from_env()
    import jax

    index, count = jax.process_index(), jax.process_count()
    total = count_lines(args.input)  # also checks that every input exists before the model loads
    if storage.is_url(args.out):
        raise UsageError(
            f"--out {args.out}: grit-embed writes a local directory (copy it to the bucket after)"
        )
    os.makedirs(args.out, exist_ok=True)
    lock = WorkdirLock(args.out, name="embed.lock" if index == 0 else f"embed.host{index}.lock", flag="--out")
    lock.acquire()  # one grit-embed per --out: a second one is refused, naming the first
    try:
        _embed_locked(args, index, count, total)
    finally:
        lock.release()


def _embed_locked(args, index: int, count: int, total: int):
    from grit_jax.inference.gritlm import GritLM
    from grit_jax.inference.placement import local_mesh
    from grit_jax.weights.fingerprint import model_fingerprint

    mesh = local_mesh(args.mesh)
    model = GritLM.from_pretrained(
        args.model, mode="embedding", dtype=args.dtype, mesh=mesh, adapter=args.adapter
    )
    settings = dict(
        model=os.fspath(storage.as_path(args.model)),  # a gs:// model stays a URL
        model_weights=model_fingerprint(model),  # another checkpoint in the same place: not resumed
        inputs=[[os.path.abspath(p), content_hash(p)] for p in args.input],  # an edit in place: not resumed
        instruction=args.instruction,
        field=args.field,
        max_length=args.max_length,
        window=args.window,
        dtype=args.dtype,
        skip_bad=args.skip_bad,
        process_count=count,
    )
    store = EmbeddingStore(args.out, settings, index, count)
    skipped = Skipped()
    embed_corpus(model, args, store, skipped, total=total, index=index, count=count)
    store.finish(skipped.count, skipped.examples)
    if count > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("grit-embed: every host finished")
        if index == 0:
            merge_hosts(args.out, count)
    if index == 0:
        print(
            f"grit-embed: {args.out}: {sum(p['count'] for p in store.manifest['parts'])} documents "
            f"on this host, {skipped.count} bad records skipped",
            flush=True,
        )


def content_hash(path: str) -> str:
    """sha256 of a file's bytes (read once more; embedding them costs far more)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _windows(records, size):
    window = []
    for record in records:
        window.append(record)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


def embed_corpus(model, args, store: EmbeddingStore, skipped: Skipped, *, total: int, index=0, count=1):
    """Embeds this host's windows that the store lacks; reports rate and ETA at most every 10 s."""
    skip = model.instruction_length(args.instruction, False, args.max_length)
    records = read_records(args.input, args.field, args.skip_bad, skipped)
    start, embedded, seen, last = time.time(), 0, 0, 0.0
    mine = total // count  # about this host's share, for the ETA
    for w, window in enumerate(_windows(records, args.window)):
        if w % count != index:
            continue
        if store.has(w):
            seen += len(window)
            continue
        rows = [
            model.tokenize(args.instruction + text + model.embed_eos, True, args.max_length)
            for _, text in window
        ]
        try:
            vectors = embed_token_rows(model, rows, skip, args.batch_size)
        except BadRow as e:  # nothing of this window is written
            raise e.named(f"document {window[e.row][0]!r}") from None
        store.write_part(w, [rid for rid, _ in window], vectors, skipped.count)
        embedded += len(window)
        seen += len(window)
        if time.time() - last >= 10:
            last = _progress(index, seen, mine, embedded, start=start)
    _progress(index, seen, mine, embedded, start=start)


def _progress(index, seen, mine, embedded, *, start) -> float:
    now = time.time()
    rate = embedded / max(now - start, 1e-9)
    eta = max(mine - seen, 0) / rate if rate else float("inf")
    print(
        f"grit-embed: [{index}] {seen}/~{mine} documents, {rate:.1f} docs/s, ETA {eta:.0f} s",
        file=sys.stderr,
        flush=True,
    )
    return now


if __name__ == "__main__":
    sys.exit(run())
