"""GritLM on a mesh of 8 (faked CPU) devices: the weights sharded by the training rules, encode batches split
over the devices; embeddings equal one device's within 1e-5, greedy generation (also from a RAG cache)
gives the same tokens."""

import jax
import numpy as np
import pytest

from grit_jax import GritLM, sharding
from grit_jax.errors import UsageError
from tests.grit_fixtures import DOC, INSTRUCTION, QUERY, TEXTS, make_hf_dir, make_tokenizer


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("gritlm_mesh")
    make_tokenizer(root / "tokenizer.model")
    _, path = make_hf_dir(root / "hf", root / "tokenizer.model")
    mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2, expert=1))
    return GritLM.from_pretrained(path), GritLM.from_pretrained(path, mesh=mesh), path


def test_weights_are_sharded_by_the_training_rules(models):
    _, sharded, path = models
    assert jax.device_count() == 8
    flat = dict(jax.tree_util.tree_leaves_with_path(sharded.state))
    devices = {len(leaf.sharding.device_set) for leaf in flat.values()}
    assert devices == {8}
    split = [leaf for leaf in flat.values() if leaf.ndim >= 2 and not leaf.sharding.is_fully_replicated]
    assert split, "no weight is split across devices"
    embedding = next(leaf for k, leaf in flat.items() if "embed" in jax.tree_util.keystr(k))
    assert embedding.addressable_shards[0].data.size < embedding.size
    # A dict of axis sizes is a mesh too; an unknown axis is a usage error.
    assert dict(GritLM.from_pretrained(path, mesh={"fsdp": -1}).mesh.shape)["fsdp"] == 8
    with pytest.raises(UsageError, match="pipeline"):
        GritLM.from_pretrained(path, mesh={"pipeline": 2})


def test_sharded_encode_equals_one_device(models):
    single, sharded, _ = models
    texts = TEXTS * 3  # 12 rows: padded to 16, two rows per device
    want = single.encode(texts, instruction=INSTRUCTION, batch_size=5)
    got = sharded.encode(texts, instruction=INSTRUCTION, batch_size=5)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(sharded.encode(TEXTS[0]), single.encode(TEXTS[0]), atol=1e-5)
    hidden, valid, _ = sharded._hidden([[1, 5, 7]] * 3)  # 3 rows: a batch of 4, split 4 ways (data x fsdp)
    assert valid.shape[0] == 4 and len(hidden.sharding.device_set) == 8
    assert hidden.addressable_shards[0].data.shape[0] == 1


def test_sharded_greedy_generation_gives_the_same_tokens(models):
    single, sharded, _ = models
    prompts = ["hello world", "Return the list of names", "A"]
    want = single.generate(prompts, max_new_tokens=12, eos_token_id=-1)
    assert sharded.generate(prompts, max_new_tokens=12, eos_token_id=-1) == want
    rag = dict(mode="query-doc", max_new_tokens=8, eos_token_id=-1)
    assert sharded.rag_generate(QUERY, DOC, **rag) == single.rag_generate(QUERY, DOC, **rag)
