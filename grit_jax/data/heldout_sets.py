"""The held-out sets a training run evaluates on (grit-data prepare's eval split), as arrays."""

from __future__ import annotations

import os

import numpy as np

from grit_jax.data import sources, tfds_io
from grit_jax.data.padding import right_pad
from grit_jax.data.pipeline import load_tokenizer
from grit_jax.run_config import bucket_length, length_buckets


def _eval_records(config, kind: str) -> list[dict]:
    manifest = sources.read_manifest(config.data_dir)
    records = []
    for entry in manifest.get("eval", {}).get(kind, []):
        if entry["num_examples"]:
            source = tfds_io.open_source(os.path.join(config.data_dir, entry["dir"]))
            records.extend(source[i] for i in range(len(source)))
    return records


def eval_retrieval_arrays(config, max_queries: int = 0, pad_id: int | None = None) -> dict | None:
    """Held-out retrieval set as fixed-shape arrays, or None if the data has no eval embedding split.

    Corpus = every distinct passage (positives and hard negatives) of the eval records, once each: one
    record's hard negative is often another's positive, and a copy would rank twice (passages are compared
    as the model sees them: cut at data.passage_max_len). `relevant` [Nq, Np]
    bool marks each query's positives. Keys: query_tokens/mask/instruction_len [Nq, Lq],
    passage_tokens/mask/instruction_len [Np, Lp], relevant. For MRR@10 and recall@1."""
    records = _eval_records(config, "embedding")[: max_queries or None]
    if not records:
        return None
    pad_id = load_tokenizer(config).pad_id if pad_id is None else pad_id
    index, passages, p_lens, positives = {}, [], [], []  # index: (tokens, instruction length) -> row
    for record in records:
        ends = np.cumsum(record["passage_lens"])
        rows = []
        for k, end in enumerate(ends):
            tokens = record["passages"][end - record["passage_lens"][k] : end][: config.passage_max_len]
            key = (tokens.tobytes(), int(record["passage_instruction_lens"][k]))
            if key not in index:
                index[key] = len(passages)
                passages.append(tokens)
                p_lens.append(key[1])
            rows.append(index[key])
        positives.append(rows[: int(record["num_pos"])])
    relevant = np.zeros((len(records), len(passages)), bool)
    for i, rows in enumerate(positives):
        relevant[i, rows] = True
    query_tokens, query_mask = right_pad([r["query"] for r in records], config.query_max_len, pad_id)
    passage_tokens, passage_mask = right_pad(passages, config.passage_max_len, pad_id)
    return {
        "query_tokens": query_tokens,
        "query_mask": query_mask,
        "query_instruction_len": np.asarray([r["query_instruction_len"] for r in records], np.int32),
        "passage_tokens": passage_tokens,
        "passage_mask": passage_mask,
        "passage_instruction_len": np.asarray(p_lens, np.int32),
        "relevant": relevant,
    }


def eval_generative_batches(
    config, batch_size: int = 0, pad_id: int | None = None, max_chats=0
) -> list[dict]:
    """Held-out generative examples as gen_* batches of `batch_size` rows (default
    data.generative_batch_size); the last batch is padded with rows whose masks are all False.
    Each batch is padded to the smallest of data.length_buckets.generative that holds its longest row."""
    records = _eval_records(config, "generative")
    records = records[:max_chats] if max_chats else records
    pad_id = load_tokenizer(config).pad_id if pad_id is None else pad_id
    size = batch_size or config.generative_batch_size
    batches = []
    for start in range(0, len(records), size):
        chunk = records[start : start + size]
        rows = [r["tokens"] for r in chunk] + [np.zeros(0, np.int32)] * (size - len(chunk))
        targets = [r["targets"].astype(bool) for r in chunk] + [np.zeros(0, bool)] * (size - len(chunk))
        if config.prefixlm:
            for target, record in zip(targets, chunk):
                target[: int(record["last_start"])] = False
        length = bucket_length(length_buckets(config, "generative"), max(len(r) for r in rows))
        tokens, mask = right_pad(rows, length, pad_id)
        loss_mask, _ = right_pad(targets, length, False, bool)
        batches.append({"gen_tokens": tokens, "gen_mask": mask, "gen_loss_mask": loss_mask & mask})
    return batches
