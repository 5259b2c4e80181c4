"""HBM bytes of a compiled TPU program: XLA's generic byte count, less what stays in on-chip memory.

XLA's generic cost model (what step_cost runs on each part of the program) charges every byte an
instruction reads or writes, whatever memory it is in. libtpu's memory-space assignment keeps some
buffers in the chip's fast on-chip memory, memory space 1 (``S(1)`` in a layout): a windowed einsum's
input, its weight shards in flight and its accumulator stay there for the whole loop, copied from HBM
before and to HBM after. Counted as HBM, one FSDP matmul on v5e-8 read 1.5 GB per chip for about 0.1 GB of
HBM traffic (benchmarks/RESULTS.md). Here an instruction that touches memory space 1, and every
asynchronous copy, slice or collective, is costed again on its own by XLA and counted from its operands
and result in HBM only: an async pair's start reads its HBM operands, its done writes its HBM result (XLA
counts the in-flight tuple too). XLA's counts of what a fusion reads of each operand (a slice of it, say)
are kept, and every other instruction keeps XLA's count.
"""

from __future__ import annotations

import math
import re

from jax._src.lib import _jax as _xla_ext
from jax._src.lib import xla_client

from grit_jax import hlo_text

# an instruction: its name and the rest, to the next instruction (a kernel's metadata spans lines)
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT )?%([\w.\-]+) = (.*?)\s*(?=^\s*(?:ROOT )?%[\w.\-]+ = |^\}$|\Z)", re.M | re.S
)
_ARRAY = re.compile(r"\b(pred|[suf]\d+|bf16|f8\w*)\[([\d,]*)\](\{[^}]*\})?")
_DTYPE_BYTES = {"pred": 1, "bf16": 2}
# instructions that move no data themselves (control flow is costed through the computations it calls)
_NO_TRAFFIC = {
    "parameter",
    "get-tuple-element",
    "tuple",
    "bitcast",
    "constant",
    "partition-id",
    "replica-id",
    "after-all",
    "while",
    "conditional",
    "call",
}
_CONTROL_OP = re.compile(r"\b(?:while|conditional|call)\(")
_CONTROL_CALLEE = re.compile(r"\b(?:condition|body|to_apply|true_computation|false_computation)=%([\w.\-]+)")
_BRANCHES = re.compile(r"\bbranch_computations=\{([^}]*)\}")
_CALLED = re.compile(r"(?:calls|to_apply)=(\{[^}]*\}|%[\w.\-]+)")


def on_chip(shape: str) -> bool:
    """Whether a (non-tuple) shape's layout puts it in memory space 1."""
    return bool(re.search(r"\bS\(1\)", shape))


