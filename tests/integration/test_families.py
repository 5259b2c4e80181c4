"""Llama 3, Qwen2.5 and Qwen3 run through the one decoder: logits against transformers (biases, tied
embeddings, q/k norm, head_dim != hidden/heads, llama3 RoPE scaling past the original context, Qwen's
sliding-window fields), bidirectional encoding with a 4-D mask, config.json keys refused by name, the
HF -> orbax -> HF round trip and greedy generation."""

import json

import numpy as np
import pytest

import grit_jax
from grit_jax import GritLM
from grit_jax.errors import CheckpointError
from grit_jax.model import ModelConfig
from grit_jax.model.masks import make_attn_mask
from grit_jax.programs import grit_convert as convert
from grit_jax.weights.hf import read_hf_config
from tests.grit_fixtures import VOCAB, make_hf_dir
from tests.hf_reference import (
    additive_mask,
    assert_close_on_real_tokens,
    assert_moe_matches_transformers,
    assert_same_tensors,
    hf_generate,
    jax_logits,
    make_torch_model,
    save,
    torch_logits,
)

B, T = 3, 40
LENGTHS = np.array([40, 31, 9])
# Llama 3.1's RoPE scaling with a short original context, so a 40-token sequence exceeds it and the
# tiny head (16 dims, theta 5000) has frequencies in all three bands (kept, blended, slowed down).
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 5000.0,
    "factor": 4.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}
CASES = {
    "llama_biases": ("llama", dict(attention_bias=True, mlp_bias=True)),
    "llama3_rope_tied": ("llama", dict(rope_parameters=LLAMA3_ROPE, tie_word_embeddings=True)),
    "qwen2": ("qwen2", {}),
    "qwen2_tied": ("qwen2", dict(tie_word_embeddings=True)),
    "qwen2_sliding": ("qwen2", dict(use_sliding_window=True, sliding_window=6, max_window_layers=0)),
    "qwen3_head_dim": ("qwen3", dict(head_dim=24)),
    "qwen3_moe": ("qwen3_moe", {}),
    "qwen3_bias_tied": ("qwen3", dict(attention_bias=True, tie_word_embeddings=True, head_dim=16)),
}


def batch(vocab=256, seed=2):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, vocab, size=(B, T)).astype(np.int32)
    return tokens, np.arange(T)[None, :] < LENGTHS[:, None]


@pytest.mark.parametrize("case", sorted(CASES))
def test_family_matches_transformers(tmp_path, case):
    kind, changes = CASES[case]
    reference = make_torch_model(kind, **changes)
    model = grit_jax.from_hf(save(reference, tmp_path))
    cfg = model.config
    assert cfg.architecture == type(reference).__name__ and cfg.model_type == kind
    assert cfg.tie_word_embeddings == reference.config.tie_word_embeddings
    assert cfg.head_dim == changes.get("head_dim", 16)
    assert cfg.qk_norm == kind.startswith("qwen3") and cfg.attention_bias == (
        kind == "qwen2" or "bias" in case
    )
    assert cfg.rope_type == ("llama3" if "rope" in case else "default")
    assert cfg.sliding_window == (6 if "sliding" in case else None)
    tokens, padding = batch()
    mask = make_attn_mask(padding, "causal", sliding_window=cfg.sliding_window)
    logits, _ = jax_logits(model, tokens, mask)
    assert_close_on_real_tokens(logits, torch_logits(reference, tokens, padding), padding)


def test_llama3_scaling_changes_long_positions(tmp_path):
    """The llama3 case above is not passing by accident: without the scaling the logits differ."""
    reference = make_torch_model("llama", rope_parameters=LLAMA3_ROPE)
    model = grit_jax.from_hf(save(reference, tmp_path))
    unscaled = grit_jax.from_hf(str(tmp_path), rope_type="default")
    tokens, padding = batch()
    mask = make_attn_mask(padding, "causal")
    a, _ = jax_logits(model, tokens, mask)
    b, _ = jax_logits(unscaled, tokens, mask)
    assert float(np.abs(np.asarray(a) - np.asarray(b))[padding].max()) > 1e-3


@pytest.mark.parametrize("norm_topk_prob, moe_impl", [(False, "dense"), (True, "dense"), (False, "ragged")])
def test_qwen3_moe_matches_transformers_and_router_loss(tmp_path, norm_topk_prob, moe_impl):
    reference = make_torch_model(
        "qwen3_moe", norm_topk_prob=norm_topk_prob, tie_word_embeddings=norm_topk_prob
    )
    model = assert_moe_matches_transformers(tmp_path, reference, *batch(), moe_impl)
    cfg = model.config
    assert cfg.architecture == "Qwen3MoeForCausalLM" and cfg.norm_topk_prob == norm_topk_prob
    assert cfg.expert_intermediate_size == 32 and cfg.intermediate_size == 96 and cfg.qk_norm


@pytest.mark.parametrize("case", ["llama_biases", "qwen2", "qwen3_head_dim", "qwen3_moe"])
def test_bidirectional_matches_transformers_with_4d_mask(tmp_path, case):
    kind, changes = CASES[case]
    reference = make_torch_model(kind, **changes)
    model = grit_jax.from_hf(save(reference, tmp_path))
    tokens, padding = batch()
    mask = np.asarray(make_attn_mask(padding, "bidirectional"))
    logits, _ = jax_logits(model, tokens, mask)
    assert_close_on_real_tokens(logits, torch_logits(reference, tokens, mask4d=additive_mask(mask)), padding)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
