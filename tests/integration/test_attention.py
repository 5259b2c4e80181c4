"""Training attention as a spec (grit_jax.model.attention): splash in Pallas's interpreter equals the dense
mask, values and gradients, alone and inside the train step on a 2x4 mesh; what `auto` picks; the cuDNN
call (cuDNN itself needs a GPU: its arguments are checked through XLA's implementation of the same API).
The dense path itself (grit_jax.model.dense_attention, its backward written out) equals autodiff of the
plain formula."""

import importlib.util
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from grit_jax import hardware, sharding
from grit_jax.errors import UsageError
from grit_jax.model import ModelConfig, Transformer, masks
from grit_jax.model import attention as attn
from grit_jax.model.dense_attention import dense_attention as dense_path
from grit_jax.programs import grit_aot as aot
from grit_jax.run_config import base_config
from grit_jax.train import step
from grit_jax.train.state import TrainSetup
from grit_jax.train.synthetic import synthetic_batch

B, T, N, K, H = 2, 128, 4, 2, 16  # grouped-query heads: 2 query heads per kv head
LENGTHS = (100, 128)  # right padding in the first row


def dense_attention(spec, q, k, v):
    """The oracle: the dense mask, computed as grit_jax.model.layers does."""
    scores = jnp.einsum("btkgh,bskh->bkgts", q.reshape(B, T, K, N // K, H), k) / jnp.sqrt(H)
    scores = jnp.where(spec.dense_mask()[:, None, None], scores, jnp.finfo(jnp.float32).min)
    return jnp.einsum("bkgts,bskh->btkgh", jax.nn.softmax(scores, -1), v).reshape(B, T, N, H)


def plain_attention(q, k, v, mask):
    """softmax(q k^T / sqrt(H)) v over a [B,T,S] mask, any shapes, left to autodiff."""
    b, t, n, h = q.shape
    kv = k.shape[2]
    scores = jnp.einsum("btkgh,bskh->bkgts", q.reshape(b, t, kv, n // kv, h), k).astype(jnp.float32)
    scores = jnp.where(mask[:, None, None], scores / np.sqrt(h), jnp.finfo(jnp.float32).min)
    out = jnp.einsum("bkgts,bskh->btkgh", jax.nn.softmax(scores, -1).astype(q.dtype), v)
    return out.reshape(b, t, n, h)


@pytest.mark.parametrize(
    "name, kv_heads, keys",
    [
        ("causal over right padding", 2, T),
        ("bidirectional over right padding", 1, T),
        ("packed rows", 4, T),
        ("a cache longer than the queries", 2, T + 32),
    ],
)
def test_dense_path_equals_autodiff_of_the_plain_formula(name, kv_heads, keys):
    # Every output enters the loss, the padded rows' too (they see no key when the row is all padding).
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((B, T, N, H)), jnp.float32)
    k, v = (jnp.asarray(rng.standard_normal((B, keys, kv_heads, H)), jnp.float32) for _ in range(2))
    valid = np.arange(T)[None, :] < np.asarray([0, 100])[:, None]  # the first row is all padding
    if name.startswith("packed"):
        segments = np.where(valid, 1 + np.arange(T)[None, :] // 40, 0)
        mask = masks.make_attn_mask(valid, "bidirectional", segments=segments)
    elif keys > T:  # queries at positions keys-T.. of a cache whose first keys-T entries are real
        mask = jnp.asarray(np.tril(np.ones((T, keys), bool), k=keys - T))[None].repeat(B, 0) & (
            np.arange(keys)[None, None, :] < np.asarray([0, keys])[:, None, None]
        )
    else:
        mask = masks.make_attn_mask(valid, name.split()[0])
    weights = jnp.cos(jnp.arange(B * T * N * H, dtype=jnp.float32)).reshape(B, T, N, H)

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v, mask) * weights)

    got, grads = jax.jit(jax.value_and_grad(loss(dense_path), argnums=(0, 1, 2)))(q, k, v)
    want, want_grads = jax.value_and_grad(loss(plain_attention), argnums=(0, 1, 2))(q, k, v)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for g, w in zip(grads, want_grads):
        np.testing.assert_allclose(g, w, atol=1e-5 * np.abs(w).max())
    half = [x.astype(jnp.bfloat16) for x in (q, k, v)]  # what inference on a TPU runs: bf16 in and out
    out = dense_path(*half, mask)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(
        np.asarray(out, np.float32), np.asarray(plain_attention(*half, mask), np.float32), atol=2e-2
    )


def qkv_and_spec(kind, window, impl="splash"):
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    q = jax.random.normal(keys[0], (B, T, N, H))
    k, v = (jax.random.normal(key, (B, T, K, H)) for key in keys[1:])
    valid = np.arange(T)[None, :] < np.asarray(LENGTHS)[:, None]
    return (q, k, v), attn.attention_spec(valid, kind, window, impl)


def loss_on_real_tokens(fn, spec):
    """A scalar of the outputs at real tokens only (padded positions never reach a loss)."""
    weights = jnp.sin(jnp.arange(B * T * N * H, dtype=jnp.float32)).reshape(B, T, N, H)
    return lambda *qkv: jnp.sum(jnp.where(spec.valid[:, :, None, None], fn(spec, *qkv) * weights, 0.0))


@pytest.mark.parametrize(
    "kind, window", [("bidirectional", None), ("causal", None), ("causal", 48), ("bidirectional", 48)]
)
def test_splash_equals_dense_values_and_gradients(kind, window):
    qkv, spec = qkv_and_spec(kind, window)
    splash = lambda spec, q, k, v: attn.splash_attention(spec, q, k, v, interpret=True)  # noqa: E731
    got, grads = jax.jit(jax.value_and_grad(loss_on_real_tokens(splash, spec), argnums=(0, 1, 2)))(*qkv)
    want, want_grads = jax.value_and_grad(loss_on_real_tokens(dense_attention, spec), argnums=(0, 1, 2))(*qkv)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for g, w in zip(grads, want_grads):
        np.testing.assert_allclose(g, w, atol=1e-5 * np.abs(w).max())


def test_window_no_shorter_than_the_sequence_is_dropped():
    valid = np.ones((1, 256), bool)
    assert attn.attention_spec(valid, "causal", 4096, "auto").window is None
    assert attn.attention_spec(valid, "causal", 64, "auto").window == 64
    with pytest.raises(ValueError, match="causal or bidirectional"):
        attn.attention_spec(valid, "prefix", None, "auto")


def test_auto_picks_by_platform_and_falls_back_once(caplog):
    _, spec = qkv_and_spec("causal", None, impl="auto")
    bf16 = jnp.bfloat16
    assert attn.choose_kernel(spec, (B, T, N, H), bf16, "cpu") == "dense"
    assert attn.choose_kernel(spec, (B, T, N, H), bf16, "tpu") == "splash"
    assert attn.choose_kernel(spec, (B, T, N, H), bf16, "gpu") == "cudnn"
    attn._logged.clear()
    with caplog.at_level(logging.WARNING, logger=attn.__name__):
        for _ in range(2):  # a length splash's blocks cannot tile (a bucket of 100 tokens): dense, said once
            assert attn.choose_kernel(spec, (B, 100, N, H), bf16, "tpu") == "dense"
        assert attn.choose_kernel(spec, (B, T, N, H), jnp.float32, "gpu") == "dense"  # cuDNN: 16-bit only
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "attention: splash cannot run length 100 (not a multiple of 128); dense attention instead",
        "attention: cudnn cannot run float32 (bfloat16 or float16 only); dense attention instead",
    ]
    dense = attn.attention_spec(spec.valid, "causal", None, "dense")
    assert attn.choose_kernel(dense, (B, T, N, H), bf16, "tpu") == "dense"
    window = attn.attention_spec(spec.valid, "bidirectional", 64, "cudnn")
    assert attn.choose_kernel(window, (B, T, N, H), bf16, "gpu") == "dense"


def test_cudnn_needs_a_gpu_and_names_are_checked():
    attn.check_platform("cudnn", "gpu")
    attn.check_platform("auto", "cpu")
    with pytest.raises(UsageError, match="needs a GPU"):
        attn.check_platform("cudnn", "cpu")
    with pytest.raises(UsageError, match="attention_impl"):
        ModelConfig.preset("tiny", attention_impl="flash")
    c = base_config()
    c.model.attention_impl = "cudnn"
    with pytest.raises(UsageError, match="needs a GPU"):
        TrainSetup(c, sharding.make_mesh(dict(data=1, fsdp=1, tensor=1, expert=1)))


@pytest.mark.parametrize("kind, window", [("bidirectional", None), ("causal", None), ("causal", 48)])
def test_cudnn_call_means_the_dense_mask(kind, window, monkeypatch):
    """On a GPU the model calls jax.nn.dot_product_attention(implementation="cudnn"); here the same call
    runs through XLA's implementation of that API and must equal the dense mask at real tokens."""
    calls = []
    real = jax.nn.dot_product_attention

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **{**kwargs, "implementation": "xla"})

    monkeypatch.setattr(jax.nn, "dot_product_attention", recording)
    monkeypatch.setattr(attn, "mesh_platform", lambda: "gpu")
    cfg = ModelConfig.preset("tiny", dtype="bfloat16", sliding_window=window, scan_layers=False)
    model = Transformer(cfg, rngs=nnx.Rngs(0))  # not scanned: eager calls, one per layer
    tokens = jax.random.randint(jax.random.PRNGKey(1), (B, T), 3, cfg.vocab_size)
    _, spec = qkv_and_spec(kind, window, impl="auto")
    got = model(tokens, spec).hidden
    assert len(calls) == cfg.num_hidden_layers and all(call["implementation"] == "cudnn" for call in calls)
    np.testing.assert_array_equal(calls[0]["query_seq_lengths"], LENGTHS)
    assert calls[0]["is_causal"] == (kind == "causal")
    want = model(tokens, spec.dense_mask()).hidden
    real_tokens = spec.valid[:, :, None]
    np.testing.assert_allclose(
        np.where(real_tokens, got.astype(jnp.float32), 0),
        np.where(real_tokens, want.astype(jnp.float32), 0),
        atol=0.05,
    )


