"""A Flax NNX decoder (Mistral, Mixtral, Llama, Qwen2, Qwen3) whose attention mask is an input."""

from grit_jax.model.model_config import ModelConfig
from grit_jax.model.moe import load_balancing_loss
from grit_jax.model.transformer import KVCache, ModelOutput, Transformer, abstract_model

__all__ = ["KVCache", "ModelConfig", "ModelOutput", "Transformer", "abstract_model", "load_balancing_loss"]
