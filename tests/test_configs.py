"""Every config in configs/ parses (as grit-train parses it) and builds its abstract, sharded train state
on an 8-device CPU mesh, without materialising a weight (jax.eval_shape only).

The meshes of the configs fit 8 devices as written: -1 takes the rest (7B: fsdp=8; 8x7B: expert=8,
fsdp=1; demo/tiny: data=8), so no override is needed.
"""

import glob
import os

import jax
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from grit_jax import sharding, step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", "*.py")))
WITH_MODES = {"configs/gritlm_7b.py", "configs/gritlm_8x7b.py"}
CASES = [
    (c, a)
    for c in CONFIGS
    for a in ((None, "unified", "embedding", "generative") if c in WITH_MODES else (None,))
]
PARAMS = {"configs/gritlm_7b.py": 7.24e9, "configs/gritlm_8x7b.py": 46.7e9}  # Mistral-7B, Mixtral-8x7B


def parse(path, arg=None):
    """The config as `grit-train --config path[:arg]` sees it (overrides: tests/test_train.py, every run)."""
    values = flags.FlagValues()
    holder = config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
    values(["grit-train", f"--config={os.path.join(ROOT, path)}{':' + arg if arg else ''}"])
    return holder.value


def test_every_config_is_covered():
    assert {"configs/demo.py", "configs/tiny.py", "configs/gritlm_7b.py", "configs/gritlm_8x7b.py"} <= set(
        CONFIGS
    )


@pytest.mark.parametrize("path, arg", CASES)
def test_config_builds_abstract_sharded_state(path, arg):
    config = parse(path, arg)
    if arg:
        assert config.objective.mode == arg
    assert jax.device_count() == 8
    mesh = sharding.make_mesh(config.mesh)
    step.validate_config(config, mesh)
    state = step.abstract_train_state(config, mesh)
    leaves = jax.tree.leaves(state)
    assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)  # nothing materialised
    assert all(isinstance(x.sharding, jax.sharding.NamedSharding) and x.sharding.mesh == mesh for x in leaves)
    params = jax.tree.leaves(state.params)
    count = sum(int(np.prod(x.shape)) for x in params)
    assert count == step.model_config(config).num_params()
    if path in PARAMS:
        assert abs(count / PARAMS[path] - 1) < 0.01, count
        # the weights are split over the 8 devices (7B: FSDP; 8x7B: experts), not replicated
        per_device = sum(int(np.prod(x.sharding.shard_shape(x.shape))) for x in params)
        assert per_device < count / 4, (per_device, count)


def test_configs_are_locked():
    config = parse("configs/tiny.py")
    with pytest.raises(AttributeError):
        config.num_stepz = 3  # locked: a misspelled field is an error, not a new field
