"""Reading XLA's optimised HLO text: its computations and those each one reaches, an instruction's
operands and constants, and the trip count of a counted while loop (what the compiled-cost estimate and
the DCN byte count both need; the TPU compiler drops ``known_trip_count``, so the count is read from the
loop itself)."""

from __future__ import annotations

import re

_COMPUTATION = re.compile(r"^(ENTRY )?%([\w.\-]+) ", re.M)
# a while loop: (its initial tuple, condition, body)
_NAME = re.compile(r"%([\w.\-]+)")
WHILE = re.compile(r"while\((%[\w.\-]+)\), condition=%([\w.\-]+), body=%([\w.\-]+)")


def split(text: str) -> tuple[dict[str, str], str]:
    """({computation name: its text}, entry name) of an HLO module's text."""
    computations, entry = {}, ""
    starts = list(_COMPUTATION.finditer(text))
    for m, nxt in zip(starts, starts[1:] + [None]):
        computations[m.group(2)] = text[m.start() : nxt.start() if nxt else len(text)]
        if m.group(1):
            entry = m.group(2)
    return computations, entry


def instruction(comp_text: str, name: str) -> str:
    m = re.search(rf"^\s*(?:ROOT )?%{re.escape(name)} = (.*)$", comp_text, re.M)
    return m.group(1) if m else ""


def constant(comp_text: str, operand: str) -> int | None:
    m = re.search(r"\bconstant\((-?\d+)\)", instruction(comp_text, operand.lstrip("%")))
    return int(m.group(1)) if m else None


def tuple_operands(comp_text: str, name: str) -> list[str]:
    m = re.search(r"\btuple\((.*?)\)(?:,|$)", instruction(comp_text, name.lstrip("%")))
    return [a.strip() for a in re.sub(r"/\*.*?\*/", "", m.group(1)).split(",")] if m else []


def _step(body_text: str, index: int) -> int:
    """How much a loop body adds to its counter (tuple element ``index``): 1 unless the body's root sets
    it to counter + constant (XLA's windowed einsums over FSDP shards count by 2)."""
    root = re.search(r"^\s*ROOT (%[\w.\-]+) = ", body_text, re.M)
    operands = tuple_operands(body_text, root.group(1)) if root else []
    if index >= len(operands):
        return 1
    m = re.search(r"\badd\((%[\w.\-]+), (%[\w.\-]+)\)", instruction(body_text, operands[index].lstrip("%")))
    steps = [constant(body_text, o) for o in m.groups()] if m else []
    return next((k for k in steps if k), 1)


def trip_count(
    computations: dict[str, str], parent: str, init: str, condition: str, *, body: str
) -> int | None:
    """Iterations of a counted loop (``i < N``, i starting at a constant and, per the ``body``, growing
    by a constant): JAX's scans and fori_loops, XLA's windowed einsums."""
    cond = computations[condition]
    m = re.search(r"compare\((%[\w.\-]+), (%[\w.\-]+)\), direction=(LT|GT)", cond)
    if not m:
        return None
    counter, bound = (m.group(1), m.group(2)) if m.group(3) == "LT" else (m.group(2), m.group(1))
    limit = constant(cond, bound)
    index = re.search(r"get-tuple-element\([^)]*\), index=(\d+)", instruction(cond, counter.lstrip("%")))
    if limit is None or not index:
        return None
    start, position = 0, int(index.group(1))
    args = tuple_operands(computations[parent], init)
    if position < len(args):
        first = constant(computations[parent], args[position])
        start = first if first is not None else 0
    step = _step(computations.get(body, ""), position)
    return max(-(-(limit - start) // step), 0)


def reachable(computations: dict[str, str], root: str) -> list[str]:
    """``root`` and every computation it names, directly or not, in the module's order (callees first)."""
    seen, todo = {root}, [root]
    while todo:
        for name in _NAME.findall(computations[todo.pop()]):
            if name in computations and name not in seen:
                seen.add(name)
                todo.append(name)
    return [name for name in computations if name in seen]  # the module's order: callees first
