"""`grit-eval mteb`: MTEB tasks (named, or a benchmark's) on a GritLM with the reference's per-task
instructions (grit_jax.retrieval.mteb_encoder), one task at a time, into mteb's own result layout:

    OUT/results/grit_jax__NAME/FINGERPRINT/TASK.json     (mteb.ResultCache(OUT), read by mteb's tools)

The revision is the model's weights fingerprint (grit_jax.weights.fingerprint), so results are only ever
reused for the weights that made them: another model under the same name, or a newer export in the same
dir, runs its tasks again. A task whose results are already there is not run again (a stopped evaluation
resumes where it stopped). Each result file is written under a temporary name and renamed; one that
cannot be read (cut by a kill in an older version, edited) is kept as TASK.json.damaged, said, and the task
run again. Needs the `eval` extra.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

from grit_jax.errors import UsageError, one_line


def resolve_tasks(names: Sequence[str], benchmark: str | None) -> list:
    """mteb task objects for task names, or for a benchmark's name (e.g. "MTEB(eng, v1)")."""
    import mteb

    if benchmark:
        try:
            return list(mteb.get_benchmark(benchmark).tasks)
        except (KeyError, ValueError) as e:
            raise UsageError(f"--benchmark {benchmark!r}: {str(e).splitlines()[0]}") from None
    if not names:
        raise UsageError("give --tasks NAME ... or --benchmark NAME")
    try:
        tasks = list(mteb.get_tasks(tasks=list(names)))
    except (KeyError, ValueError) as e:
        raise UsageError(f"--tasks: {str(e).splitlines()[0]}") from None
    missing = sorted(set(names) - {t.metadata.name for t in tasks})
    if missing:
        raise UsageError(f"--tasks: mteb has no task {', '.join(missing)} (names as in mteb.get_tasks)")
    return tasks


def evaluate_tasks(model, tasks: Sequence, out: str, name: str, *, batch_size: int, max_length: int) -> dict:
    """{task name: main score}; each task's result is written as soon as the task ends."""
    import mteb

    from grit_jax.retrieval.mteb_encoder import GritMTEB

    encoder = GritMTEB(model, batch_size=batch_size, max_length=max_length, name=name)
    cache = atomic_cache(out)
    print(f"results of weights {encoder.mteb_model_meta.revision} (fingerprint) under {out}", flush=True)
    scores = {}
    for i, task in enumerate(tasks, 1):
        task_name = task.metadata.name
        done = readable(cache.get_task_result_path(task_name, encoder.mteb_model_meta))
        start = time.perf_counter()
        result = mteb.evaluate(
            encoder, task, cache=cache, overwrite_strategy="only-missing", show_progress_bar=False
        )
        scores[task_name] = float(result.task_results[0].get_score())
        how = "already in results, not run" if done else f"{time.perf_counter() - start:.0f} s"
        print(f"[{i}/{len(tasks)}] {task_name}: {task.metadata.main_score} {scores[task_name]:.4f} ({how})")
    if scores:
        print(
            f"average over {len(scores)} task(s): {sum(scores.values()) / len(scores):.4f}; results in {out}"
        )
    return scores


def readable(path) -> bool:
    """Whether a task's result file is there and reads; one that does not is moved aside and said."""
    from mteb.results.task_result import TaskResult

    if not path.exists():
        return False
    try:
        TaskResult.from_disk(path)
        return True
    except (ValueError, KeyError, TypeError, OSError) as e:  # a cut file is a JSONDecodeError
        damaged = path.with_name(path.name + ".damaged")
        os.replace(path, damaged)
        print(f"grit-eval: {path}: damaged ({one_line(e)}); kept as {damaged.name}, running the task again",
              file=sys.stderr, flush=True)  # fmt: skip
        return False


def atomic_cache(out: str):
    """mteb.ResultCache(out) whose task result files appear whole: written to a temporary name, renamed."""
    import mteb
    from mteb.results.task_result import TaskResult

    class WholeTaskResult(TaskResult):
        def to_disk(self, path):
            tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
            super().to_disk(tmp)
            os.replace(tmp, path)

    class AtomicResultCache(mteb.ResultCache):
        def save_to_cache(self, task_result, *args, **kwargs):
            fields = {k: getattr(task_result, k) for k in TaskResult.model_fields}
            super().save_to_cache(WholeTaskResult.model_construct(**fields), *args, **kwargs)

    return AtomicResultCache(out)