def step_config(impl):
    c = base_config()
    c.model.attention_impl = impl
    c.data.update(
        embedding_batch_size=8,
        generative_batch_size=8,
        query_max_len=128,
        passage_max_len=128,
        generative_max_len=128,
        train_group_size=2,
    )
    return c


@pytest.mark.slow  # Pallas's interpreter compiles slowly: about a minute per mesh on 2 cores
@pytest.mark.parametrize(
    "mesh, window",
    [
        (dict(data=2, fsdp=4, tensor=1, expert=1), None),  # rows over data x fsdp
        (dict(data=2, fsdp=1, tensor=4, expert=1), 48),  # heads over tensor (kv heads repeated), a window
    ],
)
def test_splash_equals_dense_in_the_train_step(mesh, window, monkeypatch):
    """The step's loss, metrics and gradients with splash (interpreted) equal those of the dense path:
    bidirectional + padding (embedding pass), causal + padding (generative pass), grouped-query heads."""
    kinds = []
    real = attn.splash_attention

    def counted(spec, q, k, v, interpret=False):
        kinds.append(spec.kind)
        return real(spec, q, k, v, interpret=interpret)

    monkeypatch.setattr(attn, "splash_attention", counted)
    results = {}
    for impl in ("dense", "splash"):
        c = step_config(impl)
        cfg = ModelConfig.preset("tiny", attention_impl=impl, sliding_window=window)
        setup = TrainSetup(c, sharding.make_mesh(mesh), model_cfg=cfg)
        state = setup.create_state()
        batch = step.global_batch(setup, synthetic_batch(c, seed=1))
        results[impl] = jax.device_get(step.make_loss_and_grad(setup)(state.trainable, batch))
    # splash traced for queries and passages (bidirectional) and the generative pass (causal)
    assert sorted(set(kinds)) == ["bidirectional", "causal"] and len(kinds) >= 3
    (loss, metrics), grads = results["splash"]
    (want_loss, want_metrics), want_grads = results["dense"]
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    for name in ("loss_emb", "loss_gen", "accuracy"):
        np.testing.assert_allclose(metrics[name], want_metrics[name], rtol=1e-5, err_msg=name)
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * np.abs(w).max())


