"""Tokens per second of the data pipeline on one host (prepared data -> grain -> padded host batches).

Builds a synthetic corpus at the paper's lengths from stdlib docstrings (queries up to 256 tokens,
passages and chat up to 2048), prepares it (tokenized once; the prepare rate is reported too), then
times one host's batches with the per-host shapes of the 7B recipe on 64 hosts (global 2048 queries
x G=2 passages and 256 chats -> per host 32 queries, 64 passages, 4 chats), simulated as host 3 of 8.
    python -m benchmarks.data_pipeline [--steps 40] [--threads 1 2 4]
"""

import argparse
import json
import os
import random
import tempfile
import time

from grit_jax.choices import PAPER_LENGTHS
from grit_jax.data import demo, pipeline, sources
from grit_jax.data.tokenizer import Tokenizer
from grit_jax.run_config import base_config


def synthetic_jsonl(directory: str, num_records: int, seed: int = 0) -> tuple[str, str]:
    entries = demo.stdlib_entries()
    docs = [e[3] + "\n\n" + e[4] for kind in ("functions", "classes") for e in entries[kind]]
    rng = random.Random(seed)

    def text(chars):
        parts = []
        while sum(map(len, parts)) < chars:
            parts.append(rng.choice(docs))
        return "\n\n".join(parts)[:chars]

    emb, gen = os.path.join(directory, "emb.jsonl"), os.path.join(directory, "gen.jsonl")
    with open(emb, "w") as e, open(gen, "w") as g:
        for _ in range(num_records):
            e.write(
                json.dumps(
                    {
                        "query": ["Retrieve the documentation", text(rng.randint(100, 1500))],
                        "pos": [text(rng.randint(2000, 12000))],
                        "neg": [text(rng.randint(2000, 12000)) for _ in range(2)],
                    }
                )
                + "\n"
            )
            g.write(
                json.dumps({"text": [text(rng.randint(100, 2000)), text(rng.randint(2000, 12000))]}) + "\n"
            )
    return emb, gen


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=600)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, nargs="*", default=[1, 2, 4])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = Tokenizer(demo.prepare_demo_data(os.path.join(tmp, "demo"), vocab_size=2000)["tokenizer"])
        emb, gen = synthetic_jsonl(tmp, args.records)
        start = time.perf_counter()
        manifest = sources.prepare(os.path.join(tmp, "out"), tokenizer, [emb], [gen])
        elapsed = time.perf_counter() - start
        stored = sum(e["total_tokens"] for k in ("embedding", "generative") for e in manifest["train"][k])
        print(
            f"prepare: {stored} tokens stored in {elapsed:.1f} s = {stored / elapsed:,.0f} tokens/s "
            f"(tokenizing, {os.cpu_count()} cores)"
        )
        config = base_config().data  # 8 hosts x (32 queries, 64 passages, 4 chats), the paper's lengths
        config.update(
            data_dir=os.path.join(tmp, "out"),
            embedding_batch_size=32 * 8,
            generative_batch_size=4 * 8,
            **PAPER_LENGTHS,
        )
        for threads in args.threads:
            config.num_threads = threads
            iterator = pipeline.make_train_iterator(config, tokenizer, process_index=3, process_count=8)
            next(iterator)
            padded = real = 0
            start = time.perf_counter()
            for _ in range(args.steps):
                batch = next(iterator).named()
                for prefix in ("query", "passage", "gen"):
                    padded += batch[f"{prefix}_tokens"].size
                    real += int(batch[f"{prefix}_mask"].sum())
            elapsed = time.perf_counter() - start
            print(
                f"pipeline, {threads} threads: {args.steps / elapsed:.1f} host batches/s, "
                f"{padded / elapsed:,.0f} tokens/s (padded shape), {real / elapsed:,.0f} real tokens/s"
            )
            iterator.close()


if __name__ == "__main__":
    main()