def test_config_json_round_trip(tmp_path, kind):
    """to_hf_dict -> from_hf_dict is the identity on every family's fields."""
    kind_case = {"llama": "llama3_rope_tied", "qwen2": "qwen2_sliding", "qwen3": "qwen3_bias_tied"}[kind]
    save(make_torch_model(kind, **CASES[kind_case][1]), tmp_path)
    cfg = read_hf_config(str(tmp_path))
    assert ModelConfig.from_hf_dict(cfg.to_hf_dict()) == cfg


def _edited(tmp_path, kind, **changes):
    save(make_torch_model(kind), tmp_path)
    path = tmp_path / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))
    return str(tmp_path)


@pytest.mark.parametrize(
    "kind, changes, message",
    [
        (
            "qwen2",
            {
                "use_sliding_window": True,
                "sliding_window": 4,
                "layer_types": ["full_attention", "sliding_attention"],
            },
            "layer_types: mixes",
        ),
        ("qwen2", {"attention_bias": False}, "attention_bias: is not a qwen2 field"),
        ("qwen3", {"mlp_bias": True}, "mlp_bias: is not a qwen3 field"),
        ("llama", {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}}, "yarn"),
        ("llama", {"sliding_window": 4}, "sliding_window: is not a llama field"),
        ("llama", {"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4, "factor": 2.0}}, "needs"),
        ("mistral", {"attention_bias": True}, "attention_bias: a mistral supports only False"),
        ("qwen3", {"model_type": "llama"}, "model_type: 'llama' does not match Qwen3ForCausalLM"),
        ("qwen3_moe", {"mlp_only_layers": [1]}, "mlp_only_layers: only"),
        ("qwen3_moe", {"decoder_sparse_step": 2}, "decoder_sparse_step: only"),
    ],
)
def test_refused_config_keys(tmp_path, kind, changes, message):
    path = _edited(tmp_path, kind, **changes)
    with pytest.raises(CheckpointError, match=message) as err:
        grit_jax.from_hf(path)
    assert "config.json" in str(err.value)


@pytest.mark.parametrize(
    "case", ["llama_biases", "llama3_rope_tied", "qwen2_tied", "qwen3_head_dim", "qwen3_moe"]
)
def test_round_trip_exact_and_export_runs_in_transformers(tmp_path, tokenizer_model, case):
    from transformers import AutoModelForCausalLM

    kind, changes = CASES[case]
    reference, hf_dir = make_hf_dir(tmp_path / "hf", tokenizer_model, kind, **changes)
    convert.run(["hf-to-orbax", "--hf_dir", hf_dir, "--out", str(tmp_path / "ckpt")])
    convert.run(["orbax-to-hf", "--ckpt", str(tmp_path / "ckpt"), "--out", str(tmp_path / "back")])
    assert_same_tensors(hf_dir, str(tmp_path / "back"))
    exported = AutoModelForCausalLM.from_pretrained(
        str(tmp_path / "back"), attn_implementation="eager"
    ).eval()
    assert type(exported) is type(reference)
    tokens, padding = batch(vocab=VOCAB)
    np.testing.assert_array_equal(
        torch_logits(exported, tokens, padding)[padding], torch_logits(reference, tokens, padding)[padding]
    )


@pytest.mark.parametrize("case", ["llama3_rope_tied", "qwen2_tied", "qwen2_sliding", "qwen3_bias_tied"])
def test_greedy_generate_matches_transformers(tmp_path, tokenizer_model, case):
    kind, changes = CASES[case]
    reference, hf_dir = make_hf_dir(tmp_path / "hf", tokenizer_model, kind, **changes)
    model = GritLM.from_pretrained(hf_dir)
    prompts = [list(range(5, 5 + n)) for n in (3, 7, 11)]
    wants = [hf_generate(reference, p, eos=None, n=24) for p in prompts]
    assert model.generate(prompts, max_new_tokens=24, eos_token_id=-1) == wants


@pytest.mark.parametrize("kind, changes", [("llama", CASES["llama3_rope_tied"][1]), ("qwen3_moe", {})])
def test_transformers_4_style_config_json(tmp_path, kind, changes):
    """The Hub's files were written by transformers 4: rope_theta at the top and rope_scaling (llama3), and
    Qwen3-MoE's num_experts. They read as the transformers 5 file of the same model does."""
    save(make_torch_model(kind, **changes), tmp_path)
    new = json.loads((tmp_path / "config.json").read_text())
    old = dict(new)
    rope = dict(old.pop("rope_parameters"))
    old["rope_theta"] = rope.pop("rope_theta")
    old["rope_scaling"] = rope if rope.get("rope_type") != "default" else None
    if kind == "qwen3_moe":
        old["num_experts"] = old.pop("num_local_experts")
    assert ModelConfig.from_hf_dict(old) == ModelConfig.from_hf_dict(new)
    assert ModelConfig.from_hf_dict(new).rope_type == ("llama3" if kind == "llama" else "default")
