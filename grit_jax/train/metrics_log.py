"""metrics.jsonl, TensorBoard and a console progress line of a training run, written by process 0 only;
eval_items.jsonl beside them holds each held-out evaluation's per-item values (train/heldout.py).

On resume, the lines a killed run wrote after the checkpoint it resumes from are dropped first, by step
number: they are logged again, so the file reads as one uninterrupted run. A damaged line is reported
with its line number and dropped alone.

A gs:// work directory gets the same files: a GCS object cannot be appended to, so they are written to
a local directory and uploaded whole (at most every SYNC_SECONDS, at every checkpoint, and at the end):
whatever a checkpoint resumes from is logged in the bucket before it.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

from grit_jax import storage

SYNC_SECONDS = 30.0
ITEMS_FILE = "eval_items.jsonl"


def _summary_writer():
    """tensorboardX's SummaryWriter, imported without torch: tensorboardX imports torch whenever it is
    installed (2-3 s at every start), and writing scalars needs none of it."""
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter
    else:
        sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX allows for
        try:
            from tensorboardX import SummaryWriter
        finally:
            del sys.modules["torch"]
    return SummaryWriter


class MetricsLog:
    """metrics.jsonl, TensorBoard and a console progress line, written by process 0 only."""

    def __init__(self, workdir, num_steps, enabled, start_step=0):
        self.enabled, self.num_steps, self.workdir = enabled, num_steps, workdir
        self.path = storage.join(workdir, "metrics.jsonl")
        self.remote = storage.is_url(workdir)
        self.local_dir = tempfile.mkdtemp(prefix="grit_jax_metrics_") if self.remote else workdir
        self.local_path, self.synced = os.path.join(self.local_dir, "metrics.jsonl"), time.monotonic()
        self.items_path = os.path.join(self.local_dir, ITEMS_FILE)
        if enabled:
            for name in ("metrics.jsonl", ITEMS_FILE):
                remote = storage.join(workdir, name)
                if self.remote and storage.isfile(remote):
                    with open(os.path.join(self.local_dir, name), "w", encoding="utf-8") as f:
                        f.write(storage.read_text(remote))
                self._truncate(os.path.join(self.local_dir, name), start_step)
            self.file = open(self.local_path, "a", encoding="utf-8")
            self.tb = _summary_writer()(
                os.path.join(self.local_dir, "tb"), purge_step=start_step + 1 if start_step else None
            )

    def _truncate(self, local_path, start_step):
        """Drop the lines a killed run wrote after the checkpoint we resume from (they are redone), by
        step number; a damaged line is reported and dropped alone, never the good lines around it."""
        if not os.path.exists(local_path):
            return
        with open(local_path, encoding="utf-8") as f:
            lines = f.readlines()
        kept = []
        for number, line in enumerate(lines, 1):
            try:
                step = int(json.loads(line)["step"])
            except (ValueError, KeyError, TypeError):
                if line.endswith("\n"):  # not the last line cut short by a kill: say so
                    name = os.path.basename(local_path)
                    print(
                        f"{storage.join(self.workdir, name)}:{number}: a damaged line (not a JSON record "
                        "with a step); dropped"
                    )
                continue
            if start_step and step <= start_step:
                kept.append(line)
        if kept != lines:
            with open(local_path + ".tmp", "w", encoding="utf-8") as f:
                f.writelines(kept)
            os.replace(local_path + ".tmp", local_path)

    def write(self, step, metrics):
        if not self.enabled:
            return
        record = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        for key, value in record.items():
            if key != "step":
                self.tb.add_scalar(key.replace("@", "_at_"), value, step)
        self.tb.flush()
        if time.monotonic() - self.synced > SYNC_SECONDS:
            self.sync()

    def write_items(self, step, items: dict):
        """One held-out evaluation's per-item values (lists), a line of eval_items.jsonl."""
        if self.enabled and items:
            with open(self.items_path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, **items}) + "\n")

    def sync(self):
        """Uploads metrics.jsonl and tb/ to a gs:// work directory (nothing to do for a local one)."""
        if self.enabled and self.remote:
            storage.upload_dir(self.local_dir, self.workdir)
            self.synced = time.monotonic()

    def progress(self, step, metrics, seconds_per_step, eta_seconds_per_step=None):
        """eta_seconds_per_step: the time of a step that did not compile (run_summary.StepTimes); None
        until one has run (no ETA yet: the steps so far were compiling)."""
        if not self.enabled:
            return
        remaining = max(self.num_steps - step, 0)
        eta = "after compilation" if eta_seconds_per_step is None else _hms(remaining * eta_seconds_per_step)
        shown = " ".join(
            f"{k} {metrics[k]:.4g}"
            for k in ("loss", "loss_emb", "loss_gen", "accuracy", "eval_mrr@10", "eval_loss_gen")
            if k in metrics
        )
        print(f"step {step}/{self.num_steps} {shown} | {seconds_per_step:.3f} s/step, ETA {eta}", flush=True)

    def close(self):
        if self.enabled:
            self.file.close()
            self.tb.close()
            self.sync()


def _hms(seconds: float) -> str:
    """H:MM:SS, hours past 24 included (a 7B run's ETA is days)."""
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
