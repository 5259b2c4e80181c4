"""What a LoRA run starts from (model.lora.init_adapter: a PEFT dir) and the base any run starts from:
recorded in WORKDIR/base.json when a run starts (grit_jax/train/run_origin.py records the rest), checked
when a LoRA run resumes (checkpoints hold adapters, optimizer state, step, RNG and data position, not the
base: grit_jax/weights/checkpoints.py), so adapters are never resumed onto another base.

The fingerprint (grit_jax.weights.fingerprint) hashes the first and last rows of every base tensor (exact
values, read from the sharded arrays without gathering them), so it is the same on any mesh and any number
of hosts and differs for another checkpoint of the same architecture.
"""

from __future__ import annotations

import json

import jax
from flax import nnx

from grit_jax import storage
from grit_jax.errors import UsageError
from grit_jax.weights import fingerprint as weights_fingerprint
from grit_jax.weights import peft_adapter

RECORD = "base.json"
LEGACY_RECORD = "lora_base.json"  # work dirs of LoRA runs started before base.json


def base_path(config) -> str:
    m = config.model
    return m.hf_dir or m.init_checkpoint or f"preset {m.preset} initialised from seed {config.seed}"


def fingerprint(setup, base: nnx.State) -> str:
    """A hex digest of samples of every tensor of the frozen base (grit_jax.weights.fingerprint)."""
    return weights_fingerprint.fingerprint(base, setup.replicated)


def record(setup, workdir: str, base: nnx.State) -> None:
    """Writes which base this run starts from, and its fingerprint (process 0)."""
    text = json.dumps({"base": base_path(setup.config), "fingerprint": fingerprint(setup, base)}, indent=2)
    if jax.process_index() == 0:
        storage.write_text(storage.join(workdir, RECORD), text)


def check(setup, workdir: str, base: nnx.State) -> None:
    """Refuses, in one line, to resume adapters onto a base other than the one they were trained on."""
    path = storage.join(workdir, RECORD)
    if not storage.isfile(path) and storage.isfile(storage.join(workdir, LEGACY_RECORD)):
        path = storage.join(workdir, LEGACY_RECORD)
    if not storage.isfile(path):
        raise UsageError(f"{path}: missing; a run's work dir records its base there when it starts")
    recorded, now = json.loads(storage.read_text(path)), fingerprint(setup, base)
    if recorded["fingerprint"] != now:
        raise UsageError(
            f"{workdir}: its LoRA adapters were trained on {recorded['base']} (fingerprint "
            f"{recorded['fingerprint']}), not on this config's base {base_path(setup.config)} (fingerprint "
            f"{now}); use that base or another --workdir"
        )


def start_adapters(setup, state):
    """The fresh state with the adapters of model.lora.init_adapter (a PEFT LoRA dir), if set."""
    path, cfg = setup.config.model.lora.init_adapter, setup.model_config
    if not path:
        return state
    given, arrays = peft_adapter.read_adapter(path, cfg.replace(lora_rank=0))
    ours = (cfg.lora_rank, cfg.lora_alpha, set(cfg.lora_targets))
    if (given.lora_rank, given.lora_alpha, set(given.lora_targets)) != ours:
        raise UsageError(
            f"model.lora.init_adapter={path}: r={given.lora_rank}, lora_alpha={given.lora_alpha}, "
            f"target_modules={list(given.lora_targets)}; set model.lora.rank, alpha and targets to these"
        )
    params = jax.tree.map(lambda x: x, state.params)
    flat = dict(nnx.to_flat_state(params))
    for module, (a, b) in arrays.items():
        keys = tuple(module.split("."))
        for name, value in (("lora_a", a), ("lora_b", b)):
            variable = flat[(*keys, name)]
            variable.set_value(jax.device_put(value, variable.get_value().sharding))
    return state.replace(params=params)
