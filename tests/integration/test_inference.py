"""GritLM against transformers (encode, greedy generate) and RAG caching against an uncached forward pass."""

import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece as spm
import torch

from grit_jax import GritLM
from grit_jax.errors import UsageError
from grit_jax.inference import text_packing
from grit_jax.inference.gritlm import KVCache, _decode_pass, bucket
from grit_jax.model import masks
from grit_jax.model.pooling import pool
from tests.grit_fixtures import DOC, INSTRUCTION, QUERY, TEXTS, make_hf_dir, make_tokenizer, tokenizer_texts
from tests.hf_reference import additive_mask, hf_generate


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
        positions=jnp.asarray(pos),
        cache=KVCache.empty(model.config, 1, size),
        last=jnp.asarray([n - 1]),
    )
    return model._decode_loop(
        logits,
        buffer,
        valid,
        t,
        next_position=np.array([positions[-1] + 1]),
        max_new_tokens=max_new_tokens,
        eos=-1,
        rng=np.random.default_rng(0),
        sampling=dict(do_sample=False),
    )[0]


# The reference's prompts after the cache (README of gritlm and its RAG evaluation script), written out.
AFTER_DOC = (
    "\n<|user|>\n{query}\n\nAnswer the prior query while optionally using the context prior to it"
    "\n<|assistant|>\n"
)
AFTER_QUERY = (
    "\n<|user|>\n{doc}\n\nOptionally using the prior context answer the query prior to it\n<|assistant|>\n"
)
AFTER_QUERY_DOC = (
    "\n<|user|>\nOptionally using the prior context answer the query prior to it\n<|assistant|>\n"
)
AFTER_DOC_QUERY = (
    "\n<|user|>\nAnswer the prior query while optionally using the context prior to it\n<|assistant|>\n"
)


@pytest.mark.parametrize("mode", ["doc", "query", "query-doc", "doc-query"])
def test_generation_from_cache_equals_without(setup, mode):
    """Each cached segment is `<|embed|>\n{text}` with BOS, except a document cached after a query, which
    gets "\n" instead of BOS (query-doc); the prompt after the cache has no BOS."""
    _, model, sp = setup
    tok = sp.encode
    doc = [sp.bos_id()] + tok("<|embed|>\n" + DOC)
    query = [sp.bos_id()] + tok("<|embed|>\n" + QUERY)
    plans = {
        "doc": ([doc], tok(AFTER_DOC.format(query=QUERY))),
        "query": ([query], tok(AFTER_QUERY.format(doc=DOC))),
        "query-doc": ([query, tok("\n<|embed|>\n" + DOC)], tok(AFTER_QUERY_DOC)),
        "doc-query": ([doc, query], tok(AFTER_DOC_QUERY)),
    }
    segments, prompt = plans[mode]
    caches = model.rag_caches(QUERY, DOC, mode)
    assert [c.num_tokens for c in caches] == [len(s) for s in segments]
    assert model.rag_prompt(QUERY, mode=mode, doc=DOC) == prompt
    cached = model.rag_generate(QUERY, DOC, mode=mode, max_new_tokens=12, eos_token_id=-1)
    assert cached == segment_baseline(model, segments, prompt, 12)
    assert len(cached) == 12
    # Batched: each row continues its own cache.
    short = "Return the names."
    batched = model.rag_generate(
        [QUERY, "Names?"], [DOC, short], mode=mode, max_new_tokens=6, eos_token_id=-1
    )
    assert batched == [
        model.rag_generate(q, d, mode=mode, max_new_tokens=6, eos_token_id=-1)
        for q, d in ((QUERY, DOC), ("Names?", short))
    ]


@pytest.fixture(scope="module")
def sharp(tmp_path_factory):
    """A random model with larger weights (initializer_range 0.1): its attention depends enough on
    positions that a row continuing at another row's position generates other tokens."""
    root = tmp_path_factory.mktemp("sharp")
    make_tokenizer(root / "tokenizer.model")
    _, path = make_hf_dir(root / "hf", root / "tokenizer.model", initializer_range=0.1)
    return GritLM.from_pretrained(path)


def test_batched_generation_from_unequal_cache_rows(sharp):
    """Row i of a two-row cache continues at its own position, as the one-row call does."""
    model = sharp
    docs = [DOC, "A short document about names."]
    _, both = model.encode(docs, instruction="<|embed|>\n", get_cache=True)
    prompts = [model.rag_prompt(QUERY), model.rag_prompt("Which names?")]
    got = model.generate(prompts, past_key_values=both, max_new_tokens=8, eos_token_id=-1)
    for doc, prompt, row in zip(docs, prompts, got):
        _, one = model.encode([doc], instruction="<|embed|>\n", get_cache=True)
        assert row == model.generate(prompt, past_key_values=one, max_new_tokens=8, eos_token_id=-1)


