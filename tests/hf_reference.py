"""Random tiny transformers Mistral / Mixtral models saved with save_pretrained: the reference that
nobody here wrote."""

import numpy as np
import torch

TINY = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    rope_theta=5000.0,
)


def make_torch_model(kind="mistral", seed=0, **changes):
    """A random fp32 MistralForCausalLM or MixtralForCausalLM (eager attention), in eval mode."""
    from transformers import MistralConfig, MistralForCausalLM, MixtralConfig, MixtralForCausalLM

    torch.manual_seed(seed)
    if kind == "mistral":
        config = MistralConfig(**{**TINY, **changes})
        model = MistralForCausalLM(config)
    else:
        config = MixtralConfig(**{**TINY, "num_local_experts": 4, "num_experts_per_tok": 2, **changes})
        model = MixtralForCausalLM(config)
    model.config._attn_implementation = "eager"
    # Norm weights start at one; perturb them so a mis-mapped norm cannot pass unnoticed.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def save(model, path, max_shard_size=None):
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, **kwargs)
    return str(path)


def additive_mask(mask_bool):
    """A boolean [B,T,S] mask as the 4-D additive float mask transformers accepts."""
    m = torch.as_tensor(np.array(mask_bool))[:, None]
    return torch.where(m, 0.0, torch.finfo(torch.float32).min)
