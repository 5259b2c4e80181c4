"""A LoRA run's adapters out to PEFT and back: trained a few steps here over a transformers base, exported
with `grit-convert lora-to-peft`, loaded by peft over the transformers model they give the logits we
compute; `merge-adapter` gives a plain Hugging Face model with the same logits; a PEFT dir reads back."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from grit_jax import GritLM, sharding
from grit_jax.errors import CheckpointError, UsageError
from grit_jax.model.masks import make_attn_mask
from grit_jax.programs import grit_convert as convert
from grit_jax.run_config import base_config
from grit_jax.train import lora_base, step
from grit_jax.train.state import TrainSetup, initial_params
from grit_jax.train.synthetic import synthetic_batch
from grit_jax.weights import peft_adapter
from grit_jax.weights.checkpoints import Checkpoints
from tests.grit_fixtures import make_hf_dir, make_tokenizer


@pytest.fixture(scope="module")
def tokenizer_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    make_tokenizer(path)
    return str(path)


def lora_run(hf_dir, workdir, steps=3):
    """A LoRA run of `steps` generative steps over the base in `hf_dir`, checkpointed in `workdir`."""
    c = base_config()
    c.model.update(hf_dir=hf_dir)
    c.model.lora.update(rank=4, alpha=8.0, targets=("q_proj", "k_proj", "v_proj", "o_proj", "down_proj"))
    c.objective.mode = "generative"
    c.data.update(generative_batch_size=8, generative_max_len=12)
    c.optimizer.update(learning_rate=2e-2, warmup_ratio=0.0)
    setup = TrainSetup(c, sharding.make_mesh(c.mesh))
    state = setup.create_state(initial_params(c, setup.model_config, setup.base_shardings))
    train_step = step.make_train_step(setup)
    for i in range(steps):
        state, metrics = train_step(state, step.global_batch(setup, synthetic_batch(c, seed=i)))
        assert not metrics["nonfinite"]
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(c.to_json(indent=2))
    ckpt = Checkpoints(workdir, keep=1, async_save=False)
    ckpt.save(steps, state, {}, force=True)
    ckpt.close()
    return setup, jax.device_get(state)


def torch_logits(model, tokens):
    with torch.no_grad():
        return model(torch.as_tensor(tokens).long()).logits.numpy()


@pytest.mark.parametrize("kind", ["mistral", "qwen3"])
def test_peft_export_gives_our_logits(tmp_path, tokenizer_model, kind):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, hf_dir = make_hf_dir(tmp_path / "base", tokenizer_model, kind)
    setup, state = lora_run(hf_dir, str(tmp_path / "run"))
    adapter, merged = str(tmp_path / "adapter"), str(tmp_path / "merged")
    assert convert.run(["lora-to-peft", "--ckpt", str(tmp_path / "run"), "--out", adapter]) == 0
    with open(os.path.join(hf_dir, "README.md"), "w") as f:
        f.write("# The base's own card\n")
    assert convert.run(["merge-adapter", "--base", hf_dir, "--adapter", adapter, "--out", merged]) == 0
    card = open(os.path.join(merged, "README.md")).read()  # the merged model's card, not the base's
    assert "The base's own card" not in card and "merged in by `grit-convert merge-adapter`" in card
    assert "- LoRA adapter: `.../adapter` (r=4, lora_alpha=8.0, target modules q_proj, k_proj" in card
    assert str(tmp_path) not in card and "- base: `.../base`" in card

    tokens = np.random.default_rng(0).integers(3, 400, (2, 10)).astype(np.int32)
    model = nnx.merge(setup.graphdef, state.model_params)
    ours = np.asarray(
        model.logits(model(jnp.asarray(tokens), make_attn_mask(np.ones((2, 10), bool), "causal")).hidden)
    )
    base = AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager").eval()
    before = torch_logits(base, tokens)
    peft_model = PeftModel.from_pretrained(base, adapter).eval()
    theirs = torch_logits(peft_model, tokens)
    assert np.abs(theirs - before).max() > 1e-2  # the adapters were trained: they change the logits
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    plain = AutoModelForCausalLM.from_pretrained(merged, attn_implementation="eager").eval()
    np.testing.assert_allclose(torch_logits(plain, tokens), theirs, atol=1e-4)

    # The PEFT dir reads back into our layout, exactly what was trained.
    cfg, arrays = peft_adapter.read_adapter(adapter, setup.model_config.replace(lora_rank=0))
    assert (cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets) == (4, 8.0, setup.model_config.lora_targets)
    trained = peft_adapter.adapter_arrays(state.params)
    assert sorted(arrays) == sorted(trained)
    for module, (a, b) in trained.items():
        np.testing.assert_array_equal(arrays[module][0], a)
        np.testing.assert_array_equal(arrays[module][1], b)
    if kind == "mistral":
        check_gritlm_and_starting_point(setup, hf_dir, adapter, merged, trained, tokens, theirs)


def check_gritlm_and_starting_point(setup, hf_dir, adapter, merged, trained, tokens, peft_logits):
    """GritLM(base, adapter=) computes the PEFT logits and encodes as the merged export; a run started
    from the PEFT dir (model.lora.init_adapter) holds the trained adapters; a PEFT dir of another rank is
    refused in one line."""
    with_adapter = GritLM.from_pretrained(hf_dir, adapter=adapter)
    model = with_adapter.model
    logits = model.logits(model(jnp.asarray(tokens), make_attn_mask(np.ones((2, 10), bool), "causal")).hidden)
    np.testing.assert_allclose(np.asarray(logits), peft_logits, atol=1e-4)
    texts = ["hello world", "a b c d"]
    np.testing.assert_allclose(
        with_adapter.encode(texts), GritLM.from_pretrained(merged).encode(texts), atol=1e-5
    )
    c = setup.config.copy_and_resolve_references()
    c.model.lora.init_adapter = adapter
    started = TrainSetup(c, sharding.make_mesh(c.mesh))
    state = lora_base.start_adapters(
        started, started.create_state(initial_params(c, started.model_config, started.base_shardings))
    )
    for module, (a, b) in peft_adapter.adapter_arrays(jax.device_get(state.params)).items():
        np.testing.assert_array_equal(a, trained[module][0])
        np.testing.assert_array_equal(b, trained[module][1])
    c.model.lora.rank = 8
    other = TrainSetup(c, sharding.make_mesh(c.mesh))
    with pytest.raises(UsageError, match="init_adapter=.*r=4"):
        lora_base.start_adapters(other, other.abstract)


def test_unsupported_peft_configs_are_refused(tmp_path):
    import json

    from grit_jax.model import ModelConfig

    os.makedirs(tmp_path / "a")
    with open(tmp_path / "a" / peft_adapter.ADAPTER_CONFIG, "w") as f:
        json.dump(
            {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "use_dora": True}, f
        )
    with pytest.raises(CheckpointError, match="use_dora"):
        peft_adapter.read_adapter(str(tmp_path / "a"), ModelConfig.preset("tiny"))
    with pytest.raises(CheckpointError, match="no adapter_config.json"):
        peft_adapter.read_adapter(str(tmp_path), ModelConfig.preset("tiny"))
