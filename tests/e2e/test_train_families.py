"""One tiny grit-train run per new family (Llama 3, Qwen2, Qwen3, Qwen3-MoE) from a random Hugging Face
directory, on the demo corpus: the GRIT loss falls. Subprocess runs as in tests/e2e/test_train.py."""

import pytest

from tests.hf_reference import make_torch_model, save
from tests.train_runs import ok, read_metrics, run_train

pytestmark = pytest.mark.slow
STEPS = 30
FAMILIES = {
    "llama": dict(
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 5000.0,
            "factor": 4.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
        attention_bias=True,
    ),
    "qwen2": dict(tie_word_embeddings=True),
    "qwen3": dict(head_dim=24),
    "qwen3_moe": dict(norm_topk_prob=True),
}


@pytest.mark.parametrize("kind", sorted(FAMILIES))
def test_family_trains(tmp_path, data_dir, compile_cache, kind):  # noqa: F811 (fixtures)
    hf_dir = save(make_torch_model(kind, vocab_size=512, **FAMILIES[kind]), tmp_path / "hf")
    workdir = str(tmp_path / "run")
    ok(
        run_train(
            workdir,
            data_dir,
            compile_cache,
            f"--config.model.hf_dir={hf_dir}",
            f"--config.num_steps={STEPS}",
            "--config.checkpoint.every_steps=1000",
            devices=1,
        )
    )
    losses = [m["loss"] for _, m in sorted(read_metrics(workdir).items()) if "loss" in m]
    assert len(losses) == STEPS
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    print(kind, f"loss {first:.3f} -> {last:.3f}")
    # measured (2-core CPU, deterministic): llama 9.02 -> 8.25, qwen2 9.04 -> 8.58, qwen3 16.76 -> 8.37,
    # qwen3_moe 15.78 -> 8.42 (mean of the first and of the last 4 steps)
    assert last < first - 0.3, losses
