"""The one error family: what a user can fix, said in one line.

Every command catches ``GritError`` and prints ``program: error: message`` (grit_jax.cli) with the
class's exit status: 2 for a bad command line or configuration (``UsageError``), 1 for input that
cannot be read (``CheckpointError``, ``DataError``) or an output that cannot be right
(``OutputError``), 3 for a run that had to stop (``RunStopped``).
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class GritError(Exception):
    """Something the user can act on; the message names the flag, field, file or line to fix."""

    exit_status = 1
    label = "error"  # printed as `program: label: message`


class UsageError(GritError, ValueError):
    """A command line, training configuration or API argument that cannot run (a ValueError, so that
    ``except ValueError`` around a library call catches bad arguments too)."""

    exit_status = 2


class CheckpointError(GritError):
    """A model directory or checkpoint that is missing, unreadable or does not match its config."""


class DataError(GritError):
    """Training or evaluation data that is missing or malformed (messages give ``file:line``)."""


class OutputError(GritError):
    """A model output that cannot be right (a non-finite or all-zero embedding, nothing left to pool after
    the instruction, non-finite logits): found where it is made, naming the first bad row, never written
    or scored."""


class RunStopped(GritError):
    """Training ended early on purpose (too many non-finite steps); the last good checkpoint is kept."""

    exit_status = 3
    label = "stopped"


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
