"""GRIT in JAX: one Mistral/Mixtral that embeds (bidirectional, mean pooled) and generates (causal)."""
