"""The tiny model on a prepared data directory: for tests and for trying the pod path on one machine.

grit-train --config configs/tiny.py --workdir W --config.data.data_dir=D
"""

from grit_jax.run_config import base_config


def get_config():
    config = base_config()
    config.num_steps = 20
    config.model.preset = "tiny"
    config.data.update(
        embedding_batch_size=8,
        generative_batch_size=8,
        query_max_len=32,
        passage_max_len=64,
        generative_max_len=64,
        train_group_size=2,
        num_threads=1,
        prefetch_buffer_size=2,
    )
    config.optimizer.update(learning_rate=1e-3, warmup_ratio=0.1)
    config.checkpoint.update(every_steps=5, keep=3)
    config.log.update(every_steps=1, eval_every_steps=0)
    return config
