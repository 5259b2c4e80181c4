"""GRIT in JAX: one decoder LLM that embeds (bidirectional, mean pooled) and generates (causal)."""


def from_hf(path, dtype=None, **config_changes):
    """A grit_jax Transformer with the weights of a Hugging Face directory (weights/loading.py)."""
    from grit_jax.weights import from_hf as _from_hf

    return _from_hf(path, dtype=dtype, **config_changes)


def __getattr__(name):
    """`grit_jax.GritLM` is imported on first use, so `import grit_jax` stays cheap."""
    if name == "GritLM":
        from grit_jax.inference.gritlm import GritLM

        return GritLM
    raise AttributeError(f"module 'grit_jax' has no attribute {name!r}")
