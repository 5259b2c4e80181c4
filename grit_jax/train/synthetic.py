"""Random batches of a config's exact shapes, for tests, benchmarks and smoke runs (no data needed)."""

from __future__ import annotations

import numpy as np

from grit_jax.batch_layout import padded_layout
from grit_jax.model import batch as batch_lib
from grit_jax.model.batch import Batch
from grit_jax.train.state import resolve_model_config


def synthetic_batch(config, seed=0, num_hosts=1) -> Batch:
    """A random host batch of the configured shapes (tests, benchmarks, smoke runs): right padding,
    1-3 instruction tokens, generative targets after a 2-token prompt."""
    rng = np.random.default_rng(seed)
    vocab = resolve_model_config(config).vocab_size
    fields = {}
    layout = padded_layout(config.data, config.objective.mode)
    for field, arrays in batch_lib.shapes(layout).items():
        out = {}
        for name, (shape, _) in arrays.items():
            shape = (shape[0] // num_hosts, *shape[1:])
            if name == "instruction_len":
                out[name] = rng.integers(1, 4, shape).astype(np.int32)
            elif name == "tokens":
                out[name] = rng.integers(3, vocab, shape).astype(np.int32)
            elif name == "mask":
                lengths = rng.integers(max(shape[1] // 2, 4), shape[1] + 1, shape[0])
                out[name] = np.arange(shape[1])[None, :] < lengths[:, None]
        if "loss_mask" in arrays:
            out["loss_mask"] = out["mask"] & (np.arange(out["mask"].shape[1])[None, :] >= 2)
        fields[field] = batch_lib.LAYOUT_CLASSES[(False, field)](**out)
    return Batch(**fields)
