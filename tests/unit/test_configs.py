"""Every config in configs/ parses (as grit-train parses it) and builds its abstract, sharded train state
on an 8-device CPU mesh, without materialising a weight (jax.eval_shape only).

The meshes of the configs fit 8 devices as written: -1 takes the rest (7B: fsdp=8; 8x7B: expert=8,
fsdp=1; demo/tiny: data=8), so no override is needed.
"""

import glob
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from grit_jax import sharding
from grit_jax.run_config import validate_config
from grit_jax.train.state import TrainSetup, resolve_model_config
from tests.grit_fixtures import ROOT

CONFIGS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", "*.py")))
# configs/gritlm.py:VARIANT[,MODE]; the others take no argument.
RECIPES = [(v, m) for v in ("7b", "8x7b") for m in (None, "unified", "embedding", "generative")]
RECIPES += [(v, None) for v in ("llama3.1-8b", "qwen3-8b", "qwen3-30b-a3b", "qwen2.5-0.5b")]
RECIPES += [(v, None) for v in ("7b-lora", "llama3.1-8b-lora", "qwen3-8b-lora")]  # LoRA on one host
CASES = [(c, None) for c in CONFIGS if c != "configs/gritlm.py"] + [
    ("configs/gritlm.py", v + (f",{m}" if m else "")) for v, m in RECIPES
]
# Mistral-7B, Mixtral-8x7B, and the published sizes of Llama-3.1-8B, Qwen3-8B and Qwen2.5-0.5B.
PARAMS = {"7b": 7.24e9, "8x7b": 46.7e9, "llama3.1-8b": 8.03e9, "qwen3-8b": 8.19e9, "qwen2.5-0.5b": 0.494e9}
PARAMS["qwen3-30b-a3b"] = 30.5e9
PARAMS.update({f"{v}-lora": PARAMS[v] for v in ("7b", "llama3.1-8b", "qwen3-8b")})


def parse(path, arg=None):
    """The config as `grit-train --config path[:arg]` sees it (overrides: e2e/test_train.py, every run)."""
    values = flags.FlagValues()
    holder = config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
    values(["grit-train", f"--config={os.path.join(ROOT, path)}{':' + arg if arg else ''}"])
    return holder.value


def test_every_config_is_covered():
    assert {"configs/demo.py", "configs/tiny.py", "configs/gritlm.py"} <= set(CONFIGS)


@pytest.mark.parametrize("path, arg", CASES)
def test_config_builds_abstract_sharded_state(path, arg):
    config = parse(path, arg)
    variant, _, mode = (arg or "").partition(",")
    assert config.objective.mode == (mode or "unified")
    assert jax.device_count() == 8
    mesh = sharding.make_mesh(config.mesh)
    validate_config(config, mesh.shape)
    state = TrainSetup(config, mesh).abstract_state()
    leaves = jax.tree.leaves(state)
    assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)  # nothing materialised
    assert all(isinstance(x.sharding, jax.sharding.NamedSharding) and x.sharding.mesh == mesh for x in leaves)
    params = jax.tree.leaves(state.params if state.frozen is None else state.frozen)  # LoRA: the base
    count = sum(int(np.prod(x.shape)) for x in params)
    assert count == resolve_model_config(config).num_params()
    if path == "configs/smollm2.py":  # SmolLM2-135M-Instruct as transformers loads it: 134.5 M
        assert abs(count / 134.5e6 - 1) < 0.01, count
    if variant in PARAMS:
        assert abs(count / PARAMS[variant] - 1) < 0.01, count
        # the balance of the two losses in the runs that produced GritLM (their GPU counts)
        assert config.objective.reference_world_size == {"7b": 8, "8x7b": 256}.get(variant, 0)
        # the weights are split over the 8 devices (7B: FSDP; 8x7B: experts), not replicated
        per_device = sum(int(np.prod(x.sharding.shard_shape(x.shape))) for x in params)
        assert per_device < count / 4, (per_device, count)


def test_config_files_do_not_import_jax():
    """A config file loads in a fresh interpreter without jax (or flax, optax)."""
    code = (
        "import sys; from ml_collections import config_flags; "
        "sys.argv = ['x', '--config=configs/gritlm.py:8x7b,embedding']; from absl import flags; "
        "c = config_flags.DEFINE_config_file('config'); flags.FLAGS(sys.argv); c.value.get('mesh'); "
        "print(sorted(m for m in ('jax', 'flax', 'optax') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[]"]


def test_configs_are_locked():
    config = parse("configs/tiny.py")
    with pytest.raises(AttributeError):
        config.num_stepz = 3  # locked: a misspelled field is an error, not a new field
