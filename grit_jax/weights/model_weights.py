"""The one way in to a model's weights on disk: `open_weights(path)`.

`path` is a Hugging Face directory (config.json + safetensors) or an orbax checkpoint (a `grit-convert
hf-to-orbax` output, a training step dir or a work dir), local or gs://. The returned `Weights` says which
model it holds (`.config`) and reads it in the form a caller needs:

    w = open_weights("Mistral-7B-v0.1")
    w.load(param_shardings)   # nested {name: jax.Array}, each host reading only its shards (grit-train)
    w.model(mesh)             # a Transformer, sharded over `mesh` by the training rules or on one device
    w.tensors()               # one Hugging Face tensor at a time (grit-convert: file to file)
    w.read()                  # {dotted path: np.ndarray}, whole on this host (tests, small tools)

Everything else in weights/ serves this class: the name map (hf_names.py), the readers of both formats
(reader.py, safetensors_io.py, tensorstore_io.py, orbax_checkpoint.py) and the sharded placement (loader.py).
"""

from __future__ import annotations

import os

import numpy as np
from jax.sharding import Mesh

from grit_jax import storage
from grit_jax.choices import DTYPES
from grit_jax.errors import CheckpointError
from grit_jax.model import ModelConfig, Transformer
from grit_jax.weights import hf_names as hf
from grit_jax.weights import loader, reader
from grit_jax.weights.orbax_checkpoint import CheckpointSource, resolve_checkpoint


def is_hf_dir(path: str) -> bool:
    """A Hugging Face model directory: a config.json, and not a training work dir."""
    return storage.isfile(storage.join(path, "config.json")) and not storage.isdir(
        storage.join(path, "checkpoints")
    )


class Weights:
    """A model's parameters in a Hugging Face directory or an orbax checkpoint (see `open_weights`)."""

    def __init__(
        self, source: reader.HFParams | reader.CheckpointParams, checkpoint: CheckpointSource | None
    ):
        self._source = source
        self.checkpoint = checkpoint  # the orbax checkpoint's own description, None for a Hugging Face dir

    @property
    def path(self) -> str:
        return self._source.path

    @property
    def config(self) -> ModelConfig:
        return self._source.config

    def stored_dtype(self, entry: hf.Entry) -> np.dtype:
        """The dtype one parameter (an entry of hf_names.name_map) is stored in."""
        return self._source.stored_dtype(entry)

    def stored_param_dtype(self) -> str:
        """The dtype the parameters are stored in, if a model may hold it (else float32)."""
        stored = str(self.stored_dtype(hf.name_map(self.config)[0]))
        return stored if stored in DTYPES else "float32"

    def load(self, param_shardings) -> dict:
        """Nested parameters as global arrays with `param_shardings` (an nnx.State of shardings), in
        config.param_dtype; each host reads only the boxes its devices hold."""
        return loader.load(self._source, param_shardings)

    def model(self, mesh: Mesh | None = None, *, param_dtype: str | None = None) -> Transformer:
        """A Transformer holding these weights in `param_dtype` (default config.param_dtype), sharded over
        `mesh` by the training rules (grit_jax/sharding.py), or on this host's first device without one."""
        if param_dtype is not None:
            self._source.config = self.config.replace(param_dtype=param_dtype)
        return loader.load_model(self._source, mesh)

    def tensors(self, dtype=None):
        """(entry, stacked shape, position, Hugging Face name, tensor) one tensor at a time (reader.py)."""
        return reader.iter_tensors(self._source, dtype)

    def read(self, dtype=None) -> dict[str, np.ndarray]:
        """{our dotted path: the whole stacked parameter} on this host, `dtype` default as stored."""
        return reader.read_params(self._source, dtype)


def open_weights(
    path: str,
    *,
    step: int | None = None,
    config: ModelConfig | None = None,
    kind: str | None = None,
    **config_changes,
) -> Weights:
    """The weights at `path` (see the module docstring). `config` replaces the model config read from
    `path` (it must agree on every shape: it may change dtypes and other settings); `config_changes`
    override fields of the one read (e.g. dtype, param_dtype); `step` picks a training checkpoint's step
    (default: the latest complete one); `kind` ("hf" or "orbax") insists on one format."""
    path = os.fspath(storage.as_path(path))
    expected = {"hf": "a Hugging Face model directory", "orbax": "an orbax checkpoint"}.get(
        kind, "a Hugging Face dir or an orbax checkpoint"
    )
    if not storage.isdir(path):
        raise CheckpointError(f"{path}: no such directory (expected {expected})")
    if kind == "hf" or (kind is None and is_hf_dir(path)):
        cfg = config or hf.read_hf_config(path, **config_changes)
        return Weights(reader.HFParams(path, cfg), None)
    checkpoint = resolve_checkpoint(path, step)
    if checkpoint.config.lora_rank:
        raise CheckpointError(_lora_run_message(path, checkpoint))
    if config is not None:
        checkpoint.config = config
    elif config_changes:
        checkpoint.config = checkpoint.config.replace(**config_changes)
    return Weights(reader.CheckpointParams(checkpoint), checkpoint)


def _lora_run_message(path: str, checkpoint: CheckpointSource) -> str:
    """What to do with a LoRA run's checkpoint, whose steps hold its adapters and not the base."""
    model = (checkpoint.training_config or {}).get("model") or {}
    base = model.get("hf_dir") or model.get("init_checkpoint")
    where = (
        f"the base {base}"
        if base
        else f"its base (preset {model.get('preset')!r}, random init: no dir holds it)"
    )
    return (
        f"{path}: a LoRA run's checkpoint holds its adapters only, not the base; export them with "
        f"`grit-convert lora-to-peft --ckpt {path} --out ADAPTER_DIR`, then load {where} with the adapter: "
        "grit-eval/grit-embed --model BASE --adapter ADAPTER_DIR, GritLM.from_pretrained(BASE, "
        "adapter=ADAPTER_DIR), or `grit-convert merge-adapter` for one merged model"
    )


def from_hf(path: str, dtype: str | None = None, **config_changes) -> Transformer:
    """A grit_jax Transformer holding the weights of a Hugging Face directory (grit_jax.choices.MODEL_TYPES)
    on this host's first device. `dtype` is the parameter dtype (float32 default); config_changes override
    ModelConfig fields (e.g. compute dtype, remat_policy)."""
    if dtype is not None:
        config_changes["param_dtype"] = dtype
    return open_weights(path, kind="hf", **config_changes).model()
