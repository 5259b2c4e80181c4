"""Held-out evaluation during training: retrieval MRR@10 and recall@1, and the generative loss.

The retrieval corpus is every passage (positives and hard negatives) of the held-out records; each
query is ranked against all of them with the embedding pass the model is trained with.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from grit_jax import sharding
from grit_jax.data.heldout_sets import eval_generative_batches, eval_retrieval_arrays
from grit_jax.model.batch import PaddedChat, PaddedText
from grit_jax.retrieval.metrics import first_relevant, metrics_from_ranks, reciprocal_rank
from grit_jax.run_config import bucket_length, length_buckets
from grit_jax.train import objective as objective_lib

ENCODE_ROWS = 64  # sequences per encoding call: one compiled shape


class Evaluator:
    def __init__(self, config, mesh, graphdef, pad_id: int):
        self.config, self.mesh = config, mesh
        self.retrieval = eval_retrieval_arrays(config.data, config.log.eval_max_queries, pad_id)
        self.gen_batches = eval_generative_batches(
            config.data, pad_id=pad_id, max_chats=config.log.eval_max_chats
        )
        if config.objective.mode == "embedding":
            self.gen_batches = []
        if config.objective.mode == "generative":
            self.retrieval = None
        self.replicated = NamedSharding(mesh, PartitionSpec())
        objective = config.objective

        # Outputs replicated: every host reads whole embeddings and losses (a batch-sharded output spans
        # other hosts' devices, which a host cannot fetch).
        @functools.partial(jax.jit, out_shardings=self.replicated)
        def encode(params, projection, rows: PaddedText):
            with sharding.use_mesh(mesh):
                return objective_lib.encode(nnx.merge(graphdef, params), projection, rows, objective)

        @functools.partial(jax.jit, out_shardings=self.replicated)
        def generative(params, tokens, mask, loss_mask):
            with sharding.use_mesh(mesh):
                model = nnx.merge(graphdef, params)
                chat = PaddedChat(tokens, mask, loss_mask)
                out = model(tokens, objective_lib.training_attention(model, chat, "causal"))
                per_row = jax.vmap(lambda *row: objective_lib.token_cross_entropy(*(x[None] for x in row)))
                return per_row(model.logits(out.hidden), tokens, loss_mask)  # [rows] loss sums, targets

        self._encode, self._generative = encode, generative

    @property
    def enabled(self) -> bool:
        return self.retrieval is not None or bool(self.gen_batches)

    def _put(self, array):
        return jax.make_array_from_process_local_data(self.replicated, np.asarray(array))

    def _embed(self, state, prefix):
        """Embeddings of every query or passage, encoded ENCODE_ROWS at a time. With length buckets the
        rows go shortest first and each call is cut to the bucket of its longest row (padding only)."""
        arrays = [self.retrieval[f"{prefix}_{k}"] for k in ("tokens", "mask", "instruction_len")]
        n, buckets = len(arrays[0]), length_buckets(self.config.data, prefix)
        lengths = arrays[1].sum(1)
        order = np.argsort(lengths, kind="stable") if len(buckets) > 1 else np.arange(n)
        out = []
        for start in range(0, n, ENCODE_ROWS):
            chosen = order[start : start + ENCODE_ROWS]
            width = bucket_length(buckets, int(lengths[chosen].max()))
            rows = [a[chosen][:, :width] if a.ndim == 2 else a[chosen] for a in arrays]
            pad = ENCODE_ROWS - len(rows[0])
            rows = [np.concatenate([r, np.zeros((pad, *r.shape[1:]), r.dtype)]) for r in rows]
            emb = self._encode(state.model_params, state.projection, PaddedText(*map(self._put, rows)))
            out.append(np.asarray(jax.device_get(emb))[: ENCODE_ROWS - pad])
        embeddings = np.empty_like(np.concatenate(out))
        embeddings[order] = np.concatenate(out)
        return embeddings

    def __call__(self, state) -> dict[str, float]:
        """The held-out metrics; self.items then holds what they average, per held-out item: each query's
        reciprocal rank, each chat's [loss sum, targets] (paired comparisons between runs: paper_claims)."""
        metrics, self.items = {}, {}
        if self.retrieval is not None:
            q, p = self._embed(state, "query"), self._embed(state, "passage")
            first = first_relevant(q @ p.T, self.retrieval["relevant"])
            metrics.update(metrics_from_ranks(first))
            self.items["reciprocal_rank"] = [reciprocal_rank(f) for f in first]
        if self.gen_batches:
            chats = []
            for batch in self.gen_batches:
                totals, counts = self._generative(
                    state.model_params,
                    *map(self._put, (batch["gen_tokens"], batch["gen_mask"], batch["gen_loss_mask"])),
                )
                chats += [[float(t), float(c)] for t, c in zip(totals, counts) if c > 0]  # padding rows: none
            total, count = np.sum(chats, axis=0) if chats else (0.0, 0.0)
            metrics["eval_loss_gen"] = float(total) / max(float(count), 1.0)
            self.items["chat_loss"] = chats
        return metrics
