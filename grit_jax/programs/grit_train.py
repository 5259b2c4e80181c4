"""The training program (``grit-train``): config -> mesh -> data -> state (fresh, from given weights, or
resumed) -> steps.

    python -m grit_jax.programs.grit_train --config configs/demo.py --workdir runs/demo [--config.a.b=value
    ...]

A work directory holds config.json, checkpoints/, metrics.jsonl (one JSON line per logged step), tb/
(TensorBoard), goodput.jsonl (where each attempt's time went: grit_jax.train.goodput) and run.lock (one
run at a time: grit_jax.train.workdir_lock). Starting in a work directory that has checkpoints resumes
from the newest intact one; SIGTERM (how TPU VMs are preempted) or Ctrl-C saves a checkpoint and exits
cleanly.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time

import jax
import numpy as np
from absl import flags
from absl import logging as absl_logging
from jax.experimental import multihost_utils

from grit_jax import cli, distributed, hardware, program_help, sharding, storage
from grit_jax.data.pipeline import load_tokenizer, make_train_iterator
from grit_jax.errors import CheckpointError, RunStopped, UsageError
from grit_jax.model.batch import field_shapes
from grit_jax.retrieval.demo_report import EXAMPLE_FILE, demo_report, trained_model
from grit_jax.run_config import check_numbers, num_batch_shapes, profile_steps
from grit_jax.train import lora_base, run_origin
from grit_jax.train.compile_cache import CompileCache
from grit_jax.train.goodput import Goodput
from grit_jax.train.heldout import Evaluator
from grit_jax.train.metrics_log import MetricsLog
from grit_jax.train.run_inputs import local_data, prepare_base, prepare_data
from grit_jax.train.run_summary import StepTimes, check_weights, summary
from grit_jax.train.state import TrainSetup, initial_params
from grit_jax.train.step import global_batch, make_train_step
from grit_jax.train.workdir_lock import WorkdirLock
from grit_jax.weights.checkpoints import Checkpoints

_CONFIG = cli.define_config_flag()
_WORKDIR = flags.DEFINE_string("workdir", None, "work directory: checkpoints, metrics.jsonl, TensorBoard")


class Preempted:
    """Remembers a SIGTERM (or a Ctrl-C) so the loop can save and exit at the next step boundary;
    a second Ctrl-C stops at once (cli.run_command reports it in one line)."""

    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.requested:
            raise KeyboardInterrupt
        name = signal.Signals(signum).name
        logging.warning("%s: saving a checkpoint and exiting after this step", name)
        if signum == signal.SIGINT and jax.process_index() == 0:
            print("Ctrl-C: saving a checkpoint after this step (Ctrl-C again: stop now)", flush=True)
        self.requested = True

    def agreed(self) -> bool:
        """True on every host as soon as one host was signalled (all must save at the same step)."""
        if jax.process_count() == 1:
            return self.requested
        return bool(np.any(multihost_utils.process_allgather(np.array(self.requested))))


def check_workdir(workdir: str):
    if not workdir:
        raise UsageError("--workdir is required (where checkpoints and logs go)")
    storage.as_path(workdir, "--workdir")  # a URL other than gs:// ends here
    try:
        storage.makedirs(workdir)
    except OSError as e:
        raise UsageError(f"--workdir {workdir}: cannot create it ({e.strerror or e})") from None
    if not storage.is_url(workdir) and not os.access(workdir, os.W_OK | os.X_OK):
        raise UsageError(f"--workdir {workdir}: not writable")


def initial_state(setup: TrainSetup, ckpt: Checkpoints, data, main: bool):
    """(state, step): restored from the latest checkpoint with the data position, or created at step 0."""
    start = ckpt.latest_step()
    for line in ckpt.damaged:
        logging.warning(line)
        if main:
            print(line, flush=True)
    workdir = os.fspath(storage.as_path(ckpt.directory).parent)
    if start is None:
        run_origin.refuse_restart(setup.config, ckpt.directory)  # every kept checkpoint damaged
        state = setup.create_state(initial_params(setup.config, setup.model_config, setup.base_shardings))
        lora_base.record(setup, workdir, state.frozen if setup.lora else state.params)
        if setup.lora:
            state = lora_base.start_adapters(setup, state)
        return state, 0
    try:
        state, data_state = ckpt.restore(start, setup.abstract_state())
    except (ValueError, KeyError, TypeError) as e:  # the checkpoint holds another model or optimizer
        raise UsageError(
            f"checkpoint step {start} in {ckpt.directory} does not match this config (model, "
            f"objective.projection_dim or optimizer differ): {_first_line(e)}; use another --workdir "
            "or the config the run started with"
        ) from None
    except Exception as e:  # tensorstore could not read a file the step's file list did not cover
        raise CheckpointError(
            f"checkpoint step {start} in {ckpt.directory} cannot be read ({_first_line(e)}); move it "
            "aside to resume from the step before it"
        ) from None
    if setup.lora:  # checkpoints hold the adapters: the frozen base is loaded again, and checked
        base = setup.create_state(
            initial_params(setup.config, setup.model_config, setup.base_shardings)
        ).frozen
        lora_base.check(setup, workdir, base)
        state = state.replace(frozen=base)
    data.set_state(data_state)
    logging.info("resumed from %s/%d", ckpt.directory, start)
    if main:
        print(f"resuming from checkpoint step {start} in {ckpt.directory}", flush=True)
    return state, start


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0][:300].rstrip(": ") if str(e).strip() else type(e).__name__


class Loop:
    """The steps of one run: each applied or skipped (not finite), logged, evaluated and saved on time."""

    def __init__(
        self, setup: TrainSetup, data, ckpt: Checkpoints, evaluator, *, log: MetricsLog, preempted, goodput
    ):
        self.config, self.setup, self.data, self.ckpt = setup.config, setup, data, ckpt
        self.evaluator, self.log, self.preempted, self.goodput = evaluator, log, preempted, goodput
        self.train_step = make_train_step(setup)
        device_peak = self.config.log.peak_flops_per_device or hardware.device_peak_flops(jax.devices()[0])
        self.peak = device_peak * jax.device_count()
        self.last, self.nonfinite_in_a_row, self.save_due = {}, 0, False
        self.t0, self.tokens, self.positions, self.flops = time.perf_counter(), 0.0, 0.0, 0.0  # since the log
        self.profile_steps = profile_steps(self.config)
        self.step_times = StepTimes()  # for the ETA: steps that compiled are left out

    def run(self, state, start: int) -> dict:
        """Steps start+1 .. num_steps (or until preempted); returns the last logged metrics."""
        config, every = self.config, self.config.log.every_steps
        if start == 0 and config.log.eval_every_steps and self.evaluator.enabled:
            with self.goodput.timer("evaluation"):
                evaluated = self.evaluator(state)
            self.log.write(0, evaluated)
            self.log.write_items(0, self.evaluator.items)
        for step in range(start + 1, config.num_steps + 1):
            self._profile(step, starting=True)
            with self.goodput.timer("data_wait"):
                host_batch = next(self.data)
            started = time.perf_counter()
            batch = global_batch(self.setup, host_batch)
            state, metrics = self.train_step(state, batch)
            metrics = jax.device_get(metrics)  # waits for the step: a profile ends after it
            self._profile(step, starting=False)
            shapes = tuple(sorted(field_shapes(batch).items()))  # step times per compiled shape
            seconds = time.perf_counter() - started
            self.goodput.step(step, seconds, compiled=self.step_times.add(seconds, shapes))
            self.tokens += float(metrics["tokens"])  # real tokens (packed or not)
            self.positions += float(metrics["positions"])
            self.flops += float(metrics["model_flops"])  # of the padded shapes, or the packed real tokens
            self._count_nonfinite(step, metrics)
            if not metrics["nonfinite"] and (step % every == 0 or step == config.num_steps):
                self._log(step, state, metrics)
            if self._save(step, state, metrics):
                break
        self.state = state  # the trained model (a LoRA run's final report uses it: its work dir has no base)
        return self.last

    def _profile(self, step: int, starting: bool):
        """A jax.profiler trace of log.profile_steps, on process 0, into WORKDIR/profile."""
        steps = self.profile_steps
        if steps is None or jax.process_index() != 0:
            return
        if starting and step == steps[0]:
            jax.profiler.start_trace(storage.join(self.log.workdir, "profile"))
        elif not starting and step == steps[1]:
            jax.profiler.stop_trace()
            print(
                f"profile of steps {steps[0]}-{steps[1]}: {storage.join(self.log.workdir, 'profile')}",
                flush=True,
            )

    def _count_nonfinite(self, step: int, metrics: dict):
        if not metrics["nonfinite"]:
            self.nonfinite_in_a_row = 0
            return
        self.nonfinite_in_a_row += 1
        logging.warning("step %d: non-finite loss or gradients; update skipped", step)
        self.log.write(step, metrics)
        limit = self.config.max_nonfinite_steps
        if self.nonfinite_in_a_row >= limit:
            self.ckpt.wait()
            raise RunStopped(
                f"{self.nonfinite_in_a_row} non-finite steps in a row (max_nonfinite_steps={limit}); "
                f"stopped at step {step}. The last good checkpoint is step {self.ckpt.manager.latest_step()} "
                f"in {self.ckpt.directory}; lower optimizer.learning_rate or check the data"
            )

    def _log(self, step: int, state, metrics: dict):
        config, every = self.config, self.config.log.every_steps
        elapsed = time.perf_counter() - self.t0
        seconds = elapsed / every if step % every == 0 else elapsed
        metrics.update(
            step_time=seconds,
            tokens_per_second=self.tokens / max(elapsed, 1e-9),  # real tokens, not padding
            real_share=self.tokens / max(self.positions, 1.0),  # real tokens / computed positions
        )
        if self.peak:  # unknown on a CPU: benchmarks/train_step.py measures a peak instead
            metrics["mfu"] = self.flops / max(elapsed, 1e-9) / self.peak
        eval_every = config.log.eval_every_steps
        if eval_every and self.evaluator.enabled and (step % eval_every == 0 or step == config.num_steps):
            with self.goodput.timer("evaluation"):
                metrics.update(self.evaluator(state))
            self.log.write_items(step, self.evaluator.items)
        self.log.write(step, metrics)
        self.goodput.write()
        self.log.progress(step, metrics, seconds, self.step_times.per_step())
        self.last, self.t0 = {"step": step, **metrics}, time.perf_counter()
        self.tokens, self.positions, self.flops = 0.0, 0.0, 0.0

    def _save(self, step: int, state, metrics: dict) -> bool:
        """Saves when due or preempted; True when the run must end here (preempted)."""
        with self.goodput.timer("checkpoint_save"):  # a finished save's file list is written here
            self.ckpt.poll()  # a save that failed in the background stops the run at the next step after it
        stop = self.preempted.agreed()
        # A save that falls on a non-finite step waits for the next finite one: checkpoints only
        # ever follow an applied update, so a run stopped for non-finite steps keeps its last good one.
        every = self.config.checkpoint.every_steps
        self.save_due = self.save_due or step % every == 0 or step == self.config.num_steps
        if (self.save_due and not metrics["nonfinite"]) or stop:
            with self.goodput.timer("checkpoint_save"):
                self.log.sync()  # a resumed run finds every line up to its checkpoint (gs:// work dirs)
                self.ckpt.save(step, state, self.data.get_state(), force=True)
            self.goodput.saved(step)
            self.save_due = False
        if stop:
            with self.goodput.timer("checkpoint_save"):
                self.ckpt.wait()
            if jax.process_index() == 0:
                print(
                    f"preempted: saved checkpoint step {step} in {self.ckpt.directory}; rerun to resume",
                    flush=True,
                )
        return stop


def lock_workdir(workdir: str) -> WorkdirLock:
    """The work dir's lock, taken by process 0; every host stops when it is refused."""
    lock, refused = WorkdirLock(workdir), None
    if jax.process_index() == 0:
        try:
            lock.acquire()
        except UsageError as e:
            refused = e
    if jax.process_count() > 1:
        if np.any(multihost_utils.process_allgather(np.array(refused is not None))) and refused is None:
            raise UsageError(f"--workdir {workdir}: process 0 could not take {lock.path}")
    if refused is not None:
        raise refused
    return lock


