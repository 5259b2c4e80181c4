"""The training configuration: every group with its defaults, and the model presets the configs use.

configs/*.py start from `base_config()` and change what their recipe needs (DESIGN decision 8).
"""

from __future__ import annotations

import ml_collections

from grit_jax.data import default_data_config
from grit_jax.step import default_train_config


def base_config() -> ml_collections.ConfigDict:
    """All groups: model, data, objective, optimizer, mesh, checkpoint, log; seed and num_steps."""
    config = default_train_config()
    data = default_data_config()
    data.update(config.data.to_dict())  # sizes of the tiny defaults
    config.data = data
    config.data.demo_corpus = False  # build the stdlib-docstring corpus into WORKDIR/data when data_dir is ""
    config.data.demo_vocab_size = 1024
    config.log.eval_every_steps = 0
    config.log.eval_max_queries = 256
    config.log.peak_flops_per_device = 0.0  # 0: known accelerators from a table, else MFU is not reported
    config.checkpoint.async_save = True
    config.max_nonfinite_steps = 5  # non-finite steps in a row before the run stops
    return config
