"""A work dir holds what its run trains from, and a resume may not change the run behind the user's back.

When a run starts at step 0 it records, in WORKDIR/origin/ (grit_jax.weights.checkpoints.RUN_ORIGIN):
`model_config.json` (every ModelConfig field as the run resolved it: the base's config.json as it was then)
and the tokenizer it trains with (tokenizer.model or tokenizer.json, with the Hugging Face files beside
it); the base's fingerprint is WORKDIR/base.json (grit_jax/train/lora_base.py). Export and
`GritLM.from_pretrained(workdir)` read these, never the base dir's or the data dir's files as they are by
then. A resume compares its config and the base's model config with what the run started with and
refuses any difference that changes the run, by name, unless `resume_changes` lists it; accepted changes
are printed and appended to WORKDIR/config_changes.jsonl before config.json is rewritten.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

from grit_jax import storage
from grit_jax.errors import CheckpointError, UsageError
from grit_jax.weights.checkpoints import MODEL_CONFIG, RUN_FIELDS, RUN_ORIGIN
from grit_jax.weights.model_dir import TOKENIZER_FILES

CHANGES = "config_changes.jsonl"
# Fields that may change on resume because they do not change what is trained, step by step: when and how
# progress is logged, evaluated and saved; how the same global computation is laid out and run (mesh,
# rematerialisation, attention and MoE kernels: the same math, as after a preemption onto another slice);
# how fast the same batches are read; when a run of non-finite steps stops it. (resume_changes itself
# is not compared.)
FREE = (
    "log.",
    "checkpoint.",
    "compile_cache_dir",
    "mesh.",
    "max_nonfinite_steps",
    "model.remat_policy",
    "model.attention_impl",
    "model.moe_impl",
    "objective.gen_loss_block",  # the same loss, its logits computed in blocks
    "data.num_threads",
    "data.prefetch_buffer_size",
    "data.length_buckets.",  # the same rows, losses and updates, padded less (README "Length buckets")
)
# Accepting another base (resume_changes) accepts the model config it brings
BASE_FIELDS = ("model.preset", "model.hf_dir", "model.init_checkpoint")
# ModelConfig fields that the training config sets (compared there, not again as the base's)
_SET_BY_CONFIG = set(RUN_FIELDS) | {"lora_rank", "lora_alpha", "lora_targets"}


def check_not_inside_inputs(config, workdir: str) -> None:
    """Refuses a --workdir that is, or is inside, a directory the run reads (its config.json, tokenizer,
    weights or data would be overwritten or mixed with the run's own files)."""
    inputs = {
        "model.hf_dir": config.model.hf_dir,
        "model.init_checkpoint": config.model.init_checkpoint,
        "model.lora.init_adapter": config.model.lora.init_adapter,
        "data.data_dir": config.data.data_dir,
    }
    here = _normalised(workdir)
    for field, value in inputs.items():
        if not value:
            continue
        there = _normalised(value)
        if here == there or here.startswith(there.rstrip("/") + "/"):
            where = "is" if here == there else "is inside"
            raise UsageError(
                f"--workdir {workdir} {where} {field}={value}, which this run reads; choose a work dir "
                "outside it"
            )


def _normalised(path: str) -> str:
    text = os.fspath(path)
    return text.rstrip("/") if storage.is_url(text) else os.path.realpath(text)


def record(setup, workdir: str, start: int, changes: list[tuple], *, tokenizer_path: str) -> None:
    """Process 0, once a start is accepted: logs a resume's accepted changes, and writes WORKDIR/origin/
    (the resolved model config and the tokenizer) at step 0 or when a resume changed either."""
    log_changes(workdir, start, changes)
    if start == 0 or any(c[0].startswith("model_config.") for c in changes):
        _write_origin(workdir, setup.model_config, tokenizer_path)


def _write_origin(workdir: str, model_config, tokenizer_path: str) -> None:
    origin = storage.join(workdir, RUN_ORIGIN)
    storage.makedirs(origin)
    fields = dataclasses.asdict(model_config)
    storage.write_text(storage.join(origin, MODEL_CONFIG), json.dumps(fields, indent=2, default=list))
    main = os.path.basename(tokenizer_path)
    folder = os.path.dirname(tokenizer_path)
    for name in dict.fromkeys((main, *TOKENIZER_FILES)):
        kept = storage.as_path(storage.join(origin, name))
        if name == main or os.path.isfile(os.path.join(folder, name)):
            with open(os.path.join(folder, name), "rb") as f:
                kept.write_bytes(f.read())
        elif kept.exists():  # an earlier start's file: never read beside this run's tokenizer
            kept.unlink()


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        out.update(_flat(value, name + ".") if isinstance(value, dict) else {name: value})
    return out


def _num_steps_is_free(config) -> bool:
    """num_steps changes no step's learning rate only with a constant schedule and no warm-up."""
    return config.optimizer.schedule == "constant" and not config.optimizer.warmup_ratio


def differences(workdir: str, config_json: str, model_config) -> list[tuple]:
    """(field, what the run started with, what this start has) for every difference: config fields and the
    base's model config (`model_config.FIELD`). The tokenizer needs no check here: the data pipeline
    refuses one other than the prepared data's, and data changed since the run started."""
    old = _flat(json.loads(storage.read_text(storage.join(workdir, "config.json"))))
    new = _flat(json.loads(config_json))
    found = [
        (k, old[k], new[k]) for k in sorted(old) if k in new and old[k] != new[k] and k != "resume_changes"
    ]
    origin = storage.join(workdir, RUN_ORIGIN)
    recorded = storage.join(origin, MODEL_CONFIG)
    if storage.isfile(recorded):  # work dirs of runs started before origin/ was written have none
        was = json.loads(storage.read_text(recorded))
        now = json.loads(json.dumps(dataclasses.asdict(model_config), default=list))
        found += [
            (f"model_config.{k}", was[k], now.get(k))
            for k in sorted(was)
            if k not in _SET_BY_CONFIG and was[k] != now.get(k)
        ]
    return found


def resume_changes(config) -> set[str]:
    """The field names of `resume_changes`: `--config.resume_changes=a,b` arrives as ("a,b",)."""
    given = config.get("resume_changes", ())
    items = [given] if isinstance(given, str) else list(given)
    return {name.strip() for item in items for name in str(item).split(",") if name.strip()}


def check_resume(setup, workdir: str, resuming: bool, config_json: str) -> list[tuple]:
    """The accepted differences of a resume (free fields, or listed in resume_changes; none for a fresh
    start); UsageError naming every other one, before anything in the work dir is changed."""
    if not resuming or not storage.isfile(storage.join(workdir, "config.json")):
        return []
    config = setup.config
    found = differences(workdir, config_json, setup.model_config)
    allowed = resume_changes(config)
    base = sorted(allowed & set(BASE_FIELDS))

    def why(name):
        if name.startswith(FREE) or (name == "num_steps" and _num_steps_is_free(config)):
            return "does not change the run"
        if name in allowed:
            return "resume_changes"
        return f"with resume_changes {base[0]}" if base and name.startswith("model_config.") else None

    found = [(name, old, new, why(name)) for name, old, new in found]
    refused = [(name, old, new) for name, old, new, reason in found if reason is None]
    if refused:
        listed = "; ".join(f"{name}: {old!r} -> {new!r}" for name, old, new in refused)
        names = ",".join(name for name, _, _ in refused)
        raise UsageError(
            f"--workdir {workdir}: resuming would change the run ({listed}); rerun with the values it "
            f"started with, use another --workdir, or accept the change with --config.resume_changes={names}"
        )
    return found


def log_changes(workdir: str, step: int, changes: list[tuple]) -> None:
    """Prints each accepted change and appends it to WORKDIR/config_changes.jsonl (process 0)."""
    if not changes:
        return
    path = storage.join(workdir, CHANGES)
    lines = storage.read_text(path) if storage.isfile(path) else ""
    for name, old, new, why in changes:
        message = f"resume at step {step}: {name} {old!r} -> {new!r} ({why})"
        logging.warning(message)
        print(message, flush=True)
        lines += json.dumps({"step": step, "field": name, "old": old, "new": new, "why": why}) + "\n"
    storage.write_text(path, lines)


def damaged_steps(checkpoint_dir: str) -> list[str]:
    """The checkpoint steps set aside as damaged (<step>.damaged) in a run's checkpoints/."""
    if not storage.isdir(checkpoint_dir):
        return []
    return sorted(p.name for p in storage.as_path(checkpoint_dir).iterdir() if p.name.endswith(".damaged"))


def refuse_restart(config, checkpoint_dir: str) -> None:
    """With no intact checkpoint left but damaged ones set aside, a run does not start over from step 0
    (rewriting the earlier metrics) unless checkpoint.restart_when_damaged says so."""
    damaged = damaged_steps(checkpoint_dir)
    if damaged and not config.checkpoint.get("restart_when_damaged", False):
        raise CheckpointError(
            f"{checkpoint_dir}: no intact checkpoint left (damaged, set aside: {', '.join(damaged)}); "
            "starting over from step 0 would rewrite metrics.jsonl. Repair a step, or pass "
            "--config.checkpoint.restart_when_damaged=True to start over"
        )
