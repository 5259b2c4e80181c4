"""A compiled step's cost: its FLOPs and HBM bytes per chip, loop by loop, and the roofline time they imply.

XLA's ``compiled.cost_analysis()`` is per device (one SPMD shard of the program) and counts the body of
every while loop ONCE (tests/integration/test_aot_estimate.py shows both); a train step is mostly loops:
the scanned layers, the GradCache chunks, the generative micro-batches. ``loop_cost`` therefore reads
the optimised HLO, finds each loop's trip count in its condition and costs each loop body with XLA's own
cost analysis (the module re-entered at the body), so that the step's FLOPs and bytes are the body's
times its trips. What XLA counts includes the rematerialised forward passes: compiled FLOPs over the
model FLOPs of the step's tokens measure what the step recomputes.

The bytes are HBM's: what the program keeps in on-chip memory is taken out of XLA's count
(grit_jax.train.hbm_bytes). The roofline (max of FLOPs / peak FLOP/s and bytes / HBM bandwidth, per chip)
is a LOWER BOUND on the step's time: it knows nothing of collectives and how far they overlap compute
(ICI within a slice, DCN between slices), of the host's input pipeline, or of how efficiently each
kernel runs.
"""

from __future__ import annotations

import dataclasses
import math
import re

import jax
from jax._src.lib import _jax as _xla_ext  # XLA's cost analysis of an HloModule, the one JAX exposes
from jax._src.lib import xla_client

from grit_jax import hlo_text
from grit_jax.model.attention import SPLASH_BLOCKS
from grit_jax.train import flops, hbm_bytes
from grit_jax.train.step import abstract_batch

_SPLASH = re.compile(r"^\s*%splash_mha_(fwd|dq|dkv)\S* = .*?operand_layout_constraints=\{(.*?)\}\}", re.M)
# matmuls per (query, key) block: forward QK' and PV; dq QK', dP and dQ; dkv QK', dP, dV and dK
_SPLASH_MATMULS = {"fwd": 2, "dq": 3, "dkv": 4}


# what a Pallas kernel declares it computes (pl.CostEstimate), in its custom call's backend config
_KERNEL_ESTIMATE = re.compile(r'"cost_estimate":\{"flops":"(\d+)"')


def splash_flops(comp_text: str) -> float:
    """FLOPs of the splash attention kernels in a computation, which XLA counts as none (Pallas custom
    calls without a cost estimate): per kernel, its matmuls over the blocks its mask does not skip."""
    total = 0.0
    for kind, operands in _SPLASH.findall(comp_text):
        shapes = re.findall(r"(\w+)\[([\d,]*)\]", operands)
        *rows, heads, length, head_dim = (int(n) for n in shapes[2][1].split(","))  # q [(B,)N,T,H]
        density = 1.0
        if any(t == "s32" and dims.count(",") == 1 for t, dims in shapes):  # a computable (causal) mask
            blocks = length // next(b for b in SPLASH_BLOCKS if length % b == 0)
            density = (blocks + 1) / (2 * blocks)
        total += _SPLASH_MATMULS[kind] * 2.0 * math.prod(rows) * heads * length * length * head_dim * density
    return total


def declared_flops(comp_text: str) -> float:
    """FLOPs the Pallas kernels of a computation declare (megablox gmm and tgmm: a MoE's experts). The
    TPU's cost analysis of the whole program counts them; XLA's generic one, which costs each loop body
    here, does not: without them a MoE's expert matmuls counted once, not once per layer."""
    return float(sum(int(n) for n in _KERNEL_ESTIMATE.findall(comp_text)))


def _xla_cost(computations: dict[str, str], entry: str, client) -> tuple[float, float, int]:
    """(FLOPs, HBM bytes, instructions whose bytes are XLA's) of the module entered at ``entry``, its own
    loops counted once: XLA's cost analysis, the splash kernels' FLOPs, what the other Pallas kernels
    declare, and the bytes in on-chip memory taken out (grit_jax.train.hbm_bytes)."""
    parts, reachable = [], hlo_text.reachable(computations, entry)
    for name in reachable:
        body = computations[name].removeprefix("ENTRY ")
        parts.append(("ENTRY " if name == entry else "") + body)
    module = xla_client.hlo.hlo_module_from_text("HloModule cost_part\n\n" + "\n".join(parts))
    cost = _xla_ext.hlo_module_cost_analysis(client, module)
    kernels = sum(splash_flops(computations[n]) + declared_flops(computations[n]) for n in reachable)
    on_chip, unread = hbm_bytes.on_chip_correction(computations, entry, client)
    return cost.get("flops", 0.0) + kernels, cost.get("bytes accessed", 0.0) - on_chip, unread


