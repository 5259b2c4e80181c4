"""The grain pipeline: deterministic, resumable, host-sharded batches from prepared data.

Step s of the embedding stream is global batch j = s mod E of epoch s // E (E batches per epoch) of
the epoch plan (grit_jax.data.sampling). The generative stream takes rows s*Bg .. s*Bg+Bg-1 of an
endless sequence of permutations (`use_unique_indices`: without replacement, refilled when exhausted)
or of independent draws. Every random choice is a function of (seed, step, global row), so a host
reads only its rows [p*B/P, (p+1)*B/P) and a restored run sees exactly the batches it would have seen.
Each field is padded to its max_len, or with data.length_buckets to the smallest bucket that holds the
longest row of the whole global batch: every host finds that row from the length index
(grit_jax.data.lengths) and the global plan, so all hosts pad alike and compile the same shapes.
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

from grit_jax.data import prepared_files, sampling, sources, tfds_io
from grit_jax.data.lengths import load_lengths, per_row
from grit_jax.data.padding import right_pad
from grit_jax.data.sampling import epoch_plan, sample_negatives, steps_per_epoch  # noqa: F401 (re-exported)
from grit_jax.data.tokenizer import Tokenizer
from grit_jax.errors import DataError, UsageError
from grit_jax.run_config import bucket_length, length_buckets

_ENDLESS = 1 << 40


@dataclasses.dataclass(frozen=True)
class OpenedSources:
    """One kind's (embedding or generative) prepared sources: the open datasets, their sizes, and their
    per-example length indexes (None when no field of the kind is bucketed)."""

    sources: list
    sizes: list[int]
    lengths: list | None


class HostBatches:
    """Maps a step to this host's share of that step's global batch (a dict of numpy arrays)."""

    def __init__(
        self,
        config,
        manifest: dict,
        data_dir: str,
        pad_id: int,
        mode: str,
        process_index: int,
        process_count: int,
    ):
        self.config, self.pad_id, self.mode = config, pad_id, mode
        self.embed = mode in ("unified", "embedding")
        self.gen = mode in ("unified", "generative")
        if mode not in ("unified", "embedding", "generative"):
            raise UsageError(f"unknown mode {mode!r}")
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
            if not on:
                continue
            entries = [e for e in manifest["train"].get(name, []) if e["num_examples"]]
            if not entries:
                raise DataError(f"{data_dir}: no {name} training data (mode {mode!r})")
            size = config[batch_key]
            if size % process_count:
                raise UsageError(f"data.{batch_key}={size} is not divisible by {process_count} processes")
            share = size // process_count
            self.rows[name] = (process_index * share, (process_index + 1) * share)
            opened = [tfds_io.open_source(os.path.join(data_dir, e["dir"])) for e in entries]
            self.opened[name] = OpenedSources(
                opened, [len(s) for s in opened], self._length_index(name, data_dir, entries, opened)
            )
            if name == "embedding":
                self._check_instruction_lengths(entries)
            if name == "embedding" and config.train_group_size > 1:
                short = [e["name"] for e in entries if e["min_negatives"] == 0]
                if short:
                    raise DataError(
                        f"train_group_size={config.train_group_size} needs hard negatives, but "
                        f"sources {short} have records without any"
                    )
        if self.embed:
            self.epoch_steps = steps_per_epoch(self.opened["embedding"].sizes, config.embedding_batch_size)
        if self.gen:
            self.gen_offsets = np.cumsum([0] + self.opened["generative"].sizes)
            if self.opened["generative"].lengths:  # indexed like gen_offsets: every source's, concatenated
                self.gen_token_lens = np.concatenate([n["tokens"] for n in self.opened["generative"].lengths])
        self._plan_lock = threading.Lock()

    def _length_index(self, kind: str, data_dir: str, entries: list[dict], opened: list) -> list | None:
        """Every source's length index when one of the kind's fields is bucketed, else None (not needed)."""
        fields = ("query", "passage") if kind == "embedding" else ("generative",)
        if all(len(length_buckets(self.config, f)) == 1 for f in fields):
            return None
        return [load_lengths(kind, data_dir, e, s) for e, s in zip(entries, opened)]

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
            self.config.shuffle,
        )

    @functools.lru_cache(maxsize=2)  # noqa: B019 (one HostBatches per run: nothing leaks)
    def _generative_order(self, epoch: int) -> np.ndarray:
        rng = sampling.rng(self.config.seed, sampling.GEN_STREAM, epoch)
        return rng.permutation(int(self.gen_offsets[-1]))

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        batch = {}
        if self.embed:
            batch.update(self.embedding_batch(int(step)))
        if self.gen:
            batch.update(self.generative_batch(int(step)))
        return batch

    def embedding_batch(self, step: int) -> dict[str, np.ndarray]:
        epoch, j = divmod(step, self.epoch_steps)
        with self._plan_lock:
            plan = self._plan(epoch)[j]
        queries, q_lens, passages, p_lens = [], [], [], []
        start, stop = self.rows["embedding"]
        for row in range(start, stop):
            query, query_instruction_len, chosen, chosen_lens = self.embedding_row(step, plan, row)
            queries.append(query)
            q_lens.append(query_instruction_len)
            passages += chosen
            p_lens += chosen_lens
        query_len, passage_len = self._embedding_lengths(step, plan)
        query_tokens, query_mask = right_pad(queries, query_len, self.pad_id)
        passage_tokens, passage_mask = right_pad(passages, passage_len, self.pad_id)
        return {
            "query_tokens": query_tokens,
            "query_mask": query_mask,
            "query_instruction_len": np.asarray(q_lens, np.int32),
            "passage_tokens": passage_tokens,
            "passage_mask": passage_mask,
            "passage_instruction_len": np.asarray(p_lens, np.int32),
        }

    def embedding_row(self, step: int, plan: np.ndarray, row: int) -> tuple:
        """(query, its instruction length, [the train_group_size sampled passages], [their instruction
        lengths]) of global row ``row`` of batch ``plan`` (read from its record)."""
        source, index = plan[row]
        record = self.opened["embedding"].sources[source][int(index)]
        num_pos, num_passages = int(record["num_pos"]), len(record["passage_lens"])
        chosen = sampling.chosen_passages(
            self.config.seed, self.config.train_group_size, step, row, num_pos, num_passages
        )
        ends = np.cumsum(record["passage_lens"])
        passages = [record["passages"][ends[k] - record["passage_lens"][k] : ends[k]] for k in chosen]
        instruction_lens = [record["passage_instruction_lens"][k] for k in chosen]
        return record["query"], record["query_instruction_len"], passages, instruction_lens

    def _embedding_lengths(self, step: int, plan: np.ndarray) -> tuple[int, int]:
        """Padded (query, passage) lengths of global batch ``plan``: the buckets of its longest query and
        longest sampled passage over ALL its rows (every host computes the same from the length index).
        Only rows whose longest passage could exceed the bucket of the positives are sampled."""
        config = self.config
        query_buckets, passage_buckets = length_buckets(config, "query"), length_buckets(config, "passage")
        if not self.opened["embedding"].lengths:
            return query_buckets[-1], passage_buckets[-1]
        indexes = self.opened["embedding"].lengths
        query = bucket_length(query_buckets, int(per_row(indexes, "query", plan).max()))
        if len(passage_buckets) == 1:
            return query, passage_buckets[0]
        longest = int(per_row(indexes, "shortest_positive", plan).max())  # a positive is always sampled
        over = per_row(indexes, "longest_passage", plan) > bucket_length(passage_buckets, longest)
        for row in np.flatnonzero(over):
            lengths, index = self.opened["embedding"].lengths[plan[row, 0]], int(plan[row, 1])
            first, end = lengths["passage_offsets"][index : index + 2]
            num_pos = int(lengths["num_pos"][index])
            chosen = sampling.chosen_passages(
                config.seed, config.train_group_size, step, int(row), num_pos, int(end - first)
            )
            longest = max(longest, int(lengths["passage_lens"][first + np.asarray(chosen)].max()))
        return query, bucket_length(passage_buckets, longest)

    def generative_index(self, step: int, row: int) -> int:
        config, total = self.config, int(self.gen_offsets[-1])
        if config.use_unique_indices:
            epoch, position = divmod(step * config.generative_batch_size + row, total)
            return int(self._generative_order(epoch)[position]) if config.shuffle else position
        return int(sampling.rng(config.seed, sampling.GEN_DRAW, step, row).integers(total))

    def _generative_length(self, step: int) -> int:
        """Padded length of the global generative batch of ``step``: the bucket of its longest row."""
        buckets = length_buckets(self.config, "generative")
        if len(buckets) == 1:
            return buckets[0]
        rows = range(self.config.generative_batch_size)
        longest = max(int(self.gen_token_lens[self.generative_index(step, r)]) for r in rows)
        return bucket_length(buckets, longest)

    def generative_batch(self, step: int) -> dict[str, np.ndarray]:
        start, stop = self.rows["generative"]
        rows, targets = zip(*(self.generative_row(step, row) for row in range(start, stop)))
        length = self._generative_length(step)
        tokens, mask = right_pad(rows, length, self.pad_id)
        loss_mask, _ = right_pad(targets, length, False, bool)
        return {"gen_tokens": tokens, "gen_mask": mask, "gen_loss_mask": loss_mask & mask}

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

    def __next__(self) -> dict[str, np.ndarray]:
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
    process_index: int = 0,
    process_count: int = 1,
    mode: str = "unified",
    host_batches=HostBatches,
) -> TrainIterator:
    """This host's share of each global batch of prepared data in `config.data_dir`.

    mode: "unified" (embedding and generative fields), "embedding" or "generative"; host_batches: the
    HostBatches class (grit_jax.data.packed_pipeline's for data.packing)."""
    manifest = sources.read_manifest(config.data_dir)
    tokenizer = tokenizer or load_tokenizer(config)
    if tokenizer.fingerprint != manifest["tokenizer"]:
        raise DataError(f"{config.data_dir} was tokenized with another tokenizer than {tokenizer.model_path}")
    prepared_files.check(config.data_dir, manifest)
    batches = host_batches(
        config, manifest, config.data_dir, tokenizer.pad_id, mode, process_index, process_count
    )
    return TrainIterator(batches, config, _fingerprint(config, manifest, mode))
