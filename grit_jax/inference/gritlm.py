"""GritLM: one model that embeds and generates, with key/value-cache reuse for RAG (as the `gritlm` package).

    model = GritLM.from_pretrained("path/to/hf_dir_or_orbax_checkpoint")
    q = model.encode(["what is GRIT?"], instruction="<|user|>\\nRetrieve passages\\n<|embed|>\\n")
    d, doc_cache = model.encode([doc], instruction="<|embed|>\\n", get_cache=True)
    ids = model.generate(model.rag_prompt(query), past_key_values=doc_cache, max_new_tokens=64)
    ids = model.rag_generate(query, doc, mode="query-doc", max_new_tokens=64)  # inference/rag.py: four modes

Encoding follows the reference exactly: the caller passes the instruction prefix, BOS is added, padding is
on the right, and for mean-based pooling the first len(tokenize(instruction)) positions (with BOS) are left
out. Generation runs per-row positions over a fixed-size key/value buffer: prompt i occupies buffer slots
[P, P+len_i) after the cached prefix P, generated tokens follow at shared slots, and the mask (from
grit_jax.model.masks) lets each row see only its own valid slots. Shapes are rounded up to powers of two, so
new lengths within a bucket reuse the compiled functions; encode packs texts several to a row instead.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from grit_jax import hardware
from grit_jax.choices import MODES
from grit_jax.data import prompts as fmt
from grit_jax.data.padding import right_pad
from grit_jax.errors import UsageError
from grit_jax.inference import arguments, output_checks, packed_encode, placement, rag
from grit_jax.inference.decoding import _decode_pass, _encode_pass, _place, bucket, sample
from grit_jax.inference.rag import Cache
from grit_jax.model import KVCache, ModelConfig, Transformer, masks
from grit_jax.model.pooling import pool, project
from grit_jax.sharding import use_mesh
from grit_jax.weights.model_dir import load_pretrained

# The reference's attn: the first two letters are the embedding attention (bb bidirectional, anything else
# causal, None included: a model used for one task only); generation is always causal.
ATTNS = ("bbcc", "cccc", "bb", "cc", None)
PROMPT_DOC_CACHING = rag.TEMPLATES["doc"]


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
        mesh=None,
    ):
        if mode not in MODES:
            raise UsageError(f"mode must be one of {MODES}, got {mode!r}")
        if attn not in ATTNS:
            raise UsageError(f"attn must be one of {ATTNS} (as the reference), got {attn!r}")
        self.model, self.tokenizer, self.mode = model, tokenizer, mode
        self.pooling_method, self.attn, self.normalized, self.embed_eos = (
            pooling_method,
            attn,
            normalized,
            embed_eos,
        )
        self.projection = projection
        self.config: ModelConfig = model.config
        arguments.check_vocabulary(tokenizer.vocab_size, self.config.vocab_size)
        self.graphdef, self.state = nnx.split(model)
        self.mesh = placement.resolve_mesh(mesh)  # weights sharded as training shards them (placement.py)
        if self.mesh is not None:
            self.state = placement.shard_state(self.state, self.mesh)
            (self.projection,) = placement.replicate(self.mesh, projection)
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
        embed_eos="",
        mesh=None,
        adapter=None,
    ) -> GritLM:
        """From a Hugging Face directory (config.json + safetensors) or an orbax checkpoint (grit-convert
        hf-to-orbax dir, training step dir or work dir). Settings left None come from the dir's
        grit_config.json (for the reference's attn=None, which embeds causally, pass "cc"). `mesh`: a
        jax.sharding.Mesh or a dict of axis sizes ({"fsdp": 4, "tensor": 2}) to shard the weights over and
        split encode batches across (grit_jax.inference.placement); each weight is read straight into its
        shards (grit_jax.weights.loading). A mesh may span every host of a multi-host run: each host then
        makes the same calls and gets the same results. `adapter`: a PEFT LoRA directory (grit-convert
        lora-to-peft's, or peft's) trained on this base, merged into its weights as they load. Unknown
        keyword arguments raise TypeError."""
        hardware.quiet_platform()  # no libtpu errors on a machine without a TPU (unless JAX has started)
        mesh = placement.resolve_mesh(mesh)
        model, tokenizer, settings = load_pretrained(path, dtype, step, tokenizer, mesh=mesh, adapter=adapter)

        def pick(given, key):
            return settings[key] if given is None else given

        return cls(
            model,
            tokenizer,
            mode,
            pick(pooling_method, "pooling_method"),
            pick(attn, "attn"),
            pick(normalized, "normalized"),
            embed_eos=embed_eos,
            mesh=mesh,
        )

    # ---- embeddings

    def tokenize(self, text: str, add_special_tokens=True, max_length=None) -> list[int]:
        ids = (self.tokenizer.bos if add_special_tokens else []) + list(self.tokenizer.encode(text))
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
    ):
        """Normalised float32 embeddings [N,D] ([D] for one string); with get_cache, (embeddings, Cache).

        Texts are `instruction + sentence + embed_eos`, BOS first, cut to max_length; embedded several to a
        row (each attending only to itself, positions from 0) in passes of at most batch_size x the longest
        text's length (rounded up) tokens; with get_cache one right-padded batch in the given order.
        """
        if self.mode == "generative":
            raise UsageError(
                "encode needs mode='unified' or 'embedding' (this GritLM was loaded as 'generative')"
            )
        single = isinstance(sentences, str)
        sentences = [sentences] if single else list(sentences)
        arguments.check_sentences(sentences, instruction)
        if get_cache and len(sentences) > batch_size:
            raise UsageError("get_cache=True encodes one batch only: pass at most batch_size sentences")
        skip = self.instruction_length(instruction, embed_instruction, max_length, add_special_tokens)
        rows = [
            self.tokenize(instruction + s + self.embed_eos, add_special_tokens, max_length) for s in sentences
        ]
        try:  # with a cache one batch as given, else packed several to a row (inference/packed_encode.py)
            if get_cache:
                out, cache = self.embed_rows(rows, skip, True)
            else:
                out = packed_encode.encode_rows(self, rows, skip, batch_size)
        except output_checks.BadRow as e:
            raise e.named(f"sentence {e.row}") from None
        out = out[0] if single else out
        return (out, cache) if get_cache else out

    def embed_rows(self, rows: list[list[int]], skip: int = 0, with_cache=False):
        """Embeddings [len(rows),D] of token rows (BOS included) pooled after their first `skip` tokens,
        and with_cache their Cache (else None): one batch of encode, for callers that tokenized already.
        output_checks.BadRow names the first row with nothing to pool or a non-finite or all-zero result."""
        output_checks.check_poolable(rows, skip)
        hidden, valid, kv = self._hidden(rows, with_cache=with_cache)
        hidden = project(hidden, self.projection)
        lengths = np.full((valid.shape[0],), skip, np.int32)
        placed = placement.replicate(self.mesh, valid, lengths)
        emb = pool(hidden, *placed, self.pooling_method, normalize=self.normalized)
        cache = (
            Cache(kv[0][:, : len(rows)], kv[1][:, : len(rows)], valid[: len(rows)]) if with_cache else None
        )
        emb = placement.to_host(emb)[: len(rows)]
        output_checks.check_embeddings(emb)
        return emb, cache

    def instruction_length(
        self, instruction: str, embed_instruction=False, max_length=None, add_special_tokens=True
    ) -> int:
        """How many leading tokens (BOS included) mean pooling leaves out for this instruction."""
        if instruction and not embed_instruction and "mean" in self.pooling_method:
            return len(self.tokenize(instruction, add_special_tokens, max_length))
        return 0

    def _hidden(self, rows: list[list[int]], with_cache=False):
        """Hidden states of right-padded rows under the embedding attention; batch and length bucketed."""
        length, batch = bucket(max(map(len, rows))), placement.round_batch(len(rows), self.mesh, bucket)
        tokens, valid = right_pad(list(rows) + [[]] * (batch - len(rows)), length, self.tokenizer.pad_id)
        positions = np.broadcast_to(np.arange(length), (batch, length))
        kind = "bidirectional" if self.attn is not None and self.attn[:2] == "bb" else "causal"
        mask = masks.mask_from_positions(
            positions, positions, valid, kind, sliding_window=self.config.sliding_window
        )
        tokens, mask = placement.place_batch(self.mesh, tokens, mask)
        with use_mesh(self.mesh):
            hidden, kv = _encode_pass(
                self.graphdef, self.state, jnp.asarray(tokens), mask, with_cache=with_cache
            )
        return hidden, valid, kv

    def encode_queries(self, queries, **kwargs):
        return self.encode(queries, **kwargs)

    def encode_corpus(self, corpus, **kwargs):
        """Documents as strings or dicts with "text" (and "title", joined as title + " " + text, nothing
        stripped); one dict is one document, as in the reference."""
        if isinstance(corpus, dict):
            corpus = [corpus]
        return self.encode(corpus if isinstance(corpus, str) else [rag.doc_text(d) for d in corpus], **kwargs)

    # ---- generation

    def chat_prompt(self, messages) -> list[int]:
        """Token for token the training format: `<s>` + turns joined by `\\n`, each `<|user|>\\n{user}
        \\n<|assistant|>\\n{assistant}</s>` (each turn tokenized as training does), ending ready for the
        assistant's turn (or with the last assistant turn's `</s>`)."""
        ids = list(self.tokenizer.bos)
        for i, m in enumerate(messages):
            role = ("user", "assistant")[i % 2]
            if m["role"] != role:
                raise UsageError(f"message {i}: turns alternate user and assistant; expected {role!r}")
        for i in range(0, len(messages), 2):
            prefix = fmt.user_turn(messages[i]["content"], first=i == 0)
            if i + 1 == len(messages):
                return ids + self.tokenizer.encode(prefix)
            ids += self.tokenizer.encode(prefix + messages[i + 1]["content"].strip()) + [
                self.tokenizer.eos_id
            ]
        return ids

    def rag_prompt(self, query: str = "", mode: str = "doc", doc="", answer_prefix: str = "") -> list[int]:
        """The reference's prompt that follows the mode's cache (no BOS: it continues the cache)."""
        return self.tokenizer.encode(rag.prompt_text(mode, query, doc, answer_prefix))

    def rag_caches(self, query, doc, mode: str = "doc", max_length: int = 512) -> list[Cache]:
        """The mode's caches (grit_jax.inference.rag) of one query and document, or of lists of them (one per
        row)."""
        queries, docs = _rows(query), _rows(doc)
        return rag.caches(self, queries, docs, mode, max_length=max_length)

    def rag_generate(self, query, doc, mode="doc", answer_prefix="", *, max_length=512, **kwargs):
        """RAG with caching as the reference does it: caches of the mode, then its prompt; generate's
        arguments in kwargs. One query and document give one answer, lists one answer per row."""
        queries, docs = _rows(query), _rows(doc)
        if len(queries) != len(docs):
            raise UsageError(f"{len(queries)} queries but {len(docs)} documents: one of each per row")
        prompts = [self.rag_prompt(q, mode, d, answer_prefix) for q, d in zip(queries, docs)]
        out = self.generate(
            prompts, past_key_values=self.rag_caches(queries, docs, mode, max_length), **kwargs
        )
        return out[0] if isinstance(query, str) else out

    def _prompt_ids(self, prompt, continuing: bool, what: str) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenize(arguments.check_text(prompt, what), add_special_tokens=not continuing)
        if len(prompt) and isinstance(prompt[0], dict):
            return self.chat_prompt(prompt)
        return arguments.check_token_ids(prompt, self.config.vocab_size, what)

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
        arguments.check_generation(max_new_tokens, do_sample, temperature, top_k, top_p=top_p)
        single = _is_single_prompt(inputs)
        prompts = [inputs] if single else list(inputs)
        cache = None
        if past_key_values is not None:
            cache = Cache.concat(
                past_key_values if isinstance(past_key_values, (list, tuple)) else [past_key_values]
            )
        rows = [self._prompt_ids(p, cache is not None, f"prompt {i}") for i, p in enumerate(prompts)]
        arguments.check_prompt_rows(rows)
        eos = self.tokenizer.eos_id if eos_token_id is None else eos_token_id
        sampling = dict(do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p)
        out = self._decode(
            rows, cache, max_new_tokens, eos, rng=np.random.default_rng(seed), sampling=sampling
        )
        return out[0] if single else out

    def _decode(self, rows, cache: Cache | None, max_new_tokens, eos, *, rng, sampling):
        """Prefill the prompts after the cached prefix, then decode one token at a time."""
        cfg, batch = self.config, len(rows)
        lengths = np.array([len(r) for r in rows])
        prefix = 0 if cache is None else cache.valid.shape[1]
        start = np.zeros(batch, np.int64)  # each row continues after its own cached tokens
        if cache is not None:
            if cache.valid.shape[0] not in (1, batch):
                raise UsageError(f"a cache of {cache.valid.shape[0]} rows cannot prefix {batch} prompts")
            start = np.broadcast_to(cache.lengths, (batch,))
        prompt_len = bucket(lengths.max())
        buffer = KVCache.empty(cfg, batch, bucket(prefix + prompt_len + max_new_tokens, 64))
        (buffer,) = placement.replicate(self.mesh, buffer)
        valid = np.zeros((batch, buffer.k.shape[2]), bool)
        if cache is not None:
            k = jnp.broadcast_to(cache.k, cache.k.shape[:1] + (batch,) + cache.k.shape[2:])
            v = jnp.broadcast_to(cache.v, k.shape)
            buffer = KVCache(
                *_place(buffer.k, buffer.v, k, v), *placement.replicate(self.mesh, jnp.int32(prefix))
            )
            valid[:, :prefix] = cache.valid
        tokens = np.full((batch, prompt_len), self.tokenizer.pad_id, np.int32)
        for i, r in enumerate(rows):
            tokens[i, : len(r)] = r
            valid[i, prefix : prefix + len(r)] = True
        positions = start[:, None] + np.arange(prompt_len)[None]
        slots = prefix + np.broadcast_to(np.arange(prompt_len), (batch, prompt_len))
        logits, buffer = self._pass(tokens, self._gen_mask(slots, valid), positions, buffer, last=lengths - 1)
        loop = dict(next_position=start + lengths, max_new_tokens=max_new_tokens, eos=eos, rng=rng)
        return self._decode_loop(logits, buffer, valid, prefix + prompt_len, sampling=sampling, **loop)

    def _decode_loop(
        self, logits, buffer, valid, first_slot, *, next_position, max_new_tokens, eos, rng, sampling
    ):
        """From the prefill's last logits: sample, write the token at the next shared slot, repeat.

        next_position [B]: each row's position for its first generated token. Stops when every row hit EOS.
        """
        batch = valid.shape[0]
        generated, done = [[] for _ in range(batch)], np.zeros(batch, bool)
        for step in range(max_new_tokens):
            logits = placement.to_host(logits)
            output_checks.check_logits(logits, step)  # names the first prompt with non-finite logits
            new = sample(logits, rng, **sampling)
            for i in np.flatnonzero(~done):
                generated[i].append(int(new[i]))
            done |= new == eos
            if done.all() or step == max_new_tokens - 1:
                break
            slot = first_slot + step
            valid[:, slot] = True
            mask = self._gen_mask(np.full((batch, 1), slot), valid)
            positions = next_position[:, None] + step
            logits, buffer = self._pass(new[:, None], mask, positions, buffer, last=0 * new)
        return generated

    def _pass(self, tokens, mask, positions, buffer, *, last):
        """One decoding pass; on a mesh its inputs are replicated (every host passes the same ones)."""
        ints = [np.asarray(x, np.int32) for x in (tokens, positions, last)]
        tokens, positions, last, mask, buffer = placement.replicate(self.mesh, *ints, mask, buffer)
        arrays = dict(positions=jnp.asarray(positions), cache=buffer, last=jnp.asarray(last))
        return _decode_pass(self.graphdef, self.state, jnp.asarray(tokens), mask, **arrays)

    def _gen_mask(self, q_slots, valid):
        """Causal over the valid buffer slots: [B,T,S]. Slots are ordered by their token's index in the row
        (valid slots counted), so a sliding window counts tokens, not the padding slots between them."""
        index = np.cumsum(valid, axis=1) - 1
        return masks.mask_from_positions(
            jnp.asarray(np.take_along_axis(index, np.asarray(q_slots), axis=1)),
            jnp.asarray(index),
            jnp.asarray(valid),
            "causal",
            sliding_window=self.config.sliding_window,
        )


def _rows(texts) -> list:
    """One text (or document dict) as a list of one, a list as it is."""
    return [texts] if isinstance(texts, (str, dict)) else list(texts)


def _is_single_prompt(inputs) -> bool:
    """A string, a list of token ids or a list of chat messages is one prompt; a list of those is a batch."""
    if isinstance(inputs, str):
        return True
    if isinstance(inputs, np.ndarray):
        return inputs.ndim == 1
    return len(inputs) > 0 and isinstance(inputs[0], (dict, int, np.integer))
