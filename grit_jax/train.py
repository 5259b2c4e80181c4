"""The training program: config -> mesh -> data -> state (fresh, from Hugging Face, or resumed) -> steps.

    python -m grit_jax.train --config configs/demo.py --workdir runs/demo [--config.a.b=value ...]

A work directory holds config.json, checkpoints/, metrics.jsonl (one JSON line per logged step) and
tb/ (TensorBoard). Starting in a work directory that has checkpoints resumes from the latest complete
one; SIGTERM (how TPU VMs are preempted) saves a checkpoint and exits cleanly.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from grit_jax import distributed, platforms

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "a configs/*.py file, optionally file.py:ARG", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "work directory: checkpoints, metrics.jsonl, TensorBoard")


class UsageError(ValueError):
    """Something the user must fix before training can start; printed as one line."""


class Stop(Exception):
    """The run must end now without saving (too many non-finite steps)."""


class Preempted:
    """Remembers a SIGTERM so the loop can save and exit at the next step boundary."""

    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        logging.warning("SIGTERM: saving a checkpoint and exiting after this step")
        self.requested = True

    def agreed(self) -> bool:
        """True on every host as soon as one host was signalled (all must save at the same step)."""
        import jax
        import numpy as np
        from jax.experimental import multihost_utils

        if jax.process_count() == 1:
            return self.requested
        return bool(np.any(multihost_utils.process_allgather(np.array(self.requested))))


def check_workdir(workdir: str):
    if not workdir:
        raise UsageError("--workdir is required (where checkpoints and logs go)")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--workdir {workdir}: cannot create it ({e.strerror})") from None
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise UsageError(f"--workdir {workdir}: not writable")


def prepare_data(config, workdir):
    """Builds the demo corpus into WORKDIR/data when the config asks for it; checks the data directory."""
    import jax
    from jax.experimental import multihost_utils

    from grit_jax.data import demo

    if config.data.demo_corpus and not config.data.data_dir:
        data_dir = os.path.join(workdir, "data")
        if jax.process_index() == 0:
            demo.prepare_demo_data(
                data_dir,
                vocab_size=config.data.demo_vocab_size,
                query_max_len=config.data.query_max_len,
                passage_max_len=config.data.passage_max_len,
                generative_max_len=config.data.generative_max_len,
            )
        multihost_utils.sync_global_devices("demo data ready")
        with config.unlocked():
            config.data.data_dir = data_dir
    if not config.data.data_dir:
        raise UsageError(
            "data.data_dir is empty: pass --config.data.data_dir=DIR (prepared with grit-data prepare)"
        )
    if not os.path.exists(os.path.join(config.data.data_dir, "manifest.json")):
        raise UsageError(
            f"data.data_dir={config.data.data_dir}: no manifest.json there; prepare it with "
            "`grit-data prepare ... --out DIR`"
        )


class MetricsLog:
    """metrics.jsonl, TensorBoard and a console progress line, written by process 0 only."""

    def __init__(self, workdir, num_steps, enabled, start_step=0):
        self.enabled, self.num_steps = enabled, num_steps
        self.path = os.path.join(workdir, "metrics.jsonl")
        if enabled:
            from tensorboardX import SummaryWriter

            self._truncate(start_step)
            self.file = open(self.path, "a", encoding="utf-8")
            self.tb = SummaryWriter(
                os.path.join(workdir, "tb"), purge_step=start_step + 1 if start_step else None
            )

    def _truncate(self, start_step):
        """Drop the lines a killed run wrote after the checkpoint we resume from (they are redone)."""
        if not os.path.exists(self.path):
            return
        with open(self.path, encoding="utf-8") as f:
            lines = f.readlines()
        kept = []
        for line in lines:
            try:
                step = json.loads(line)["step"]
            except (ValueError, KeyError, TypeError):
                break  # a line cut short by the kill: it and everything after it are redone
            if start_step == 0 or step > start_step:
                break
            kept.append(line)
        if len(kept) < len(lines):
            with open(self.path + ".tmp", "w", encoding="utf-8") as f:
                f.writelines(kept)
            os.replace(self.path + ".tmp", self.path)

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

    def progress(self, step, metrics, seconds_per_step):
        if not self.enabled:
            return
        eta = time.strftime("%H:%M:%S", time.gmtime(max(self.num_steps - step, 0) * seconds_per_step))
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


def initial_params(config):
    """None (initialise from config.seed), or the weights of model.hf_dir (a Hugging Face directory) or of
    model.init_checkpoint (a `grit-convert hf-to-orbax` output or another run's checkpoint), nested."""
    from grit_jax.step import model_config

    cfg = model_config(config)
    if config.model.init_checkpoint:
        from grit_jax.convert import load_params_from_checkpoint

        flat = load_params_from_checkpoint(config.model.init_checkpoint, cfg)
    elif config.model.hf_dir:
        from grit_jax.hf import read_hf_params

        flat = read_hf_params(config.model.hf_dir, cfg)
    else:
        return None
    nested = {}
    for path, value in flat.items():
        node = nested
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return nested


def train(config, workdir) -> dict:
    """Runs (or resumes) training; returns the last logged metrics."""
    import jax

    from grit_jax import checkpoint, flops, sharding
    from grit_jax import step as step_lib
    from grit_jax.data import load_tokenizer, make_train_iterator
    from grit_jax.evaluate import Evaluator

    preempted = Preempted()
    check_workdir(workdir)
    prepare_data(config, workdir)
    mesh = sharding.make_mesh(config.mesh)
    step_lib.validate_config(config, mesh)
    cfg = step_lib.model_config(config)
    tokenizer = load_tokenizer(config.data)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise UsageError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
            f"{cfg.vocab_size}; use a model with a larger vocabulary"
        )
    main = jax.process_index() == 0
    if main:
        with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
            f.write(config.to_json(indent=2))

    data = make_train_iterator(
        config.data, tokenizer, jax.process_index(), jax.process_count(), config.objective.mode
    )
    ckpt = checkpoint.Checkpoints(workdir, config.checkpoint.keep, config.checkpoint.async_save)
    start = ckpt.latest_step()
    if start is None:
        state = step_lib.create_train_state(config, mesh, initial_params(config))
        start = 0
    else:
        try:
            state, data_state = ckpt.restore(start, step_lib.abstract_train_state(config, mesh))
        except (ValueError, KeyError, TypeError) as e:  # the checkpoint holds another model or optimizer
            reason = str(e).strip().splitlines()[0][:300].rstrip(": ") if str(e).strip() else type(e).__name__
            raise UsageError(
                f"checkpoint step {start} in {ckpt.directory} does not match this config (model, "
                f"objective.projection_dim or optimizer differ): {reason}; use another --workdir "
                "or the config the run started with"
            ) from None
        data.set_state(data_state)
        logging.info("resumed from %s/%d", ckpt.directory, start)
        if main:
            print(f"resuming from checkpoint step {start} in {ckpt.directory}", flush=True)

    train_step = step_lib.make_train_step(config, mesh)
    evaluator = Evaluator(config, mesh, step_lib.abstract_model(config)[0], tokenizer.pad_id)
    log = MetricsLog(workdir, config.num_steps, main, start)
    step_flops = flops.train_step_flops(config, cfg)
    peak = (
        config.log.peak_flops_per_device or flops.device_peak_flops(jax.devices()[0])
    ) * jax.device_count()
    every, eval_every = config.log.every_steps, config.log.eval_every_steps
    last, nonfinite_in_a_row, save_due, t0, tokens = {}, 0, False, time.perf_counter(), 0.0
    if start == 0 and eval_every and evaluator.enabled:
        log.write(0, evaluator(state))
    try:
        for step in range(start + 1, config.num_steps + 1):
            batch = step_lib.make_global_batch(config, mesh, next(data))
            state, metrics = train_step(state, batch)
            metrics = jax.device_get(metrics)
            tokens += float(metrics["tokens"])
            if metrics["nonfinite"]:
                nonfinite_in_a_row += 1
                logging.warning("step %d: non-finite loss or gradients; update skipped", step)
                log.write(step, metrics)
                if nonfinite_in_a_row >= config.max_nonfinite_steps:
                    ckpt.wait()
                    raise Stop(
                        f"{nonfinite_in_a_row} non-finite steps in a row (max_nonfinite_steps="
                        f"{config.max_nonfinite_steps}); stopped at step {step}. The last good checkpoint "
                        f"is step {ckpt.manager.latest_step()} in {ckpt.directory}; lower "
                        "optimizer.learning_rate or check the data"
                    )
            else:
                nonfinite_in_a_row = 0
            if not metrics["nonfinite"] and (step % every == 0 or step == config.num_steps):
                elapsed = time.perf_counter() - t0
                seconds = elapsed / every if step % every == 0 else elapsed
                metrics.update(step_time=seconds, tokens_per_second=tokens / max(elapsed, 1e-9))
                if peak:  # unknown on a CPU: benchmarks/train_step.py measures a peak instead
                    metrics["mfu"] = step_flops / seconds / peak
                if eval_every and evaluator.enabled and (step % eval_every == 0 or step == config.num_steps):
                    metrics.update(evaluator(state))
                log.write(step, metrics)
                log.progress(step, metrics, seconds)
                last, t0, tokens = {"step": step, **metrics}, time.perf_counter(), 0.0
            stop = preempted.agreed()
            # A save that falls on a non-finite step waits for the next finite one: checkpoints only
            # ever follow an applied update, so a run stopped for non-finite steps keeps its last good one.
            save_due = save_due or step % config.checkpoint.every_steps == 0 or step == config.num_steps
            if (save_due and not metrics["nonfinite"]) or stop:
                ckpt.save(step, state, data.get_state(), force=True)
                save_due = False
            if stop:
                ckpt.wait()
                if main:
                    print(
                        f"preempted: saved checkpoint step {step} in {ckpt.directory}; rerun to resume",
                        flush=True,
                    )
                break
    finally:
        ckpt.close()
        log.close()
        data.close()
    if main and not preempted.requested:
        print(
            f"done. checkpoints: {ckpt.directory}\nmetrics: {log.path}\nTensorBoard: "
            f"{os.path.join(workdir, 'tb')}\nfinal metrics: {json.dumps(_rounded(last))}",
            flush=True,
        )
    return last


