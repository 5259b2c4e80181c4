"""What a compiled multislice step sends over the data-center network (DCN), and how long that takes.

libtpu compiles a multislice program slice by slice: a collective whose participants are all in one
slice stays an ordinary HLO collective over ICI (its replica groups number the slice's own chips), and
every collective whose participants span slices becomes host transfers handed to the Megascale runtime:
``send``/``recv`` pairs with ``is_host_transfer=true``, ``_xla_host_transfer_handler_name=
"xla_megascale_runtime"`` and ``_xla_megascale_transfer_type`` (``ALL_REDUCE``, ``ALL_GATHER``, ...).
``dcn_traffic`` walks ``compiled.as_text()`` for those sends (a send's buffer is what one chip hands
to the DCN for that collective, as laid out on the chip, tile padding included), weights each by the
times its computation runs (a ``while`` loop's trip count) and by what the collective makes one
chip send to its peers in the other slices (one peer per slice, ``k`` slices):

- all-reduce of a buffer of S bytes: ``2 (k-1)/k x S`` (a ring: reduce-scatter, then all-gather);
- all-gather, S being this chip's piece: ``(k-1) x S`` (every other slice needs it);
- reduce-scatter and all-to-all of S bytes: ``(k-1)/k x S`` (all but the part that stays here);
- anything else (point to point): S.

The time is those bytes over the DCN bandwidth of one chip: a host's NICs shared by its chips, every
chip sending at once, full duplex (what a chip receives is what its peers send). Google's figures:
v5e 2 x 100 Gbps NICs per 8-chip host (25 Gbps a chip), https://cloud.google.com/tpu/docs/v5e; v5p
50 Gbps a chip, https://cloud.google.com/tpu/docs/v5p. Other generations: pass the bandwidth.
"""

from __future__ import annotations

import dataclasses
import math
import re

from grit_jax import hlo_text

# DCN bandwidth per chip, Gbit/s, from Google's Cloud TPU system-architecture pages (module docstring).
DCN_GBPS_PER_CHIP = {"v5e": 25.0, "v5p": 50.0}

