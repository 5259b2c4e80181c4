"""Random batches of a config's exact shapes, for tests, benchmarks and smoke runs (no data needed)."""

from __future__ import annotations

import numpy as np

from grit_jax.run_config import batch_shapes
from grit_jax.weights.orbax_checkpoint import model_config


def synthetic_batch(config, seed=0, num_hosts=1) -> dict[str, np.ndarray]:
    """A random host batch of the configured shapes (tests, benchmarks, smoke runs): right padding,
    1-3 instruction tokens, generative targets after a 2-token prompt."""
    rng = np.random.default_rng(seed)
    vocab = model_config(config).vocab_size
    out = {}
    for name, (shape, _) in batch_shapes(config).items():
        shape = (shape[0] // num_hosts, *shape[1:])
        if name.endswith("instruction_len"):
            out[name] = rng.integers(1, 4, shape).astype(np.int32)
        elif name.endswith("tokens"):
            out[name] = rng.integers(3, vocab, shape).astype(np.int32)
        elif name.endswith("_mask") and name != "gen_loss_mask":
            lengths = rng.integers(max(shape[1] // 2, 4), shape[1] + 1, shape[0])
            out[name] = np.arange(shape[1])[None, :] < lengths[:, None]
    if "gen_mask" in out:
        out["gen_loss_mask"] = out["gen_mask"] & (np.arange(out["gen_mask"].shape[1])[None, :] >= 2)
    return out
