"""The grain pipeline: deterministic, resumable, host-sharded batches from prepared data.

Step s of the embedding stream is global batch j = s mod E of epoch s // E (E batches per epoch) of
the epoch plan (grit_jax.data.sampling). The generative stream takes rows s*Bg .. s*Bg+Bg-1 of an
endless sequence of permutations (`use_unique_indices`: without replacement, refilled when exhausted)
or of independent draws. Every random choice is a function of (seed, step, global row), so a host
reads only its rows [p*B/P, (p+1)*B/P) and a restored run sees exactly the batches it would have seen.
A row is read (``embedding_row``, ``generative_row``) and a row's sampled passage lengths computed
(``passage_lengths``) in one place each; a padder or a packer, as the layout says (grit_jax.batch_layout),
forms the fields from them: padded to max_len or to the length bucket of the whole global batch's longest
row (grit_jax.data.padding), or packed, the whole global batch planned alike on every host
(grit_jax.data.packing). Both decide from the length index (grit_jax.data.lengths) and the global plan,
so all hosts form the same shapes.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import threading
from typing import Any

import grain
import numpy as np

from grit_jax.batch_layout import padded_layout
from grit_jax.data import prepared_files, sampling, sources, tfds_io
from grit_jax.data.lengths import load_lengths, per_row
from grit_jax.data.packing import Packer
from grit_jax.data.padding import Padder
from grit_jax.data.sampling import epoch_plan, sample_negatives, steps_per_epoch  # noqa: F401 (re-exported)
from grit_jax.data.tokenizer import Tokenizer
from grit_jax.errors import DataError, UsageError
from grit_jax.model.batch import Batch

_ENDLESS = 1 << 40


@dataclasses.dataclass(frozen=True)
class OpenedSources:
    """One kind's (embedding or generative) prepared sources: the open datasets, their sizes, and their
    per-example length indexes (None where the padder or packer does not need them)."""

    sources: list
    sizes: list[int]
    lengths: list | None


class HostBatches:
    """Maps a step to this host's share of that step's global batch (a grit_jax.model.batch.Batch).

    It reads rows and the length index; a padder (grit_jax.data.padding) or a packer
    (grit_jax.data.packing), as the layout says, turns them into the batch's fields. hosts: (this host's
    index, the number of hosts); layout: {field: FieldPadding or FieldPacking} (grit_jax.batch_layout).
    The length index is opened only where the former needs it (packing, or a field with length buckets)."""

    def __init__(
        self, config, manifest: dict, *, data_dir: str, pad_id: int, mode: str, hosts=(0, 1), layout
    ):
        self.config, self.pad_id, self.mode = config, pad_id, mode
        self.embed = mode in ("unified", "embedding")
        self.gen = mode in ("unified", "generative")
        if mode not in ("unified", "embedding", "generative"):
            raise UsageError(f"unknown mode {mode!r}")
        self.host, self.hosts = hosts
        packed = any(f.packed for f in layout.values())
        self.former = Packer(layout, pad_id, *hosts) if packed else Padder(layout, pad_id)
        limits = manifest["limits"]
        for field in ("query_max_len", "passage_max_len", "generative_max_len"):
            if config[field] > limits[field]:
                raise DataError(
                    f"data.{field}={config[field]} exceeds the {limits[field]} the data in "
                    f"{data_dir} was prepared with; prepare it again with a larger limit"
                )
        self.rows = {}
        self.opened: dict[str, OpenedSources] = {}
        for name, batch_key, on in (
            ("embedding", "embedding_batch_size", self.embed),
            ("generative", "generative_batch_size", self.gen),
        ):
            if on:
                self._open(name, batch_key, manifest, data_dir)
        if self.embed:
            self.epoch_steps = steps_per_epoch(self.opened["embedding"].sizes, config.embedding_batch_size)
        if self.gen:
            self.gen_offsets = np.cumsum([0] + self.opened["generative"].sizes)
            if self.opened["generative"].lengths:  # indexed like gen_offsets: every source's, concatenated
                self.gen_token_lens = np.concatenate([n["tokens"] for n in self.opened["generative"].lengths])
        self._plan_lock = threading.Lock()

    def _open(self, name: str, batch_key: str, manifest: dict, data_dir: str):
        """Open the kind's sources (and its length index where the padder or packer needs it)."""
        config, mode = self.config, self.mode
        entries = [e for e in manifest["train"].get(name, []) if e["num_examples"]]
        if not entries:
            raise DataError(f"{data_dir}: no {name} training data (mode {mode!r})")
        size = config[batch_key]
        if size % self.hosts:
            raise UsageError(f"data.{batch_key}={size} is not divisible by {self.hosts} processes")
        share = size // self.hosts
        self.rows[name] = (self.host * share, (self.host + 1) * share)
        opened = [tfds_io.open_source(os.path.join(data_dir, e["dir"])) for e in entries]
        fields = ("query", "passage") if name == "embedding" else ("generative",)
        index = None
        if self.former.needs_lengths(fields):
            index = [load_lengths(name, data_dir, e, s) for e, s in zip(entries, opened)]
        self.opened[name] = OpenedSources(opened, [len(s) for s in opened], index)
        if name == "embedding":
            self._check_instruction_lengths(entries)
        if name == "embedding" and config.train_group_size > 1:
            short = [e["name"] for e in entries if e["min_negatives"] == 0]
            if short:
                raise DataError(
                    f"train_group_size={config.train_group_size} needs hard negatives, but "
                    f"sources {short} have records without any"
                )

    def _check_instruction_lengths(self, entries: list[dict]):
        """Every text must keep a token after its instruction once truncated to the configured length.
        Rows are cut at max_len only: a length bucket always holds its batch's longest row whole."""
        for entry in entries:
            for field in ("query", "passage"):
                longest = entry.get(f"max_{field}_instruction_len", 0)
                if longest >= self.config[f"{field}_max_len"]:
                    raise DataError(
                        f"data.{field}_max_len={self.config[f'{field}_max_len']} leaves nothing to embed for "
                        f"{field} texts of source {entry['name']!r} with {longest} instruction tokens (BOS "
                        f"included); use a larger {field}_max_len"
                    )

    @functools.lru_cache(maxsize=2)  # noqa: B019 (one HostBatches per run: nothing leaks)
    def _plan(self, epoch: int) -> np.ndarray:
        return epoch_plan(
            self.opened["embedding"].sizes,
            self.config.embedding_batch_size,
            self.config.seed,
            epoch,
            shuffle=self.config.shuffle,
        )

    def batch_plan(self, step: int) -> np.ndarray:
        """[B, 2] (source, index) of every row of the global embedding batch of ``step``."""
        epoch, j = divmod(step, self.epoch_steps)
        with self._plan_lock:
            return self._plan(epoch)[j]

    @functools.lru_cache(maxsize=2)  # noqa: B019 (one HostBatches per run: nothing leaks)
    def _generative_order(self, epoch: int) -> np.ndarray:
        rng = sampling.rng(self.config.seed, sampling.GEN_STREAM, epoch)
        return rng.permutation(int(self.gen_offsets[-1]))

    def __call__(self, step: int) -> Batch:
        fields = {}
        if self.embed:
            fields.update(self.former.embedding(self, int(step)))
        if self.gen:
            fields["generative"] = self.former.generative(self, int(step))
        return Batch(**fields)

    def embedding_row(self, step: int, plan: np.ndarray, row: int) -> tuple:
        """(query, its instruction length, [the train_group_size sampled passages], [their instruction
        lengths]) of global row ``row`` of batch ``plan`` (read from its record)."""
        source, index = plan[row]
        record = self.opened["embedding"].sources[source][int(index)]
        num_pos, num_passages = int(record["num_pos"]), len(record["passage_lens"])
        chosen = sampling.chosen_passages(
            self.config.seed,
            self.config.train_group_size,
            step,
            row,
            num_pos=num_pos,
            num_passages=num_passages,
        )
        ends = np.cumsum(record["passage_lens"])
        passages = [record["passages"][ends[k] - record["passage_lens"][k] : ends[k]] for k in chosen]
        instruction_lens = [record["passage_instruction_lens"][k] for k in chosen]
        return record["query"], record["query_instruction_len"], passages, instruction_lens

    def passage_lengths(self, step: int, plan: np.ndarray, row: int) -> np.ndarray:
        """Token lengths of the passages global row ``row`` samples (from the length index alone)."""
        lengths, index = self.opened["embedding"].lengths[plan[row, 0]], int(plan[row, 1])
        first, end = lengths["passage_offsets"][index : index + 2]
        num_pos = int(lengths["num_pos"][index])
        chosen = sampling.chosen_passages(
            self.config.seed,
            self.config.train_group_size,
            step,
            int(row),
            num_pos=num_pos,
            num_passages=int(end - first),
        )
        return lengths["passage_lens"][first + np.asarray(chosen)]

    def global_lengths(self, step: int) -> dict[str, np.ndarray]:
        """{field: lengths of all the step's sequences, cut at max_len}, from the length index alone."""
        config, out = self.config, {}
        if self.embed:
            plan = self.batch_plan(step)
            query = per_row(self.opened["embedding"].lengths, "query", plan)
            passages = np.concatenate([self.passage_lengths(step, plan, row) for row in range(len(plan))])
            out.update(
                query=np.minimum(query, config.query_max_len),
                passage=np.minimum(passages, config.passage_max_len),
            )
        if self.gen:
            out["generative"] = self.generative_lengths(step)
        return out

    def generative_lengths(self, step: int) -> np.ndarray:
        """Lengths of all the step's chats, cut at max_len, from the length index alone."""
        rows = range(self.config.generative_batch_size)
        lengths = np.asarray([int(self.gen_token_lens[self.generative_index(step, r)]) for r in rows])
        return np.minimum(lengths, self.config.generative_max_len)

    def generative_index(self, step: int, row: int) -> int:
        config, total = self.config, int(self.gen_offsets[-1])
        if config.use_unique_indices:
            epoch, position = divmod(step * config.generative_batch_size + row, total)
            return int(self._generative_order(epoch)[position]) if config.shuffle else position
        return int(sampling.rng(config.seed, sampling.GEN_DRAW, step, row).integers(total))

    def generative_row(self, step: int, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, loss mask) of global row ``row`` of the generative batch of ``step``."""
        index = self.generative_index(step, row)
        source = int(np.searchsorted(self.gen_offsets, index, side="right") - 1)
        record = self.opened["generative"].sources[source][index - int(self.gen_offsets[source])]
        target = record["targets"].astype(bool)
        if self.config.prefixlm:
            target[: int(record["last_start"])] = False
        return record["tokens"], target


def _fingerprint(config, manifest: dict, mode: str) -> str:
    keys = (
        "embedding_batch_size",
        "generative_batch_size",
        "query_max_len",
        "passage_max_len",
        "generative_max_len",
        "train_group_size",
        "seed",
        "shuffle",
        "use_unique_indices",
        "prefixlm",
    )
    described = {k: config[k] for k in keys}
    described.update(
        mode=mode,
        sources=[
            [e["name"], e.get("hash")] + ([e["files"]] if e.get("files") else [])
            for kind in ("embedding", "generative")
            for e in manifest["train"].get(kind, [])
        ],
    )
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


class TrainIterator:
    """Endless iterator of host batches; get_state()/set_state() resume at the exact next batch."""

    def __init__(self, batches: HostBatches, config, fingerprint: str, start_step: int = 0):
        self.batches, self.config, self.fingerprint = batches, config, fingerprint
        self._start(start_step)

    def _start(self, step: int):
        self.step = step
        options = grain.ReadOptions(
            num_threads=self.config.num_threads, prefetch_buffer_size=self.config.prefetch_buffer_size
        )
        dataset = grain.MapDataset.range(step, _ENDLESS).map(self.batches)
        self._iterator = iter(dataset.to_iter_dataset(options))

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        batch = next(self._iterator)
        self.step += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable: the next step and a fingerprint of the data config and sources."""
        return {"next_step": self.step, "fingerprint": self.fingerprint}

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("fingerprint") != self.fingerprint:
            raise UsageError(
                "the saved data iterator state belongs to another data config or data set "
                f"({state.get('fingerprint')} != {self.fingerprint})"
            )
        self.close()
        self._start(int(state["next_step"]))

    def close(self):
        close = getattr(self._iterator, "close", None)
        if close:
            close()


