"""GRIT in JAX: one Mistral/Mixtral that embeds (bidirectional, mean pooled) and generates (causal)."""


def from_hf(path, dtype=None, **config_changes):
    """A grit_jax Transformer with the weights of a Hugging Face Mistral/Mixtral directory (see grit_jax.hf)."""
    from grit_jax.hf import from_hf as _from_hf

    return _from_hf(path, dtype=dtype, **config_changes)
