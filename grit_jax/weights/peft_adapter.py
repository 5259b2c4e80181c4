"""LoRA adapters (grit_jax/model/lora.py) <-> PEFT adapter directories, and merged Hugging Face weights.

A PEFT LoRA directory holds adapter_config.json and adapter_model.safetensors with one lora_A [r, in] and
one lora_B [out, r] per adapted torch Linear, named
`base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`; `peft.PeftModel.from_pretrained(base,
dir)` loads it over the transformers model. Ours are stacked over layers and keep the kernel's head axes:
A [L, in..., r], B [L, r, out...]; the torch input and output index flattens those axes in order, as the
kernels' (grit_jax.weights.hf), so a tensor converts by a reshape and a transpose.
"""

from __future__ import annotations

import json
import math
import os

import jax
import numpy as np
from safetensors.numpy import load_file, save_file

from grit_jax import storage
from grit_jax.choices import LORA_TARGETS
from grit_jax.errors import CheckpointError
from grit_jax.model import ModelConfig, Transformer, lora
from grit_jax.weights import hf

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."


def _kernel_entries(cfg: ModelConfig) -> dict[str, hf.Entry]:
    """{our module path, e.g. layers.self_attn.q_proj: its kernel's entry} for every LoRA target."""
    return {
        e.path[: -len(".kernel")]: e
        for e in hf.name_map(cfg)
        if e.path.endswith(".kernel") and e.path.split(".")[-2] in LORA_TARGETS and e.per_layer
    }


def adapter_arrays(adapters) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{module path: (A, B)} of an adapters state (nnx.State or its pure dict), as numpy."""
    out, stack = {}, [((), adapters.to_pure_dict() if hasattr(adapters, "to_pure_dict") else adapters)]
    while stack:
        path, node = stack.pop()
        if "lora_a" in node:
            out[".".join(path)] = (
                np.asarray(node["lora_a"], np.float32),
                np.asarray(node["lora_b"], np.float32),
            )
        else:
            stack += [((*path, str(k)), v) for k, v in node.items() if isinstance(v, dict)]
    return out


def peft_tensors(arrays: dict[str, tuple[np.ndarray, np.ndarray]], cfg: ModelConfig) -> dict[str, np.ndarray]:
    """PEFT's tensors of our stacked adapters."""
    entries, out = _kernel_entries(cfg), {}
    for module, (a, b) in arrays.items():
        template = PREFIX + entries[module].hf.removesuffix(".weight")
        rank = a.shape[-1]
        for i in range(cfg.num_hidden_layers):
            name = template.format(i=i)
            out[f"{name}.lora_A.weight"] = np.ascontiguousarray(a[i].reshape(-1, rank).T)
            out[f"{name}.lora_B.weight"] = np.ascontiguousarray(b[i].reshape(rank, -1).T)
    return out