def train(config, workdir) -> dict:
    """Runs (or resumes) training; returns the last logged metrics."""
    started, preempted = time.perf_counter(), Preempted()  # the wall time of goodput.jsonl from here
    check_numbers(config)  # before the work dir is created or locked (TrainSetup checks the rest)
    if workdir:
        run_origin.check_not_inside_inputs(config, workdir)  # before anything is written there
    check_workdir(workdir)
    check_weights(config)
    lock = lock_workdir(workdir)  # before anything in the work dir is read or written
    try:
        return _train(config, workdir, preempted, started)
    finally:
        lock.release()


def _train(config, workdir, preempted: Preempted, started: float) -> dict:
    compile_cache = CompileCache(config.compile_cache_dir, workdir)  # before anything compiles
    prepare_base(config, workdir)
    setup = TrainSetup(config, sharding.make_mesh(config.mesh))  # checks the config and the model first
    prepare_data(config, workdir)
    config_json = config.to_json(indent=2)  # with the data's URL; the hosts read their own copies
    local_data(config)
    tokenizer = load_tokenizer(config.data)
    if tokenizer.vocab_size > setup.model_config.vocab_size:
        raise UsageError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
            f"{setup.model_config.vocab_size}; use a model with a larger vocabulary"
        )
    main = jax.process_index() == 0
    if main:
        if num_batch_shapes(config) > 1:  # each compiles when first met (and is cached)
            print(f"data.length_buckets: up to {num_batch_shapes(config)} batch shapes", flush=True)
    data = make_train_iterator(
        config.data,
        tokenizer,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        mode=config.objective.mode,
        layout=setup.layout,
    )
    ckpt = Checkpoints(workdir, config.checkpoint.keep, config.checkpoint.async_save)
    if main:
        manifest = json.loads(storage.read_text(storage.join(config.data.data_dir, "manifest.json")))
        resume = ckpt.latest_step()
        directories = dict(checkpoints=ckpt.directory, compile_cache=compile_cache.directory)
        print(summary(config, setup, manifest, resume, **directories), flush=True)
    resuming = ckpt.latest_step() is not None
    changes = run_origin.check_resume(setup, workdir, resuming, config_json)
    goodput = Goodput(workdir, main, started)
    with goodput.timer("checkpoint_restore" if resuming else None):
        state, start = initial_state(setup, ckpt, data, main)
    goodput.begin(start)
    if main:  # only once the checkpoint matched: a refused resume leaves the run's own config.json
        run_origin.record(setup, workdir, start, changes, tokenizer_path=tokenizer.model_path)
        storage.write_text(storage.join(workdir, "config.json"), config_json)
    evaluator = Evaluator(config, setup.mesh, setup.graphdef, tokenizer.pad_id)
    log = MetricsLog(workdir, config.num_steps, main, start)
    loop = Loop(setup, data, ckpt, evaluator, log=log, preempted=preempted, goodput=goodput)
    try:
        last = loop.run(state, start)
    finally:
        with goodput.timer("checkpoint_save"):  # waits for the last save
            ckpt.close()
        log.close()
        data.close()
        goodput.write()
    if main:
        print(compile_cache.summary(), goodput.summary(), sep="\n", flush=True)
    if main and not preempted.requested:
        print(_done(ckpt, log, workdir, last), flush=True)
        if config.data.demo_corpus and os.path.isfile(os.path.join(config.data.data_dir, EXAMPLE_FILE)):
            print(_demo_report(setup, workdir, loop, tokenizer), flush=True)
    return last


