"""Attention over packed rows (several sequences per row, segment ids, positions restarting): the dense
mask keeps each token inside its sequence, splash (Pallas's interpreter) equals it, and the model on a
packed row equals the model on each sequence alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from grit_jax.model import ModelConfig, Transformer
from grit_jax.model import attention as attn

N, K, H = 4, 2, 16
# two rows of 128: three sequences then padding; two sequences filling the row
SEGMENT_LENS = [(40, 50, 20), (100, 28)]


def packed_segments(lens_per_row=SEGMENT_LENS, length=128):
    segments = np.zeros((len(lens_per_row), length), np.int32)
    positions = np.zeros((len(lens_per_row), length), np.int32)
    for r, lens in enumerate(lens_per_row):
        start = 0
        for k, n in enumerate(lens):
            segments[r, start : start + n] = k + 1
            positions[r, start : start + n] = np.arange(n)
            start += n
    return segments, positions


def dense_attention(spec, q, k, v):
    b, t = q.shape[:2]
    scores = jnp.einsum("btkgh,bskh->bkgts", q.reshape(b, t, K, N // K, H), k) / jnp.sqrt(H)
    scores = jnp.where(spec.dense_mask()[:, None, None], scores, jnp.finfo(jnp.float32).min)
    return jnp.einsum("bkgts,bskh->btkgh", jax.nn.softmax(scores, -1), v).reshape(b, t, N, H)


def test_dense_mask_stays_inside_each_segment():
    segments, _ = packed_segments()
    for kind, window in (("bidirectional", None), ("causal", None), ("causal", 8), ("bidirectional", 8)):
        mask = np.asarray(attn.attention_spec(None, kind, window, "dense", segments=segments).dense_mask())
        for r, lens in enumerate(SEGMENT_LENS):
            start = 0
            for n in lens:
                block = mask[r, start : start + n]
                alone = attn.attention_spec(np.ones((1, n), bool), kind, window, "dense").dense_mask()
                alone = np.broadcast_to(alone, (1, n, n))[0]  # bidirectional: [B,1,S]
                np.testing.assert_array_equal(block[:, start : start + n], alone, err_msg=f"{kind} {window}")
                assert not block[:, :start].any() and not block[:, start + n :].any()
                start += n
            assert not mask[r, :, start:].any()  # nobody attends to padding


@pytest.mark.parametrize("kind, window", [("bidirectional", None), ("causal", 24)])
def test_splash_equals_dense_on_packed_segments(kind, window):
    segments, _ = packed_segments()
    spec = attn.attention_spec(None, kind, window, "splash", segments=segments)
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    q = jax.random.normal(keys[0], (2, 128, N, H))
    k, v = (jax.random.normal(key, (2, 128, K, H)) for key in keys[1:])
    weights = jnp.sin(jnp.arange(q.size, dtype=jnp.float32)).reshape(q.shape)

    def loss(fn):
        return lambda *qkv: jnp.sum(jnp.where(spec.valid[:, :, None, None], fn(spec, *qkv) * weights, 0.0))

    splash = lambda spec, q, k, v: attn.splash_attention(spec, q, k, v, interpret=True)  # noqa: E731
    got, grads = jax.jit(jax.value_and_grad(loss(splash), argnums=(0, 1, 2)))(q, k, v)
    want, want_grads = jax.value_and_grad(loss(dense_attention), argnums=(0, 1, 2))(q, k, v)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for g, w in zip(grads, want_grads):
        np.testing.assert_allclose(g, w, atol=1e-5 * np.abs(w).max())


def test_cudnn_cannot_express_segments_and_falls_back_to_dense():
    segments, _ = packed_segments()
    spec = attn.attention_spec(None, "causal", None, "cudnn", segments=segments)
    assert attn.choose_kernel(spec, (2, 128, N, H), jnp.bfloat16, "gpu") == "dense"


@pytest.mark.parametrize("kind", ["bidirectional", "causal"])
def test_model_on_a_packed_row_equals_each_sequence_alone(kind):
    """Segment ids and positions restarting at each segment: hidden states equal the unpacked ones."""
    cfg = ModelConfig.preset("tiny", sliding_window=30)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    segments, positions = packed_segments()
    tokens = np.asarray(jax.random.randint(jax.random.PRNGKey(1), segments.shape, 3, cfg.vocab_size))
    spec = attn.attention_spec(None, kind, cfg.sliding_window, "dense", segments=segments)
    packed = np.asarray(model(tokens, spec, positions=positions).hidden)
    for r, lens in enumerate(SEGMENT_LENS):
        start = 0
        for n in lens:
            row = np.zeros((1, 64 * ((n + 63) // 64)), np.int32)
            row[0, :n] = tokens[r, start : start + n]
            valid = np.arange(row.shape[1])[None] < n
            alone_spec = attn.attention_spec(valid, kind, cfg.sliding_window, "dense")
            alone = np.asarray(model(row, alone_spec).hidden)
            np.testing.assert_allclose(packed[r, start : start + n], alone[0, :n], rtol=1e-5, atol=1e-5)
            start += n