def hbm_size(shape: str) -> float:
    """Bytes of the arrays of a shape (a tuple's elements too) that are in HBM."""
    total = 0
    for dtype, dims, layout in _ARRAY.findall(shape):
        if layout and on_chip(layout):
            continue
        bits = re.match(r"[suf](\d+)", dtype)
        size = _DTYPE_BYTES.get(dtype, int(bits.group(1)) // 8 if bits else 1)
        total += size * math.prod(int(d) for d in dims.split(",") if d)
    return float(total)


def _balanced(text: str, start: int) -> int:
    depth = 0
    for i in range(start, len(text)):
        depth += text[i] in "({"
        depth -= text[i] in ")}"
        if depth == 0:
            return i + 1
    return len(text)


def parse(rest: str) -> tuple[str, str, list[str], str]:
    """An instruction's text after ``%name = ``: (shape, opcode, operand names, what follows them)."""
    end = _balanced(rest, 0) if rest.startswith("(") else rest.find(" ")
    shape, tail = rest[:end], rest[end:].lstrip()
    m = re.match(r"([\w\-]+)\(", tail)
    if not m:
        return shape, "", [], ""
    close = _balanced(tail, m.end() - 1)
    operands = re.findall(r"%([\w.\-]+)", re.sub(r"/\*.*?\*/", "", tail[m.end() : close - 1]))
    return shape, m.group(1), operands, tail[close:]


def control_computations(computations: dict[str, str], root: str) -> list[str]:
    """``root`` and the computations its control flow runs (loop bodies and conditions, branches, calls),
    each once, as XLA's cost analysis counts them; not the computations of fusions or reductions."""
    seen, todo = [root], [root]
    while todo:
        for line in computations[todo.pop()].splitlines():
            if not _CONTROL_OP.search(line):
                continue
            names = _CONTROL_CALLEE.findall(line)
            for branches in _BRANCHES.findall(line):
                names += re.findall(r"%([\w.\-]+)", branches)
            for name in names:
                if name in computations and name not in seen:
                    seen.append(name)
                    todo.append(name)
    return seen


def _module(computations, shapes: dict, instructions: list) -> str:
    """Instructions [(name, parsed)] as a module of their own, the last its root: operands from outside
    them as parameters, and the computations they call."""
    inside = {name for name, _ in instructions}
    outside = list(
        dict.fromkeys(o for _, (_, _, operands, _) in instructions for o in operands if o not in inside)
    )
    lines = [f"  %p.{i} = {shapes[o]} parameter({i})" for i, o in enumerate(outside)]
    called = []
    for k, (name, (shape, opcode, operands, attributes)) in enumerate(instructions):
        args = ", ".join(f"%{o}" if o in inside else f"%p.{outside.index(o)}" for o in operands)
        root = "ROOT " if k == len(instructions) - 1 else ""
        lines.append(f"  {root}%{name} = {shape} {opcode}({args}){attributes}")
        for target in _CALLED.findall(attributes):
            for callee in re.findall(r"%([\w.\-]+)", target):
                called += [c for c in hlo_text.reachable(computations, callee) if c not in called]
    params = ", ".join(f"p.{i}: {shapes[o]}" for i, o in enumerate(outside))
    parts = [computations[c].removeprefix("ENTRY ") for c in called]
    parts.append(f"ENTRY %one ({params}) -> {instructions[-1][1][0]} {{\n" + "\n".join(lines) + "\n}\n")
    return "HloModule one\n\n" + "\n".join(parts)


def _recounted(shape: str, opcode: str, operands: list[str], shapes: dict, *, cost: dict) -> float:
    """The instruction's HBM bytes: what XLA counts of its operands and result in HBM (an async start
    its operands only: its done writes the result)."""
    total = 0.0
    for i, operand in enumerate(dict.fromkeys(operands)):
        if not shapes[operand].startswith("(") and not on_chip(shapes[operand]):
            total += cost.get(f"bytes accessed{i}{{}}", 0.0)
        elif shapes[operand].startswith("("):  # a tuple operand: its arrays in HBM, whole
            total += hbm_size(shapes[operand])
    if opcode.endswith("-start"):
        return total
    if shape.startswith("("):
        return total + hbm_size(shape)
    return total + (0.0 if on_chip(shape) else cost.get("bytes accessedout{}", 0.0))


def on_chip_correction(computations: dict[str, str], root: str, client) -> tuple[float, int]:
    """(bytes to subtract, instructions left as XLA counts them): what XLA's generic cost analysis of the
    module entered at ``root`` counts that is not HBM traffic. For each instruction of its control
    computations that touches memory space 1, and each asynchronous start and done (costed as a pair:
    XLA's parser takes a done only after its start), XLA's count less ours; one that cannot be read
    back on its own keeps XLA's count."""

    def xla_cost(instructions):
        module = _module(computations, shapes, instructions)
        return _xla_ext.hlo_module_cost_analysis(client, xla_client.hlo.hlo_module_from_text(module))

    correction, unread = 0.0, 0
    for computation in control_computations(computations, root):
        shapes, parsed = {}, {}
        for name, rest in _INSTRUCTION.findall(computations[computation]):
            parsed[name] = parse(rest)
            shape, opcode, operands, _ = parsed[name]
            shapes[name] = shape
            if opcode in _NO_TRAFFIC or not opcode or any(o not in shapes for o in operands):
                continue
            if opcode.endswith("-start"):
                continue  # with its done
            start = operands[0] if opcode.endswith("-done") and operands else None
            if start is None and not any(on_chip(s) for s in [shape, *(shapes[o] for o in operands)]):
                continue
            try:
                if start is None:
                    cost = xla_cost([(name, parsed[name])])
                    ours = _recounted(shape, opcode, operands, shapes, cost=cost)
                else:
                    start_cost = xla_cost([(start, parsed[start])])
                    cost = xla_cost([(start, parsed[start]), (name, parsed[name])])
                    reads = _recounted(shapes[start], *parsed[start][1:3], shapes, cost=start_cost)
                    ours = reads + hbm_size(shape)  # the start reads, the done writes
            except Exception:  # XLA's parser or verifier refused the instruction on its own
                unread += 1
                continue
            correction += cost.get("bytes accessed", 0.0) - ours
    return correction, unread
