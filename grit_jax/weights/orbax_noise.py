"""orbax's logging, cut down to what a user needs: a warning on every load that means nothing, and
what a failed background save prints besides its one line.

When orbax's background save fails (a full disk, no permission), the error is raised again on the main
thread and ends as RunStopped's one line (grit_jax.weights.checkpoints). Left alone, orbax's threads,
tensorstore and asyncio print it again as hundreds of lines of tracebacks around that line.
"""

from __future__ import annotations

import logging
import sys
import warnings


class _NoMissingItemMetadata(logging.Filter):
    """orbax looks for a _CHECKPOINT_METADATA file in each item directory (state/, params/) when it reads
    an item's metadata, where a CheckpointManager never writes one (it writes the step's), and warns on
    every load. Nothing is wrong: drop that one warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Metadata file does not exist")


logging.getLogger("absl").addFilter(_NoMissingItemMetadata())  # at import: every read of a checkpoint


class _ShortRecords(logging.Filter):
    """Orbax logs each failed background save with a traceback per thread (hundreds of lines); the
    error is raised again on the main thread, where it ends as RunStopped's one line. asyncio logs the
    same error again when it collects orbax's write tasks, possibly after that line: dropped."""

    def filter(self, record):
        if record.name == "asyncio":
            return "orbax" not in record.getMessage()
        if "orbax" in record.pathname and record.levelno >= logging.ERROR:
            record.exc_info, record.exc_text = None, None
            record.msg, record.args = " ".join(record.getMessage().split())[:200], None
        return True


def _drop_closed_loop_callbacks(previous):
    """After a failed save orbax closes its event loop while tensorstore's writes still finish; each
    finished write's callback then fails with "Event loop is closed", a traceback apiece (tens)."""

    def hook(unraisable):
        error = unraisable.exc_value
        if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
            previous(unraisable)

    hook.grit_jax = True
    return hook


def quiet():
    """Installs both filters, once per process (every Checkpoints calls it)."""
    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _ShortRecords) for f in logger.filters):
            logger.addFilter(_ShortRecords())
    if not getattr(sys.unraisablehook, "grit_jax", False):
        sys.unraisablehook = _drop_closed_loop_callbacks(sys.unraisablehook)


def after_failed_save():
    """A failed save leaves orbax's write coroutines never awaited, and Python warns of each at exit,
    after the run's one line: from here on, those warnings are not shown."""
    warnings.filterwarnings("ignore", message=r"coroutine '.*' was never awaited", category=RuntimeWarning)
