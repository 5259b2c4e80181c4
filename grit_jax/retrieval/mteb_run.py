"""`grit-eval mteb`: MTEB tasks (named, or a benchmark's) on a GritLM with the reference's per-task
instructions (grit_jax.retrieval.mteb_encoder), one task at a time, into mteb's own result layout:

    OUT/results/grit_jax__NAME/local/TASK.json     (mteb.ResultCache(OUT), read by mteb's tools)

A task whose results are already there is not run again (mteb's "only-missing": a stopped evaluation
resumes where it stopped). Needs the `eval` extra.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from grit_jax.errors import UsageError


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


def evaluate_tasks(model, tasks: Sequence, out: str, name: str, batch_size: int, max_length: int) -> dict:
    """{task name: main score}; each task's result is written by mteb as soon as the task ends."""
    import mteb

    from grit_jax.retrieval.mteb_encoder import GritMTEB

    encoder = GritMTEB(model, batch_size=batch_size, max_length=max_length, name=name)
    cache = mteb.ResultCache(out)
    scores = {}
    for i, task in enumerate(tasks, 1):
        task_name = task.metadata.name
        path = cache.get_task_result_path(task_name, encoder.mteb_model_meta, "local")
        done = os.path.exists(path)
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
