"""The Flax NNX Mistral / Mixtral against transformers' torch models, and the mask invariances."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import grit_jax
from grit_jax.errors import CheckpointError
from grit_jax.model import ModelConfig, Transformer, transformer
from grit_jax.model.layers import contract
from grit_jax.model.masks import make_attn_mask
from tests.hf_reference import (
    additive_mask,
    assert_close_on_real_tokens,
    assert_moe_matches_transformers,
    jax_logits,
    make_torch_model,
    save,
    torch_logits,
)

B, T = 3, 12
LENGTHS = np.array([12, 9, 5])  # right padding in rows 1 and 2


def batch(vocab=256, seed=1):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, vocab, size=(B, T)).astype(np.int32)
    padding = np.arange(T)[None, :] < LENGTHS[:, None]
    return tokens, padding


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
@pytest.mark.parametrize("sliding_window", [None, 4])
def test_mistral_matches_transformers(tmp_path, kv_heads, sliding_window):
    reference = make_torch_model("mistral", num_key_value_heads=kv_heads, sliding_window=sliding_window)
    model = grit_jax.from_hf(save(reference, tmp_path))
    assert model.config.rope_theta == 5000.0 and model.config.sliding_window == sliding_window
    tokens, padding = batch()
    mask = make_attn_mask(padding, "causal", sliding_window=model.config.sliding_window)
    logits, _ = jax_logits(model, tokens, mask)
    assert_close_on_real_tokens(logits, torch_logits(reference, tokens, padding), padding)


@pytest.mark.parametrize("kv_heads, moe_impl", [(1, "dense"), (4, "dense"), (4, "ragged")])
def test_mixtral_matches_transformers_and_aux_loss(tmp_path, kv_heads, moe_impl):
    reference = make_torch_model("mixtral", num_key_value_heads=kv_heads)
    assert_moe_matches_transformers(tmp_path, reference, *batch(), moe_impl)


def test_sharded_checkpoint_and_tied_embeddings(tmp_path):
    reference = make_torch_model("mistral", tie_word_embeddings=True)
    path = save(reference, tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("*.safetensors"))) > 2
    model = grit_jax.from_hf(path)
    assert model.lm_head is None
    tokens, padding = batch()
    logits, _ = jax_logits(model, tokens, make_attn_mask(padding, "causal"))
    assert_close_on_real_tokens(logits, torch_logits(reference, tokens, padding), padding)


@pytest.mark.parametrize("kind", ["mistral", "mixtral"])
def test_bidirectional_matches_transformers_with_4d_mask(tmp_path, kind):
    reference = make_torch_model(kind)
    model = grit_jax.from_hf(save(reference, tmp_path))
    tokens, padding = batch()
    mask = np.asarray(make_attn_mask(padding, "bidirectional"))
    assert mask[0].all() and not mask[1][:, 9:].any()
    logits, _ = jax_logits(model, tokens, mask)
    assert_close_on_real_tokens(logits, torch_logits(reference, tokens, mask4d=additive_mask(mask)), padding)


def test_appending_tokens_changes_only_bidirectional_prefix():
    model = Transformer(ModelConfig.preset("tiny"), rngs=nnx.Rngs(0))
    tokens = np.random.default_rng(0).integers(3, 512, size=(2, 10)).astype(np.int32)
    short, long = tokens[:, :6], tokens
    for kind, same in (("causal", True), ("bidirectional", False)):
        a, _ = jax_logits(model, short, make_attn_mask(np.ones(short.shape, bool), kind))
        b, _ = jax_logits(model, long, make_attn_mask(np.ones(long.shape, bool), kind))
        diff = float(jnp.abs(a - b[:, :6]).max())
        assert (diff < 1e-5) if same else (diff > 1e-3), (kind, diff)


@pytest.mark.parametrize("preset", ["tiny", "tiny_moe"])
@pytest.mark.parametrize("remat_policy", ["none", "full"])
def test_scan_equals_loop(preset, remat_policy):
    cfg = ModelConfig.preset(preset, remat_policy=remat_policy)
    scanned = Transformer(cfg, rngs=nnx.Rngs(0))
    looped = Transformer(cfg.replace(scan_layers=False), rngs=nnx.Rngs(0))
    tokens = np.random.default_rng(0).integers(3, 512, size=(2, 8)).astype(np.int32)
    mask = make_attn_mask(np.ones(tokens.shape, bool), "bidirectional")

    def loss(model):
        out = model(jnp.asarray(tokens), mask)
        return jnp.mean(model.logits(out.hidden) ** 2)

    l1, g1 = nnx.value_and_grad(loss)(scanned)
    l2, g2 = nnx.value_and_grad(loss)(looped)
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("remat_policy", ["matmuls", "attention_up", "attention"])
def test_remat_policies_keep_values_and_gradients(remat_policy):
    """A remat policy (the outputs named in layers.SAVED_OUTPUTS saved) only changes what the backward
    recomputes: the same loss and gradients as without remat."""
    tokens = np.random.default_rng(0).integers(3, 512, size=(2, 8)).astype(np.int32)
    mask = make_attn_mask(np.ones(tokens.shape, bool), "causal")

    def loss(model):
        return jnp.mean(model.logits(model(jnp.asarray(tokens), mask).hidden) ** 2)

    base = ModelConfig.preset("tiny", remat_policy="none")
    l1, g1 = nnx.value_and_grad(loss)(Transformer(base, rngs=nnx.Rngs(0)))
    l2, g2 = nnx.value_and_grad(loss)(Transformer(base.replace(remat_policy=remat_policy), rngs=nnx.Rngs(0)))
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("remat_policy", ["none", "full"])
def test_rolled_layer_scan_equals_unrolled(monkeypatch, remat_policy):
    # On CPU a small model's layer scan is unrolled (transformer.scan_unroll); the rolled loop that TPU
    # and deep models run must compute the same values and gradients.
    cfg = ModelConfig.preset("tiny", remat_policy=remat_policy)
    assert transformer.scan_unroll(cfg) is True
    tokens = np.random.default_rng(0).integers(3, 512, size=(2, 8)).astype(np.int32)
    mask = make_attn_mask(np.ones(tokens.shape, bool), "bidirectional")

    def loss(model):
        out = model(jnp.asarray(tokens), mask)
        return jnp.mean(model.logits(out.hidden) ** 2)

    unrolled = nnx.value_and_grad(loss)(Transformer(cfg, rngs=nnx.Rngs(0)))
    monkeypatch.setattr(transformer, "CPU_UNROLL_LAYERS", 0)
    assert transformer.scan_unroll(cfg) == 1
    rolled = nnx.value_and_grad(loss)(Transformer(cfg, rngs=nnx.Rngs(0)))
    np.testing.assert_allclose(unrolled[0], rolled[0], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(unrolled[1]), jax.tree.leaves(rolled[1])):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize(
    "equation, x_shape, k_shape",
    [
        ("btd,dnh->btnh", (2, 5, 8), (8, 4, 3)),  # q/k/v: flattened to one matmul
        ("btnh,nhd->btd", (2, 5, 4, 3), (4, 3, 8)),  # o_proj: two contracted axes
        ("btd,df->btf", (2, 5, 8), (8, 6)),  # MLP, lm_head
        ("btd,edf->btef", (2, 5, 8), (3, 8, 6)),  # experts: not a matmul form, einsum as is
        ("btef,efd->btd", (2, 5, 3, 6), (3, 6, 8)),
    ],
)
def test_contract_equals_einsum_values_and_gradients(equation, x_shape, k_shape):
    rng = np.random.default_rng(0)
    x, kernel = rng.normal(size=x_shape).astype(np.float32), rng.normal(size=k_shape).astype(np.float32)
    cot = rng.normal(size=jnp.einsum(equation, x, kernel).shape).astype(np.float32)

    def grads(fn):
        return jax.grad(lambda a, b: jnp.sum(fn(equation, a, b) * cot), argnums=(0, 1))(x, kernel)

    want = jnp.einsum(equation, x, kernel)
    np.testing.assert_allclose(contract(equation, x, kernel), want, rtol=1e-5, atol=1e-5)
    for ours, want in zip(grads(contract), grads(jnp.einsum)):
        np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-5)


def test_mask_kinds():
    padding = np.array([[1, 1, 1, 1, 0]], bool)
    causal = np.asarray(make_attn_mask(padding, "causal"))[0]
    assert causal[2].tolist() == [1, 1, 1, 0, 0] and not causal[:, 4].any()
    prefix = np.asarray(make_attn_mask(padding, "prefix", prefix_len=np.array([3])))[0]
    assert prefix[0].tolist() == [1, 1, 1, 0, 0] and prefix[3].tolist() == [1, 1, 1, 1, 0]
    window = np.asarray(make_attn_mask(padding, "causal", sliding_window=2))[0]
    assert window[3].tolist() == [0, 0, 1, 1, 0]


# ---- bad inputs: clear errors naming the file and the key or tensor ----


def _config_dir(tmp_path, **changes):
    reference = make_torch_model("mistral")
    save(reference, tmp_path)
    path = tmp_path / "config.json"
    cfg = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            cfg.pop(key)
        else:
            cfg[key] = value
    path.write_text(json.dumps(cfg))
    return tmp_path


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"architectures": ["GPT2LMHeadModel"]}, "architectures"),
        ({"hidden_size": None}, "hidden_size: missing"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}}, "rope_parameters"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"qk_layernorm": True}, "qk_layernorm"),
    ],
)
def test_bad_config_json(tmp_path, changes, message):
    path = _config_dir(tmp_path, **changes)
    with pytest.raises(CheckpointError, match=message) as err:
        grit_jax.from_hf(str(path))
    assert "config.json" in str(err.value)


def test_missing_and_misshaped_tensors(tmp_path):
    from safetensors.numpy import load_file, save_file

    path = save(make_torch_model("mistral"), tmp_path)
    file = tmp_path / "model.safetensors"
    tensors = load_file(file)
    missing = dict(tensors)
    missing.pop("model.layers.1.self_attn.k_proj.weight")
    save_file(missing, file)
    with pytest.raises(CheckpointError, match="model.layers.1.self_attn.k_proj.weight.*missing"):
        grit_jax.from_hf(path)
    misshaped = dict(tensors)
    misshaped["model.layers.0.mlp.up_proj.weight"] = np.zeros((5, 64), np.float32)
    save_file(misshaped, file)
    with pytest.raises(
        CheckpointError,
        match=r"model.safetensors: tensor 'model.layers.0.mlp.up_proj.weight' has shape \(5, 64\)",
    ):
        grit_jax.from_hf(path)
