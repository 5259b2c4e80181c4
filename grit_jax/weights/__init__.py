"""Model weights on disk: Hugging Face directories and orbax checkpoints, local or gs://.

The front door is `open_weights(path)` (loading.py); the other modules here serve it.
"""

from grit_jax.weights.loading import Weights, from_hf, open_weights

__all__ = ["Weights", "from_hf", "open_weights"]
