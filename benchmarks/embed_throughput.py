"""grit-embed's length-sorted batches against batches in input order: documents/s, tokens/s, padding.

    JAX_PLATFORMS=cpu python benchmarks/embed_throughput.py [--docs 256 --batch_size 32 --repeats 1]

A random Mistral (hidden 256, 4 layers) embeds token rows whose lengths follow a log-normal mix (median
~90 tokens, a long tail cut at 512), as web passages do. Both ways call the same compiled encode pass
(GritLM.embed_rows); each is timed after a warm-up run that compiles every shape it needs. Padding is
counted on the shapes actually run (batch and length rounded up to powers of two, as GritLM does).
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build(vocab=1000):
    from flax import nnx

    from grit_jax.inference.gritlm import GritLM
    from grit_jax.model import ModelConfig, Transformer

    class Tokenizer:  # only ids are embedded here; encode/decode are not needed
        bos_id, eos_id, pad_id = 1, 2, 0

    cfg = ModelConfig(
        vocab_size=vocab,
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=4096,
    )
    return GritLM(Transformer(cfg, rngs=nnx.Rngs(0)), Tokenizer(), mode="embedding")


def padded_slots(lengths, batches):
    from grit_jax.inference.decoding import bucket

    return sum(bucket(len(b), 1) * bucket(max(lengths[i] for i in b)) for b in batches)


def main():
    from grit_jax.retrieval.embedding_store import sorted_batches

    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    model = build()
    rng = np.random.default_rng(0)
    lengths = np.minimum(rng.lognormal(4.5, 0.8, args.docs).astype(int) + 8, 512).tolist()
    rows = [[1] + rng.integers(3, 1000, n - 1).tolist() for n in lengths]
    ways = {
        "input order": [
            list(range(i, min(i + args.batch_size, args.docs))) for i in range(0, args.docs, args.batch_size)
        ],
        "length-sorted (grit-embed)": [b.tolist() for b in sorted_batches(lengths, args.batch_size)],
    }
    real = sum(lengths)
    print(f"{args.docs} documents, {real} tokens (median {int(np.median(lengths))}, max {max(lengths)})")
    print("| batches | docs/s | real tokens/s | padding (share of slots run) |\n|---|---|---|---|")
    for name, batches in ways.items():

        def run(batches=batches):
            for b in batches:
                model.embed_rows([rows[i] for i in b])

        run()  # compile every shape
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - start)
        pad = 1 - real / padded_slots(lengths, batches)
        print(f"| {name} | {args.docs / best:.0f} | {real / best:,.0f} | {pad:.0%} |", flush=True)


if __name__ == "__main__":
    main()
