"""grit-data prepare throughput and disk use on hub-layout inputs: MEDI2-like embedding records (query,
one positive, one negative, each with an instruction) as parquet shards and tulu2-like chats
(`messages`) as parquet, with a SentencePiece tokenizer trained here (32k vocabulary, as Mistral's).

    nice -n 10 python -m benchmarks.prepare_throughput [--embedding 20000] [--generative 5000]

Texts are synthetic sentences of the lengths of MEDI2 (a ~15-word query, ~80-word passages) and
tulu2 (~150-word turns); the figure to take away is examples per second per core and bytes per example.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import add_row
from grit_jax.data import sources
from grit_jax.data.tokenizer import train_tokenizer

WORDS = (
    "the of model data training query passage retrieve represent embedding generative language text "
    "document answer question search relevant instruction token sequence attention layer vector"
).split()


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) + str(rng.randrange(500)) for _ in range(words)) + "."


def write_inputs(root: str, n_emb: int, n_gen: int, seed: int = 0) -> tuple[str, str]:
    rng = random.Random(seed)
    pair = lambda instruction, words: [instruction, sentence(rng, words)]  # noqa: E731
    emb = [
        {
            "query": pair("Represent this question to retrieve a relevant passage", 15),
            "pos": [pair("Represent this passage", 80)],
            "neg": [pair("Represent this passage", 80)],
        }
        for _ in range(n_emb)
    ]
    gen = [
        {
            "messages": [
                {"role": "user", "content": sentence(rng, 60)},
                {"role": "assistant", "content": sentence(rng, 150)},
            ]
        }
        for _ in range(n_gen)
    ]
    for name, rows in (("medi2", emb), ("tulu2", gen)):
        os.makedirs(os.path.join(root, name, "data"))
        for k in range(2):
            table = pa.Table.from_pylist(rows[k::2])
            pq.write_table(table, os.path.join(root, name, "data", f"train-{k:05d}-of-00002.parquet"))
    return os.path.join(root, "medi2"), os.path.join(root, "tulu2")


def disk_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--embedding", type=int, default=20000)
    parser.add_argument("--generative", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        medi2, tulu2 = write_inputs(root, args.embedding, args.generative)
        tok = train_tokenizer([sentence(random.Random(1), 40) for _ in range(3000)], f"{root}/t.model", 32000)
        results = {}
        for kind, paths in (("embedding", [medi2]), ("generative", [tulu2])):
            out = os.path.join(root, f"out_{kind}")
            start = time.perf_counter()
            emb, gen = (paths, []) if kind == "embedding" else ([], paths)
            manifest = sources.prepare(out, tok, emb, gen)
            seconds = time.perf_counter() - start
            n = sum(e["num_examples"] for e in manifest["train"][kind])
            results[kind] = (n, seconds, disk_bytes(out) - disk_bytes(os.path.join(out, "t.model")))
    date = datetime.date.today().isoformat()
    machine = f"{platform.machine()}, {os.cpu_count()} cores (shared), nice 10"
    for kind, (n, seconds, size) in results.items():
        row = (
            f"| {kind} | {n:,} | {seconds:.1f} | {n / seconds:,.0f} | {size / n:,.0f} | "
            f"{size / n * 1e6 / 2**30:.2f} | {machine} | {date} |"
        )
        print(row)
        add_row(
            "Data pipeline",
            "### grit-data prepare: hub-layout throughput and disk\n\n"
            "Parquet shards in the hub's layout (MEDI2-like: query + 1 pos + 1 neg with instructions, "
            "~15/80/80 words; tulu2-like `messages`: ~60-word question, ~150-word answer), 32k SentencePiece "
            "tokenizer, `python -m benchmarks.prepare_throughput`. GiB per 1M examples scales the measured "
            "bytes per example (array_record + length index).\n\n"
            "| kind | examples | seconds | examples/s | bytes/example | GiB per 1M | machine | date |\n"
            "|---|---|---|---|---|---|---|---|\n",
            row,
        )


if __name__ == "__main__":
    main()
