"""GritLM-8x7B as in the paper: Mixtral-8x7B, 1253 steps, embedding and generative batches of 256,
generative loss `token` x 0.003.

    grit-train --config configs/gritlm_8x7b.py[:unified|embedding|generative] --workdir ... \
        --config.model.hf_dir=/path/to/Mixtral-8x7B-v0.1 --config.data.data_dir=/path/to/prepared

The embedding chunk (sequences per GradCache chunk, over the whole batch) must be a multiple of the
data-parallel size: 128 suits up to 128 chips (v5p-256, checked with grit-aot); on v5p-512 pass
--config.objective.embedding_chunk_size=256 --config.objective.generative_accumulation_steps=1.
"""

from grit_jax.config import base_config


def get_config(mode="unified"):
    config = base_config()
    config.num_steps = 1253
    config.model.update(
        preset="mixtral_8x7b", hf_dir="", dtype="bfloat16", param_dtype="float32", remat_policy="full"
    )
    config.data.update(
        embedding_batch_size=256,
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
        loss_gen_type="token",
        loss_gen_factor=0.003,
        router_aux_loss_coef=0.02,
        embedding_chunk_size=128,
        generative_accumulation_steps=2,
    )
    config.optimizer.update(
        learning_rate=2e-5, schedule="linear", warmup_ratio=0.03, weight_decay=0.0, max_grad_norm=1.0
    )
    config.mesh.update(data=1, fsdp=-1, tensor=1, expert=8)
    config.checkpoint.update(every_steps=100, keep=3)
    config.log.update(every_steps=1, eval_every_steps=0)
    return config
