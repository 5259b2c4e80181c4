"""Orbax checkpoints: the training run's (resume exactly), finding any checkpoint's parameters and
model config, and checking a checkpoint's parameter names and shapes (grit_jax.weights.loading reads them).

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
from jax.experimental import multihost_utils

from grit_jax import storage
from grit_jax.errors import CheckpointError, RunStopped, one_line
from grit_jax.model.model_config import ModelConfig
from grit_jax.weights import hf, orbax_files, orbax_noise

STATE, DATA = "state", "data"
MODEL_CONFIG = "model_config.json"
RUN_ORIGIN = "origin"  # a work dir's record of what its run trains from (grit_jax/train/run_origin.py)
PARAMS_ITEM = "params"


class Checkpoints:
    """The training run's checkpoints, saved asynchronously and restored onto any mesh. Each step is
    verified before it is restored (grit_jax.weights.orbax_files); a save that fails raises
    RunStopped naming the last good step, at the latest one step after it failed (`poll`)."""

    def __init__(self, workdir: str, keep: int, async_save: bool = True):
        self.directory = storage.join(workdir, "checkpoints")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=False,
        )
        self.items = (STATE, DATA)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=self.items)
        self.saving: list[int] = []  # saved by this run, not yet finished and listed in orbax_files
        self.failure: RunStopped | None = None
        self.damaged: list[str] = []  # one line per damaged step set aside by latest_step
        orbax_noise.quiet()

    def step_dir(self, step: int) -> str:
        return storage.join(self.directory, str(step))

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
        """The newest intact step. Newer damaged steps are renamed <step>.damaged (kept, never loaded)
        and described in self.damaged."""
        for path in self.incomplete():
            logging.warning(
                "ignoring incomplete checkpoint %s (a save that never finished; not loaded, not deleted)",
                path,
            )
        found, damaged = None, []
        for step in sorted(self.manager.all_steps(), reverse=True):
            what = orbax_files.problem(self.step_dir(step), self.items)
            if what is None:
                found = step
                break
            damaged.append((step, what))
        if damaged:
            _sync("grit_jax checkpoints verified")  # every host read the steps before any is renamed
            for step, what in damaged:
                aside = self.step_dir(step) + orbax_files.DAMAGED
                if jax.process_index() == 0:
                    aside = orbax_files.set_aside(self.step_dir(step))
                self.damaged.append(f"checkpoint step {step} is damaged ({what}); not used, kept as {aside}")
            _sync("grit_jax damaged checkpoints set aside")
            self.manager.reload()
        return found

    def save(self, step: int, state, data_state: dict | None, force: bool = False) -> bool:
        self._finish()  # the previous save: a failure stops the run before another save starts
        state = _without_frozen(state)  # a LoRA run's base is not saved (grit_jax/weights/lora_base.py)
        items = {STATE: ocp.args.StandardSave(state), DATA: ocp.args.JsonSave(data_state or {})}
        try:
            saved = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
        except Exception as e:  # the synchronous part: creating the step's directory, the first writes
            raise self._failed(step, e) from None
        if saved:
            self.saving.append(step)
        return saved

    def poll(self):
        """Raises RunStopped when a save running in the background failed (at no cost otherwise)."""
        if self.saving and not self.manager.is_saving_in_progress():
            self._finish()

    def _finish(self):
        """Waits for this run's saves; lists each finished step's files, or raises RunStopped."""
        if self.failure is not None:
            raise self.failure
        if not self.saving:
            return
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise self._failed(self.saving[-1], e) from None
        if jax.process_index() == 0:
            for step in self.saving:
                orbax_files.seal(self.step_dir(step))
        self.saving = []

    def _failed(self, step: int, error: Exception) -> RunStopped:
        orbax_noise.after_failed_save()
        failed = set(self.saving) | {step}
        good = [s for s in self.manager.all_steps() if s not in failed]
        last = f"step {max(good)}" if good else "none"
        self.failure = RunStopped(
            f"checkpoint step {step} could not be saved in {self.directory} ({_reason(error)}); the run "
            f"stops here. The last good checkpoint is {last}; fix the storage (space, permissions) and "
            "rerun to resume"
        )
        return self.failure

    def restore(self, step: int, abstract_state):
        """The state at `step`, laid out as `abstract_state` says (any mesh), and the data iterator state.
        A LoRA run's state comes back without its frozen base (state.frozen None)."""
        abstract_state = _without_frozen(abstract_state)
        items = {STATE: ocp.args.StandardRestore(abstract_state), DATA: ocp.args.JsonRestore()}
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return restored[STATE], restored[DATA] or None

    def wait(self):
        self._finish()

    def close(self):
        """Waits for the last save (RunStopped if it failed, unless a failure was already raised)."""
        reported = self.failure is not None
        try:
            if not reported:
                self._finish()
        finally:
            try:
                self.manager.close()
            except Exception:  # the failure it repeats was raised already
                if not reported and self.failure is None:
                    raise


