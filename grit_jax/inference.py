"""GritLM: one model that embeds and generates, with key/value-cache reuse for RAG (as the `gritlm` package).

    model = GritLM.from_pretrained("path/to/hf_dir_or_orbax_checkpoint")
    q = model.encode(["what is GRIT?"], instruction="<|user|>\\nRetrieve passages\\n<|embed|>\\n")
    d, doc_cache = model.encode([doc], instruction="<|embed|>\\n", get_cache=True)
    ids = model.generate(model.rag_prompt(query), past_key_values=doc_cache, max_new_tokens=64)

Encoding follows the reference exactly: the caller passes the instruction prefix, BOS is added, padding is
on the right, and for mean-based pooling the first len(tokenize(instruction)) positions (with BOS) are left
out. Generation runs per-row positions over a fixed-size key/value buffer: prompt i occupies buffer slots
[P, P+len_i) after the cached prefix P, generated tokens follow at shared slots, and the mask (from
grit_jax.masks) lets each row see only its own valid slots. Shapes are rounded up to powers of two, so new
lengths within a bucket reuse the compiled functions.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from grit_jax import hf, masks
from grit_jax.checkpoint import iter_checkpoint_params, resolve_checkpoint
from grit_jax.choices import MODES
from grit_jax.data.tokenizer import Tokenizer
from grit_jax.errors import CheckpointError, UsageError
from grit_jax.model import KVCache, ModelConfig, Transformer
from grit_jax.model_files import GRIT_CONFIG, find_tokenizer, grit_settings
from grit_jax.objective import pool

PROMPT_DOC_CACHING = (
    "\n<|user|>\n{query}\n\nAnswer the prior query while optionally using the context prior to it"
    "\n<|assistant|>\n"
)
MIN_BUCKET = 16


def bucket(n: int, minimum: int = MIN_BUCKET) -> int:
    """The next power of two >= n (at least `minimum`): the lengths the jitted functions are compiled for."""
    return max(minimum, 1 << max(int(n) - 1, 0).bit_length())


@dataclasses.dataclass
class Cache:
    """Keys and values of an encoded segment, to prefix a generation: k, v [L,B,S,K,H] (rotary already
    applied at the segment's own positions); valid [B,S] marks real tokens (S is a bucket length)."""

    k: jax.Array
    v: jax.Array
    valid: np.ndarray

    @property
    def num_tokens(self) -> int:
        return int(self.valid[0].sum())

    @staticmethod
    def concat(caches: Sequence[Cache]) -> Cache:
        """Caches one after another (doc-query, query-doc caching): each keeps its own positions."""
        if len(caches) == 1:
            return caches[0]
        batch = max(c.valid.shape[0] for c in caches)
        grow = lambda a, axis: jnp.broadcast_to(a, a.shape[:axis] + (batch,) + a.shape[axis + 1 :])
        return Cache(
            jnp.concatenate([grow(c.k, 1) for c in caches], axis=2),
            jnp.concatenate([grow(c.v, 1) for c in caches], axis=2),
            np.concatenate([np.broadcast_to(c.valid, (batch, c.valid.shape[1])) for c in caches], axis=1),
        )


# ----------------------------------------------------------------------------- jitted pieces


@functools.partial(jax.jit, static_argnames=("graphdef", "with_cache"))
def _encode_pass(graphdef, state, tokens, mask, with_cache):
    """Hidden states [B,T,D] (and the cache of the pass) over a full mask [B,T,T]."""
    model = nnx.merge(graphdef, state)
    cache = KVCache.empty(model.config, tokens.shape[0], tokens.shape[1]) if with_cache else None
    out = model(tokens, mask, cache=cache)
    return out.hidden, (out.cache.k, out.cache.v) if with_cache else None


@functools.partial(jax.jit, static_argnames=("graphdef",), donate_argnames=("cache",))
def _decode_pass(graphdef, state, tokens, mask, positions, cache, last):
    """Runs tokens [B,T] at positions [B,T] into the buffer at cache.index; logits [B,V] at column last [B]."""
    model = nnx.merge(graphdef, state)
    out = model(tokens, mask, positions=positions, cache=cache)
    hidden = jnp.take_along_axis(out.hidden, last[:, None, None], axis=1)
    return model.logits(hidden)[:, 0], out.cache


@jax.jit
def _place(buffer_k, buffer_v, k, v):
    """Copies a prefix cache [L,B,S,K,H] into the start of the buffer."""
    return (
        jax.lax.dynamic_update_slice_in_dim(buffer_k, k.astype(buffer_k.dtype), 0, axis=2),
        jax.lax.dynamic_update_slice_in_dim(buffer_v, v.astype(buffer_v.dtype), 0, axis=2),
    )


# ----------------------------------------------------------------------------- sampling


def sample(
    logits: np.ndarray, rng: np.random.Generator, do_sample=False, temperature=1.0, top_k=0, top_p=1.0
):
    """Next tokens [B] from logits [B,V]: argmax, or a draw after temperature, top-k and top-p filtering."""
    if not do_sample:
        return logits.argmax(-1)
    logits = logits.astype(np.float64) / max(temperature, 1e-6)
    if top_k:
        kth = np.sort(logits, axis=-1)[:, -min(top_k, logits.shape[-1])][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    if top_p < 1.0:
        order = np.argsort(-probs, axis=-1)
        sorted_probs = np.take_along_axis(probs, order, -1)
        drop = np.cumsum(sorted_probs, -1) - sorted_probs >= top_p  # keep the smallest set reaching top_p
        np.put_along_axis(probs, order, np.where(drop, 0.0, sorted_probs), -1)
        probs /= probs.sum(-1, keepdims=True)
    return np.array([rng.choice(probs.shape[-1], p=p) for p in probs])


# ----------------------------------------------------------------------------- the model


class GritLM:
    """Embeddings (`encode`) and generation (`generate`) with one set of weights, like gritlm.GritLM."""

    def __init__(
        self,
        model: Transformer,
        tokenizer,
        mode="unified",
        pooling_method="mean",
        attn="bbcc",
        normalized=True,
        embed_eos="",
        projection=None,
    ):
        if mode not in MODES:
            raise UsageError(f"mode must be one of {MODES}, got {mode!r}")
        if attn not in ("bbcc", "cccc"):
            raise UsageError(
                f"attn must be 'bbcc' (bidirectional embedding) or 'cccc' (causal), got {attn!r}"
            )
        self.model, self.tokenizer, self.mode = model, tokenizer, mode
        self.pooling_method, self.attn, self.normalized, self.embed_eos = (
            pooling_method,
            attn,
            normalized,
            embed_eos,
        )
        self.projection = projection
        self.config: ModelConfig = model.config
        self.graphdef, self.state = nnx.split(model)
        self.sep = " "

    # ---- loading

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        mode="unified",
        pooling_method=None,
        attn=None,
        normalized=None,
        dtype="float32",
        tokenizer=None,
        step=None,
        **kwargs,
    ) -> GritLM:
        """From a Hugging Face directory (config.json + safetensors) or an orbax checkpoint (grit-convert
        hf-to-orbax dir, training step dir or work dir). Settings default to the dir's grit_config.json."""
        path = os.path.abspath(os.fspath(path))
        if not os.path.isdir(path):
            raise CheckpointError(
                f"{path}: no such directory (expected a Hugging Face dir or an orbax checkpoint)"
            )
        hint = None
        if os.path.isfile(os.path.join(path, "config.json")) and not os.path.isdir(
            os.path.join(path, "checkpoints")
        ):
            cfg = ModelConfig.from_hf_json(path, dtype=dtype)
            params, search = hf.read_hf_params(path, cfg), [path]
            settings = grit_settings(None)
            settings.update(_read_json(os.path.join(path, GRIT_CONFIG)))
        else:
            source = resolve_checkpoint(path, step)
            source.config = cfg = source.config.replace(dtype=dtype)
            params, search = dict(iter_checkpoint_params(source)), source.search_dirs
            settings, hint = grit_settings(source), source.tokenizer_file
        tokenizer = tokenizer or Tokenizer(find_tokenizer(search, hint=hint))
        if isinstance(tokenizer, str):
            tokenizer = Tokenizer(find_tokenizer([], tokenizer))
        model = nnx.eval_shape(
            lambda: Transformer(cfg.replace(param_dtype=_param_dtype(params)), rngs=nnx.Rngs(0))
        )
        hf.load_flat_params(model, params)
        pick = lambda given, key: settings[key] if given is None else given
        return cls(
            model,
            tokenizer,
            mode,
            pick(pooling_method, "pooling_method"),
            pick(attn, "attn"),
            pick(normalized, "normalized"),
            **kwargs,
        )

    # ---- embeddings

    def tokenize(self, text: str, add_special_tokens=True, max_length=None) -> list[int]:
        ids = ([self.tokenizer.bos_id] if add_special_tokens else []) + list(self.tokenizer.encode(text))
        return ids[:max_length] if max_length else ids

    def encode(
        self,
        sentences,
        instruction="",
        batch_size=256,
        max_length=512,
        embed_instruction=False,
        get_cache=False,
        add_special_tokens=True,
        **unused,
    ):
        """Normalised float32 embeddings [N,D] ([D] for one string); with get_cache, (embeddings, Cache).

        Texts are `instruction + sentence + embed_eos`, BOS first, cut to max_length, right-padded.
        """
        if self.mode == "generative":
            raise UsageError(
                "encode needs mode='unified' or 'embedding' (this GritLM was loaded as 'generative')"
            )
        single = isinstance(sentences, str)
        sentences = [sentences] if single else list(sentences)
        if get_cache and len(sentences) > batch_size:
            raise UsageError("get_cache=True encodes one batch only: pass at most batch_size sentences")
        skip = 0
        if instruction and not embed_instruction and "mean" in self.pooling_method:
            skip = len(self.tokenize(instruction, add_special_tokens, max_length))
        embeddings, cache = [], None
        for start in range(0, len(sentences), batch_size):
            rows = [
                self.tokenize(instruction + s + self.embed_eos, add_special_tokens, max_length)
                for s in sentences[start : start + batch_size]
            ]
            hidden, valid, kv = self._hidden(rows, with_cache=get_cache)
            if self.projection is not None:
                hidden = hidden.astype(jnp.float32) @ self.projection["kernel"] + self.projection["bias"]
            lengths = jnp.full((valid.shape[0],), skip, jnp.int32)
            emb = pool(hidden, jnp.asarray(valid), lengths, self.pooling_method, self.normalized)
            embeddings.append(np.asarray(emb[: len(rows)]))
            if get_cache:
                cache = Cache(kv[0][:, : len(rows)], kv[1][:, : len(rows)], valid[: len(rows)])
        out = np.concatenate(embeddings, 0)
        out = out[0] if single else out
        return (out, cache) if get_cache else out

    def _hidden(self, rows: list[list[int]], with_cache=False):
        """Hidden states of right-padded rows under the embedding attention; batch and length bucketed."""
        length, batch = bucket(max(map(len, rows))), bucket(len(rows), 1)
        tokens = np.full((batch, length), self.tokenizer.pad_id, np.int32)
        valid = np.zeros((batch, length), bool)
        for i, r in enumerate(rows):
            tokens[i, : len(r)], valid[i, : len(r)] = r, True
        positions = np.broadcast_to(np.arange(length), (batch, length))
        kind = "bidirectional" if self.attn[:2] == "bb" else "causal"
        mask = masks.mask_from_positions(
            positions, positions, valid, kind, sliding_window=self.config.sliding_window
        )
        hidden, kv = _encode_pass(self.graphdef, self.state, jnp.asarray(tokens), mask, with_cache)
        return hidden, valid, kv

    def encode_queries(self, queries, **kwargs):
        return self.encode(queries, **kwargs)

    def encode_corpus(self, corpus, **kwargs):
        """Documents as strings, dicts with "text" (and "title"), or a dict of lists, as MTEB passes them."""
        if isinstance(corpus, dict):
            corpus = [{k: corpus[k][i] for k in corpus} for i in range(len(corpus["text"]))]
        texts = [
            (d["title"] + self.sep + d["text"]).strip()
            if "title" in d
            else d["text"].strip()
            if isinstance(d, dict)
            else d
            for d in corpus
        ]
        return self.encode(texts, **kwargs)

    # ---- generation

    def chat_prompt(self, messages) -> list[int]:
        """`<s><|user|>\\n{user}\\n<|assistant|>\\n{assistant}</s>...` ending ready for the assistant's turn."""
        ids = [self.tokenizer.bos_id]
        for i, m in enumerate(messages):
            if i:
                ids += self.tokenizer.encode("\n")
            if m["role"] == "user":
                ids += self.tokenizer.encode(f"<|user|>\n{m['content']}\n<|assistant|>\n")
            elif m["role"] == "assistant":
                ids += self.tokenizer.encode(m["content"].strip()) + [self.tokenizer.eos_id]
            else:
                raise UsageError(f"message {i}: role must be 'user' or 'assistant', got {m['role']!r}")
        return ids

    def rag_prompt(self, query: str, template: str = PROMPT_DOC_CACHING) -> list[int]:
        """The reference's prompt that follows a cached document (no BOS: it continues the cache)."""
        return self.tokenizer.encode(template.format(query=query))

    def _prompt_ids(self, prompt, continuing: bool) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenize(prompt, add_special_tokens=not continuing)
        if len(prompt) and isinstance(prompt[0], dict):
            return self.chat_prompt(prompt)
        return [int(t) for t in prompt]

    def generate(
        self,
        inputs,
        max_new_tokens=256,
        do_sample=False,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        seed=0,
        past_key_values=None,
        eos_token_id=None,
        **unused,
    ):
        """New token ids for a prompt (text, token ids or chat messages) or a list of prompts.

        past_key_values: a Cache (or a list, used one after another) from encode(get_cache=True); the
        prompt continues it (text prompts then get no BOS) at positions after the cached tokens. Decoding
        stops at EOS (included in the output) or after max_new_tokens.
        """
        if self.mode == "embedding":
            raise UsageError(
                "generate needs mode='unified' or 'generative' (this GritLM was loaded as 'embedding')"
            )
        single = _is_single_prompt(inputs)
        prompts = [inputs] if single else list(inputs)
        cache = None
        if past_key_values is not None:
            cache = Cache.concat(
                past_key_values if isinstance(past_key_values, (list, tuple)) else [past_key_values]
            )
        rows = [self._prompt_ids(p, continuing=cache is not None) for p in prompts]
        eos = self.tokenizer.eos_id if eos_token_id is None else eos_token_id
        out = self._decode(
            rows,
            cache,
            max_new_tokens,
            eos,
            np.random.default_rng(seed),
            dict(do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p),
        )
        return out[0] if single else out

    def _decode(self, rows, cache: Cache | None, max_new_tokens, eos, rng, sampling):
        """Prefill the prompts after the cached prefix, then decode one token at a time."""
        cfg, batch = self.config, len(rows)
        lengths = np.array([len(r) for r in rows])
        prefix = 0 if cache is None else cache.valid.shape[1]
        start = 0 if cache is None else cache.num_tokens  # positions continue after the cached tokens
        prompt_len = bucket(lengths.max())
        buffer = KVCache.empty(cfg, batch, bucket(prefix + prompt_len + max_new_tokens, 64))
        valid = np.zeros((batch, buffer.k.shape[2]), bool)
        if cache is not None:
            k = jnp.broadcast_to(cache.k, cache.k.shape[:1] + (batch,) + cache.k.shape[2:])
            v = jnp.broadcast_to(cache.v, k.shape)
            buffer = KVCache(*_place(buffer.k, buffer.v, k, v), jnp.asarray(prefix, jnp.int32))
            valid[:, :prefix] = cache.valid
        tokens = np.full((batch, prompt_len), self.tokenizer.pad_id, np.int32)
        for i, r in enumerate(rows):
            tokens[i, : len(r)] = r
            valid[i, prefix : prefix + len(r)] = True
        positions = start + np.broadcast_to(np.arange(prompt_len), (batch, prompt_len))
        slots = prefix + np.broadcast_to(np.arange(prompt_len), (batch, prompt_len))
        logits, buffer = _decode_pass(
            self.graphdef,
            self.state,
            jnp.asarray(tokens),
            self._gen_mask(slots, valid),
            jnp.asarray(positions),
            buffer,
            jnp.asarray(lengths - 1),
        )
        return self._decode_loop(
            logits, buffer, valid, prefix + prompt_len, start + lengths, max_new_tokens, eos, rng, sampling
        )

    def _decode_loop(
        self, logits, buffer, valid, first_slot, next_position, max_new_tokens, eos, rng, sampling
    ):
        """From the prefill's last logits: sample, write the token at the next shared slot, repeat.

        next_position [B]: each row's position for its first generated token. Stops when every row hit EOS.
        """
        batch = valid.shape[0]
        generated, done = [[] for _ in range(batch)], np.zeros(batch, bool)
        for step in range(max_new_tokens):
            new = sample(np.asarray(logits), rng, **sampling)
            for i in np.flatnonzero(~done):
                generated[i].append(int(new[i]))
            done |= new == eos
            if done.all() or step == max_new_tokens - 1:
                break
            slot = first_slot + step
            valid[:, slot] = True
            mask = self._gen_mask(np.full((batch, 1), slot), valid)
            logits, buffer = _decode_pass(
                self.graphdef,
                self.state,
                jnp.asarray(new[:, None], jnp.int32),
                mask,
                jnp.asarray(next_position[:, None] + step),
                buffer,
                jnp.zeros(batch, jnp.int32),
            )
        return generated

    def _gen_mask(self, q_slots, valid):
        """Causal over buffer slots, valid slots only: [B,T,S]."""
        size = valid.shape[1]
        kv_slots = np.broadcast_to(np.arange(size), valid.shape)
        mask = masks.mask_from_positions(
            jnp.asarray(q_slots),
            jnp.asarray(kv_slots),
            jnp.asarray(valid),
            "causal",
            sliding_window=self.config.sliding_window,
        )
        return mask


def _is_single_prompt(inputs) -> bool:
    """A string, a list of token ids or a list of chat messages is one prompt; a list of those is a batch."""
    if isinstance(inputs, str):
        return True
    if isinstance(inputs, np.ndarray):
        return inputs.ndim == 1
    return len(inputs) > 0 and isinstance(inputs[0], (dict, int, np.integer))


def _read_json(path):
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _param_dtype(params) -> str:
    dtype = str(next(iter(params.values())).dtype)
    return dtype if dtype in ("float32", "bfloat16", "float16") else "float32"