def _done(ckpt: Checkpoints, log: MetricsLog, workdir: str, last: dict) -> str:
    rounded = {k: round(float(v), 5) for k, v in last.items()}
    return (
        f"done. checkpoints: {ckpt.directory}\nmetrics: {log.path}\nTensorBoard: "
        f"{storage.join(workdir, 'tb')}\nfinal metrics: {json.dumps(rounded)}"
    )


def _demo_report(setup: TrainSetup, workdir: str, loop: Loop, tokenizer) -> str:
    """The demo corpus' closing lines: MRR against BM25, and the trained model's answers (and, from a
    pretrained start, the base model's)."""
    config = setup.config
    trained = (setup.graphdef, loop.state.model_params, tokenizer, config.objective)
    model = trained_model(*trained) if setup.lora else None  # its work dir holds no base
    retrieval, base_dir = loop.evaluator.retrieval, config.model.hf_dir
    return demo_report(
        workdir, config.data.data_dir, retrieval, model=model, lora=setup.lora, base_dir=base_dir
    )


def main(argv):
    absl_logging.set_verbosity(absl_logging.WARNING)

    def run_training():
        cli.reject_extra_arguments(argv)
        train(cli.load_config(_CONFIG, "configs/demo.py"), _WORKDIR.value)

    sys.exit(cli.run_command("grit-train", run_training))


def run(argv=None):
    """The console script; ``argv`` (program name first) for running it in-process."""
    hardware.quiet_platform()  # before any JAX backend starts: no libtpu noise on a CPU machine
    parse = cli.flags_parser("grit-train", __doc__, ("config", "workdir"))
    if program_help.wants_help(sys.argv if argv is None else argv):
        parse(sys.argv if argv is None else argv)  # exits: no waiting for the other hosts to answer help
    distributed.initialize_from_env()
    cli.run_absl(main, argv, parse)


if __name__ == "__main__":
    run()