@pytest.mark.skipif(not importlib.util.find_spec("libtpu"), reason="the aot extra (libtpu)")
def test_auto_lowers_to_splash_for_a_tpu_slice():
    """grit-aot's path: on a CPU host, the platform of the mesh's devices (a TPU topology) picks splash.
    Lowered only (no compile): each pass's forward and backward are Mosaic kernels, no dense scores."""
    devices = aot.topology_devices(hardware.parse_accelerator("v5e-8"))
    c = step_config("auto")
    setup = TrainSetup(c, sharding.make_mesh(dict(data=2, fsdp=4, tensor=1, expert=1), devices=devices))
    text = step.make_train_step(setup).lower(setup.abstract_state(), step.abstract_batch(setup)).as_text()
    assert text.count("tpu_custom_call") >= 6  # forward + gradients of the embedding and generative passes
    assert "x2x2x128x128xf32" not in text  # no fp32 [B,K,G,T,S] scores (the dense path has them)


def test_a_cached_kernel_serves_later_traces():
    """splash kernels are cached per shape: their mask tables must be constants, not one trace's tracers."""
    (q, k, v), spec = qkv_and_spec("causal", None)
    total = lambda q, k, v: attn.splash_attention(spec, q, k, v, interpret=True).sum()  # noqa: E731
    first = jax.jit(total)(q, k, v)
    np.testing.assert_allclose(jax.jit(lambda *qkv: 2 * total(*qkv))(q, k, v), 2 * first, rtol=1e-6)
