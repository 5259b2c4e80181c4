"""What the benchmark scripts share: models from presets, timing, the environment of subprocesses and of
N processes as N hosts (launch/local.sh), peak memory, the machine's description, and result rows in
benchmarks/RESULTS.md (one `## Topic` section per subject, newest figure first).

Only the standard library at the top: child processes that measure their own memory import this too.
BENCH_RESULTS=PATH sends --write rows elsewhere (a copy, for trying a script out).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "RESULTS.md")


def results_path() -> str:
    return os.environ.get("BENCH_RESULTS") or RESULTS


# ----------------------------------------------------------------------------- models


def model_config(preset: str, **changes):
    """ModelConfig.preset(preset, **changes): the bench_* presets hold the shapes benchmarks measure."""
    from grit_jax.model import ModelConfig

    return ModelConfig.preset(preset, **changes)


def hf_shape(preset: str, *fields: str) -> dict:
    """Fields of a preset, as keyword arguments of a transformers config (only those named: the others
    keep transformers' defaults, as the recorded figures did)."""
    cfg = model_config(preset)
    return {name: getattr(cfg, name) for name in fields}


class IdsOnlyTokenizer:
    """For models fed token ids directly: GritLM needs the special ids, never encode/decode."""

    bos_id, eos_id, pad_id = 1, 2, 0
    vocab_size = 3  # the ids it names; the rows fed hold the model's own


def random_gritlm(preset: str, tokenizer=None, *, mode: str = "unified", **changes):
    """A GritLM around a randomly initialised Transformer (nnx.Rngs(0)) of `preset` and `tokenizer`."""
    from flax import nnx

    from grit_jax.inference.gritlm import GritLM
    from grit_jax.model import Transformer

    model = Transformer(model_config(preset, **changes), rngs=nnx.Rngs(0))
    return GritLM(model, tokenizer or IdsOnlyTokenizer(), mode=mode)


# ----------------------------------------------------------------------------- timing


def time_runs(fn, repeats: int, warmup: int = 1) -> list[float]:
    """Wall seconds of `repeats` calls of `fn` after `warmup` untimed ones (compiles, allocations)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def best_of(fn, repeats: int, warmup: int = 1) -> float:
    """The fastest of `repeats` timed calls after the warm-up: what every "best of N" in RESULTS.md is."""
    return min(time_runs(fn, repeats, warmup))


# ----------------------------------------------------------------------------- processes and hosts


def cpu_env(devices: int | None = None, **extra: str) -> dict[str, str]:
    """This process's environment for a child on the CPU backend, with `devices` faked CPU devices."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", **extra)
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def module_command(module: str, *args: str) -> list[str]:
    """`python -m module args`: run from ROOT (cwd=ROOT), so that `benchmarks` and `grit_jax` import."""
    return [sys.executable, "-m", module, *map(str, args)]


def run_hosts(processes: int, module: str, args: list[str], log_dir: str, timeout: int) -> list[dict]:
    """`python -m module args` as `processes` hosts of one JAX cluster (launch/local.sh, 4 faked CPU
    devices each); returns each process's `RESULT {json}` line (result_line), or exits with the logs."""
    env = cpu_env(PYTHON=sys.executable, DEVICES_PER_HOST="4", GRIT_LOCAL_MODULE=module, LOG_DIR=log_dir)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)
    out = subprocess.run(
        ["bash", "launch/local.sh", str(processes), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    rows = [json.loads(line.split("RESULT ", 1)[1]) for line in out.stdout.splitlines() if "RESULT " in line]
    if out.returncode or len(rows) != processes:
        raise SystemExit(f"{module} x{processes} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return rows


def result_line(row: dict) -> None:
    """One process's result, for run_hosts to collect."""
    print("RESULT " + json.dumps(row), flush=True)


# ----------------------------------------------------------------------------- memory


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (ru_maxrss; Linux carries a parent's into a child)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def anon_rss_kib() -> int:
    """RssAnon of /proc/self/status: heap and buffers, which (without swap) the kernel cannot drop."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))


# ----------------------------------------------------------------------------- RESULTS.md


def today() -> str:
    return datetime.date.today().isoformat()


def machine() -> str:
    """`N-core MODEL (arch)` of this machine, for the machine column of a result."""
    model = platform.processor() or "CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()}-core {model} ({platform.machine()})"


def _anchor(topic: str) -> str:
    """The link target GitHub gives the heading `## topic`."""
    return "".join(c for c in topic.lower() if c.isalnum() or c in "-_ ").replace(" ", "-")


def _new_topic(text: str, topic: str) -> str:
    """`text` with an empty `## topic` section at its end and the topic's line last in the `## Index` list."""
    index = text.find("\n## Index\n")
    if index >= 0:
        end = text.find("\n\n", text.find("\n- ", index))
        text = text[:end] + f"\n- [{topic}](#{_anchor(topic)})" + text[end:]
    return text.rstrip("\n") + f"\n\n## {topic}\n"


def _edit(path: str | None, topic: str, change) -> None:
    """Rewrites the `## topic` section of `path` as change(section) (an empty section, listed in the
    index, is added at the end of the file first if there is none); the other sections stay as they are."""
    path = path or results_path()
    text = open(path, encoding="utf-8").read() if os.path.exists(path) else "# Benchmark results\n"
    heading = f"\n## {topic}\n"
    if heading not in text:
        text = _new_topic(text, topic)
    start = text.index(heading) + 1
    following = text.find("\n## ", start)
    end = len(text) if following < 0 else following + 1
    section = change(text[start:end].rstrip("\n") + "\n")
    rest = ("\n" + text[end:]) if end < len(text) else ""
    with open(path, "w", encoding="utf-8") as f:
        f.write(text[:start] + section + rest)


def _put_first(section: str, block: str) -> str:
    """`block` before the section's first `### ` entry (or at its end when it has none)."""
    block = block.strip("\n") + "\n"
    first = section.find("\n### ")
    if first < 0:
        return section + "\n" + block
    return section[: first + 1] + block + "\n" + section[first + 1 :]


def add_entry(topic: str, entry: str, path: str | None = None) -> None:
    """Puts `entry` (a `### title` block: figure, machine, date) first in the `## topic` section, before
    the older entries, which become its history."""
    _edit(path, topic, lambda section: _put_first(section, entry))


def add_row(topic: str, preamble: str, row: str, path: str | None = None) -> None:
    """Puts `row` first in the `## topic` table whose head is the last two lines of `preamble` (the
    newest row first); without that table, `preamble` (a `### title`, text, the table head) and the row
    become the section's newest entry."""
    table = "\n".join(preamble.rstrip("\n").split("\n")[-2:]) + "\n"
    row = row.rstrip("\n") + "\n"

    def change(section: str) -> str:
        at = section.find(table)
        if at < 0:
            return _put_first(section, preamble.rstrip("\n") + "\n" + row)
        return section[: at + len(table)] + row + section[at + len(table) :]

    _edit(path, topic, change)
