"""Compile a config's exact train step for a TPU topology on this CPU: per-chip memory, fits or not, FLOPs.

    grit-aot --config configs/gritlm_7b.py --topology v5e-64 [--mfu 0.5] [--config.a.b=value ...]

The step is the one ``grit-train`` runs (``step.make_train_step``), lowered on an abstract, sharded
state and batch over the compile-only devices of the named Cloud TPU slice (libtpu, the ``aot``
extra) and compiled by XLA's TPU compiler. Memory comes from the compiled program; FLOPs are the
analytic model FLOPs (``flops.train_step_flops``). Exit status: 0 fits, 1 does not fit, 2 usage error
(3: an internal error, with its traceback).

Accelerator names are Cloud TPU's: v4-N and v5p-N count TensorCores (two per chip), v5e-N
(alias v5litepod-N) and v6e-N count chips. Raw topologies such as ``v5e:2x4`` are accepted too.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import re
import sys
import time
import traceback
import types
from typing import Any

from absl import app, flags
from ml_collections import config_flags

GiB = 2**30

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "a configs/*.py file, optionally file.py:ARG", lock_config=True
)
_TOPOLOGY = flags.DEFINE_string(
    "topology", None, "Cloud TPU accelerator type, e.g. v5p-64, v5e-16, v4-128, v6e-8"
)
_MFU = flags.DEFINE_float("mfu", 0.5, "model FLOPs utilisation assumed for the predicted step time")
_TOP = flags.DEFINE_integer("top", 6, "how many of the largest per-chip consumers to list")
_JSON = flags.DEFINE_string("json", None, "also write the report as JSON to this file")


class UsageError(ValueError):
    """A bad command line: printed as one line, exit status 2."""


@dataclasses.dataclass(frozen=True)
class Generation:
    prefix: str  # the platform prefix libtpu's topology names use
    cores_per_chip_in_name: int  # 2: the Cloud name counts TensorCores (v4, v5p)
    dims: int  # 3: 3-D torus (v4, v5p); 2: 2-D (v5e, v6e)
    hbm_bytes: int  # per chip (one JAX device: v4 and v5p megacore)
    cloud_type: str  # TPU_ACCELERATOR_TYPE spelling of a slice


GENERATIONS = {
    "v4": Generation("v4", 2, 3, 32 * GiB, "v4-{n}"),
    "v5p": Generation("v5p", 2, 3, 95 * GiB, "v5p-{n}"),
    "v5e": Generation("v5e", 1, 2, 16 * GiB, "v5litepod-{n}"),
    "v6e": Generation("v6e", 1, 2, 32 * GiB, "v6e-{n}"),
}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6lite": "v6e", "v5": "v5p"}


@dataclasses.dataclass(frozen=True)
class Accelerator:
    name: str  # as given, e.g. "v5p-128"
    generation: str  # key of GENERATIONS
    chips: int
    topology: str  # libtpu topology name, e.g. "v5p:4x4x4"

    @property
    def hbm_bytes(self) -> int:
        return GENERATIONS[self.generation].hbm_bytes

    @property
    def cloud_type(self) -> str:
        g = GENERATIONS[self.generation]
        return g.cloud_type.format(n=self.chips * g.cores_per_chip_in_name)


def torus_shape(chips: int, dims: int) -> tuple[int, ...]:
    """Cloud TPU's slice shape for ``chips`` (a power of two): 64 -> 8x8 (2-D) or 4x4x4 (3-D)."""
    if chips < 1 or chips & (chips - 1):
        raise UsageError(f"{chips} chips: Cloud TPU slices have a power-of-two number of chips")
    shape = [1] * dims
    while math.prod(shape) < chips:
        if dims == 3 and math.prod(shape) < 4:  # 3-D slices start as 2x2x1
            shape[shape.index(1)] = 2
            continue
        smallest = min(shape)  # then double the last of the smallest dimensions: 2x2x2, 2x2x4, 2x4x4, 4x4x4
        shape[max(i for i, s in enumerate(shape) if s == smallest)] *= 2
    return tuple(shape)


