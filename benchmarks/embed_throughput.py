"""grit-embed's length-sorted batches against batches in input order: documents/s, tokens/s, padding.

    JAX_PLATFORMS=cpu python -m benchmarks.embed_throughput [--docs 256 --batch_size 32 --repeats 1]

A random Mistral (preset bench_embed_256: hidden 256, 4 layers) embeds token rows whose lengths follow a
log-normal mix (median ~90 tokens, a long tail cut at 512), as web passages do. Both ways call the same
compiled encode pass (GritLM.embed_rows); each is timed after a warm-up run that compiles every shape it
needs. Padding is counted on the shapes actually run (batch and length rounded up to powers of two, as
GritLM does).
"""

import argparse

import numpy as np

from benchmarks.common import best_of, random_gritlm


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
    model = random_gritlm("bench_embed_256", mode="embedding")
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

        best = best_of(run, args.repeats)  # the warm-up run compiles every shape
        pad = 1 - real / padded_slots(lengths, batches)
        print(f"| {name} | {args.docs / best:.0f} | {real / best:,.0f} | {pad:.0%} |", flush=True)


if __name__ == "__main__":
    main()