def _rounded(metrics):
    return {k: round(float(v), 5) for k, v in metrics.items()}


def _fail(message: str, code: int = 2):
    print(f"grit-train: error: {message}", file=sys.stderr)
    sys.exit(code)


def _parse_flags(argv):
    """absl's parser, with every mistake on the command line reported as one line that names it."""
    try:
        return FLAGS(argv)
    except flags.Error as e:  # unknown flag, a value of the wrong type
        _fail(f"{e}")
    except (AttributeError, KeyError) as e:  # --config.a.b=value where the config has no field a.b
        name = str(e).strip("'\"")
        bad = [
            a.split("=")[0]
            for a in argv[1:]
            if a.startswith("--config.") and name in a.split("=")[0][len("--config.") :].split(".")
        ]
        _fail(
            f"{bad[0] if bad else name}: the config has no field {name!r}; see grit_jax/config.py for the "
            "fields and their spelling"
        )
    except OSError as e:  # the config file is missing or failed to import (overrides need it loaded)
        _fail(_config_load_error(e))


def _config_load_error(e: Exception) -> str:
    detail = " ".join(str(e.__cause__ or e).split()).replace("Failed loading config file config_config ", "")
    return f"--config: cannot load the config file ({detail})"


def _load_config():
    """The parsed config, or one line saying why the config file could not be loaded."""
    if _CONFIG.value is None:
        raise UsageError("--config is required, e.g. --config configs/demo.py")
    try:
        _CONFIG.value.get("num_steps")
    except Exception as e:  # the config file is missing or raised: config_flags defers its error to here
        raise UsageError(_config_load_error(e)) from None
    return _CONFIG.value


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}; overrides look like --config.a.b=value")
    absl_logging.set_verbosity(absl_logging.WARNING)
    try:
        train(_load_config(), _WORKDIR.value)
    except Stop as e:
        print(f"grit-train: stopped: {e}", file=sys.stderr)
        sys.exit(3)
    except Exception as e:  # errors a user can act on: one line, no traceback from inside jax
        if type(e).__name__ not in _USER_ERRORS:
            raise
        _fail(" ".join(str(e).split()))


# Errors raised by the checks that run before anything is compiled.
_USER_ERRORS = {
    "UsageError",
    "ConfigError",
    "MeshConfigError",
    "DataError",
    "CheckpointError",
    "UnplacedParameterError",
    "FileNotFoundError",
}


def run():
    platforms.quiet_platform()  # before any JAX backend starts: no libtpu noise on a CPU machine
    distributed.initialize_from_env()
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