def parse_accelerator(name: str) -> Accelerator:
    """v4-N / v5p-N (TensorCores), v5e-N / v5litepod-N / v6e-N (chips), or a raw ``v5e:2x4`` topology."""
    raw = re.fullmatch(r"(v\w+?):(\d+(?:x\d+)+)", name or "")
    if raw:
        gen = _ALIASES.get(raw.group(1), raw.group(1))
        sizes = tuple(int(s) for s in raw.group(2).split("x"))
        if gen not in GENERATIONS or len(sizes) != GENERATIONS[gen].dims:
            raise UsageError(
                f"--topology {name}: expected e.g. v5e:2x4 or v5p:2x2x2 ({', '.join(GENERATIONS)})"
            )
        return Accelerator(name, gen, math.prod(sizes), f"{gen}:{raw.group(2)}")
    cloud = re.fullmatch(r"(v\w+?)-(\d+)", name or "")
    gen = _ALIASES.get(cloud.group(1), cloud.group(1)) if cloud else None
    if gen not in GENERATIONS:
        raise UsageError(
            f"--topology {name!r}: expected a Cloud TPU type such as v4-128, v5p-256, v5e-64 or v6e-64 "
            f"(v4/v5p count TensorCores, v5e/v6e count chips)"
        )
    g, count = GENERATIONS[gen], int(cloud.group(2))
    if count % g.cores_per_chip_in_name:
        raise UsageError(f"--topology {name}: {gen}-N counts TensorCores, two per chip; N must be even")
    chips = count // g.cores_per_chip_in_name
    shape = torus_shape(chips, g.dims)
    return Accelerator(name, gen, chips, f"{gen}:{'x'.join(map(str, shape))}")


