"""What a training run is, said once at its start (weights, parameters, mesh, data, batch, steps, compile
cache); the check that a recipe naming a base model starts from its weights; and step times that leave
compilation out of the ETA.
"""

from __future__ import annotations

import math
import statistics
from collections import deque

import jax

from grit_jax.errors import UsageError
from grit_jax.run_config import uses
from grit_jax.weights.hf import ignored_config_keys


def check_weights(config) -> None:
    """A recipe that names its base model (model.base_model, configs/gritlm.py) does not silently train
    that architecture from random weights: it needs model.hf_dir or model.init_checkpoint, or
    model.random_init=True said out loud."""
    model = config.model
    base = model.get("base_model", "")
    if base and not (model.hf_dir or model.init_checkpoint or model.gguf or model.get("random_init", False)):
        raise UsageError(
            f"this recipe starts from {base} but no weights are given: pass --config.model.hf_dir=DIR "
            f"(its Hugging Face download) or --config.model.init_checkpoint=DIR, or "
            "--config.model.random_init=True to train it from random weights"
        )


def weight_source(config, resume_step: int | None, checkpoints: str) -> str:
    if resume_step is not None:
        return f"resumed from checkpoint step {resume_step} in {checkpoints}"
    if config.model.init_checkpoint:
        return f"model.init_checkpoint {config.model.init_checkpoint}"
    if config.model.hf_dir:
        return f"model.hf_dir {config.model.hf_dir}"
    return f"random init (model.preset {config.model.preset}, seed {config.seed})"


def ignored_lines(config, resume_step: int | None) -> list[str]:
    """The keys of model.hf_dir's config.json that are read as metadata (no effect on the model), said
    once; none when the weights come from elsewhere."""
    model = config.model
    if resume_step is not None or model.init_checkpoint or not model.hf_dir:
        return []
    ignored = ignored_config_keys(model.hf_dir)
    return [f"config.json:   ignored (no effect on the model): {', '.join(ignored)}"] if ignored else []


def _count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def _sources(manifest: dict, kind: str, shown: int = 6) -> tuple[int, str]:
    entries = manifest.get("train", {}).get(kind, [])
    total = sum(e["num_examples"] for e in entries)
    parts = [f"{e['name']} {e['num_examples']:,}" for e in entries[:shown]]
    more = f", ... {len(entries) - shown} more" if len(entries) > shown else ""
    return total, f"{total:,} examples in {len(entries)} source(s) ({', '.join(parts)}{more})"


def batch_tokens(config) -> tuple[list[str], int]:
    """The batch of one step in words, and its padded tokens (the most a step processes)."""
    data, words, tokens = config.data, [], 0
    if uses(config, "embedding"):
        b, g = data.embedding_batch_size, data.train_group_size
        tokens += b * (data.query_max_len + g * data.passage_max_len)
        words.append(
            f"embedding {b} queries x {data.query_max_len} + {b * g} passages x {data.passage_max_len}"
        )
    if uses(config, "generative"):
        b = data.generative_batch_size
        tokens += b * data.generative_max_len
        words.append(f"generative {b} x {data.generative_max_len}")
    return words, tokens


def summary(config, setup, manifest: dict, resume_step, *, checkpoints: str, compile_cache: str) -> str:
    """One block: where the weights come from and everything that sizes the run."""
    params = sum(math.prod(a.shape) for a in jax.tree.leaves(setup.abstract.params))
    mesh = " ".join(f"{k}={v}" for k, v in setup.mesh.shape.items())
    device = jax.devices()[0]
    words, tokens = batch_tokens(config)
    lines = [
        f"weights:       {weight_source(config, resume_step, checkpoints)}",
        *ignored_lines(config, resume_step),
        f"parameters:    {_count(params)} ({config.model.dtype} compute, {config.model.param_dtype} weights)",
        f"mesh:          {mesh} over {jax.device_count()} {device.device_kind} device(s), "
        f"{jax.process_count()} host(s)"
        + (
            f" in {config.mesh.slices} slices (only data spans them)"
            if config.mesh.get("slices", 1) > 1
            else ""
        ),
    ]
    for kind, size in (("embedding", config.data.embedding_batch_size),
                       ("generative", config.data.generative_batch_size)):  # fmt: skip
        if uses(config, kind):
            total, described = _sources(manifest, kind)
            epochs = config.num_steps * size / total if total else 0.0
            lines.append(f"data {kind + ':':<11}{described}; {epochs:.2f} epoch(s)")
    lines += [
        f"global batch:  {'; '.join(words)}: up to {tokens:,} tokens per step",
        f"steps:         {config.num_steps} (from {resume_step or 0}; checkpoint every "
        f"{config.checkpoint.every_steps}, log every {config.log.every_steps})",
        f"compile cache: {compile_cache}",
    ]
    return "\n".join(["run:", *("  " + line for line in lines)])


class StepTimes:
    """Seconds per step for the ETA: a step that met a new batch shape (it compiled) is left out; the
    median of the last ``window`` others. None until one such step has run."""

    def __init__(self, window: int = 50):
        self.times: deque[float] = deque(maxlen=window)
        self.shapes: set = set()

    def add(self, seconds: float, shape) -> bool:
        """Counts one step; True when it met a new shape (it compiled)."""
        if shape in self.shapes:
            self.times.append(seconds)
            return False
        self.shapes.add(shape)
        return True

    def per_step(self) -> float | None:
        return statistics.median(self.times) if self.times else None
