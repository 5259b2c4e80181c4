"""Rotary position embeddings in Hugging Face's rotate-half layout, with Llama 3.1's frequency scaling.

The rotate-half layout lets weights convert without permuting query/key rows (grit_jax.weights.hf).
Legend as in layers.py.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def inverse_frequencies(cfg) -> np.ndarray:
    """The H/2 rotary frequencies of `cfg` (float32): theta^(-2i/H), rescaled for rope_type "llama3"."""
    h = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, h, 2, dtype=np.float32) / h))
    if cfg.rope_type == "llama3":
        inv_freq = _llama3_scaling(inv_freq.astype(np.float64), cfg)
    return inv_freq.astype(np.float32)


def _llama3_scaling(inv_freq: np.ndarray, cfg) -> np.ndarray:
    """Long wavelengths (beyond original context / low_freq_factor) are slowed by `factor`, short ones
    (below original context / high_freq_factor) kept, and those between blended linearly in
    context / wavelength."""
    context = cfg.rope_original_max_position_embeddings
    low, high, factor = cfg.rope_low_freq_factor, cfg.rope_high_freq_factor, cfg.rope_factor
    wavelength = 2 * math.pi / inv_freq
    blend = (context / wavelength - low) / (high - low)
    blended = (1 - blend) * inv_freq / factor + blend * inv_freq
    scaled = np.where(wavelength > context / low, inv_freq / factor, blended)
    return np.where(wavelength < context / high, inv_freq, scaled)


def rotary_tables(positions, inv_freq, dtype):
    """cos, sin [B,T,H] of positions [B,T] for the frequencies [H/2]."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    angles = jnp.concatenate([freqs, freqs], axis=-1)
    # Computed once: left to itself XLA recomputes the cosine and sine inside every layer's rotation,
    # forward and backward (48 fusions of the 4-layer CPU step of benchmarks/torch_reference_step.py).
    return jax.lax.optimization_barrier((jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)))


def apply_rotary(x, cos, sin):
    """x [B,T,N,H]; cos, sin [B,T,H]."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]