@dataclasses.dataclass
class LoopCost:
    flops: float  # per device, every loop body times its trips
    bytes_accessed: float  # HBM only (grit_jax.train.hbm_bytes)
    flops_once: float  # XLA's own count: each loop body once
    bytes_once: float
    loops: int  # while loops found
    unknown_trips: int  # loops whose trip count was not found (counted once)
    unread_instructions: int = 0  # their bytes XLA's: hbm_bytes could not cost them on their own


def loop_cost(compiled) -> LoopCost:
    """Per-device FLOPs and bytes accessed of a compiled program with every loop body times its trips."""
    text = re.sub(r" stack_frame_id=\d+", "", compiled.as_text())  # the stack frame table stays behind
    computations, entry = hlo_text.split(text)
    client = jax.local_devices(backend="cpu")[0].client  # XLA's generic cost model, on the TPU program
    once = compiled.cost_analysis()
    once = once[0] if isinstance(once, list) else once
    stats = {"loops": 0, "unknown": 0, "unread": 0}
    cache: dict[str, tuple[float, float]] = {}

    def extra(name: str) -> tuple[float, float]:
        """What counting every loop under ``name`` by its trips adds to XLA's once-each count."""
        if name in cache:
            return cache[name]
        add_flops = add_bytes = 0.0
        nested = _loop_bodies(computations, name)
        for callee in hlo_text.reachable(computations, name):
            if callee in nested:
                continue  # the loops inside another loop's body: counted with that body
            for init, condition, body in hlo_text.WHILE.findall(computations[callee]):
                stats["loops"] += 1
                trips = hlo_text.trip_count(computations, callee, init, condition, body=body)
                stats["unknown"] += trips is None
                body_flops, body_bytes, unread = _xla_cost(computations, body, client)
                stats["unread"] += unread
                inner_flops, inner_bytes = extra(body)
                add_flops += ((trips or 1) - 1) * (body_flops + inner_flops) + inner_flops
                add_bytes += ((trips or 1) - 1) * (body_bytes + inner_bytes) + inner_bytes
        cache[name] = (add_flops, add_bytes)
        return cache[name]

    add_flops, add_bytes = extra(entry)
    on_chip, unread = hbm_bytes.on_chip_correction(computations, entry, client)
    kernels = sum(splash_flops(computations[n]) for n in hlo_text.reachable(computations, entry))
    return LoopCost(
        flops=once.get("flops", 0.0) + kernels + add_flops,
        bytes_accessed=once.get("bytes accessed", 0.0) - on_chip + add_bytes,
        flops_once=once.get("flops", 0.0),
        bytes_once=once.get("bytes accessed", 0.0),
        loops=stats["loops"],
        unknown_trips=stats["unknown"],
        unread_instructions=unread + stats["unread"],
    )


def _loop_bodies(computations: dict[str, str], name: str) -> set[str]:
    """Every computation reachable from the bodies of loops under ``name`` (not ``name`` itself)."""
    bodies = set()
    for callee in hlo_text.reachable(computations, name):
        for _, _, body in hlo_text.WHILE.findall(computations[callee]):
            bodies.update(hlo_text.reachable(computations, body))
    return bodies - {name}


# ----------------------------------------------------------------------------- model FLOPs and the estimate


def needed_flops(cfg, counts: dict, *, gradcache: set) -> float:
    """Model FLOPs of a step from counts {field: (tokens, attended pairs)} (grit_jax.train.flops), with
    GradCache's first, gradient-free forward counted as needed: 4 forwards for the embedding fields in
    ``gradcache`` (encoded in chunks), 3 (forward and backward) for everything else."""
    total = 0.0
    for field, count in counts.items():
        passes = 4.0 if field in gradcache else 3.0
        total += passes / 3.0 * flops.step_flops(cfg, {field: count})
    return total


def heaviest_counts(shapes: dict, max_lens: dict, causal: dict) -> dict:
    """{field: (tokens, pairs)} of a batch of (rows, row length) shapes whose every position is a real
    token in sequences of the field's max_len: the step whose shape is the largest (what grit-aot
    compiles) is this one at its heaviest."""
    counts = {}
    for field, (rows, length) in shapes.items():
        tokens, n = rows * length, max_lens[field]
        counts[field] = (tokens, tokens * ((n + 1) / 2 if causal[field] else n))
    return counts


