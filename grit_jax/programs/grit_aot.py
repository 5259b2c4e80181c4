"""Compile a config's exact train step for a TPU topology on this CPU: per-chip memory, fits or not, FLOPs.

    grit-aot --config configs/gritlm.py:7b --topology v5e-64 [--slices N] [--search] [--config.a.b=value ...]

The step is the one ``grit-train`` runs (``step.make_train_step``), lowered on an abstract, sharded
state and batch over the compile-only devices of the named Cloud TPU slice (libtpu, the ``aot``
extra) and compiled by XLA's TPU compiler. Memory, FLOPs and HBM bytes come from the compiled program
(the estimate: train/step_cost.py; --search: train/step_search.py). Exit status: 0 fits (--search: one
candidate fits), 1 does not fit, 2 usage error (3: an internal error, with its traceback).

Accelerator names are Cloud TPU's: v4-N and v5p-N count TensorCores (two per chip), v5e-N
(alias v5litepod-N) and v6e-N count chips. Raw topologies such as ``v5e:2x4`` are accepted too.
``--slices N`` compiles for N such slices joined by the data-center network (``mesh.slices``: only the
data axis spans them) and adds the bytes each chip sends over DCN per step (grit_jax.dcn_traffic).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sys
import time
import traceback

import jax
from absl import flags

from grit_jax import cli, dcn_traffic, hardware, sharding
from grit_jax.data.pipeline import planned_counts
from grit_jax.errors import UsageError
from grit_jax.hardware import GENERATIONS, Accelerator, GiB, parse_accelerator
from grit_jax.run_config import check_numbers, data_parallel_size, num_batch_shapes
from grit_jax.train import flops, step_cost, step_search
from grit_jax.train.compiled_memory import out_of_memory, shard_bytes, state_consumers, total_bytes
from grit_jax.train.state import TrainSetup
from grit_jax.train.step import abstract_batch, make_train_step

_CONFIG = cli.define_config_flag()
_TOPOLOGY = flags.DEFINE_string(
    "topology", None, "Cloud TPU accelerator type, e.g. v5p-64, v5e-16, v4-128, v6e-8"
)
_MFU = flags.DEFINE_float("mfu", 0.5, "model FLOPs utilisation assumed for the predicted step time")
_TOP = flags.DEFINE_integer("top", 6, "how many of the largest per-chip consumers to list")
_JSON = flags.DEFINE_string("json", None, "also write the report as JSON to this file")
_SEARCH = flags.DEFINE_bool(
    "search", False, "compile candidates of the step's remat/chunk/micro-batch choices; print the best"
)
_BUDGET = flags.DEFINE_integer("search_budget", 8, "--search: at most this many compiles")
_HBM_GIB = flags.DEFINE_float(
    "hbm_gib", 0.0, "judge fits against this many GiB of HBM per chip instead of the chip's (what-if, tests)"
)
_SLICES = flags.DEFINE_integer("slices", None, "compile for N slices of --topology (default: mesh.slices)")
_DCN_GBPS = flags.DEFINE_float(
    "dcn_gbps",
    0.0,
    "DCN bandwidth per chip, Gbit/s, for the transfer time (0: v5e 25, v5p 50; Google's figures)",
)


# libtpu flags that keep gathers and scatters off the SparseCores (see topology_devices)
TENSORCORE_ONLY = (
    "--xla_tpu_offload_gather_to_sparsecore=false",
    "--xla_tpu_enable_offloading_scatter_to_sparsecore=false",
)


def topology_devices(accelerator: Accelerator, slices: int = 1):
    """The compile-only TPU devices of the slice (one per chip; of ``slices`` slices), from libtpu."""
    if importlib.util.find_spec("libtpu") is None:
        raise UsageError(
            "libtpu is not installed; it compiles for TPU on this machine: pip install -e .[aot]"
        )
    hardware.quiet_libtpu(accelerator.cloud_type)
    # libtpu 0.0.52 offloads gathers (the token embedding's) and scatters (a MoE's) to the SparseCores of
    # v5p and v6e as async ops its own HLO cannot be read back with (RET_CHECK "async-update ... 1
    # operands but sees 3"), and the estimate reads the compiled program: here they stay on the
    # TensorCores (read before the first compile; a flag the user set wins).
    libtpu_args = os.environ.get("LIBTPU_INIT_ARGS", "")
    for flag in TENSORCORE_ONLY:
        if flag.split("=")[0] not in libtpu_args:
            libtpu_args = f"{libtpu_args} {flag}".strip()
    os.environ["LIBTPU_INIT_ARGS"] = libtpu_args
    from jax.experimental import topologies  # after quiet_libtpu: it reads the environment on import

    kwargs = (
        {"chip_config_name": "megacore"}
        if GENERATIONS[accelerator.generation].cores_per_chip_in_name == 2
        else {}
    )
    if slices > 1:  # the devices then carry their slice_index
        kwargs["num_slices"] = slices
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
    parameter_bytes: int  # per chip: model parameters (+ projection; with LoRA the frozen base too)
    optimizer_bytes: int  # per chip: optimizer state
    argument_bytes: int  # per chip, from the compiled program (state + batch)
    output_bytes: int
    alias_bytes: int  # outputs that reuse donated inputs
    temp_bytes: int  # activations, gradients, workspace
    code_bytes: int
    peak_bytes: int  # the compiler's peak, when it reports one (0 otherwise)
    total_bytes: int  # what the chip must hold
    fits: bool
    step_flops: float  # analytic model FLOPs of one step, whole slice (packed with data: real tokens')
    peak_flops_per_chip: float
    mfu: float
    step_seconds: float  # at ``mfu``
    num_steps: int
    hours: float  # num_steps at ``mfu``
    compile_seconds: float
    top: list = dataclasses.field(default_factory=list)  # (what, per-chip bytes, detail)
    settings: dict = dataclasses.field(default_factory=dict)
    compiler_error: str = ""  # XLA's out-of-memory message when it refused to compile
    slices: int = 1
    dcn: dict = dataclasses.field(default_factory=dict)  # slices > 1: grit_jax.dcn_traffic's figures
    real_share: float = 0.0  # data.packing with data.data_dir: real tokens / computed positions
    estimate: dict = dataclasses.field(default_factory=dict)  # step_cost.StepEstimate of the compiled step
    estimate_tokens: int = 0  # the compiled batch's positions, every one counted a real token

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


def compile_step(setup: TrainSetup):
    """(memory analysis, loop-aware cost or None, XLA's out-of-memory message or "", seconds, the
    compiled step or None) of the train step."""
    state, batch = setup.abstract_state(), abstract_batch(setup)
    start = time.perf_counter()
    try:
        compiled = make_train_step(setup).lower(state, batch).compile()
    except Exception as e:  # XLA:TPU refuses a program that cannot fit in HBM
        memory, compiler_error = out_of_memory(e, jax.tree.leaves((state, batch)))
        return memory, None, compiler_error, time.perf_counter() - start, None
    try:
        cost = step_cost.loop_cost(compiled)
    except jax.errors.JaxRuntimeError as e:  # the program compiled; only reading it back failed
        print(f"no estimate: the compiled program could not be read back: {str(e).splitlines()[0][:200]}")
        cost = None
    return compiled.memory_analysis(), cost, "", time.perf_counter() - start, compiled


def _memory_fields(setup: TrainSetup, memory, compiler_error: str, hbm_bytes: int, *, top: int) -> dict:
    state = setup.abstract_state()
    total, peak = total_bytes(memory)
    consumers = [
        (
            "temporaries (activations, gradients, workspace)",
            memory.temp_size_in_bytes,
            "compiled program" if not compiler_error else "XLA's out-of-memory report",
        )
    ]
    consumers += state_consumers(state)
    return dict(
        parameter_bytes=sum(
            shard_bytes(x) for x in jax.tree.leaves((state.params, state.projection, state.frozen))
        ),
        optimizer_bytes=sum(shard_bytes(x) for x in jax.tree.leaves(state.opt_state)),
        argument_bytes=memory.argument_size_in_bytes,
        output_bytes=memory.output_size_in_bytes,
        alias_bytes=memory.alias_size_in_bytes,
        temp_bytes=memory.temp_size_in_bytes,
        code_bytes=memory.generated_code_size_in_bytes,
        peak_bytes=peak,
        total_bytes=total,
        fits=not compiler_error and total <= hbm_bytes,
        top=sorted(consumers, key=lambda r: -r[1])[:top],
        compiler_error=compiler_error,
    )


def packed_flops(setup: TrainSetup, hosts: int, steps: int = 20) -> tuple[float, float]:
    """(model FLOPs per step, real share of the computed positions) of a packed config, from the real
    tokens of the first ``steps`` steps of data.data_dir (its length index: grit_jax.data.pipeline)."""
    config = setup.config
    totals = planned_counts(config.data, setup.layout, steps, hosts=hosts, mode=config.objective.mode)
    counts = {}
    for field, (real, _, squares) in totals.items():
        causal = field == "generative" or config.objective.attn == "cccc"
        counts[field] = (real / steps, (squares + real) / 2 / steps if causal else squares / steps)
    share = sum(t[0] for t in totals.values()) / max(sum(t[1] for t in totals.values()), 1)
    return flops.step_flops(setup.model_config, counts), share


def _time_fields(setup: TrainSetup, device, mfu: float, hosts: int = 1) -> dict:
    config = setup.config
    peak_flops = hardware.device_peak_flops(device)
    step_flops = flops.train_step_flops(config, setup.model_config)
    real_share = 0.0
    if config.data.packing and config.data.data_dir:  # hours from the data's real tokens, not padded rows
        step_flops, real_share = packed_flops(setup, hosts)
    chips = setup.mesh.devices.size
    step_seconds = step_flops / (chips * peak_flops * mfu) if peak_flops and mfu > 0 else 0.0
    return dict(
        step_flops=step_flops,
        peak_flops_per_chip=peak_flops,
        mfu=mfu,
        step_seconds=step_seconds,
        num_steps=int(config.num_steps),
        hours=step_seconds * int(config.num_steps) / 3600,
        real_share=real_share,
    )


def compile_report(
    config, accelerator: Accelerator, *, mfu: float = 0.5, top: int = 6, hbm_bytes: int = 0, dcn_gbps=0.0
) -> Report:
    """Lower and compile ``config``'s train step for ``accelerator`` (``config.mesh.slices`` of them);
    measure it. hbm_bytes: the HBM per chip a fit is judged against (default: the chip's)."""
    check_numbers(config)  # mesh.slices before libtpu sees it
    slices = int(config.mesh.get("slices", 1))
    devices = topology_devices(accelerator, slices)
    setup = TrainSetup(config, sharding.make_mesh(config.mesh, devices=devices))
    hbm_bytes = hbm_bytes or accelerator.hbm_bytes
    memory, cost, compiler_error, seconds, compiled = compile_step(setup)
    obj = config.objective
    settings = dict(
        remat_policy=config.model.remat_policy,
        attention_impl=config.model.attention_impl,
        embedding_chunk_size=obj.embedding_chunk_size,
        generative_accumulation_steps=obj.generative_accumulation_steps,
        mode=obj.mode,
    )
    if num_batch_shapes(config) > 1:  # the largest bucket of every field is what is compiled here
        settings["length_buckets"] = "largest of " + str(num_batch_shapes(config)) + " batch shapes"
    if config.data.packing:  # the packed shape of the largest chunk (grit_jax.batch_layout) is compiled here
        settings["packing"] = "largest shape" + (
            "" if config.data.data_dir else "; FLOPs as padded (no data)"
        )
    return Report(
        accelerator=accelerator.name,
        topology=accelerator.topology,
        device_kind=devices[0].device_kind,
        chips=int(setup.mesh.devices.size),
        mesh={k: int(v) for k, v in setup.mesh.shape.items()},
        hbm_bytes=hbm_bytes,
        compile_seconds=seconds,
        settings=settings,
        slices=slices,
        dcn=dcn_traffic.report_fields(compiled, slices, accelerator.generation, dcn_gbps),
        **_memory_fields(setup, memory, compiler_error, hbm_bytes, top=top),
        **step_cost.report_fields(setup, cost, accelerator),
        **_time_fields(setup, devices[0], mfu, len({getattr(d, "process_index", 0) for d in devices})),
    )


def _gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB / 10 or n == 0 else f"{n / 2**20:.2f} MiB"


def format_report(r: Report) -> str:
    """The human-readable report; the first line says whether it fits."""
    mesh = " x ".join(f"{k}={v}" for k, v in r.mesh.items() if v > 1) or "1 device"
    need = f"needs {_gib(r.total_bytes)} of {_gib(r.hbm_bytes)} per chip ({r.total_bytes / r.hbm_bytes:.0%})"
    head = f"fits: {need}" if r.fits else f"does not fit: {need}; the top consumers are listed below"
    lines = [
        head,
        f"slice      {f'{r.slices} x ' if r.slices > 1 else ''}{r.accelerator} = {r.chips} chips "
        f"({r.device_kind}, topology {r.topology}), mesh {mesh}",
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
        f"FLOPs      {r.step_flops:.3e} model FLOPs per step (analytic, no rematerialisation)"
        + (
            f", of the data's real tokens ({r.real_share:.0%} of the packed positions)"
            if r.real_share
            else ""
        ),
    ]
    if r.dcn:
        lines.append(dcn_traffic.report_line(r.dcn))
    if r.dcn.get("seconds") and r.estimate:  # the roofline step plus the DCN transfer, not overlapped
        step = r.estimate["step_seconds"] + r.dcn["seconds"]
        mfu = r.estimate["mfu"] * r.estimate["step_seconds"] / step
        lines.append(f"with DCN   {step:.3g} s per step, MFU {mfu:.0%} (estimate + DCN transfer)")
    if r.compiler_error:
        lines.insert(1, f"XLA:TPU   {r.compiler_error}")
    lines[3:3] = step_cost.estimate_lines(r.estimate, r.num_steps, r.estimate_tokens)
    if r.step_seconds:
        lines.append(
            f"assumed    {r.step_seconds:.2f} s per step at {r.mfu:.0%} MFU (--mfu) "
            f"({r.peak_flops_per_chip / 1e12:.0f} TFLOP/s per chip): {r.hours:.1f} h for {r.num_steps} steps"
        )
    lines.append(f"compiled in {r.compile_seconds:.0f} s")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line


def search_report(config, accelerator: Accelerator, *, budget: int, hbm_bytes=0, json_path=None) -> list:
    """--search: the step_search candidates of ``config`` on ``accelerator``, each one compile."""

    def evaluate(candidate_config, setting):
        try:
            r = compile_report(candidate_config, accelerator, hbm_bytes=hbm_bytes)
        except UsageError as e:  # a value the config checks refuse
            return step_search.Candidate(setting, error=str(e))
        jax.clear_caches()  # each candidate's compiled step would otherwise stay in memory
        print(f"searched {setting}: {format_report(r).splitlines()[0]}", file=sys.stderr, flush=True)
        return step_search.Candidate.from_report(setting, r)

    w = data_parallel_size(
        dict(
            sharding.make_mesh(
                config.mesh, devices=topology_devices(accelerator, int(config.mesh.get("slices", 1)))
            ).shape
        )
    )
    return step_search.search(config, evaluate, data_parallel=w, budget=budget, json_path=json_path)


def main(argv) -> int:
    cli.reject_extra_arguments(argv)
    config = cli.load_config(_CONFIG, "configs/gritlm.py:7b")
    if not _TOPOLOGY.value:
        raise UsageError("--topology is required, e.g. --topology v5p-64")
    accelerator = parse_accelerator(_TOPOLOGY.value)
    if _SLICES.value is not None:
        config.mesh.slices = _SLICES.value  # checked with the config (mesh.slices)
    hbm_bytes = int(_HBM_GIB.value * GiB)
    if _SEARCH.value:
        candidates = search_report(
            config, accelerator, budget=_BUDGET.value, hbm_bytes=hbm_bytes, json_path=_JSON.value
        )
        print(f"{accelerator.name}: {len(candidates)} candidates\n{step_search.table(config, candidates)}")
        return 0 if step_search.best(candidates) else 1
    report = compile_report(
        config, accelerator, mfu=_MFU.value, top=_TOP.value, hbm_bytes=hbm_bytes, dcn_gbps=_DCN_GBPS.value
    )
    if _JSON.value:  # first: the report of a long compile must survive a closed stdout
        with open(_JSON.value, "w", encoding="utf-8") as f:
            f.write(report.to_json())
    print(format_report(report), flush=True)
    return 0 if report.fits else 1


def _main(argv):
    try:  # every error a user can act on is a usage error here: 1 must keep meaning "does not fit"
        sys.exit(cli.run_command("grit-aot", lambda: main(argv), error_status=2))
    except Exception:  # a bug, not an answer
        traceback.print_exc()
        sys.exit(3)


def run(argv=None):
    """The console script; ``argv`` (program name first) for running it in-process."""
    hardware.quiet_platform("cpu")  # the host only compiles: never claim a local TPU or GPU
    own = ("config", "topology", "mfu", "top", "json", "hbm_gib", "search", "search_budget")
    own += ("slices", "dcn_gbps")
    cli.run_absl(_main, argv, cli.flags_parser("grit-aot", __doc__, own))


if __name__ == "__main__":
    run()
