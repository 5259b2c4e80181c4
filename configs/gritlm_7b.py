"""GritLM-7B as in the paper: Mistral-7B, 1253 steps, embedding batch 2048 / generative batch 256.

    grit-train --config configs/gritlm_7b.py[:unified|embedding|generative] --workdir gs://.../run \
        --config.model.hf_dir=/path/to/Mistral-7B-v0.1 --config.data.data_dir=/path/to/prepared
    (or --config.model.init_checkpoint=DIR: a `grit-convert hf-to-orbax` output or another run's checkpoint)
"""

from grit_jax.config import base_config


def get_config(mode="unified"):
    config = base_config()
    config.num_steps = 1253
    config.model.update(
        preset="mistral_7b", hf_dir="", dtype="bfloat16", param_dtype="float32", remat_policy="full"
    )
    config.data.update(
        embedding_batch_size=2048,
        generative_batch_size=256,
        query_max_len=256,
        passage_max_len=2048,
        generative_max_len=2048,
        train_group_size=2,
    )
    config.objective.update(
        mode=mode,
        attn="bbcc",
        pooling="mean",
        normalize=True,
        temperature=0.02,
        loss_gen_type="mixed",
        loss_gen_factor=1.0,
        embedding_chunk_size=256,
        generative_accumulation_steps=4,
    )
    config.optimizer.update(
        learning_rate=2e-5, schedule="linear", warmup_ratio=0.03, weight_decay=0.0, max_grad_norm=1.0
    )
    config.mesh.update(data=1, fsdp=-1, tensor=1, expert=1)
    config.checkpoint.update(every_steps=100, keep=3)
    config.log.update(every_steps=1, eval_every_steps=0)
    return config