def write_adapter(out: str, arrays, cfg: ModelConfig, base: str = "") -> str:
    """A PEFT LoRA directory of `arrays` ({module: (A, B)}) for the base model `base` (its path)."""
    os.makedirs(out, exist_ok=True)
    targets = sorted({m.split(".")[-1] for m in arrays}, key=LORA_TARGETS.index)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base or None,
        "r": cfg.lora_rank,
        "lora_alpha": cfg.lora_alpha,
        "target_modules": targets,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "inference_mode": True,
        "modules_to_save": None,
    }
    save_file(peft_tensors(arrays, cfg), os.path.join(out, ADAPTER_WEIGHTS), metadata={"format": "pt"})
    with open(os.path.join(out, ADAPTER_CONFIG), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    return out


def _check_config(path: str, config: dict) -> None:
    targets = config.get("target_modules")
    unsupported = [
        (config.get("peft_type") != "LORA", f"peft_type {config.get('peft_type')!r} (only LORA)"),
        (not isinstance(targets, list), f"target_modules {targets!r} (a list of {LORA_TARGETS})"),
        (isinstance(targets, list) and not set(targets) <= set(LORA_TARGETS), f"target_modules {targets}"),
        (config.get("use_dora") or config.get("use_rslora"), "use_dora / use_rslora"),
        (config.get("rank_pattern") or config.get("alpha_pattern"), "rank_pattern / alpha_pattern"),
        (config.get("layers_to_transform") is not None, "layers_to_transform"),
        (config.get("bias", "none") != "none", f"bias {config.get('bias')!r}"),
        (config.get("modules_to_save"), f"modules_to_save {config.get('modules_to_save')}"),
    ]
    for bad, what in unsupported:
        if bad:
            raise CheckpointError(f"{path}: {what} is not supported by grit_jax's LoRA")


def read_adapter(path: str, cfg: ModelConfig) -> tuple[ModelConfig, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(cfg with the adapter's rank, alpha and targets, {module: (A, B)} stacked in our layout) of a PEFT
    LoRA directory for a base of config `cfg`."""
    config_path = storage.join(path, ADAPTER_CONFIG)
    if not storage.isfile(config_path):
        raise CheckpointError(f"{path}: no {ADAPTER_CONFIG} (expected a PEFT LoRA adapter directory)")
    config = json.loads(storage.read_text(config_path))
    _check_config(config_path, config)
    cfg = cfg.replace(lora_rank=int(config["r"]), lora_alpha=float(config["lora_alpha"]))
    cfg = cfg.replace(lora_targets=tuple(config["target_modules"]))
    weights = storage.join(path, ADAPTER_WEIGHTS)
    tensors = load_file(storage.local_copy(weights, "adapter") if storage.is_url(weights) else weights)
    shapes, arrays = hf.param_shapes(cfg), {}
    for module, entry in _kernel_entries(cfg).items():
        if module.split(".")[-1] not in cfg.lora_targets:
            continue
        shape, r = shapes[entry.path], cfg.lora_rank
        names = [PREFIX + entry.hf.removesuffix(".weight").format(i=i) for i in range(cfg.num_hidden_layers)]
        try:
            a = np.stack([tensors.pop(f"{n}.lora_A.weight").T for n in names]).astype(np.float32)
            b = np.stack([tensors.pop(f"{n}.lora_B.weight").T for n in names]).astype(np.float32)
        except KeyError as e:
            raise CheckpointError(f"{weights}: tensor {e.args[0]} is missing") from None
        in_shape, out_shape = shape[: entry.in_ndim], shape[entry.in_ndim :]
        if a.shape[1:] != (math.prod(in_shape), r) or b.shape[1:] != (r, math.prod(out_shape)):
            raise CheckpointError(
                f"{weights}: {module} adapters of shapes {a.shape}, {b.shape} fit no {shape}"
            )
        arrays[module] = (a.reshape(-1, *in_shape, r), b.reshape(-1, r, *out_shape))
    if tensors:
        raise CheckpointError(f"{weights}: tensor {sorted(tensors)[0]} is not an adapter of this model")
    return cfg, arrays


def merged(entry: hf.Entry, position, value: np.ndarray, arrays, *, scale: float) -> np.ndarray:
    """One tensor of the base (our layout, one layer) with its adapter merged in: W + scale * A B."""
    module = entry.path.removesuffix(".kernel")
    if module not in arrays or not position:
        return value
    a, b = arrays[module]
    a, b = a[position[0]], b[position[0]]
    update = a.reshape(-1, a.shape[-1]) @ b.reshape(b.shape[0], -1)
    return (value.astype(np.float32) + scale * update.reshape(value.shape)).astype(value.dtype)


def merge_into(model: Transformer, path: str) -> Transformer:
    """`model` (a loaded base, on any mesh) with the PEFT LoRA adapter at `path` merged into its kernels,
    each kept in its dtype and sharding: it then encodes as the merged export does."""
    cfg, arrays = read_adapter(path, model.config.replace(lora_rank=0))
    scale = cfg.lora_alpha / cfg.lora_rank
    for module, (a, b) in arrays.items():
        linear = model
        for name in module.split("."):
            linear = getattr(linear, name)
        kernel = linear.kernel[...]
        merge = jax.jit(
            lambda w, a, b: lora.merged_kernel(w, a, b, scale).astype(w.dtype), out_shardings=kernel.sharding
        )
        linear.kernel.set_value(merge(kernel, a, b))
    return model
