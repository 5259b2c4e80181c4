"""Orbax checkpoints: the training run's (resume exactly), finding any checkpoint's parameters and
model config, and checking a checkpoint's parameter names and shapes (grit_jax.weights.reader reads them).

A training checkpoint `WORKDIR/checkpoints/<step>/` holds two items: `state` (the TrainState: parameters,
optimizer state, step, RNG) and `data` (the data iterator's state, JSON); the training config is
`WORKDIR/config.json`. Orbax writes a step into a temporary directory and renames it when complete, so a
crash mid-save leaves `<step>.orbax-checkpoint-tmp-*` behind: such a directory is never listed as a step,
never loaded, and never deleted by us; we say that it is there so the user can look at it.

A `grit-convert hf-to-orbax` directory holds `params/` (an orbax PyTree checkpoint of the parameters as a
pure nested dict, the layout of `nnx.state(model, nnx.Param).to_pure_dict()`) and `model_config.json`
(every ModelConfig field). `resolve_checkpoint` finds the parameters and the model config of either kind.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os

import jax
import ml_collections
import orbax.checkpoint as ocp

from grit_jax import storage
from grit_jax.errors import CheckpointError
from grit_jax.model.model_config import ModelConfig
from grit_jax.weights import hf_names as hf

STATE, DATA = "state", "data"
MODEL_CONFIG = "model_config.json"
PARAMS_ITEM = "params"


class Checkpoints:
    """The training run's checkpoints, saved asynchronously and restored onto any mesh."""

    def __init__(self, workdir: str, keep: int, async_save: bool = True):
        self.directory = storage.join(workdir, "checkpoints")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=False,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=(STATE, DATA))

    def incomplete(self) -> list[str]:
        """Directories of saves that never finished (left by a crash or a kill): orbax renames a local
        one when complete, and marks a GCS one complete with a commit_success.txt file instead."""
        root = storage.as_path(self.directory)
        if not storage.is_url(self.directory):
            return sorted(glob.glob(os.path.join(self.directory, "*.orbax-checkpoint-tmp*")))
        if not root.is_dir():
            return []
        steps = [p for p in root.iterdir() if p.name.isdigit() and p.is_dir()]
        return sorted(os.fspath(p) for p in steps if not (p / "commit_success.txt").exists())

    def latest_step(self) -> int | None:
        for path in self.incomplete():
            logging.warning(
                "ignoring incomplete checkpoint %s (a save that never finished; not loaded, not deleted)",
                path,
            )
        return self.manager.latest_step()

    def save(self, step: int, state, data_state: dict | None, force: bool = False) -> bool:
        state = _without_frozen(state)  # a LoRA run's base is not saved (grit_jax/weights/lora_base.py)
        items = {STATE: ocp.args.StandardSave(state), DATA: ocp.args.JsonSave(data_state or {})}
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(self, step: int, abstract_state):
        """The state at `step`, laid out as `abstract_state` says (any mesh), and the data iterator state.
        A LoRA run's state comes back without its frozen base (state.frozen None)."""
        abstract_state = _without_frozen(abstract_state)
        items = {STATE: ocp.args.StandardRestore(abstract_state), DATA: ocp.args.JsonRestore()}
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return restored[STATE], restored[DATA] or None

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def _without_frozen(state):
    return state.replace(frozen=None) if getattr(state, "frozen", None) is not None else state


# the model group's fields that say how a model runs, not what it is
RUN_FIELDS = ("dtype", "param_dtype", "scan_layers", "remat_policy", "attention_impl", "moe_impl")


def model_config(config) -> ModelConfig:
    """The ModelConfig of a training config's `model` group: a preset, a Hugging Face directory or a
    checkpoint (its own model config), with our overrides of how it runs (RUN_FIELDS)."""
    m = config.model
    overrides = {k: m[k] for k in RUN_FIELDS if k in m}
    if "lora" in m:  # LoRA is how this run trains, not what the model is
        overrides.update(lora_rank=m.lora.rank, lora_alpha=m.lora.alpha, lora_targets=tuple(m.lora.targets))
    if m.get("init_checkpoint"):
        return resolve_checkpoint(m.init_checkpoint).config.replace(**overrides)
    if m.get("hf_dir"):
        return hf.read_hf_config(m.hf_dir, **overrides)
    return ModelConfig.preset(m.preset, **overrides)


# ----------------------------------------------------------------------------- finding checkpoints


@dataclasses.dataclass
class CheckpointSource:
    """Where a checkpoint's parameters live: an orbax PyTree dir, the key prefix of the parameters in it,
    the model config, and the directories to search for tokenizer / training config."""

    pytree_dir: str
    prefix: tuple[str, ...]
    config: ModelConfig
    search_dirs: list[str]
    training_config: dict | None = None
    tokenizer_file: str | None = None  # the training config's data.tokenizer, if set


def _is_pytree_dir(path: str) -> bool:
    return storage.isfile(storage.join(path, "_METADATA"))


def _step_dirs(path: str) -> list[tuple[int, str]]:
    if not storage.isdir(path):
        return []
    names = [p.name for p in storage.as_path(path).iterdir()]
    return sorted((int(n), storage.join(path, n)) for n in names if n.isdigit())