@dataclasses.dataclass
class StepEstimate:
    compiled_flops: float  # per chip, loops by their trips (remat and GradCache recomputation included)
    bytes_accessed: float  # per chip, HBM bytes read and written
    compute_seconds: float  # compiled FLOPs / peak FLOP/s
    memory_seconds: float  # bytes / HBM bandwidth
    step_seconds: float  # the roofline: the larger of the two, a lower bound
    model_flops: float  # whole slice: model FLOPs of the step's real tokens (GradCache's 2nd forward too)
    flops_ratio: float  # compiled FLOPs of all chips / model_flops: > 1 is recomputation (or padding)
    mfu: float  # model_flops / (chips x peak x step_seconds): the MFU this estimate implies
    peak_flops: float  # per chip
    hbm_bandwidth: float  # per chip, bytes/s
    loops: int
    unknown_trips: int
    unread_instructions: int = 0


def estimate(cost: LoopCost, *, chips: int, peak_flops: float, hbm_bandwidth: float, model_flops: float):
    """The roofline step time of ``cost`` (per chip) on a slice of ``chips``, and what it implies."""
    compute = cost.flops / peak_flops if peak_flops else 0.0
    memory = cost.bytes_accessed / hbm_bandwidth if hbm_bandwidth else 0.0
    seconds = max(compute, memory)
    return StepEstimate(
        compiled_flops=cost.flops,
        bytes_accessed=cost.bytes_accessed,
        compute_seconds=compute,
        memory_seconds=memory,
        step_seconds=seconds,
        model_flops=model_flops,
        flops_ratio=cost.flops * chips / model_flops if model_flops else 0.0,
        mfu=model_flops / (chips * peak_flops * seconds) if seconds and peak_flops else 0.0,
        peak_flops=peak_flops,
        hbm_bandwidth=hbm_bandwidth,
        loops=cost.loops,
        unknown_trips=cost.unknown_trips,
        unread_instructions=cost.unread_instructions,
    )


def report_fields(setup, cost: LoopCost | None, accelerator) -> dict:
    """grit-aot's estimate of a compiled step ({} when it did not compile): the roofline against the
    model FLOPs of the compiled batch at its heaviest (every position a real token, sequences of max_len)."""
    if cost is None:
        return {}
    data, obj = setup.config.data, setup.config.objective
    shapes = {name: f.tokens.shape for name, f in abstract_batch(setup).fields().items()}
    counts = heaviest_counts(
        shapes,
        {name: data[f"{name}_max_len"] for name in shapes},
        {name: name == "generative" or obj.attn == "cccc" for name in shapes},
    )
    gradcache = {n for n in shapes if n != "generative" and setup.layout[n].chunks(*shapes[n]) > 1}
    est = estimate(
        cost,
        chips=int(setup.mesh.devices.size),
        peak_flops=accelerator.peak_flops,
        hbm_bandwidth=accelerator.hbm_bandwidth,
        model_flops=needed_flops(setup.model_config, counts, gradcache=gradcache),
    )
    return dict(estimate=dataclasses.asdict(est), estimate_tokens=sum(c[0] for c in counts.values()))


def estimate_lines(e: dict, num_steps: int, tokens: int) -> list[str]:
    """The estimate as grit-aot prints it (``e``: a StepEstimate as a dict), or none without one."""
    if not e:
        return []
    bound = "compute" if e["compute_seconds"] >= e["memory_seconds"] else "HBM-bandwidth"
    return [
        f"estimate   {e['step_seconds']:.3g} s per step, MFU {e['mfu']:.0%} on real tokens: "
        f"{e['step_seconds'] * num_steps / 3600:.2f} h for {num_steps} steps (roofline, a lower bound; "
        f"{bound}-bound)",
        f"  per chip {e['compiled_flops']:.3e} compiled FLOPs ({e['compute_seconds']:.3g} s at "
        f"{e['peak_flops'] / 1e12:.0f} TFLOP/s), {e['bytes_accessed'] / 2**30:.2f} GiB of HBM traffic "
        f"({e['memory_seconds']:.3g} s at {e['hbm_bandwidth'] / 1e9:.0f} GB/s; on-chip memory left out)",
        f"  compiled / model FLOPs {e['flops_ratio']:.2f} (model: {e['model_flops']:.3e} for the "
        f"{tokens:,} tokens of the compiled batch, all real; GradCache's first forward counted)",
        "  not in the estimate: collectives and their overlap (ICI, DCN), the host's input, kernel efficiency"
        + (f"; {e['unknown_trips']} loops of unknown trip count counted once" if e["unknown_trips"] else "")
        + (
            f"; {e['unread_instructions']} instructions' on-chip bytes counted as HBM"
            if e["unread_instructions"]
            else ""
        ),
    ]