def topology_devices(accelerator: Accelerator):
    """The compile-only TPU devices of the slice (one per chip), from libtpu."""
    if importlib.util.find_spec("libtpu") is None:
        raise UsageError(
            "libtpu is not installed; it compiles for TPU on this machine: pip install -e .[aot]"
        )
    from grit_jax import platforms

    platforms.quiet_libtpu(accelerator.cloud_type)
    from jax.experimental import topologies

    kwargs = (
        {"chip_config_name": "megacore"}
        if GENERATIONS[accelerator.generation].cores_per_chip_in_name == 2
        else {}
    )
    try:
        return topologies.get_topology_desc(
            platform="tpu", topology_name=accelerator.topology, **kwargs
        ).devices
    except Exception as e:  # libtpu's message, on one line
        raise UsageError(
            f"--topology {accelerator.name} ({accelerator.topology}): libtpu: "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None


# ----------------------------------------------------------------------------- the report


@dataclasses.dataclass
class Report:
    accelerator: str
    topology: str
    device_kind: str
    chips: int
    mesh: dict
    hbm_bytes: int
    parameter_bytes: int  # per chip: model parameters (+ projection)
    optimizer_bytes: int  # per chip: optimizer state
    argument_bytes: int  # per chip, from the compiled program (state + batch)
    output_bytes: int
    alias_bytes: int  # outputs that reuse donated inputs
    temp_bytes: int  # activations, gradients, workspace
    code_bytes: int
    peak_bytes: int  # the compiler's peak, when it reports one (0 otherwise)
    total_bytes: int  # what the chip must hold
    fits: bool
    step_flops: float  # analytic model FLOPs of one step, whole slice
    peak_flops_per_chip: float
    mfu: float
    step_seconds: float  # at ``mfu``
    num_steps: int
    hours: float  # num_steps at ``mfu``
    compile_seconds: float
    top: list = dataclasses.field(default_factory=list)  # (what, per-chip bytes, detail)
    settings: dict = dataclasses.field(default_factory=dict)
    compiler_error: str = ""  # XLA's out-of-memory message when it refused to compile

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


def _shard_bytes(leaf) -> int:
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    return math.prod(shape) * leaf.dtype.itemsize


def state_consumers(state) -> list[tuple[str, int, str]]:
    """(path, per-chip bytes, "global shape dtype -> per-chip shape") of every state array, largest first."""
    import jax

    rows = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        parts = jax.tree_util.keystr(path, simple=True, separator=".").split(".")
        if parts[0] == "opt_state":  # optax's tuple indices say nothing to a reader
            parts = [p for p in parts if not p.isdigit()]
        name = ".".join(p for p in parts if p != "value")
        per_chip = leaf.sharding.shard_shape(leaf.shape)
        rows.append(
            (name, _shard_bytes(leaf), f"{list(leaf.shape)} {leaf.dtype} -> {list(per_chip)} per chip")
        )
    return sorted(rows, key=lambda r: -r[1])


_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _bytes(number: str, unit: str) -> int:
    return int(float(number) * _UNITS[unit[:1].upper()])


def _out_of_memory(error: Exception, arguments) -> tuple[Any, str]:
    """Memory figures recovered from XLA:TPU's compile-time out-of-memory error (re-raised if it is not one).

    XLA says either "... required for HLO temporaries (282.02G) exceeds available HBM (15.75G)" or
    "Used 20.5G of 15.75G hbm"; the arguments (state + batch shards) are added from their shardings.
    """
    message = str(error)
    if "RESOURCE_EXHAUSTED" not in message and "Ran out of memory" not in message:
        raise error
    args = sum(_shard_bytes(x) for x in arguments)
    temps = re.search(r"required for HLO temporaries \(([\d.]+)([KMGT]?)\)", message)
    used = re.search(r"Used ([\d.]+)([KMGT]?) of ([\d.]+)([KMGT]?) hbm", message)
    temp_bytes = _bytes(*temps.groups()) if temps else 0
    if used and not temps:
        temp_bytes = max(_bytes(*used.groups()[:2]) - args, 0)
    memory = types.SimpleNamespace(
        argument_size_in_bytes=args,
        output_size_in_bytes=0,
        alias_size_in_bytes=0,
        temp_size_in_bytes=temp_bytes,
        generated_code_size_in_bytes=0,
        peak_memory_in_bytes=0,
    )
    first = next((line for line in message.splitlines() if "memory" in line.lower()), message.splitlines()[0])
    return memory, first.strip()


def _total_bytes(memory) -> tuple[int, int]:
    """(needed, compiler peak): arguments + outputs not aliased to them + temporaries + code."""
    needed = (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        - memory.alias_size_in_bytes
        + memory.temp_size_in_bytes
        + memory.generated_code_size_in_bytes
    )
    peak = int(getattr(memory, "peak_memory_in_bytes", 0) or 0)
    return max(needed, peak), peak


def compile_report(config, accelerator: Accelerator, mfu: float = 0.5, top: int = 6) -> Report:
    """Lower and compile ``config``'s train step for ``accelerator``; measure it."""
    import jax

    from grit_jax import flops, sharding
    from grit_jax import step as step_lib

    devices = topology_devices(accelerator)
    mesh = sharding.make_mesh(config.mesh, devices=devices)
    train_step = step_lib.make_train_step(config, mesh)  # validates the config against the mesh
    state = step_lib.abstract_train_state(config, mesh)
    batch = step_lib.abstract_batch(config, mesh)
    params = sum(_shard_bytes(x) for x in jax.tree.leaves((state.params, state.projection)))
    optimizer = sum(_shard_bytes(x) for x in jax.tree.leaves(state.opt_state))
    start = time.perf_counter()
    try:
        memory = train_step.lower(state, batch).compile().memory_analysis()
        compiler_error = ""
    except Exception as e:  # XLA:TPU refuses a program that cannot fit in HBM
        memory, compiler_error = _out_of_memory(e, jax.tree.leaves((state, batch)))
    seconds = time.perf_counter() - start
    total, peak = _total_bytes(memory)

    consumers = [
        (
            "temporaries (activations, gradients, workspace)",
            memory.temp_size_in_bytes,
            "compiled program" if not compiler_error else "XLA's out-of-memory report",
        )
    ]
    consumers += state_consumers(state)
    consumers = sorted(consumers, key=lambda r: -r[1])[:top]

    kind = devices[0].device_kind
    peak_flops = flops.device_peak_flops(devices[0])
    step_flops = flops.train_step_flops(config, step_lib.model_config(config))
    step_seconds = step_flops / (mesh.devices.size * peak_flops * mfu) if peak_flops and mfu > 0 else 0.0
    obj = config.objective
    settings = dict(
        remat_policy=config.model.remat_policy,
        embedding_chunk_size=obj.embedding_chunk_size,
        generative_accumulation_steps=obj.generative_accumulation_steps,
        mode=obj.mode,
    )
    return Report(
        accelerator=accelerator.name,
        topology=accelerator.topology,
        device_kind=kind,
        chips=int(mesh.devices.size),
        mesh={k: int(v) for k, v in mesh.shape.items()},
        hbm_bytes=accelerator.hbm_bytes,
        parameter_bytes=params,
        optimizer_bytes=optimizer,
        argument_bytes=memory.argument_size_in_bytes,
        output_bytes=memory.output_size_in_bytes,
        alias_bytes=memory.alias_size_in_bytes,
        temp_bytes=memory.temp_size_in_bytes,
        code_bytes=memory.generated_code_size_in_bytes,
        peak_bytes=peak,
        total_bytes=total,
        fits=not compiler_error and total <= accelerator.hbm_bytes,
        step_flops=step_flops,
        peak_flops_per_chip=peak_flops,
        mfu=mfu,
        step_seconds=step_seconds,
        num_steps=int(config.num_steps),
        hours=step_seconds * int(config.num_steps) / 3600,
        compile_seconds=seconds,
        top=consumers,
        settings=settings,
        compiler_error=compiler_error,
    )


def _gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB / 10 or n == 0 else f"{n / 2**20:.2f} MiB"


def format_report(r: Report) -> str:
    """The human-readable report; the first line says whether it fits."""
    mesh = " x ".join(f"{k}={v}" for k, v in r.mesh.items() if v > 1) or "1 device"
    if r.fits:
        head = f"fits: needs {_gib(r.total_bytes)} of {_gib(r.hbm_bytes)} per chip ({r.total_bytes / r.hbm_bytes:.0%})"
    else:
        head = (
            f"does not fit: needs {_gib(r.total_bytes)} of {_gib(r.hbm_bytes)} per chip "
            f"({r.total_bytes / r.hbm_bytes:.0%}); the top consumers are listed below"
        )
    lines = [
        head,
        f"slice      {r.accelerator} = {r.chips} chips ({r.device_kind}, topology {r.topology}), mesh {mesh}",
        "settings   " + ", ".join(f"{k}={v}" for k, v in r.settings.items()),
        "per chip:",
        f"  parameters        {_gib(r.parameter_bytes):>12}",
        f"  optimizer state   {_gib(r.optimizer_bytes):>12}",
        f"  arguments         {_gib(r.argument_bytes):>12}  (state + batch)",
        f"  temporaries       {_gib(r.temp_bytes):>12}",
        f"  outputs not donated {_gib(r.output_bytes - r.alias_bytes):>10}",
        f"  code              {_gib(r.code_bytes):>12}",
        f"  total             {_gib(r.total_bytes):>12}  of {_gib(r.hbm_bytes)} HBM"
        + (f"  (compiler peak {_gib(r.peak_bytes)})" if r.peak_bytes else ""),
        "top consumers per chip:",
        *(f"  {_gib(b):>12}  {what}  [{detail}]" for what, b, detail in r.top),
        f"FLOPs      {r.step_flops:.3e} model FLOPs per step (analytic, no rematerialisation)",
    ]
    if r.compiler_error:
        lines.insert(1, f"XLA:TPU   {r.compiler_error}")
    if r.step_seconds:
        lines.append(
            f"time       {r.step_seconds:.2f} s per step at {r.mfu:.0%} MFU "
            f"({r.peak_flops_per_chip / 1e12:.0f} TFLOP/s per chip): {r.hours:.1f} h for {r.num_steps} steps"
        )
    lines.append(f"compiled in {r.compile_seconds:.0f} s")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line

_USER_ERRORS = ("UsageError", "ConfigError", "MeshConfigError", "UnplacedParameterError", "FileNotFoundError")


def main(argv) -> int:
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments {argv[1:]}")
    try:
        config = _CONFIG.value
        config.get("mesh")  # a file that failed to load raises here, on first use
    except OSError as e:  # config_flags reports a file it could not load only when the value is read
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise UsageError(f"--config: {lines[-1] if lines else e}") from None
    if config is None:
        raise UsageError("--config is required, e.g. --config configs/gritlm_7b.py")
    if not _TOPOLOGY.value:
        raise UsageError("--topology is required, e.g. --topology v5p-64")
    accelerator = parse_accelerator(_TOPOLOGY.value)
    report = compile_report(config, accelerator, mfu=_MFU.value, top=_TOP.value)
    if _JSON.value:  # first: the report of a long compile must survive a closed stdout
        with open(_JSON.value, "w", encoding="utf-8") as f:
            f.write(report.to_json())
    print(format_report(report), flush=True)
    return 0 if report.fits else 1


def _fail(message: str) -> None:
    print(f"grit-aot: error: {message}", file=sys.stderr)
    sys.exit(2)


def _parse_flags(argv):
    try:
        return FLAGS(argv)
    except flags.Error as e:
        _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)


def _main(argv):
    try:
        sys.exit(main(argv))
    except Exception as e:  # errors a user can act on: one line, no traceback
        if type(e).__name__ not in _USER_ERRORS:
            traceback.print_exc()
            sys.exit(3)  # a bug, not an answer: 1 must keep meaning "does not fit"
        _fail(str(e))


def run():
    import os

    from grit_jax import platforms

    # The host needs no accelerator (it only compiles): never claim a local TPU or GPU.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    platforms.quiet_platform()
    app.run(_main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
