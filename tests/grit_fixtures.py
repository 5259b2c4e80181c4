"""Shared fixtures for the conversion and inference tests: a tiny sentencepiece model and HF directories."""

import inspect
import json
import os
import shutil

VOCAB = 512  # the models' vocabulary; the tokenizer's is at most this


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


def make_tokenizer(path):
    from grit_jax.data.tokenizer import train_tokenizer

    return train_tokenizer(tokenizer_texts(), str(path), vocab_size=400)


def make_hf_dir(path, tokenizer_model, kind="mistral", **changes):
    """A random tiny transformers model saved to `path` with the tokenizer; returns (torch model, path)."""
    from tests.hf_reference import make_torch_model, save

    model = make_torch_model(kind, **{"vocab_size": VOCAB, **changes})
    save(model, path, max_shard_size="100KB")
    shutil.copyfile(tokenizer_model, os.path.join(path, "tokenizer.model"))
    return model, str(path)
