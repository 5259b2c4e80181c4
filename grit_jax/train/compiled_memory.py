"""A compiled step's memory per chip: from XLA's memory analysis, or from its out-of-memory message when
XLA:TPU refuses a program that cannot fit; and the state's largest arrays per chip (grit-aot's report)."""

from __future__ import annotations

import math
import re
import types
from typing import Any

import jax


def shard_bytes(leaf) -> int:
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    return math.prod(shape) * leaf.dtype.itemsize


def state_consumers(state) -> list[tuple[str, int, str]]:
    """(path, per-chip bytes, "global shape dtype -> per-chip shape") of every state array, largest first."""
    rows = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        parts = jax.tree_util.keystr(path, simple=True, separator=".").split(".")
        if parts[0] == "opt_state":  # optax's tuple indices say nothing to a reader
            parts = [p for p in parts if not p.isdigit()]
        name = ".".join(p for p in parts if p != "value")
        per_chip = leaf.sharding.shard_shape(leaf.shape)
        rows.append(
            (name, shard_bytes(leaf), f"{list(leaf.shape)} {leaf.dtype} -> {list(per_chip)} per chip")
        )
    return sorted(rows, key=lambda r: -r[1])


_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _bytes(number: str, unit: str) -> int:
    return int(float(number) * _UNITS[unit[:1].upper()])


def out_of_memory(error: Exception, arguments) -> tuple[Any, str]:
    """Memory figures recovered from XLA:TPU's compile-time out-of-memory error (re-raised if it is not one).

    XLA says either "... required for HLO temporaries (282.02G) exceeds available HBM (15.75G)" or
    "Used 20.5G of 15.75G hbm"; the arguments (state + batch shards) are added from their shardings.
    """
    message = str(error)
    if "RESOURCE_EXHAUSTED" not in message and "Ran out of memory" not in message:
        raise error
    args = sum(shard_bytes(x) for x in arguments)
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


def total_bytes(memory) -> tuple[int, int]:
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
