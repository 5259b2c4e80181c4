"""Packed encoding (GritLM.encode and grit-embed today) against the two ways of main at 42eb09b, in one run:
documents/s, real-token share of the slots computed, shapes compiled, and the embeddings' agreement.

    JAX_PLATFORMS=cpu python -m benchmarks.embed_throughput [--docs 256 --batch_size 32 --repeats 3 --write]

The corpus is the demo corpus' passages: docstrings of the Python standard library (summary and body,
grit_jax.data.demo), in a fixed shuffled order, tokenized by a SentencePiece BPE of 1,000 pieces trained on
them, each as `<|embed|>\\n` + text with BOS, cut at --max_length. The model is a random Mistral (preset
bench_embed_256: hidden 256, 4 layers, fp32), mean pooling after the instruction, bidirectional.

The ways, all through the same model in this process:
- encode before: main's GritLM.encode, batches of batch_size in input order, each right-padded to its
  longest text, lengths and batch rounded up to powers of two (GritLM.embed_rows, unchanged);
- grit-embed before: main's embed_token_rows, the same but batches of similar length (sorted);
- packed: grit_jax.inference.packed_encode.encode_rows, what GritLM.encode and grit-embed run now.
Each way runs once to compile every shape it needs; then --repeats rounds run the ways in turn, the order
reversed every other round (so a change in the machine's load falls on all of them), and the median counts.
"""

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

from benchmarks.common import add_row, machine, random_gritlm, today

INSTRUCTION = "<|embed|>\n"


def documents(n: int) -> list[str]:
    from grit_jax.data.demo import stdlib_entries

    entries = stdlib_entries()
    docs = [f"{e[3]}\n\n{e[4]}" for kind in ("functions", "classes") for e in entries[kind]]
    order = np.random.default_rng(0).permutation(len(docs))
    return [docs[i] for i in order[:n]]


def model_and_rows(docs: list[str], max_length: int):
    from grit_jax.data.tokenizer import train_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = train_tokenizer(docs, f"{tmp}/bench.model", vocab_size=1000)
    model = random_gritlm("bench_embed_256", tokenizer, mode="embedding")
    rows = [model.tokenize(INSTRUCTION + d, True, max_length) for d in docs]
    return model, rows, model.instruction_length(INSTRUCTION, False, max_length)


def sorted_batches(lengths, batch_size: int) -> list[np.ndarray]:
    """main's grit-embed batches (42eb09b): longest first, the original order within a batch."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [np.sort(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]


def padded_ways(model, rows, skip, batch_size):
    """{name: (function, shapes run)} of main's two ways: batches through GritLM.embed_rows."""
    from grit_jax.inference.decoding import bucket

    lengths = [len(r) for r in rows]
    ways = {
        "encode before (input order)": [
            np.arange(i, min(i + batch_size, len(rows))) for i in range(0, len(rows), batch_size)
        ],
        "grit-embed before (length-sorted)": sorted_batches(lengths, batch_size),
    }
    out = {}
    for name, batches in ways.items():

        def run(batches=batches):
            emb = np.empty((len(rows), model.config.hidden_size), np.float32)
            for b in batches:
                emb[b] = model.embed_rows([rows[i] for i in b], skip)[0]
            return emb

        shapes = [(bucket(len(b), 1), bucket(max(lengths[i] for i in b))) for b in batches]
        out[name] = (run, shapes)
    return out


def main():
    from grit_jax.inference import packed_encode, placement, text_packing

    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="add the result to benchmarks/RESULTS.md")
    args = parser.parse_args()
    model, rows, skip = model_and_rows(documents(args.docs), args.max_length)
    lengths = [len(r) for r in rows]
    ways = padded_ways(model, rows, skip, args.batch_size)
    passes = text_packing.pack(lengths, args.batch_size, placement.batch_multiple(model.mesh))
    ways["packed (encode and grit-embed now)"] = (
        lambda: packed_encode.encode_rows(model, rows, skip, args.batch_size),
        [p.shape for p in passes],
    )
    outs = {name: fn() for name, (fn, _) in ways.items()}  # compiles every shape
    times, load = {name: [] for name in ways}, os.getloadavg()[0]
    for repeat in range(args.repeats):
        for name, (fn, _) in list(ways.items())[:: 1 if repeat % 2 == 0 else -1]:
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    packed = outs["packed (encode and grit-embed now)"]
    diff = max(float(np.abs(packed - out).max()) for out in outs.values())
    real = sum(lengths)
    print(
        f"{args.docs} documents, {real:,} tokens (median {int(np.median(lengths))}, max {max(lengths)}), "
        f"batch {args.batch_size}; max |packed - padded| {diff:.1e}"
    )
    rows_md, base = [], statistics.median(times["grit-embed before (length-sorted)"])
    for name, (_, shapes) in ways.items():
        med = statistics.median(times[name])
        share = real / sum(r * t for r, t in shapes)
        row = (
            f"| {name} | {args.docs / med:.1f} | {base / med:.2f}x | {share:.1%} | {len(set(shapes))} | "
            f"{', '.join(f'{t:.1f}' for t in times[name])} |"
        )
        rows_md.append(row)
        print(row, flush=True)
    load = f"{load:.1f} before, {os.getloadavg()[0]:.1f} after"
    print(f"load average (1 min): {load}")
    if args.write:
        write(args, rows_md, real, lengths, diff, load)


HEAD = (
    "| way | docs/s (median) | vs grit-embed before | real tokens (share of slots run) | shapes compiled "
    "| wall s per run |\n|---|---|---|---|---|---|"
)


def write(args, rows_md, real, lengths, diff, load):
    preamble = (
        f"### Packed encoding vs main's padded batches ({today()})\n\n"
        f"`JAX_PLATFORMS=cpu python -m benchmarks.embed_throughput --docs {args.docs} --batch_size "
        f"{args.batch_size} --repeats {args.repeats} --write` — machine: {machine()}, shared and loaded "
        f"while measured (other engineers' jobs; load average {load}), date: {today()}. One run; the ways "
        f"in turn each round (reversed every other round), median of {args.repeats} after a compiling run."
        "\n\n"
        f"{args.docs} stdlib docstrings (the demo corpus' passages), {real:,} tokens with BOS and "
        f"`<|embed|>\\n` (median {int(np.median(lengths))}, max {max(lengths)}), random bench_embed_256 "
        f"(hidden 256, 4 layers, fp32), batch {args.batch_size}, max_length {args.max_length}. The "
        f"embeddings of all ways agree within {diff:.1e}.\n\n{HEAD}\n"
    )
    add_row("grit-embed throughput", preamble, "\n".join(rows_md))


if __name__ == "__main__":
    main()
