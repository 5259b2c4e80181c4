"""Where a training run's wall time goes (goodput): WORKDIR/goodput.jsonl, one record per attempt (each
start of grit-train in the work dir), rewritten whole at every log step, every checkpoint save and the
end, by process 0 only (each host measures its own time; process 0's is written).

A record's seconds, each measured on this attempt's clock from the start of training (after the program
loaded and joined the other hosts):
  productive          train steps that ran a program already compiled (batch to device, step, metrics)
  compile             each step that met a new batch shape: tracing, compiling (or loading from the
                      compilation cache) and running it once
  data_wait           blocked on the host batch iterator
  checkpoint_save     in save calls: the synchronous part, waiting for the previous asynchronous save,
                      listing a finished save's files, the final wait for the last one, and uploading
                      metrics before each save
  checkpoint_restore  finding, verifying and reading the checkpoint a resumed run starts from
  evaluation          held-out evaluations at eval steps (their compilation included)
  lost_to_restart     productive seconds of earlier attempts spent on steps past the checkpoint this
                      attempt resumed from: computed again (steps after an attempt's last record are
                      not known, so this is a lower bound)
The rest of the wall time is start-up (config, mesh, data, weights), logging and shutdown.

Over all attempts (``totals``): productive = the attempts' productive - lost_to_restart, and goodput =
productive / wall. ``python -m grit_jax.train.goodput WORKDIR`` prints that line (launch/tpu.sh keep
reads the records itself, with gcloud).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time

from grit_jax import storage

FILE = "goodput.jsonl"
BUCKETS = ("compile", "data_wait", "checkpoint_save", "checkpoint_restore", "evaluation")
WORDS = dict(
    compile="compile", data_wait="data wait", checkpoint_save="checkpoint save",
    checkpoint_restore="checkpoint restore", evaluation="evaluation", lost_to_restart="lost to restarts",
)  # fmt: skip


class Goodput:
    """One attempt's seconds per bucket; ``started`` is its time.perf_counter() at the start."""

    def __init__(self, workdir: str, main: bool, started: float):
        self.path, self.main, self.started = storage.join(workdir, FILE), main, started
        self.epoch = time.time() - (time.perf_counter() - started)  # the start, as a date
        self.seconds = dict.fromkeys(BUCKETS, 0.0)
        self.productive, self.lost = 0.0, 0.0
        self.start_step = self.last_step = 0
        self.checkpoints: list[list] = []  # [step, productive seconds through it] per save
        self.earlier: list[dict] = []

    @contextlib.contextmanager
    def timer(self, bucket: str | None):
        """Adds the time inside the block to ``bucket`` (None: to none)."""
        begun = time.perf_counter()
        try:
            yield
        finally:
            if bucket is not None:
                self.seconds[bucket] += time.perf_counter() - begun

    def begin(self, start_step: int):
        """The attempt trains from ``start_step``: what earlier attempts computed past it is lost."""
        self.start_step = self.last_step = start_step
        if self.main:
            self.earlier = read_records(self.path)
            self.lost = lost_seconds(self.earlier, start_step)
            self.write()

    def step(self, step: int, seconds: float, compiled: bool):
        if compiled:
            self.seconds["compile"] += seconds
        else:
            self.productive += seconds
        self.last_step = step

    def saved(self, step: int):
        """A checkpoint of ``step`` was saved: a later attempt resuming there keeps the steps before it."""
        self.checkpoints.append([step, self.productive])
        self.write()

    def record(self) -> dict:
        seconds = dict(
            wall=time.perf_counter() - self.started, productive=self.productive, **self.seconds,
            lost_to_restart=self.lost,
        )  # fmt: skip
        return {
            "attempt": len(self.earlier) + 1,
            "started": round(self.epoch, 3),  # a Unix time: the gap to the next attempt's is downtime
            "start_step": self.start_step,
            "last_step": self.last_step,
            **{k: round(v, 4) for k, v in seconds.items()},
            "checkpoints": [[step, round(s, 4)] for step, s in self.checkpoints],
        }

    def write(self):
        """Rewrites goodput.jsonl whole (atomically: storage.write_text), this attempt's record last."""
        if self.main:
            lines = [json.dumps(r) for r in [*self.earlier, self.record()]]
            storage.write_text(self.path, "\n".join(lines) + "\n")

    def summary(self) -> str:
        return summary_line([*self.earlier, self.record()])


def read_records(path: str) -> list[dict]:
    """The records in ``path`` (none when absent); a damaged line (cut short) is skipped."""
    if not storage.isfile(path):
        return []
    records = []
    for line in storage.read_text(path).splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and {"start_step", "last_step", "productive"} <= set(record):
            records.append(record)
    return records


def _through(record: dict, step: int) -> float:
    """Productive seconds of ``record``'s attempt through ``step`` (its last checkpoint at or before
    it: a lower bound between checkpoints)."""
    if step <= record["start_step"]:
        return 0.0
    if step >= record["last_step"]:
        return float(record["productive"])
    return max([float(s) for at, s in record.get("checkpoints", []) if at <= step], default=0.0)


def lost_seconds(records: list[dict], resume_step: int) -> float:
    """Productive seconds of earlier attempts on steps after ``resume_step``, each counted once: an
    attempt's steps past the start of the attempt after it were counted when that one started."""
    lost, end = 0.0, None
    for record in reversed(records):
        stop = record["last_step"] if end is None else end
        if stop > resume_step:
            lost += max(
                0.0, _through(record, stop) - _through(record, max(resume_step, record["start_step"]))
            )
        if record["start_step"] <= resume_step:
            break
        end = record["start_step"]
    return lost


def totals(records: list[dict]) -> dict:
    """Seconds per bucket summed over attempts; productive net of lost_to_restart; other the rest."""
    total = {k: sum(float(r.get(k, 0.0)) for r in records) for k in ("wall", "productive", *WORDS)}
    total["productive"] -= total["lost_to_restart"]
    total["other"] = max(0.0, total["wall"] - total["productive"] - sum(total[k] for k in WORDS))
    total["goodput"] = total["productive"] / total["wall"] if total["wall"] > 0 else 0.0
    return total


def summary_line(records: list[dict]) -> str:
    total = totals(records)
    parts = ", ".join(f"{WORDS.get(k, k)} {total[k]:.1f} s" for k in ("productive", *WORDS, "other"))
    return (
        f"goodput: {total['goodput']:.3f} of {total['wall']:.1f} s wall over {len(records)} attempt(s): "
        f"{parts}"
    )


if __name__ == "__main__":  # python -m grit_jax.train.goodput WORKDIR
    found = read_records(storage.join(sys.argv[1], FILE)) if len(sys.argv) == 2 else None
    if not found:
        sys.exit(f"usage: python -m grit_jax.train.goodput WORKDIR (a work dir with {FILE})")
    print(summary_line(found))
