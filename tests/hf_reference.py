"""Random tiny transformers models (Mistral, Mixtral, Llama, Qwen2, Qwen3) saved with save_pretrained: the
reference that nobody here wrote."""

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

# model_type -> the prefix of its transformers Config and ForCausalLM classes
CLASS_PREFIXES = [
    ("mistral", "Mistral"),
    ("mixtral", "Mixtral"),
    ("llama", "Llama"),
    ("qwen2", "Qwen2"),
    ("qwen3", "Qwen3"),
    ("qwen3_moe", "Qwen3Moe"),
]


def make_torch_model(kind="mistral", seed=0, **changes):
    """A random fp32 *ForCausalLM of the family `kind` (a model_type; eager attention), in eval mode."""
    import transformers

    torch.manual_seed(seed)
    name = dict(CLASS_PREFIXES)[kind]
    extra = {"num_local_experts": 4, "num_experts_per_tok": 2} if kind == "mixtral" else {}
    if kind == "qwen3_moe":  # experts narrower than the (unused) dense MLP, as in the real models
        extra = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "head_dim": 16}
    config = getattr(transformers, f"{name}Config")(**{**TINY, **extra, **changes})
    model = getattr(transformers, f"{name}ForCausalLM")(config)
    model.config._attn_implementation = "eager"
    # Norm weights start at one and biases at zero; perturb them so a mis-mapped one cannot pass unnoticed.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
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
