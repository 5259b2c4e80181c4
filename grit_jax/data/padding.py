"""Right padding: of token rows to one length (the one definition for the pipeline and GritLM), and of a
step's fields to their length (``Padder``, grit_jax.data.pipeline's former for padded layouts)."""

from __future__ import annotations

import numpy as np

from grit_jax.data.lengths import per_row
from grit_jax.model.batch import PaddedChat, PaddedText
from grit_jax.run_config import bucket_length


def right_pad(rows, length: int, pad_id: int, dtype=np.int32) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [len(rows), length], valid [len(rows), length] bool) of rows cut at `length`."""
    tokens = np.full((len(rows), length), pad_id, dtype)
    valid = np.zeros((len(rows), length), bool)
    for i, row in enumerate(rows):
        n = min(len(row), length)
        tokens[i, :n] = row[:n]
        valid[i, :n] = True
    return tokens, valid


class Padder:
    """Pads this host's rows of each field to its max_len or, with data.length_buckets, to the smallest
    bucket that holds the longest row of the whole global batch (every host finds it from the length
    index: the same on all). layout: {field: FieldPadding} (grit_jax.batch_layout)."""

    def __init__(self, layout, pad_id: int):
        self.layout, self.pad_id = layout, pad_id

    def needs_lengths(self, fields) -> bool:
        """Whether the length index of ``fields`` is needed (only to choose among buckets)."""
        return any(len(self.layout[f].lengths) > 1 for f in fields if f in self.layout)

    def embedding(self, reader, step: int) -> dict[str, PaddedText]:
        """{query, passage} of this host's rows (reader: grit_jax.data.pipeline.HostBatches)."""
        plan = reader.batch_plan(step)
        queries, q_lens, passages, p_lens = [], [], [], []
        for row in range(*reader.rows["embedding"]):
            query, query_instruction_len, chosen, chosen_lens = reader.embedding_row(step, plan, row)
            queries.append(query)
            q_lens.append(query_instruction_len)
            passages += chosen
            p_lens += chosen_lens
        query_len, passage_len = self.embedding_lengths(reader, step, plan)
        return {
            "query": PaddedText(*right_pad(queries, query_len, self.pad_id), np.asarray(q_lens, np.int32)),
            "passage": PaddedText(
                *right_pad(passages, passage_len, self.pad_id), np.asarray(p_lens, np.int32)
            ),
        }

    def embedding_lengths(self, reader, step: int, plan: np.ndarray) -> tuple[int, int]:
        """Padded (query, passage) lengths of global batch ``plan``: the buckets of its longest query and
        longest sampled passage over ALL its rows (every host computes the same from the length index).
        Only rows whose longest passage could exceed the bucket of the positives are sampled."""
        query_buckets, passage_buckets = self.layout["query"].lengths, self.layout["passage"].lengths
        indexes = reader.opened["embedding"].lengths
        if not indexes:
            return query_buckets[-1], passage_buckets[-1]
        query = bucket_length(query_buckets, int(per_row(indexes, "query", plan).max()))
        if len(passage_buckets) == 1:
            return query, passage_buckets[0]
        longest = int(per_row(indexes, "shortest_positive", plan).max())  # a positive is always sampled
        over = per_row(indexes, "longest_passage", plan) > bucket_length(passage_buckets, longest)
        for row in np.flatnonzero(over):
            longest = max(longest, int(reader.passage_lengths(step, plan, int(row)).max()))
        return query, bucket_length(passage_buckets, longest)

    def generative(self, reader, step: int) -> PaddedChat:
        """This host's rows of the generative field (reader: grit_jax.data.pipeline.HostBatches)."""
        rows, targets = zip(*(reader.generative_row(step, row) for row in range(*reader.rows["generative"])))
        buckets = self.layout["generative"].lengths
        length = buckets[0]
        if len(buckets) > 1:  # the bucket of the global batch's longest row
            length = bucket_length(buckets, int(reader.generative_lengths(step).max()))
        tokens, mask = right_pad(rows, length, self.pad_id)
        loss_mask, _ = right_pad(targets, length, False, bool)
        return PaddedChat(tokens, mask, loss_mask & mask)
