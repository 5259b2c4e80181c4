"""Training checkpoints are verified before use and a failed save stops the run (grit_jax.weights.
checkpoints.Checkpoints, grit_jax.weights.orbax_files): a damaged newest step is reported in one
line, kept as <step>.damaged and the newest intact step is used; a save that fails (a write refused by
the file system) raises RunStopped naming the last good step, with no orbax traceback in the log."""

import glob
import logging
import os
import resource
import shutil
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grit_jax.errors import RunStopped
from grit_jax.weights import orbax_files
from grit_jax.weights.checkpoints import Checkpoints


def _state(step):
    return {"params": {"w": jnp.arange(50_000, dtype=jnp.float32) + step}, "step": jnp.array(step)}


def _abstract():
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), _state(0))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A work dir with steps 1, 2, 3 saved in the background, as a training run saves them."""
    workdir = str(tmp_path_factory.mktemp("run"))
    ckpt = Checkpoints(workdir, keep=3, async_save=True)
    for step in (1, 2, 3):
        ckpt.save(step, _state(step), {"position": step}, force=True)
    ckpt.close()
    return workdir


def _truncate_largest(step_dir):
    files = glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
    with open(max(files, key=os.path.getsize), "r+b") as f:
        f.truncate(100)


DAMAGE = {
    "truncated data file": _truncate_largest,
    "missing manifest": lambda d: os.remove(os.path.join(d, "state", "manifest.ocdbt")),
    "missing _METADATA": lambda d: os.remove(os.path.join(d, "state", "_METADATA")),
    "missing data item": lambda d: shutil.rmtree(os.path.join(d, "data")),
}


# Unlisted: killed between orbax's commit and our file list, so the structural check only (a truncated
# file there is found only when read: restoring it ends in one line, see grit_train.initial_state).
CASES = [(k, True) for k in DAMAGE] + [(k, False) for k in DAMAGE if k != "truncated data file"]


@pytest.mark.parametrize("kind, listed", CASES)
def test_damaged_latest_step_is_reported_kept_and_the_newest_intact_one_used(tmp_path, saved, kind, listed):
    workdir = str(tmp_path / "run")
    shutil.copytree(saved, workdir)
    step3 = os.path.join(workdir, "checkpoints", "3")
    if not listed:
        os.remove(os.path.join(step3, orbax_files.FILES))
    DAMAGE[kind](step3)
    ckpt = Checkpoints(workdir, keep=3, async_save=False)
    assert ckpt.latest_step() == 2
    assert len(ckpt.damaged) == 1 and "checkpoint step 3 is damaged" in ckpt.damaged[0]
    assert "\n" not in ckpt.damaged[0]
    assert os.path.isdir(step3 + orbax_files.DAMAGED) and not os.path.exists(step3)
    state, data = ckpt.restore(2, _abstract())
    np.testing.assert_array_equal(state["params"]["w"], _state(2)["params"]["w"])
    assert data == {"position": 2}
    ckpt.save(3, _state(3), {"position": 3}, force=True)  # the run goes on and saves step 3 again
    ckpt.close()
    assert Checkpoints(workdir, keep=3, async_save=False).latest_step() == 3


def test_every_step_is_listed_with_its_files_once_saved(saved):
    for step in (1, 2, 3):
        step_dir = os.path.join(saved, "checkpoints", str(step))
        assert orbax_files.is_sealed(step_dir)
        assert orbax_files.problem(step_dir, ("state", "data")) is None


@pytest.fixture
def file_size_limit():
    """setlimit(limit): writes beyond `limit` bytes fail with EFBIG (File too large), as a full disk
    fails them, for any user (root ignores permissions and cannot be given a small tmpfs everywhere)."""
    before = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    yield lambda limit: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, before[1]))
    resource.setrlimit(resource.RLIMIT_FSIZE, before)
    signal.signal(signal.SIGXFSZ, handler)


def test_a_failed_save_stops_with_the_last_good_step(tmp_path, file_size_limit, caplog):
    ckpt = Checkpoints(str(tmp_path), keep=3, async_save=True)
    ckpt.save(1, _state(1), {"position": 1}, force=True)
    ckpt.wait()
    file_size_limit(20_000)  # step 2's array (200 kB) cannot be written
    with caplog.at_level(logging.ERROR), pytest.raises(RunStopped) as raised:
        ckpt.save(2, _state(2), {"position": 2}, force=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the training loop polls after every step
            ckpt.poll()
            time.sleep(0.05)
    message = str(raised.value)
    assert "checkpoint step 2 could not be saved" in message and "last good checkpoint is step 1" in message
    assert "File too large" in message and "\n" not in message
    assert any("orbax" in r.pathname for r in caplog.records)
    assert not any(r.exc_info for r in caplog.records), "orbax's tracebacks reach the log"
    with pytest.raises(RunStopped):  # no later save starts after a failure
        ckpt.save(3, _state(3), {"position": 3}, force=True)
    ckpt.close()  # the failure was raised already: closing does not raise it again
    file_size_limit(resource.RLIM_INFINITY)
    assert Checkpoints(str(tmp_path), keep=3, async_save=False).latest_step() == 1


def test_exporting_or_embedding_a_work_dir_uses_its_newest_intact_step(tmp_path, saved):
    import dataclasses
    import json

    from grit_jax.errors import CheckpointError
    from grit_jax.model.model_config import ModelConfig
    from grit_jax.weights.checkpoints import resolve_checkpoint

    workdir = str(tmp_path / "run")
    shutil.copytree(saved, workdir)
    with open(os.path.join(workdir, "model_config.json"), "w") as f:
        json.dump(dataclasses.asdict(ModelConfig.preset("tiny")), f)
    DAMAGE["truncated data file"](os.path.join(workdir, "checkpoints", "3"))
    assert resolve_checkpoint(workdir).pytree_dir == os.path.join(workdir, "checkpoints", "2", "state")
    with pytest.raises(CheckpointError, match="a damaged checkpoint"):
        resolve_checkpoint(workdir, step=3)


def test_a_damaged_step_in_a_bucket_is_set_aside_and_saved_again(tmp_path):
    """The same on gs:// (the GCS emulator): listing, renaming and saving the step again in one process."""
    import fsspec

    from tests import gcs_emulator

    server, env = gcs_emulator.start(str(tmp_path))
    try:
        workdir = f"gs://{gcs_emulator.BUCKET}/run"
        ckpt = Checkpoints(workdir, keep=3)
        for step in (1, 2):
            ckpt.save(step, _state(step), {"position": step}, force=True)
        ckpt.close()
        fsspec.filesystem("gs").rm(f"{gcs_emulator.BUCKET}/run/checkpoints/2/state/manifest.ocdbt")
        ckpt = Checkpoints(workdir, keep=3)
        assert ckpt.latest_step() == 1 and "checkpoint step 2 is damaged" in ckpt.damaged[0]
        assert ckpt.restore(1, _abstract())[1] == {"position": 1}
        ckpt.save(2, _state(2), {"position": 2}, force=True)
        ckpt.close()
        assert Checkpoints(workdir, keep=3).latest_step() == 2
    finally:
        gcs_emulator.stop(server, env)
