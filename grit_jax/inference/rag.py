"""RAG with key/value caching, as the reference's README and RAG evaluation script do it.

A segment (document or query) is encoded once with the embedding attention; its keys and values (a Cache)
then prefix a causal generation, so the segment is not read again. Four modes (the reference's):
  doc        cache `<s><|embed|>\\n{doc}`; the prompt carries the query
  query      cache `<s><|embed|>\\n{query}`; the prompt carries the document
  query-doc  cache the query, then `\\n<|embed|>\\n{doc}` with no BOS: the reference gives a second cached
             document "\\n" in place of BOS (its RAG script: instruction "\\n" + "<|embed|>\\n",
             add_special_tokens=False)
  doc-query  cache the document, then the query with its own BOS (its script: "Even if docquery, it
             performs better in the regular format")
Each cache keeps the positions it was encoded at (0..n-1); the prompt, which has no BOS, continues at
position = the number of cached tokens of its row. The reference's evaluation appends "The answer is" to
the prompt (EVAL_ANSWER_PREFIX); its README does not, nor does this module unless asked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from grit_jax.errors import UsageError

CACHE_MODES = ("doc", "query", "query-doc", "doc-query")
EMBED = "<|embed|>\n"
TEMPLATES = {
    "doc": "\n<|user|>\n{query}\n\nAnswer the prior query while optionally using the context prior to it"
    "\n<|assistant|>\n",
    "query": "\n<|user|>\n{doc}\n\nOptionally using the prior context answer the query prior to it"
    "\n<|assistant|>\n",
    "query-doc": "\n<|user|>\nOptionally using the prior context answer the query prior to it"
    "\n<|assistant|>\n",
    "doc-query": "\n<|user|>\nAnswer the prior query while optionally using the context prior to it"
    "\n<|assistant|>\n",
}
# (which text, instruction prefix, BOS) per cached segment, in cache order.
SEGMENTS = {
    "doc": (("doc", EMBED, True),),
    "query": (("query", EMBED, True),),
    "query-doc": (("query", EMBED, True), ("doc", "\n" + EMBED, False)),
    "doc-query": (("doc", EMBED, True), ("query", EMBED, True)),
}
EVAL_ANSWER_PREFIX = "The answer is"


@dataclasses.dataclass
class Cache:
    """Keys and values of an encoded segment, to prefix a generation: k, v [L,B,S,K,H] (rotary already
    applied at the segment's own positions); valid [B,S] marks real tokens (S is a bucket length)."""

    k: jax.Array
    v: jax.Array
    valid: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        """Cached tokens per row [B]: where each row's continuation starts."""
        return self.valid.sum(1)

    @property
    def num_tokens(self) -> int:
        """Cached tokens of every row (rows that differ: see `lengths`)."""
        if len(set(self.lengths.tolist())) != 1:
            raise UsageError(f"the rows of this cache hold different numbers of tokens: {self.lengths}")
        return int(self.lengths[0])

    @staticmethod
    def concat(caches: Sequence[Cache]) -> Cache:
        """Caches one after another (doc-query, query-doc caching): each keeps its own positions."""
        if len(caches) == 1:
            return caches[0]
        batch = max(c.valid.shape[0] for c in caches)

        def grow(a, axis):
            return jnp.broadcast_to(a, a.shape[:axis] + (batch,) + a.shape[axis + 1 :])

        return Cache(
            jnp.concatenate([grow(c.k, 1) for c in caches], axis=2),
            jnp.concatenate([grow(c.v, 1) for c in caches], axis=2),
            np.concatenate([np.broadcast_to(c.valid, (batch, c.valid.shape[1])) for c in caches], axis=1),
        )


def check_mode(mode: str) -> str:
    if mode not in CACHE_MODES:
        raise UsageError(f"RAG cache mode must be one of {CACHE_MODES}, got {mode!r}")
    return mode


def doc_text(doc) -> str:
    """A document as the reference's encode_corpus joins it: title + " " + text, nothing stripped."""
    if not isinstance(doc, dict):
        return doc
    if any(isinstance(v, (list, tuple)) for v in doc.values()):
        raise UsageError(
            "a dict is one document {'title': str, 'text': str} (as in the reference); "
            "pass a list of dicts for several"
        )
    return doc["title"] + " " + doc["text"] if "title" in doc else doc["text"]


def prompt_text(mode: str, query: str = "", doc="", answer_prefix: str = "") -> str:
    """The text after the cache: the reference's template for the mode, then answer_prefix."""
    return TEMPLATES[check_mode(mode)].format(query=query, doc=doc_text(doc)) + answer_prefix


def caches(model, queries: list[str], docs: list, mode: str, *, max_length: int) -> list[Cache]:
    """The mode's cached segments for rows of queries and documents (GritLM.encode with get_cache)."""
    texts = {"query": queries, "doc": [doc_text(d) for d in docs]}
    out = []
    for which, instruction, bos in SEGMENTS[check_mode(mode)]:
        _, cache = model.encode(
            texts[which],
            instruction=instruction,
            add_special_tokens=bos,
            get_cache=True,
            max_length=max_length,
            batch_size=max(len(texts[which]), 1),
        )
        out.append(cache)
    return out
