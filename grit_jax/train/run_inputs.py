"""What a run reads before its first step, made ready on every host: a recipe's GGUF base converted into
the work dir (model.gguf), the demo corpus built (data.demo_corpus), a gs:// data dir copied to local disk.
Process 0 builds; every host waits for it, then uses the same paths."""

from __future__ import annotations

import tempfile

import jax
from jax.experimental import multihost_utils

from grit_jax import storage
from grit_jax.data.demo import prepare_demo_data
from grit_jax.errors import UsageError
from grit_jax.weights.gguf_base import converted_base


def prepare_data(config, workdir):
    """Builds the demo corpus into WORKDIR/data when the config asks for it; checks the data directory."""
    if config.data.demo_corpus and not config.data.data_dir:
        data_dir = storage.join(workdir, "data")
        if jax.process_index() == 0:
            built = tempfile.mkdtemp() if storage.is_url(data_dir) else data_dir
            prepare_demo_data(
                built,
                vocab_size=config.data.demo_vocab_size,
                tokenizer=config.model.hf_dir if config.data.demo_tokenizer == "model" else None,
                query_max_len=config.data.query_max_len,
                passage_max_len=config.data.passage_max_len,
                generative_max_len=config.data.generative_max_len,
            )
            if built != data_dir:
                storage.upload_dir(built, data_dir)
        multihost_utils.sync_global_devices("demo data ready")
        with config.unlocked():
            config.data.data_dir = data_dir
    if not config.data.data_dir:
        raise UsageError(
            "data.data_dir is empty: pass --config.data.data_dir=DIR (prepared with grit-data prepare)"
        )
    if not storage.isfile(storage.join(config.data.data_dir, "manifest.json")):
        raise UsageError(
            f"data.data_dir={config.data.data_dir}: no manifest.json there; prepare it with "
            "`grit-data prepare ... --out DIR`"
        )


def prepare_base(config, workdir):
    """A recipe's GGUF base (model.gguf) converted into WORKDIR/base_model once; it becomes model.hf_dir."""
    model = config.model
    if not model.gguf or model.hf_dir or model.init_checkpoint:
        return
    base_dir = storage.join(workdir, "base_model")
    if jax.process_index() == 0:
        built = tempfile.mkdtemp() if storage.is_url(base_dir) else base_dir
        converted_base(model.gguf, built)
        if built != base_dir:
            storage.upload_dir(built, base_dir)
    multihost_utils.sync_global_devices("base model ready")
    with config.unlocked():
        model.hf_dir = base_dir


def local_data(config):
    """array_record reads local files only: a gs:// data directory is copied to this host's disk."""
    if storage.is_url(config.data.data_dir):
        with config.unlocked():
            config.data.data_dir = storage.local_copy(config.data.data_dir, "data.data_dir")
