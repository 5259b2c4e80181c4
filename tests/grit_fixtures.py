"""What many tests share: the repository root, a tiny sentencepiece model (trained once per process), HF
directories, a BEIR directory, the texts of the inference tests."""

import importlib.util
import inspect
import json
import os
import shutil
import tempfile

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository
VOCAB = 512  # the models' vocabulary; the tokenizer's is at most this
N_DOCS, N_QUERIES = 130, 12  # write_beir's sizes: more documents than recall@100 looks at
# Compiling dominates the tests' tiny programs: LLVM at -O0 compiles them ~1.7x faster (no fast math at
# either level; every tolerance holds). Every JAX process the tests start gets it.
FAST_COMPILE = "--xla_backend_optimization_level=0"


def xla_flags(devices: int) -> str:
    """XLA_FLAGS for a test's JAX process on `devices` faked CPU devices."""
    return f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}"


def tokenizer_texts():
    import argparse
    import collections
    import dataclasses

    modules = [json, os, shutil, inspect, argparse, collections, dataclasses]
    texts = [inspect.getdoc(m) or "" for m in modules]
    texts += [inspect.getdoc(getattr(m, n)) or "" for m in modules for n in dir(m) if not n.startswith("_")][
        :400
    ]
    return [t for t in texts if t] + ["<|user|>\nhello\n<|embed|>\n", "<|assistant|>\nworld"]


_TRAINED: list[str] = []  # the one tokenizer this process trained


def make_tokenizer(path):
    """The tests' sentencepiece tokenizer at `path`: trained once per process, then copied."""
    from grit_jax.data.tokenizer import Tokenizer, train_tokenizer

    if not _TRAINED:
        first = os.path.join(tempfile.mkdtemp(prefix="grit_tokenizer_"), "tokenizer.model")
        train_tokenizer(tokenizer_texts(), first, vocab_size=400)
        _TRAINED.append(first)
    shutil.copyfile(_TRAINED[0], str(path))
    return Tokenizer(str(path))


def make_hf_dir(path, tokenizer_model, kind="mistral", **changes):
    """A random tiny transformers model saved to `path` with the tokenizer; returns (torch model, path)."""
    from tests.hf_reference import make_torch_model, save

    model = make_torch_model(kind, **{"vocab_size": VOCAB, **changes})
    save(model, path, max_shard_size="100KB")
    shutil.copyfile(tokenizer_model, os.path.join(path, "tokenizer.model"))
    return model, str(path)


INSTRUCTION = "<|user|>\nRetrieve the passage that answers the question\n<|embed|>\n"


TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Return the list of names in the directory.",
    "A short one",
    "Encode the object as JSON and write it to the file, with indentation and sorted keys.",
]


DOC = (
    "Return a list containing the names of the entries in the directory given by path. The list is in "
    "arbitrary order, and does not include the special entries. "
) * 3


QUERY = "Which entries does the list include?"


needs_libtpu = pytest.mark.skipif(not importlib.util.find_spec("libtpu"), reason="the aot extra (libtpu)")


def write_beir(root, n_docs=N_DOCS, n_queries=N_QUERIES):
    texts = [t for t in tokenizer_texts() if t.strip()]
    rng = np.random.default_rng(0)
    (root / "qrels").mkdir(parents=True)
    docs = [
        {"_id": f"doc{i}", "title": f"T{i}" * (i % 2), "text": texts[i % len(texts)][:300]}
        for i in range(n_docs)
    ]
    queries = [{"_id": f"q{i}", "text": texts[(7 * i) % len(texts)][:80]} for i in range(n_queries)]
    queries.append({"_id": "unjudged", "text": "a query without judgments is not ranked"})
    lines = ["query-id\tcorpus-id\tscore"]
    for i in range(n_queries):
        for d in rng.choice(n_docs, size=1 + i % 4, replace=False):
            lines.append(f"q{i}\tdoc{d}\t{1 + (d % 2)}")  # graded relevance 1 or 2
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return docs, queries[:-1]


def bad_inputs(root):
    """What the programs' error tests feed them, under `root` (a pathlib.Path): a tokenizer, chats, an empty
    dir, a path that does not exist, a Hugging Face dir with one safetensors shard overwritten with garbage,
    and a tokenizer.model that is not one."""
    import glob

    tokenizer = str(root / "tokenizer.model")
    make_tokenizer(tokenizer)
    chats = root / "chats.jsonl"
    chats.write_text("".join(json.dumps({"text": [f"u {i}", f"a {i}"]}) + "\n" for i in range(16)))
    _, hf_dir = make_hf_dir(root / "hf", tokenizer)
    shard = sorted(glob.glob(os.path.join(hf_dir, "*.safetensors")))[-1]
    with open(shard, "wb") as f:
        f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00not a safetensors header")
    (root / "empty").mkdir()
    bad_tokenizer = root / "bad.model"
    bad_tokenizer.write_bytes(b"this is not a sentencepiece model")
    return dict(
        root=root,
        tokenizer=tokenizer,
        chats=str(chats),
        corrupt_hf=hf_dir,
        shard=shard,
        empty=str(root / "empty"),
        missing=str(root / "nowhere"),
        bad_tokenizer=str(bad_tokenizer),
    )
