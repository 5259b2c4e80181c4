"""A search of a train step's memory/recompute choices for one slice, each candidate one compile.

    grit-aot --config configs/gritlm.py:7b --topology v5e-64 --search [--search_budget 6]

The choices are the axes below (a table: a new choice is one more row); each candidate is the config
with some of them changed, compiled for the slice by grit-aot and costed by grit_jax.train.step_cost.
A candidate counts only if it compiles and leaves at least SPARE of the chip's HBM free; among those the
one with the shortest estimated step wins (then the smaller memory). The search is greedy, by rounds:
round r tries the r-th value of each axis (most promising first) on top of the best setting so far,
starting from the config's own setting, until the budget of compiles is spent; not the full product.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable

from grit_jax.choices import REMAT_POLICIES
from grit_jax.run_config import uses

SPARE = 0.10  # of the chip's HBM a candidate must leave free (fragmentation, the runtime, XLA's slack)
# Estimates within this fraction of the fastest are one speed (a roofline, not a measurement): among
# them the candidate of least memory wins, not one whose lm head is 0.01% cheaper.
TIE = 0.01


def _remat_values(config, data_parallel: int) -> list:
    """Least recomputation first (none saves everything, full nothing), the matmul outputs before none:
    on a large model only a policy that saves part of a layer fits, and only with small chunks; then
    less of them (without the gate: two thirds of the matmuls' memory; the attention block's: a third)."""
    order = ("matmuls", "attention_up", "attention", "none", "dots_no_batch", "dots", "full")
    return [p for p in order if p in REMAT_POLICIES]


def _chunk_values(config, data_parallel: int) -> list:
    """Unchunked first (no second embedding forward), then larger chunks, then a smaller one; each a
    multiple of the data-parallel size that divides the embedding batch."""
    if not uses(config, "embedding"):
        return []
    b, c = config.data.embedding_batch_size, config.objective.embedding_chunk_size
    start = c or b
    chunks = (2 * start, start // 2, data_parallel)
    return [0, *(v for v in dict.fromkeys(chunks) if v < b and v % data_parallel == 0 and b % v == 0)]


def _accumulation_values(config, data_parallel: int) -> list:
    """One micro-batch first (no recomputed generative forward), then half and twice today's."""
    if not uses(config, "generative"):
        return []
    bg, s = config.data.generative_batch_size, max(config.objective.generative_accumulation_steps, 1)
    return [v for v in dict.fromkeys((1, s // 2, 2 * s)) if v >= 1 and bg % (data_parallel * v) == 0]


def _loss_block_values(config, data_parallel: int) -> list:
    """Whole logits first (no recomputed lm head), then blocks of 1024 and 256 positions."""
    if not uses(config, "generative"):
        return []
    return [0, 1024, 256]


def _lightest_loss_block(config, data_parallel: int):
    """Blocks of 256 positions: the float32 logits of one block at a time."""
    return 256 if uses(config, "generative") else None


def _lightest_chunk(config, data_parallel: int):
    """The smallest GradCache chunk: one sequence per batch shard."""
    b = config.data.embedding_batch_size
    return data_parallel if uses(config, "embedding") and data_parallel < b else None


def _lightest_accumulation(config, data_parallel: int):
    """The most generative micro-batches: one sequence per batch shard in each."""
    bg = config.data.generative_batch_size
    return bg // data_parallel if uses(config, "generative") and bg >= data_parallel else None


@dataclasses.dataclass(frozen=True)
class Axis:
    key: str  # the config field, "group.field"
    values: Callable  # (config, data-parallel size) -> the values to try, most promising first
    # (config, data-parallel size) -> the value of least memory, or None: an axis that trades memory for
    # recomputation; a candidate that does not fit is tried once more with every such axis at its lightest
    lightest: Callable | None = None


# The choices searched, in the order each round tries them.
AXES = (
    Axis("model.remat_policy", _remat_values),
    Axis("objective.embedding_chunk_size", _chunk_values, _lightest_chunk),
    Axis("objective.generative_accumulation_steps", _accumulation_values, _lightest_accumulation),
    Axis("objective.gen_loss_block", _loss_block_values, _lightest_loss_block),
)


@dataclasses.dataclass
class Candidate:
    setting: dict  # {axis key: value}: every axis, the config's value where the candidate keeps it
    compiled: bool = False
    total_bytes: int = 0  # per chip
    hbm_bytes: int = 0
    chips: int = 0
    tokens: int = 0  # the compiled batch's positions, counted real (grit_jax.train.step_cost)
    estimate: dict = dataclasses.field(default_factory=dict)  # step_cost.StepEstimate as a dict
    error: str = ""  # why it did not compile (XLA's out-of-memory message, a config error)

    @classmethod
    def from_report(cls, setting: dict, r) -> Candidate:
        """From grit-aot's report of the compiled candidate."""
        return cls(
            setting,
            compiled=not r.compiler_error,
            total_bytes=r.total_bytes,
            hbm_bytes=r.hbm_bytes,
            chips=r.chips,
            tokens=r.estimate_tokens,
            estimate=r.estimate,
            error=r.compiler_error,
        )

    @property
    def spare(self) -> float:
        return 1 - self.total_bytes / self.hbm_bytes if self.hbm_bytes else 0.0

    @property
    def fits(self) -> bool:
        return self.compiled and bool(self.estimate) and self.spare >= SPARE

    @property
    def seconds(self) -> float:
        return self.estimate.get("step_seconds", 0.0)

    @property
    def seconds_per_token(self) -> float:
        """What candidates are ranked by: their compiled batches may hold different numbers of positions
        (packing's row counts are multiples of data-parallel size x micro-batches)."""
        return self.seconds / self.tokens if self.tokens else 0.0


def get(config, key: str):
    group, field = key.split(".")
    return config[group][field]


def with_setting(config, setting: dict):
    """A copy of ``config`` with ``setting`` {"group.field": value} applied."""
    new = copy.deepcopy(config)
    for key, value in setting.items():
        group, field = key.split(".")
        new[group][field] = value
    return new


def best(candidates) -> Candidate | None:
    """Among the candidates that fit, the least memory of those within TIE of the fastest estimate per
    real token; None where none fits."""
    fitting = [c for c in candidates if c.fits]
    if not fitting:
        return None
    fastest = min(c.seconds_per_token for c in fitting)
    tied = [c for c in fitting if c.seconds_per_token <= fastest * (1 + TIE)]
    return min(tied, key=lambda c: (c.total_bytes, c.seconds_per_token))


def search(
    config, evaluate, *, data_parallel: int, budget: int, axes=AXES, json_path=None
) -> list[Candidate]:
    """Every candidate compiled, in order, the config's own setting first. evaluate(config, setting)
    compiles one candidate and returns its Candidate; json_path gets them all after each one."""
    current = {axis.key: get(config, axis.key) for axis in axes}
    values = {axis.key: axis.values(config, data_parallel) for axis in axes}
    tried: dict[tuple, Candidate] = {}

    def run(setting: dict) -> Candidate | None:
        key = tuple(setting.items())
        if key not in tried and len(tried) < budget:
            tried[key] = evaluate(with_setting(config, setting), dict(setting))
            if json_path:  # after each: a long search's candidates survive an interruption
                write_json(json_path, list(tried.values()))
            return tried[key]
        return None

    light = {a.key: a.lightest(config, data_parallel) for a in axes if a.lightest}
    light = {k: v for k, v in light.items() if v is not None}
    run(current)
    for rank in range(max((len(v) for v in values.values()), default=0)):
        for axis in axes:
            if rank < len(values[axis.key]):
                setting = {**current, axis.key: values[axis.key][rank]}
                candidate = run(setting)
                if candidate is not None and not candidate.fits and axis.key not in light:
                    run({**setting, **light})  # the same choice with the least memory elsewhere
                chosen = best(tried.values())
                current = dict(chosen.setting) if chosen else current
    return list(tried.values())


def overrides(config, candidate: Candidate) -> str:
    """The --config flags that turn ``config`` into ``candidate`` (empty: the config is the candidate)."""
    return " ".join(f"--config.{k}={v}" for k, v in candidate.setting.items() if get(config, k) != v)


def table(config, candidates: list[Candidate]) -> str:
    """The candidates as a markdown table, the chosen one marked, then its flags."""
    chosen = best(candidates)
    keys = list(candidates[0].setting) if candidates else []
    head = (
        "| | "
        + " | ".join(k.split(".")[1] for k in keys)
        + " | GiB per chip (of HBM) | fits with 10% spare | compiled FLOPs per real token "
        "| HBM GiB accessed per chip | est. s per step | est. ms per 1k real tokens | est. MFU "
        "| compiled / model FLOPs |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for c in candidates:
        mark = "**chosen**" if c is chosen else ("today" if c is candidates[0] else "")
        cells = [str(c.setting[k]) for k in keys]
        if not c.compiled:
            oom = "CompileTimeHbmOom" in c.error
            why = "XLA's compile-time out-of-memory" if oom else c.error.split(";")[0][:80]
            need = f"{c.total_bytes / 2**30:.2f} ({1 - c.spare:.0%})" if c.total_bytes else "-"
            cells += [need, f"no: {why or 'did not compile'}"] + ["-"] * 6
            lines.append(f"| {mark} | " + " | ".join(cells) + " |")
            continue
        e = c.estimate
        lines.append(
            f"| {mark} | "
            + " | ".join(cells)
            + f" | {c.total_bytes / 2**30:.2f} ({1 - c.spare:.0%}) | {'yes' if c.fits else 'no'} "
            f"| {e['compiled_flops'] * c.chips / c.tokens:.3e} | {e['bytes_accessed'] / 2**30:.1f} "
            f"| {e['step_seconds']:.3g} | {c.seconds_per_token * 1e6:.3g} | {e['mfu']:.1%} "
            f"| {e['flops_ratio']:.2f} |"
        )
    if chosen is None:
        lines.append("\nno candidate compiled with 10% of HBM to spare")
    else:
        flags = overrides(config, chosen)
        lines.append(f"\nchosen: {flags or 'the config as it is'}")
    return "\n".join(lines)


def write_json(path: str, candidates: list[Candidate]) -> None:
    chosen = best(candidates)
    rows = [{**dataclasses.asdict(c), "fits": c.fits, "chosen": c is chosen} for c in candidates]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=2)
