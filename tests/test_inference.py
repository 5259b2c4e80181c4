"""GritLM against transformers (encode, greedy generate) and RAG caching against an uncached forward pass."""

import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece as spm
import torch

from grit_jax import GritLM, masks
from grit_jax.inference import KVCache, _decode_pass, bucket
from tests.grit_fixtures import make_hf_dir, make_tokenizer
from tests.hf_reference import additive_mask

INSTRUCTION = "<|user|>\nRetrieve the passage that answers the question\n<|embed|>\n"
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Return the list of names in the directory.",
    "A short one",
    "Encode the object as JSON and write it to the file, with indentation and sorted keys.",
]
DOC = (
    "Return a list containing the names of the entries in the directory given by path. The list is in "
    "arbitrary order, and does not include the special entries. "
) * 3
QUERY = "Which entries does the list include?"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gritlm")
    make_tokenizer(root / "tokenizer.model")
    reference, path = make_hf_dir(root / "hf", root / "tokenizer.model")
    sp = spm.SentencePieceProcessor(model_file=str(root / "tokenizer.model"))
    return reference, GritLM.from_pretrained(path), sp


def test_encode_matches_torch(setup):
    reference, model, sp = setup
    got = model.encode(TEXTS, instruction=INSTRUCTION, batch_size=3)
    # Independent computation: sentencepiece ids, torch MistralModel with a 4-D bidirectional mask.
    rows = [[sp.bos_id()] + sp.encode(INSTRUCTION + t) for t in TEXTS]
    skip = 1 + len(sp.encode(INSTRUCTION))
    length = max(map(len, rows))
    ids = np.zeros((len(rows), length), np.int64)
    pad = np.zeros((len(rows), length), bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)], pad[i, : len(r)] = r, True
    mask4d = additive_mask(pad[:, None, :] & np.ones((1, length, 1), bool))
    with torch.no_grad():
        hidden = reference.model(torch.as_tensor(ids), attention_mask=mask4d).last_hidden_state.numpy()
    keep = pad.copy()
    keep[:, :skip] = False
    want = (hidden * keep[..., None]).sum(1) / keep.sum(1, keepdims=True)
    want /= np.linalg.norm(want, axis=-1, keepdims=True)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert got.dtype == np.float32 and np.allclose(np.linalg.norm(got, axis=-1), 1, atol=1e-5)
    # One string gives one vector; no instruction pools over every token (BOS included), as the reference.
    np.testing.assert_allclose(model.encode(TEXTS[0], instruction=INSTRUCTION), got[0], atol=1e-6)
    assert model.encode(TEXTS[:2]).shape == got[:2].shape


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


def test_greedy_generate_matches_transformers(setup):
    reference, model, sp = setup
    prompts = [[sp.bos_id()] + sp.encode(t) for t in TEXTS[:3]]
    wants = [hf_generate(reference, p, eos=None) for p in prompts]
    got = model.generate(prompts, max_new_tokens=20, eos_token_id=-1)  # batched, different lengths
    assert got == wants
    # Stop on EOS: make the 6th greedy token of prompt 0 the EOS; both stop there, EOS included.
    eos = wants[0][5]
    want = hf_generate(reference, prompts[0], eos=eos)
    assert (
        model.generate(prompts[0], max_new_tokens=20, eos_token_id=eos)
        == want
        == wants[0][: want.index(eos) + 1]
    )


def test_generate_text_chat_sampling_and_buckets(setup):
    _, model, sp = setup
    chat = [{"role": "user", "content": "hello"}]
    assert model.chat_prompt(chat) == [sp.bos_id()] + sp.encode("<|user|>\nhello\n<|assistant|>\n")
    assert model.generate(chat, max_new_tokens=5, eos_token_id=-1) == model.generate(
        model.chat_prompt(chat), max_new_tokens=5, eos_token_id=-1
    )
    greedy = model.generate("hello world", max_new_tokens=6, eos_token_id=-1)
    assert model.generate("hello world", max_new_tokens=6, do_sample=True, top_k=1, eos_token_id=-1) == greedy
    a = model.generate("hello world", max_new_tokens=6, do_sample=True, temperature=2.0, top_p=0.9, seed=3)
    assert a == model.generate(
        "hello world", max_new_tokens=6, do_sample=True, temperature=2.0, top_p=0.9, seed=3
    )
    compiled = _decode_pass._cache_size()
    other = "hello, the world"
    assert len(sp.encode(other)) != len(sp.encode("hello world")) and bucket(len(sp.encode(other)) + 1) == 16
    model.generate(
        other, max_new_tokens=6, eos_token_id=-1
    )  # another length in the same buckets: no new compile
    assert _decode_pass._cache_size() == compiled


