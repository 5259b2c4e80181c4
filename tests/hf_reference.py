"""Random tiny transformers models (Mistral, Mixtral, Llama, Qwen2, Qwen3) saved with save_pretrained: the
reference that nobody here wrote; and the comparisons of our logits, generations and files with theirs."""

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

import grit_jax
from grit_jax.model import load_balancing_loss
from grit_jax.model.masks import make_attn_mask
from grit_jax.weights.safetensors_io import SafetensorsDir

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


def assert_same_tensors(a_dir, b_dir):
    a, b = SafetensorsDir(a_dir), SafetensorsDir(b_dir)
    assert a.names() == b.names(), a.names() ^ b.names()
    for name in a.names():
        x, y = a.get(name), b.get(name)
        assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), name


def hf_generate(reference, ids, eos, n=20):
    with torch.no_grad():
        out = reference.generate(
            torch.as_tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=n,
            eos_token_id=eos,
            pad_token_id=0,
        )
    return out[0, len(ids) :].tolist()


@jax.jit
def _forward(graphdef, state, tokens, mask):
    model = nnx.merge(graphdef, state)
    out = model(tokens, mask)
    return model.logits(out.hidden), out.router_logits


def jax_logits(model, tokens, mask):
    graphdef, state = nnx.split(model)
    return _forward(graphdef, state, jnp.asarray(tokens), jnp.asarray(mask))


def torch_logits(model, tokens, padding=None, mask4d=None):
    with torch.no_grad():
        kwargs = (
            {"attention_mask": torch.as_tensor(padding).long()}
            if mask4d is None
            else {"attention_mask": mask4d}
        )
        return model(torch.as_tensor(tokens).long(), **kwargs).logits.numpy()


def assert_close_on_real_tokens(a, b, padding, tol=1e-4):
    diff = np.abs(np.asarray(a) - np.asarray(b))[padding]
    assert diff.max() < tol, diff.max()


def assert_moe_matches_transformers(tmp_path, reference, tokens, padding, moe_impl):
    """Logits and router loss of a Mixtral / Qwen3-MoE run with `moe_impl` against transformers'."""
    model = grit_jax.from_hf(save(reference, tmp_path), moe_impl=moe_impl)
    assert model.config.moe_impl == moe_impl
    logits, router_logits = jax_logits(model, tokens, make_attn_mask(padding, "causal"))
    with torch.no_grad():
        out = reference(
            torch.as_tensor(tokens).long(),
            attention_mask=torch.as_tensor(padding).long(),
            output_router_logits=True,
        )
    assert_close_on_real_tokens(logits, out.logits.numpy(), padding)
    aux = load_balancing_loss(router_logits, model.config.num_experts_per_tok, jnp.asarray(padding))
    np.testing.assert_allclose(float(aux), float(out.aux_loss), rtol=1e-5)
    return model