def load_tokenizer(config) -> Tokenizer:
    """The tokenizer of `config.tokenizer` ("" = the copy in data_dir), with the prepared data's pad id."""
    pad_id = sources.read_manifest(config.data_dir)["pad_id"]
    return Tokenizer(config.tokenizer or config.data_dir, pad_id=pad_id)


def make_train_iterator(
    config,
    tokenizer: Tokenizer | None = None,
    *,
    process_index: int = 0,
    process_count: int = 1,
    mode: str = "unified",
    layout=None,
) -> TrainIterator:
    """This host's share of each global batch of prepared data in `config.data_dir`.

    mode: "unified" (embedding and generative fields), "embedding" or "generative"; layout: {field:
    FieldPadding or FieldPacking} (grit_jax.batch_layout), by default padded as `config` says."""
    manifest = sources.read_manifest(config.data_dir)
    tokenizer = tokenizer or load_tokenizer(config)
    if tokenizer.fingerprint != manifest["tokenizer"]:
        raise DataError(f"{config.data_dir} was tokenized with another tokenizer than {tokenizer.model_path}")
    prepared_files.check(config.data_dir, manifest)
    batches = HostBatches(
        config,
        manifest,
        data_dir=config.data_dir,
        pad_id=tokenizer.pad_id,
        mode=mode,
        hosts=(process_index, process_count),
        layout=layout or padded_layout(config, mode),
    )
    return TrainIterator(batches, config, _fingerprint(config, manifest, mode))


def planned_counts(config, layout, steps: int, *, hosts: int = 1, mode: str = "unified") -> dict:
    """{field: [real tokens, packed positions, attended pairs (bidirectional)]} summed over the first
    ``steps`` steps of prepared data (``config``: the data group), from its length index alone: what
    packing computes on it (benchmarks/packing.py, grit-aot). The global packing does not depend on the
    number of hosts, as long as they split the rows evenly."""
    manifest = sources.read_manifest(config.data_dir)
    batches = HostBatches(
        config, manifest, data_dir=config.data_dir, pad_id=0, mode=mode, hosts=(0, hosts), layout=layout
    )
    totals = {field: [0, 0, 0] for field in layout}
    for step in range(steps):
        for field, plan in batches.former.plans(batches, step).items():
            lengths = batches.global_lengths(step)[field].astype(np.int64)
            totals[field][0] += int(lengths.sum())
            totals[field][1] += plan.shape[0] * plan.shape[1]
            totals[field][2] += int((lengths * lengths).sum())
    return totals