def segment_baseline(model, segments, prompt, max_new_tokens):
    """Generation without caches: ONE forward pass over segments + prompt, where each (would-be cached)
    segment attends bidirectionally within itself at its own positions 0..n-1, and the prompt attends
    causally to everything before it at positions continuing after all segment tokens; then greedy decoding.
    """
    ids = [t for s in segments for t in s] + list(prompt)
    seg = np.concatenate([np.full(len(s), i) for i, s in enumerate(segments)] + [np.full(len(prompt), -1)])
    positions = np.concatenate(
        [np.arange(len(s)) for s in segments] + [sum(map(len, segments)) + np.arange(len(prompt))]
    )
    n, t = len(ids), bucket(len(ids))
    size = bucket(t + max_new_tokens, 64)
    valid = np.zeros((1, size), bool)
    valid[0, :n] = True
    slots = np.arange(t)[None]
    causal = np.asarray(
        masks.mask_from_positions(jnp.asarray(slots), jnp.arange(size)[None], jnp.asarray(valid))
    )
    seg_q = np.full(t, -2)
    seg_q[:n] = seg
    seg_k = np.full(size, -3)
    seg_k[:n] = seg
    same_segment = (seg_q[:, None] == seg_k[None, :]) & (seg_q[:, None] >= 0)
    in_segment = (seg_q >= 0)[:, None]
    mask = np.where(in_segment, same_segment, causal[0])[None] & valid[:, None, :]
    tokens = np.zeros((1, t), np.int32)
    tokens[0, :n] = ids
    pos = np.zeros((1, t), np.int32)
    pos[0, :n] = positions
    logits, buffer = _decode_pass(
        model.graphdef,
        model.state,
        jnp.asarray(tokens),
        jnp.asarray(mask),
        jnp.asarray(pos),
        KVCache.empty(model.config, 1, size),
        jnp.asarray([n - 1]),
    )
    return model._decode_loop(
        logits,
        buffer,
        valid,
        t,
        np.array([positions[-1] + 1]),
        max_new_tokens,
        -1,
        np.random.default_rng(0),
        dict(do_sample=False),
    )[0]


@pytest.mark.parametrize("mode", ["doc", "query", "query-doc", "doc-query"])
def test_generation_from_cache_equals_without(setup, mode):
    _, model, sp = setup
    tok = lambda text: sp.encode(text)
    doc_ids = [sp.bos_id()] + tok("<|embed|>\n" + DOC)
    query_ids = [sp.bos_id()] + tok(INSTRUCTION + QUERY)
    _, doc_cache = model.encode([DOC], instruction="<|embed|>\n", get_cache=True)
    _, query_cache = model.encode([QUERY], instruction=INSTRUCTION, get_cache=True)
    assert doc_cache.num_tokens == len(doc_ids) and query_cache.num_tokens == len(query_ids)
    after = "\n<|user|>\nAnswer the prior query while using the knowledge in the document\n<|assistant|>\n"
    plans = {
        "doc": ([doc_cache], [doc_ids], model.rag_prompt(QUERY)),
        "query": ([query_cache], [query_ids], tok("\n" + DOC + after)),
        "query-doc": ([query_cache, doc_cache], [query_ids, doc_ids], tok(after)),
        "doc-query": ([doc_cache, query_cache], [doc_ids, query_ids], tok(after)),
    }
    caches, segments, prompt = plans[mode]
    cached = model.generate(prompt, past_key_values=caches, max_new_tokens=12, eos_token_id=-1)
    assert cached == segment_baseline(model, segments, prompt, 12)
    assert len(cached) == 12
