"""config.json files as the hub publishes them (tests/fixtures/hub_configs/, field for field) read into the
model whose safetensors they describe; keys that cannot be honoured are refused by name.

Provenance of the fixtures (no network to the hub here): compared with verbatim copies vendored in public
repositories: Mistral-7B-v0.1, Mistral-7B-v0.3 (the Instruct-v0.3 copy: the same file), Mixtral-8x7B-v0.1,
Llama-3.1-8B, Llama-3.2-1B, Qwen2.5-0.5B, Qwen2.5-7B, Qwen3-0.6B, Qwen3-8B, Qwen3-30B-A3B, SmolLM2-135M,
SmolLM2-1.7B-Instruct. Written from memory (their sizes checked against copies and the published
parameter counts): SmolLM2-135M-Instruct, SmolLM2-360M, TinyLlama-1.1B-Chat-v1.0.
"""

import json
import math
import os

import pytest

from grit_jax.errors import CheckpointError
from grit_jax.model import ModelConfig, hf_config
from grit_jax.weights import hf as hf_map

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "hub_configs")

# model -> (parameters as published, {Hugging Face tensor: shape} for a few tensors of its safetensors)
PUBLISHED = {
    "Mistral-7B-v0.1": (
        7_241_732_096,
        {"model.layers.0.self_attn.k_proj.weight": (1024, 4096), "lm_head.weight": (32000, 4096)},
    ),
    "Mistral-7B-v0.3": (7_248_023_552, {"model.embed_tokens.weight": (32768, 4096)}),
    "Mixtral-8x7B-v0.1": (
        46_702_792_704,
        {
            "model.layers.0.block_sparse_moe.gate.weight": (8, 4096),
            "model.layers.31.block_sparse_moe.experts.7.w2.weight": (4096, 14336),
        },
    ),
    "Llama-3.1-8B": (
        8_030_261_248,
        {"model.layers.0.mlp.down_proj.weight": (4096, 14336), "lm_head.weight": (128256, 4096)},
    ),
    "Llama-3.2-1B": (1_235_814_400, {"model.layers.15.self_attn.k_proj.weight": (512, 2048)}),
    "Qwen2.5-0.5B": (
        494_032_768,
        {
            "model.layers.0.self_attn.q_proj.bias": (896,),
            "model.layers.0.self_attn.k_proj.weight": (128, 896),
        },
    ),
    "Qwen2.5-7B": (
        7_615_616_512,
        {"model.layers.27.self_attn.v_proj.bias": (512,), "lm_head.weight": (152064, 3584)},
    ),
    "Qwen3-0.6B": (
        596_049_920,
        {
            "model.layers.0.self_attn.q_proj.weight": (2048, 1024),
            "model.layers.0.self_attn.q_norm.weight": (128,),
        },
    ),
    "Qwen3-8B": (8_190_735_360, {"model.layers.35.self_attn.o_proj.weight": (4096, 4096)}),
    "Qwen3-30B-A3B": (
        30_532_122_624,
        {
            "model.layers.0.mlp.gate.weight": (128, 2048),
            "model.layers.47.mlp.experts.127.down_proj.weight": (2048, 768),
        },
    ),
    "SmolLM2-135M": (134_515_008, {"model.layers.29.self_attn.k_proj.weight": (192, 576)}),
    "SmolLM2-135M-Instruct": (134_515_008, {"model.embed_tokens.weight": (49152, 576)}),
    "SmolLM2-360M": (361_821_120, {"model.layers.31.mlp.up_proj.weight": (2560, 960)}),
    "SmolLM2-1.7B-Instruct": (1_711_376_384, {"model.layers.23.self_attn.k_proj.weight": (2048, 2048)}),
    "TinyLlama-1.1B-Chat-v1.0": (
        1_100_048_384,
        {"model.layers.21.self_attn.v_proj.weight": (256, 2048), "lm_head.weight": (32000, 2048)},
    ),
}


def fixture(name):
    return os.path.join(FIXTURES, f"{name}.json")


def safetensors_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor name of the model's Hugging Face safetensors and its shape."""
    ours = hf_map.param_shapes(cfg)
    return {
        name: hf_map.hf_shape(entry, ours[entry.path])
        for entry in hf_map.name_map(cfg)
        for _, name in hf_map.hf_names(entry, cfg)
    }


def test_every_published_config_is_a_fixture():
    assert sorted(f[: -len(".json")] for f in os.listdir(FIXTURES)) == sorted(PUBLISHED)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_config_reads_into_its_safetensors_shapes(name):
    cfg = hf_map.read_hf_config(fixture(name))
    count, known = PUBLISHED[name]
    shapes = safetensors_shapes(cfg)
    for tensor, shape in known.items():
        assert shapes[tensor] == shape, tensor
    assert sum(math.prod(s) for s in shapes.values()) == count == cfg.num_params()
    assert ("lm_head.weight" in shapes) is not cfg.tie_word_embeddings


def test_published_values_are_honoured():
    smol = hf_map.read_hf_config(fixture("SmolLM2-135M-Instruct"))
    assert (smol.rope_theta, smol.rms_norm_eps, smol.pad_token_id, smol.head_dim) == (100000, 1e-5, 2, 64)
    assert hf_map.read_hf_config(fixture("Mistral-7B-v0.1")).sliding_window == 4096
    assert hf_map.read_hf_config(fixture("Qwen2.5-7B")).sliding_window is None  # use_sliding_window false
    llama = hf_map.read_hf_config(fixture("Llama-3.2-1B"))
    assert (llama.rope_type, llama.rope_factor, llama.rope_original_max_position_embeddings) == (
        "llama3",
        32,
        8192,
    )
    moe = hf_map.read_hf_config(fixture("Qwen3-30B-A3B"))
    assert (moe.num_local_experts, moe.num_experts_per_tok, moe.expert_intermediate_size) == (128, 8, 768)


def test_ignored_keys_are_the_metadata_only():
    hf = json.load(open(fixture("SmolLM2-135M-Instruct")))
    assert hf_config.ignored_keys(hf) == [
        "initializer_range",
        "is_llama_config",
        "pretraining_tp",
        "torch_dtype",
        "transformers.js_config",
        "transformers_version",
        "use_cache",
    ]
    assert "rope_interleaved" not in hf_config.IGNORED_KEYS  # checked: true would be another model


@pytest.mark.parametrize(
    "name, changes, message",
    [
        ("SmolLM2-135M", {"rope_interleaved": True}, r"rope_interleaved: True is not supported"),
        ("Qwen2.5-0.5B", {"use_mrope": True}, r"use_mrope: True is not supported"),
        ("Mistral-7B-v0.3", {"attention_bias": True}, r"attention_bias: a mistral supports only False"),
        ("Qwen2.5-7B", {"attention_bias": False}, r"attention_bias: is not a qwen2 field"),
        ("Llama-3.1-8B", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, r"rope_type 'yarn'"),
        ("Llama-3.1-8B", {"rope_scaling": {"type": "linear", "factor": 2.0}}, r"rope_type 'linear'"),
        ("TinyLlama-1.1B-Chat-v1.0", {"quantization_config": {"bits": 4}}, r"quantization_config: is not"),
        ("Qwen3-8B", {"hidden_act": "gelu"}, r"hidden_act: 'gelu' is not supported"),
    ],
)
def test_a_value_that_cannot_be_honoured_is_refused_by_name(tmp_path, name, changes, message):
    hf = {**json.load(open(fixture(name))), **changes}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(hf))
    with pytest.raises(CheckpointError, match=message) as err:
        hf_map.read_hf_config(str(tmp_path))
    assert str(path) in str(err.value)
