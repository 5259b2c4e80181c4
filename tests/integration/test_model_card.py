"""grit-convert's Hugging Face export carries a model card (README.md): how to embed (bidirectional
attention, mean pooling, the <|user|>..<|embed|> format) and generate, and the training config and data
it came from (the work dir's config.json and the prepared data's manifest)."""

import json
import os

import pytest

from grit_jax import sharding
from grit_jax.programs import grit_convert
from grit_jax.run_config import base_config
from grit_jax.train.state import TrainSetup
from grit_jax.weights.card import model_card
from grit_jax.weights.checkpoints import Checkpoints
from grit_jax.weights.model_dir import DEFAULT_GRIT_CONFIG
from tests.grit_fixtures import make_tokenizer


@pytest.mark.slow
def test_export_carries_a_model_card(tmp_path):
    tokenizer = str(tmp_path / "tokenizer.model")
    make_tokenizer(tokenizer)
    data_dir = tmp_path / "prepared"
    data_dir.mkdir()
    manifest = {
        "train": {
            "embedding": [{"name": "medi2", "path": "/hub/MEDI2/data", "num_examples": 1234567}],
            "generative": [{"name": "tulu2", "path": "/hub/tulu2/data", "num_examples": 7654}],
        }
    }
    (data_dir / "manifest.json").write_text(json.dumps(manifest))
    config = base_config()
    config.data.update(tokenizer=tokenizer, data_dir=str(data_dir))
    config.model.update(preset="tiny", base_model="mistralai/Mistral-7B-v0.1")
    config.num_steps = 1253
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(config.to_json(indent=2))
    state = TrainSetup(config, sharding.make_mesh(config.mesh)).create_state()
    ckpt = Checkpoints(str(workdir), keep=1, async_save=False)
    ckpt.save(2, state, {"position": 0}, force=True)
    ckpt.close()

    out = tmp_path / "GritLM-tiny"
    assert grit_convert.run(["orbax-to-hf", "--ckpt", str(workdir), "--out", str(out)]) == 0
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n")
    assert "# GritLM-tiny" in card
    assert "bidirectional for embeddings, causal for generation (`attn='bbcc'`)" in card
    assert "- pooling: mean over the text's tokens" in card and "L2-normalised" in card
    # formats in inline code that renders as one line (newlines escaped), no local absolute path
    assert "a query: `<s><|user|>\\n{instruction}\\n<|embed|>\\n` + text" in card
    assert "a document: `<s><|embed|>\\n` + text" in card
    assert "the chat format `<s><|user|>\\n{user}\\n<|assistant|>\\n` (turns" in card
    spans = [line.count("`") % 2 for line in card.splitlines() if not line.startswith("```")]
    assert not any(spans), "an inline code span cut by a newline"
    assert str(tmp_path) not in card and f".../{data_dir.name}" in card
    assert "from gritlm import GritLM" in card and 'GritLM("GritLM-tiny"' in card
    assert "AutoModelForCausalLM" in card and "<|assistant|>" in card
    assert "- started from: `mistralai/Mistral-7B-v0.1`" in card
    assert "- steps: 1253" in card
    assert "- embedding: `medi2` (`.../data`): 1,234,567 examples" in card
    assert "- generative: `tulu2` (`.../data`): 7,654 examples" in card
    assert json.loads(card.split("```json\n")[1].split("\n```")[0])["num_steps"] == 1253
    assert os.path.isfile(out / "grit_config.json")  # beside it, the settings the card describes


def test_card_without_training_config_or_data():
    card = model_card("m", dict(DEFAULT_GRIT_CONFIG, attn="cccc", normalized=False), None)
    assert "causal for both (`attn='cccc'`)" in card and "not normalised" in card
    assert "Converted from an orbax checkpoint without a training config." in card
    card = model_card("m", DEFAULT_GRIT_CONFIG, {"data": {"data_dir": "/gone"}, "model": {}})
    assert "- prepared data: `/gone` (its manifest.json was not readable at export)" in card
    assert "- started from: `random init`" in card