def _training_source(item: str, config_path: str, training: dict) -> CheckpointSource:
    """The source of a training step: its ModelConfig as training built it, and where the tokenizer is."""
    m, data = training.get("model") or {}, training.get("data") or {}
    if not any(m.get(k) for k in ("preset", "hf_dir", "init_checkpoint")):
        raise CheckpointError(f"{config_path}: model.preset, hf_dir and init_checkpoint are all empty")
    cfg = model_config(ml_collections.ConfigDict(training))
    workdir = os.fspath(storage.as_path(config_path).parent)
    search = [workdir, data.get("data_dir") or storage.join(workdir, "data"), m.get("hf_dir")]
    return CheckpointSource(
        item, ("params",), cfg, [d for d in search if d], training, data.get("tokenizer") or None
    )


def resolve_checkpoint(path: str, step: int | None = None) -> CheckpointSource:
    """An hf-to-orbax dir, a training step dir, `workdir/checkpoints` or `workdir` (latest or `step`)."""
    path = os.fspath(storage.as_path(path))
    if not storage.isdir(path):
        raise CheckpointError(f"{path}: no such directory (expected an orbax checkpoint)")
    if storage.isfile(storage.join(path, MODEL_CONFIG)) and _is_pytree_dir(storage.join(path, PARAMS_ITEM)):
        cfg = _read_model_config(storage.join(path, MODEL_CONFIG))
        return CheckpointSource(storage.join(path, PARAMS_ITEM), (), cfg, [path])
    for candidate in (storage.join(path, "checkpoints"), path):
        steps = _step_dirs(candidate)
        if steps and not _is_pytree_dir(path):
            chosen = dict(steps).get(step) if step is not None else steps[-1][1]
            if chosen is None:
                raise CheckpointError(f"{candidate}: no step {step}; steps there: {[s for s, _ in steps]}")
            return resolve_checkpoint(chosen)
    item = next(
        (storage.join(path, n) for n in ("state", "default", "") if _is_pytree_dir(storage.join(path, n))),
        None,
    )
    if item is None:
        raise CheckpointError(
            f"{path}: not a checkpoint: expected `{PARAMS_ITEM}/` and `{MODEL_CONFIG}` "
            "(grit-convert hf-to-orbax), a training step dir with a `state/` orbax item, "
            "or a work dir with `checkpoints/<step>/`"
        )
    # A training step dir: workdir/checkpoints/<step>/state; the config lives up the tree.
    here = storage.as_path(path)
    search = [os.fspath(p) for p in (here, here.parent, here.parent.parent)]
    for d in search:
        if storage.isfile(storage.join(d, MODEL_CONFIG)):
            return CheckpointSource(
                item, ("params",), _read_model_config(storage.join(d, MODEL_CONFIG)), search
            )
        config_path = storage.join(d, "config.json")
        if storage.isfile(config_path):
            data = json.loads(storage.read_text(config_path))
            if "model" in data:
                return _training_source(item, config_path, data)
            return CheckpointSource(
                item, ("params",), ModelConfig.from_hf_dict(data, source=config_path), search
            )
    raise CheckpointError(
        f"{path}: a checkpoint without a config: looked for {MODEL_CONFIG} or config.json in {search}"
    )


def _read_model_config(path: str) -> ModelConfig:
    fields = json.loads(storage.read_text(path))
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise CheckpointError(f"{path}: unknown ModelConfig fields {unknown}")
    return ModelConfig(**fields)


# ----------------------------------------------------------------------------- orbax checkpoint contents


def _strip(key: tuple[str, ...], prefix: tuple[str, ...]) -> str | None:
    """Our dotted parameter path of an orbax key path (nnx Variables add a trailing `value`)."""
    if key[: len(prefix)] != prefix:
        return None
    key = key[len(prefix) :]
    if key and key[-1] in ("value", "raw_value"):
        key = key[:-1]
    return ".".join(key)


def checkpoint_leaves(source: CheckpointSource) -> dict[str, tuple]:
    """{our dotted path: (orbax key path, shape, dtype, orbax metadata)} for every parameter leaf."""

    metadata = ocp.PyTreeCheckpointer().metadata(source.pytree_dir)
    tree = getattr(getattr(metadata, "item_metadata", metadata), "tree", metadata)
    leaves = {}
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        keys = tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in key_path)
        name = _strip(keys, source.prefix)
        if name is not None and hasattr(leaf, "shape"):
            leaves[name] = (keys, tuple(leaf.shape), str(leaf.dtype), leaf)
    return leaves


def check_leaves(source: CheckpointSource, leaves) -> None:
    cfg, shapes = source.config, hf.param_shapes(source.config)
    for entry in hf.name_map(cfg):
        stack = (cfg.num_hidden_layers,) * entry.per_layer + (cfg.num_local_experts,) * entry.per_expert
        want = stack + shapes[entry.path]
        if entry.path not in leaves:
            raise CheckpointError(
                f"{source.pytree_dir}: parameter {entry.path!r} is missing "
                f"(a {cfg.architecture} with this config needs it)"
            )
        if leaves[entry.path][1] != want:
            raise CheckpointError(
                f"{source.pytree_dir}: parameter {entry.path!r} has shape {leaves[entry.path][1]}, "
                f"the config says {want}"
            )
    expected = {e.path for e in hf.name_map(cfg)}
    extra = sorted(set(leaves) - expected)
    if extra:
        raise CheckpointError(
            f"{source.pytree_dir}: parameter {extra[0]!r} is not part of a {cfg.architecture} "
            f"with this config"
        )
