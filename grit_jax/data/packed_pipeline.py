"""Packed host batches (data.packing): the sequences grit_jax.data.pipeline would pad, packed into rows.

Every host finds the lengths of every sequence of the GLOBAL batch from the length index (and, for the
passages, the same sampling as the padded pipeline), packs every host's share to count the rows the
fullest (host, group) needs, and takes the smallest row count of the grid that holds it
(grit_jax.packed_batch): all hosts agree, so all compile the same shapes. Then it packs its own share into its
rows. Nothing is cut beyond the field's *_max_len, as padded; a step's batch depends only on the step, so
a resumed run sees the same batches.
"""

from __future__ import annotations

import numpy as np

from grit_jax.data import sampling, sources
from grit_jax.data.lengths import load_lengths, per_row
from grit_jax.data.packing import field_sequences, pack_host, rows_needed
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
            if (f.sequences // process_count) % f.groups or f.unit % process_count:
                raise UsageError(
                    f"data.packing: {process_count} hosts cannot each take whole {f.field} chunks; use a "
                    "data-parallel size that is a multiple of the number of hosts"
                )

    def _length_index(self, kind, data_dir, entries, opened):
        return [load_lengths(kind, data_dir, e, s) for e, s in zip(entries, opened)]  # always needed

    def row_count(self, field: str, global_lengths) -> int:
        """The global row count of a field whose sequences (all hosts') have ``global_lengths``."""
        f = self.layout[field]
        share = len(global_lengths) // self.hosts
        per_host = [global_lengths[p * share : (p + 1) * share] for p in range(self.hosts)]
        return f.rows_for(rows_needed(per_host, f), self.hosts)

    def _pack(self, field: str, sequences, global_lengths, extra=None) -> dict[str, np.ndarray]:
        rows = self.row_count(field, global_lengths)
        return pack_host(sequences, self.layout[field], rows, self.host, self.hosts, extra, self.pad_id)

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
        padded = super().embedding_batch(step)
        epoch, j = divmod(step, self.epoch_steps)
        with self._plan_lock:
            plan = self._plan(epoch)[j]
        out = {}
        for field, lengths in (
            ("query", self._query_lengths(plan)),
            ("passage", self._passage_lengths(step, plan)),
        ):
            tokens, _ = field_sequences(padded, field)
            out.update(self._pack(field, tokens, lengths))
            out[f"{field}_instruction_len"] = padded[f"{field}_instruction_len"]
        return out

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
        padded = super().generative_batch(step)
        tokens, extra = field_sequences(padded, "gen")
        return self._pack("generative", tokens, self._generative_lengths(step), extra)

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
    packing computes on it, for ``hosts`` hosts (benchmarks/packing.py, grit-aot)."""
    manifest = sources.read_manifest(config.data_dir)
    batches = PackedHostBatches(config, manifest, config.data_dir, 0, mode, 0, hosts, layout)
    totals = {field: [0, 0, 0] for field in layout}
    for step in range(steps):
        for field, lengths in batches.global_lengths(step).items():
            lengths = lengths.astype(np.int64)
            totals[field][0] += int(lengths.sum())
            totals[field][1] += batches.row_count(field, lengths) * layout[field].length
            totals[field][2] += int((lengths * lengths).sum())
    return totals
