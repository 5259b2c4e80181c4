"""Packed host batches (data.packing): the sequences grit_jax.data.pipeline would pad, packed into rows.

Every host finds the lengths of every sequence of the GLOBAL batch from the length index (and, for the
passages, the same sampling as the padded pipeline), packs the whole batch (grit_jax.data.packing: the
same shape and rows on every host, so all compile the same shapes), then reads the records of the
sequences of its own rows, wherever they sit in the batch, and of its own share of the batch (the
instruction lengths of its [N/H] per-sequence arrays). Nothing is cut beyond the field's *_max_len, as
padded; a step's batch depends only on the step, so a resumed run sees the same batches.
"""

from __future__ import annotations

import functools

import numpy as np

from grit_jax.data import sampling, sources
from grit_jax.data.lengths import load_lengths, per_row
from grit_jax.data.packing import FieldPlan, host_sequences, pack_host, plan_field
from grit_jax.data.pipeline import HostBatches, make_train_iterator
from grit_jax.errors import UsageError
from grit_jax.packed_batch import FieldPacking


class PackedHostBatches(HostBatches):
    """HostBatches whose fields are packed (layout: grit_jax.packed_batch.packing_layout)."""

    def __init__(self, config, manifest, data_dir, pad_id, mode, process_index, process_count, layout):
        self.layout: dict[str, FieldPacking] = layout
        self.host, self.hosts = process_index, process_count
        super().__init__(config, manifest, data_dir, pad_id, mode, process_index, process_count)
        for f in layout.values():
            if f.unit % process_count:
                raise UsageError(
                    f"data.packing: {process_count} hosts cannot each take whole {f.field} rows; use a "
                    "data-parallel size that is a multiple of the number of hosts"
                )

    def _length_index(self, kind, data_dir, entries, opened):
        return [load_lengths(kind, data_dir, e, s) for e, s in zip(entries, opened)]  # always needed

    @functools.lru_cache(maxsize=2)  # noqa: B019 (one PackedHostBatches per run: nothing leaks)
    def plans(self, step: int) -> dict[str, FieldPlan]:
        """{field: the packing of the whole global batch of ``step``}, the same on every host."""
        return {field: plan_field(n, self.layout[field]) for field, n in self.global_lengths(step).items()}

    def global_lengths(self, step: int) -> dict[str, np.ndarray]:
        """{field: lengths of all the step's sequences}, from the length index alone (no record read)."""
        out = {}
        if self.embed:
            epoch, j = divmod(step, self.epoch_steps)
            with self._plan_lock:
                plan = self._plan(epoch)[j]
            out.update(query=self._query_lengths(plan), passage=self._passage_lengths(step, plan))
        if self.gen:
            out["generative"] = self._generative_lengths(step)
        return out

    def embedding_batch(self, step: int) -> dict[str, np.ndarray]:
        epoch, j = divmod(step, self.epoch_steps)
        with self._plan_lock:
            plan = self._plan(epoch)[j]
        plans, group = self.plans(step), self.config.train_group_size
        start, stop = self.rows["embedding"]
        queries = host_sequences(plans["query"], self.host, self.hosts)
        passages = host_sequences(plans["passage"], self.host, self.hosts)
        rows = sorted({*range(start, stop), *queries, *(i // group for i in passages)})
        read = {row: self.embedding_row(step, plan, row) for row in rows}
        out = {
            **self._pack(step, "query", {i: read[i][0] for i in queries}),
            **self._pack(step, "passage", {i: read[i // group][2][i % group] for i in passages}),
        }
        out["query_instruction_len"] = np.asarray([read[r][1] for r in range(start, stop)], np.int32)
        out["passage_instruction_len"] = np.asarray(
            [n for r in range(start, stop) for n in read[r][3]], np.int32
        )
        return out

    def _pack(self, step: int, field: str, sequences, extra=None) -> dict[str, np.ndarray]:
        """This host's rows of ``field`` (sequences: {global index: tokens} of at least its rows')."""
        plan = self.plans(step)[field]
        return pack_host(plan, self.layout[field], self.host, self.hosts, sequences, extra, self.pad_id)

    def _query_lengths(self, plan) -> np.ndarray:
        return np.minimum(per_row(self.opened["embedding"].lengths, "query", plan), self.config.query_max_len)

    def _passage_lengths(self, step: int, plan) -> np.ndarray:
        """Lengths of the passages every global row samples (grit_jax.data.sampling), in batch order."""
        config, out = self.config, []
        for row, (source, index) in enumerate(plan):
            lengths = self.opened["embedding"].lengths[source]
            first, end = lengths["passage_offsets"][int(index) : int(index) + 2]
            num_pos = int(lengths["num_pos"][index])
            chosen = sampling.chosen_passages(
                config.seed, config.train_group_size, step, row, num_pos, int(end - first)
            )
            out.append(lengths["passage_lens"][first + np.asarray(chosen)])
        return np.minimum(np.concatenate(out), config.passage_max_len)

    def generative_batch(self, step: int) -> dict[str, np.ndarray]:
        chats = host_sequences(self.plans(step)["generative"], self.host, self.hosts)
        read = {i: self.generative_row(step, i) for i in chats}
        masks = {i: loss_mask for i, (_, loss_mask) in read.items()}
        return self._pack(step, "generative", {i: t for i, (t, _) in read.items()}, {"gen_loss_mask": masks})

    def _generative_lengths(self, step: int) -> np.ndarray:
        rows = range(self.config.generative_batch_size)
        lengths = np.asarray([int(self.gen_token_lens[self.generative_index(step, r)]) for r in rows])
        return np.minimum(lengths, self.config.generative_max_len)


def packed_train_iterator(config, layout, tokenizer=None, process_index=0, process_count=1, mode="unified"):
    """make_train_iterator (grit_jax.data.pipeline) with packed fields (layout: grit_jax.packed_batch)."""

    def host_batches(*args):
        return PackedHostBatches(*args, layout)

    return make_train_iterator(config, tokenizer, process_index, process_count, mode, host_batches)


def train_iterator(config, layout, tokenizer=None, process_index=0, process_count=1, mode="unified"):
    """Packed batches when ``layout`` (data.packing) is not empty, else padded ones."""
    if layout:
        return packed_train_iterator(config, layout, tokenizer, process_index, process_count, mode)
    return make_train_iterator(config, tokenizer, process_index, process_count, mode)


def planned_counts(config, layout, steps: int, hosts: int = 1, mode: str = "unified") -> dict:
    """{field: [real tokens, packed positions, attended pairs (bidirectional)]} summed over the first
    ``steps`` steps of prepared data (``config``: the data group), from its length index alone: what
    packing computes on it (benchmarks/packing.py, grit-aot). The global packing does not depend on the
    number of hosts, as long as they split the rows evenly."""
    manifest = sources.read_manifest(config.data_dir)
    batches = PackedHostBatches(config, manifest, config.data_dir, 0, mode, 0, hosts, layout)
    totals = {field: [0, 0, 0] for field in layout}
    for step in range(steps):
        for field, lengths in batches.global_lengths(step).items():
            lengths = lengths.astype(np.int64)
            totals[field][0] += int(lengths.sum())
            rows, row_length = batches.plans(step)[field].shape
            totals[field][1] += rows * row_length
            totals[field][2] += int((lengths * lengths).sum())
    return totals