def llama_like_tokenizer(path):
    """A sentencepiece model with Llama's dummy prefix: pieces tokenized apart gain "▁" tokens."""
    import io

    from grit_jax.data.tokenizer import Tokenizer
    from tests.grit_fixtures import tokenizer_texts

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(tokenizer_texts()),
        model_writer=model,
        vocab_size=450,
        model_type="bpe",
        byte_fallback=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        user_defined_symbols=["<|user|>", "<|embed|>", "<|assistant|>", "\n"],
        bos_id=1,
        eos_id=2,
        unk_id=0,
        minloglevel=2,
    )
    path.write_bytes(model.getvalue())
    return Tokenizer(str(path))


@pytest.mark.parametrize("tokenizer", ["grit", "llama"])
def test_multi_turn_chat_prompt_is_the_training_format(setup, tmp_path, tokenizer):
    from grit_jax.data import prompts as fmt

    _, model, _ = setup
    if tokenizer == "llama":
        model = GritLM(model.model, llama_like_tokenizer(tmp_path / "llama.model"))
    turns = ["What does dumps do?", "  Serialize obj.\n", "And loads?", "Deserialize s.", "And dump?"]
    messages = [{"role": ("user", "assistant")[k % 2], "content": t} for k, t in enumerate(turns)]
    ids, _, last_start = fmt.encode_chat(model.tokenizer, turns + ["Write to a file."], 512)
    assert model.chat_prompt(messages) == list(ids[:last_start])
    one = fmt.encode_chat(model.tokenizer, turns[:1] + ["x"], 512)
    assert model.chat_prompt(messages[:1]) == list(one[0][: one[2]])


def test_encode_corpus_joins_title_and_text_like_the_reference(setup):
    _, model, _ = setup
    kw = dict(instruction="<|embed|>\n")
    docs = [{"title": "", "text": "Return names. "}, {"title": "os", "text": " listdir"}, {"text": " x "}]
    want = model.encode([" Return names. ", "os  listdir", " x "], **kw)
    np.testing.assert_allclose(model.encode_corpus(docs, **kw), want, atol=1e-6)
    one = model.encode_corpus({"title": "os", "text": " listdir"}, **kw)  # one document, wrapped in a list
    assert one.shape == (1, want.shape[1])
    np.testing.assert_allclose(one[0], want[1], atol=1e-6)
    with pytest.raises(UsageError, match="one document"):
        model.encode_corpus({"title": ["a", "b"], "text": ["x", "y"]}, **kw)


def test_attn_settings_of_the_reference(setup):
    """bb/bbcc embed bidirectionally; cc/cccc and None causally (None: the model's own, causal attention)."""
    _, model, _ = setup
    embed = {
        a: GritLM(model.model, model.tokenizer, attn=a).encode(TEXTS[:2])
        for a in ("bbcc", "bb", "cccc", "cc", None)
    }
    np.testing.assert_array_equal(embed["bb"], embed["bbcc"])
    np.testing.assert_array_equal(embed["cc"], embed["cccc"])
    np.testing.assert_array_equal(embed[None], embed["cccc"])
    assert not np.allclose(embed["bbcc"], embed["cccc"], atol=1e-3)
    chat = [{"role": "user", "content": "hello"}]
    assert GritLM(model.model, model.tokenizer, attn=None).generate(chat, max_new_tokens=4) == model.generate(
        chat, max_new_tokens=4
    )
    with pytest.raises(UsageError, match="attn"):
        GritLM(model.model, model.tokenizer, attn="bc")


def _alone(model, row, skip):
    """One token row embedded by itself, unpadded: the model over exactly its tokens, then pooling."""
    hidden = model.model(jnp.asarray([row]), jnp.ones((1, len(row), len(row)), bool)).hidden
    kept = jnp.ones((1, len(row)), bool)
    return np.asarray(
        pool(hidden, kept, jnp.asarray([skip]), model.pooling_method, normalize=model.normalized)
    )[0]


def test_encode_packs_texts_yet_each_gets_its_alone_embedding(setup):
    _, model, _ = setup
    docs = [t for t in tokenizer_texts() if t.strip()]
    texts = ["A", docs[3][:600], "what is GRIT?", docs[10][:40], docs[20][:200], "B c", docs[30][:90]]
    texts += [d[: 10 + 37 * i % 300] for i, d in enumerate(docs[40:52])]  # 19 texts, 2 to ~150 tokens
    for instruction, max_length in (("", 512), (INSTRUCTION, 512), ("<|embed|>\n", 64)):
        got = model.encode(texts, instruction=instruction, batch_size=4, max_length=max_length)
        skip = model.instruction_length(instruction, max_length=max_length)
        rows = [model.tokenize(instruction + t, True, max_length) for t in texts]
        # each alone (one row, its padding masked), in the caller's order
        want = np.concatenate([model.embed_rows([row], skip)[0] for row in rows])
        np.testing.assert_allclose(got, want, atol=1e-6)
    for i in (0, 1, 3):  # and without any padding at all
        np.testing.assert_allclose(got[i], _alone(model, rows[i], skip), atol=1e-6)
    lengths = [len(r) for r in rows]
    passes = text_packing.pack(lengths, 4)
    assert max(len(row) for p in passes for row in p.rows) > 1  # texts did share rows
    assert text_packing.real_share(lengths, passes) > 0.8
