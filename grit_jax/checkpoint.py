"""Orbax checkpoints that resume exactly (DESIGN decision 9).

A checkpoint `WORKDIR/checkpoints/<step>/` holds two items: `state` (the TrainState: parameters, optimizer
state, step, RNG) and `data` (the data iterator's state, JSON). Orbax writes a step into a temporary
directory and renames it when complete, so a crash mid-save leaves `<step>.orbax-checkpoint-tmp-*`
behind: such a directory is never listed as a step, never loaded, and never deleted by us; we say that
it is there so the user can look at it.
"""

from __future__ import annotations

import glob
import logging
import os

import orbax.checkpoint as ocp

STATE, DATA = "state", "data"


class Checkpoints:
    def __init__(self, workdir: str, keep: int, async_save: bool = True):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=False,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=(STATE, DATA))

    def incomplete(self) -> list[str]:
        """Directories of saves that never finished (left by a crash or a kill)."""
        return sorted(glob.glob(os.path.join(self.directory, "*.orbax-checkpoint-tmp*")))

    def latest_step(self) -> int | None:
        for path in self.incomplete():
            logging.warning(
                "ignoring incomplete checkpoint %s (a save that never finished; not loaded, not deleted)",
                path,
            )
        return self.manager.latest_step()

    def save(self, step: int, state, data_state: dict | None, force: bool = False) -> bool:
        return self.manager.save(
            step,
            args=ocp.args.Composite(
                **{STATE: ocp.args.StandardSave(state), DATA: ocp.args.JsonSave(data_state or {})}
            ),
            force=force,
        )

    def restore(self, step: int, abstract_state):
        """The state at `step`, laid out as `abstract_state` says (any mesh), and the data iterator state."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                **{STATE: ocp.args.StandardRestore(abstract_state), DATA: ocp.args.JsonRestore()}
            ),
        )
        return restored[STATE], restored[DATA] or None

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()