_ITEM_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2, "f16": 2}
_ITEM_BYTES |= {"bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8}

_CALLEE = re.compile(r"\b(?:body|condition|calls|to_apply|true_computation|false_computation)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_BODY = re.compile(r"\bbody=%?([\w.\-]+)")
_SEND_BUFFER = re.compile(r"= \((\w+)\[([\d,]*)\]")  # a send's result: (buffer, context, token)
_TRANSFER = re.compile(r'_xla_megascale_transfer_type="(\w+)"')


@dataclasses.dataclass
class DcnTraffic:
    """Bytes one chip sends over DCN in one step, in all and per kind of collective."""

    slices: int
    bytes_per_chip: float
    by_kind: dict  # {"ALL_REDUCE": bytes, ...}
    transfers: int  # Megascale sends in the program text
    in_unknown_loops: int  # of them, inside a loop whose trip count the program does not say (counted once)

    def seconds(self, gbps_per_chip: float) -> float:
        """The step's DCN transfer time at ``gbps_per_chip`` (Gbit/s), not overlapped with anything."""
        return self.bytes_per_chip * 8 / (gbps_per_chip * 1e9) if gbps_per_chip > 0 else 0.0


def chip_send_factor(kind: str, slices: int) -> float:
    """What one chip sends over DCN, as a multiple of its send buffer, for a collective over ``slices``."""
    k = slices
    if kind == "ALL_REDUCE":
        return 2 * (k - 1) / k
    if kind == "ALL_GATHER":
        return float(k - 1)
    if kind in ("REDUCE_SCATTER", "ALL_TO_ALL"):
        return (k - 1) / k
    return 1.0


def _trip_count(line: str, parent: str, texts: dict[str, str]) -> int | None:
    """A while loop's trip count: XLA's ``known_trip_count``, else what the loop's counter says
    (grit_jax.hlo_text: the TPU compiler drops known_trip_count); None when neither says."""
    known = _TRIP_COUNT.search(line)
    if known:
        return int(known.group(1))
    loop = hlo_text.WHILE.search(line)
    if not loop or loop.group(2) not in texts:
        return None
    init, condition, body = loop.groups()
    return hlo_text.trip_count(texts, parent, init, condition, body=body)


def _runs(texts: dict[str, str], entry: str) -> tuple[dict[str, int], set[str]]:
    """How many times each computation runs per execution of ``entry``; and the loop bodies whose trip
    count is unknown (run once here)."""
    runs: dict[str, int] = {}
    unknown: set[str] = set()

    def visit(name: str, times: int) -> None:
        runs[name] = runs.get(name, 0) + times
        for line in texts.get(name, "").splitlines():
            callees = _CALLEE.findall(line)
            for group in _BRANCHES.findall(line):
                callees += [c.strip().lstrip("%") for c in group.split(",") if c.strip()]
            body = _BODY.search(line) if " while(" in line else None
            trip = _trip_count(line, name, texts) if body else None
            for callee in callees:
                repeat = 1
                if body and callee == body.group(1):
                    repeat = trip or 1
                    if trip is None:
                        unknown.add(callee)
                visit(callee, times * repeat)

    visit(entry, 1)
    return runs, unknown


def dcn_traffic(text: str, slices: int) -> DcnTraffic:
    """The DCN bytes per chip per step of a compiled program (``compiled.as_text()``) over ``slices``."""
    texts, entry = hlo_text.split(text)
    runs, unknown = _runs(texts, entry)
    by_kind: dict[str, float] = {}
    transfers = in_unknown = 0
    for name, computation in texts.items():
        for line in computation.splitlines():
            if "xla_megascale_runtime" not in line or " send(" not in line:
                continue
            shape = _SEND_BUFFER.search(line)
            kind = _TRANSFER.search(line)
            if not shape or not kind:
                continue
            dtype, dims = shape.groups()
            buffer = math.prod(int(d) for d in dims.split(",") if d) * _ITEM_BYTES.get(dtype, 4)
            sent = buffer * chip_send_factor(kind.group(1), slices) * runs.get(name, 0)
            by_kind[kind.group(1)] = by_kind.get(kind.group(1), 0.0) + sent
            transfers += 1
            in_unknown += name in unknown
    return DcnTraffic(slices, sum(by_kind.values()), by_kind, transfers, in_unknown)


def report_fields(compiled, slices: int, generation: str, gbps: float = 0.0) -> dict:
    """grit-aot's DCN figures of a compiled step (``jax.stages.Compiled``; None when it did not compile):
    ``DcnTraffic``'s fields, ``gbps_per_chip`` (``gbps``, else the generation's figure, else 0) and
    ``seconds`` (0 without a bandwidth). {} for one slice."""
    if slices == 1 or compiled is None:
        return {}
    traffic = dcn_traffic(compiled.as_text(), slices)
    gbps = gbps or DCN_GBPS_PER_CHIP.get(generation, 0.0)
    return dict(dataclasses.asdict(traffic), gbps_per_chip=gbps, seconds=traffic.seconds(gbps))


def _size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 / 10 else f"{n / 2**20:.2f} MiB"


def report_line(fields: dict) -> str:
    """One line of grit-aot's report from ``report_fields``."""
    kinds = ", ".join(
        f"{k.lower().replace('_', '-')} {_size(b)}" for k, b in sorted(fields["by_kind"].items())
    )
    sent, slices = _size(fields["bytes_per_chip"]), fields["slices"]
    line = f"DCN        {sent} sent per chip per step across {slices} slices"
    line += f" ({kinds or 'no cross-slice collective'})"
    if fields["seconds"]:
        seconds = fields["seconds"]
        took = f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1e3:.1f} ms"
        line += f": {took} at {fields['gbps_per_chip']:g} Gbit/s per chip, not overlapped"
    else:
        line += "; pass --dcn_gbps for the transfer time"
    if fields["in_unknown_loops"]:
        line += f" ({fields['in_unknown_loops']} transfers in loops of unknown trip count, counted once)"
    return line
