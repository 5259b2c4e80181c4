"""The quick-start run: a small GRIT model trained on the Python standard library's docstrings.

Builds the corpus and a sentencepiece tokenizer into WORKDIR/data, then trains both objectives on a
2-core CPU in about six minutes; held-out retrieval MRR@10 and generative loss are logged as it learns.
"""

from grit_jax.run_config import base_config


def get_config():
    config = base_config()
    # 500 steps: the quick start takes ~6 minutes on 2 cores; the held-out MRR@10 is flat from step ~400
    # (benchmarks/RESULTS.md "Demo and quick start"), the generative loss still falls.
    config.num_steps = 500
    config.model.preset = "demo"
    # Queries of 64 tokens keep the summary line after the instruction, name and signature (at 32 most of
    # it was cut: median query 55 tokens); passages keep the first ~200 characters of the docstring body.
    config.data.update(
        demo_corpus=True,
        demo_vocab_size=1024,
        embedding_batch_size=32,
        generative_batch_size=16,  # 8 left the answers repeating one word
        query_max_len=64,
        passage_max_len=64,
        generative_max_len=64,
        # 3 hard negatives per query (the next docstrings of the same module), the kind of distractor each
        # held-out query is ranked against: MRR@10 0.30 at step 200 where 1 hard negative gave 0.19.
        train_group_size=4,
        num_threads=2,
        prefetch_buffer_size=4,
        packing=True,  # several sequences per row: no compute on padding (README "Packing")
    )
    config.objective.update(temperature=0.05)
    config.optimizer.update(learning_rate=2e-3, schedule="cosine", warmup_ratio=0.05, weight_decay=0.01)
    config.checkpoint.update(every_steps=200, keep=2)
    config.log.update(every_steps=20, eval_every_steps=100, eval_max_queries=1024)
    return config
