"""RAG caching on CPU: answering with a cached 4,000-token document (or query) versus re-encoding it.

    JAX_PLATFORMS=cpu python -m benchmarks.rag_cache [--doc_tokens 4000 --new_tokens 16 --repeats 3]

A random Mistral (preset bench_rag_512: hidden 512, 8 layers) stands in for GritLM-7B: the speed-up comes
from not re-running the long segment, which holds for any size. Timed: the answer (prefill + new tokens,
greedy), after one warm-up call that compiles every shape. "No cache" is the reference's baseline: the
document goes into the generation prompt and is encoded again, causally, with the query.
"""

import argparse
import os
import sys
import tempfile
import time  # its docstring is tokenizer training text

import numpy as np

from benchmarks.common import best_of, model_config, random_gritlm


def build(tmp):
    """The bench_rag_512 model with a sentencepiece tokenizer of its vocabulary, trained on docstrings."""
    from grit_jax.data.tokenizer import train_tokenizer

    texts = [m.__doc__ or "" for m in (os, sys, argparse, tempfile, time, np)] * 2
    vocab = model_config("bench_rag_512").vocab_size
    tokenizer = train_tokenizer(
        [t for t in texts if t], os.path.join(tmp, "tokenizer.model"), vocab_size=vocab
    )
    return random_gritlm("bench_rag_512", tokenizer)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--doc_tokens", type=int, default=4000)
    parser.add_argument("--new_tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = build(tmp)
    rng = np.random.default_rng(0)
    doc = rng.integers(10, model.config.vocab_size, args.doc_tokens - 1).tolist()  # + BOS = doc_tokens
    query = model.tokenizer.encode("What does the document say about the directory entries?")
    gen = dict(max_new_tokens=args.new_tokens, eos_token_id=-1)
    tok = model.tokenizer.encode
    bos = [model.tokenizer.bos_id]
    # Doc caching: the document's cache comes from its embedding pass (done once, at indexing time).
    _, doc_cache = model.encode(
        [model.tokenizer.decode(doc)],
        instruction="<|embed|>\n",
        get_cache=True,
        max_length=args.doc_tokens + 64,
    )
    doc_prompt = (
        tok("\n<|user|>\n")
        + query
        + tok("\n\nAnswer the prior query while optionally using the context prior to it\n<|assistant|>\n")
    )
    print("doc cache", doc_cache.num_tokens, "tokens", flush=True)
    cached = best_of(lambda: model.generate(doc_prompt, past_key_values=doc_cache, **gen), args.repeats)
    print(f"doc cached {cached:.2f} s", flush=True)
    full = bos + doc + doc_prompt
    uncached = best_of(lambda: model.generate(full, **gen), args.repeats)
    print(f"doc re-encoded {uncached:.2f} s", flush=True)
    # Query caching: a long query (the same 4,000 tokens) cached, a short document in the prompt.
    _, query_cache = model.encode(
        [model.tokenizer.decode(doc)],
        instruction="<|user|>\n",
        get_cache=True,
        max_length=args.doc_tokens + 64,
    )
    query_prompt = tok("\n") + query + tok("\n<|user|>\nAnswer the prior query\n<|assistant|>\n")
    q_cached = best_of(lambda: model.generate(query_prompt, past_key_values=query_cache, **gen), args.repeats)
    q_uncached = best_of(lambda: model.generate(bos + doc + query_prompt, **gen), args.repeats)
    print(
        f"cached segment {doc_cache.num_tokens} tokens, {args.new_tokens} new tokens, best of {args.repeats}"
    )
    for name, c, u in (("doc caching", cached, uncached), ("query caching", q_cached, q_uncached)):
        print(f"{name}: cached {c:.2f} s, re-encoded {u:.2f} s: {100 * (1 - c / u):.0f}% faster")


if __name__ == "__main__":
    main()