def _sync(name: str):
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def _reason(error: Exception) -> str:
    """The cause of a failed save in a few words: the OS error, else the error's first line."""
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    text = one_line(error)
    for marker in ("No space left on device", "Permission denied", "File too large", "Quota exceeded"):
        if marker in text:
            return marker
    return text[:300]


def _without_frozen(state):
    return state.replace(frozen=None) if getattr(state, "frozen", None) is not None else state


# the model group's fields that say how a model runs, not what it is
RUN_FIELDS = ("dtype", "param_dtype", "scan_layers", "remat_policy", "attention_impl", "moe_impl")


def model_group_config(m) -> ModelConfig:
    """The ModelConfig a training config's `model` group names: a preset, a Hugging Face directory or a
    checkpoint (its own model config), with our overrides of how it runs (RUN_FIELDS). Training calls it
    through grit_jax.train.state.resolve_model_config; it is here because reading a work dir from before
    origin/ (_training_source) needs it too, and weights/ is below train/."""
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
    workdir = os.fspath(storage.as_path(config_path).parent)
    origin = storage.join(workdir, RUN_ORIGIN)
    search = [workdir, data.get("data_dir") or storage.join(workdir, "data"), m.get("hf_dir")]
    search = [d for d in search if d]
    if storage.isfile(storage.join(origin, MODEL_CONFIG)):  # what the run trained with, as it was then
        cfg = _read_model_config(storage.join(origin, MODEL_CONFIG))
        kept = [storage.join(origin, n) for n in ("tokenizer.model", "tokenizer.json")]
        tokenizer = next((t for t in kept if storage.isfile(t)), None) or data.get("tokenizer") or None
        return CheckpointSource(item, ("params",), cfg, [origin, *search], training, tokenizer)
    cfg = model_group_config(
        ml_collections.ConfigDict(training).model
    )  # a work dir of a run from before origin/
    return CheckpointSource(item, ("params",), cfg, search, training, data.get("tokenizer") or None)


def _newest_intact(directory: str, steps: list[tuple[int, str]]) -> str:
    """The newest step dir whose files are intact (orbax_files); the damaged ones newer are said."""
    for number, step_dir in reversed(steps):
        damaged = orbax_files.problem(step_dir, (STATE,))
        if damaged is None:
            return step_dir
        logging.warning("checkpoint step %d in %s is damaged (%s); not used", number, directory, damaged)
    raise CheckpointError(f"{directory}: every checkpoint step is damaged; see the warnings above")


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
            chosen = dict(steps).get(step) if step is not None else _newest_intact(candidate, steps)
            if chosen is None:
                raise CheckpointError(f"{candidate}: no step {step}; steps there: {[s for s, _ in steps]}")
            damaged = orbax_files.problem(chosen, (STATE,))
            if damaged:
                raise CheckpointError(f"{chosen}: a damaged checkpoint ({damaged}); choose another --step")
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
