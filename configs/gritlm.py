"""GritLM as in the paper: GritLM-7B (Mistral-7B) and GritLM-8x7B (Mixtral-8x7B), 1253 steps; the 7B
recipe also on Llama-3.1-8B and Qwen3-8B, the 8x7B one on Qwen3-30B-A3B, and a small one on Qwen2.5-0.5B.

    grit-train --config configs/gritlm.py:VARIANT[,MODE] --workdir gs://.../run \
        --config.model.hf_dir=/path/to/Mistral-7B-v0.1 --config.data.data_dir=/path/to/prepared

VARIANT is 7b, 8x7b, llama3.1-8b, qwen3-8b, qwen3-30b-a3b or qwen2.5-0.5b, or 7b-lora, llama3.1-8b-lora,
qwen3-8b-lora (LoRA on one host: v5e-8, v4-8, v6e-8) (model.hf_dir: the matching
Hugging Face directory, which grit-data prepare also takes as --tokenizer); MODE is unified (default),
embedding or generative. Instead of model.hf_dir,
--config.model.init_checkpoint=DIR takes a `grit-convert hf-to-orbax` output or another run's checkpoint.

The embedding chunk (sequences per GradCache chunk, over the whole batch) must be a multiple of the
data-parallel size. 7b: 128 suits up to 128 chips (v5e-64: 12.71 of 16 GiB per chip, grit-aot); on more,
pass --config.objective.embedding_chunk_size=256 (or the data-parallel size). 8x7b: 128 suits up to 128
chips (v5p-256, checked with grit-aot); on v5p-512 pass --config.objective.embedding_chunk_size=256
--config.objective.generative_accumulation_steps=1.
"""

from grit_jax.choices import MODES, PAPER_LENGTHS
from grit_jax.run_config import base_config

# What differs between the two recipes (the paper's Table and its public training scripts).
VARIANTS = {
    "7b": dict(
        preset="mistral_7b",
        base_model="mistralai/Mistral-7B-v0.1",
        embedding_batch_size=2048,
        generative_batch_size=256,
        loss_gen_type="mixed",
        loss_gen_factor=1.0,
        # Keep the attention block's outputs and the MLP's up projection; recompute the gate (grit-aot on
        # v5e-64: 12.71 of 16 GiB per chip, compiled / model FLOPs 1.09, where full remat with chunks of
        # 256 is 1.22; benchmarks/RESULTS.md "Compiled-cost estimate and memory/recompute search").
        remat_policy="attention_up",
        embedding_chunk_size=128,
        generative_accumulation_steps=4,
        mesh=dict(data=1, fsdp=-1, tensor=1, expert=1),
        # The public 7B script (scripts/training/train_gritlm_7b.sh) runs on 1 node x 8 GPUs.
        reference_world_size=8,
    ),
    "8x7b": dict(
        preset="mixtral_8x7b",
        base_model="mistralai/Mixtral-8x7B-v0.1",
        embedding_batch_size=256,
        generative_batch_size=256,
        loss_gen_type="token",
        loss_gen_factor=0.003,
        remat_policy="full",
        embedding_chunk_size=128,
        generative_accumulation_steps=2,
        mesh=dict(data=1, fsdp=-1, tensor=1, expert=8),
        # The public 8x7B script runs on 32 nodes x 8 GPUs.
        reference_world_size=256,
    ),
}
# GRIT on today's bases: the 7B recipe on Llama-3.1-8B and Qwen3-8B; a small one on Qwen2.5-0.5B. New
# recipes train the exact gradient of the global loss (reference_world_size=0), not a past run's balance.
# The 8B ones keep full remat and chunks of 256 (the settings checked for them; larger vocabularies).
CHECKED_8B = dict(remat_policy="full", embedding_chunk_size=256, reference_world_size=0)
VARIANTS["llama3.1-8b"] = dict(
    VARIANTS["7b"], preset="llama3.1_8b", base_model="meta-llama/Llama-3.1-8B", **CHECKED_8B
)
VARIANTS["qwen3-8b"] = dict(VARIANTS["7b"], preset="qwen3_8b", base_model="Qwen/Qwen3-8B-Base", **CHECKED_8B)
# Qwen3-MoE: the 8x7b recipe with Qwen's own router-loss weight.
VARIANTS["qwen3-30b-a3b"] = dict(
    VARIANTS["8x7b"],
    preset="qwen3_30b_a3b",
    base_model="Qwen/Qwen3-30B-A3B-Base",
    router_aux_loss_coef=0.001,
    reference_world_size=0,
)
VARIANTS["qwen2.5-0.5b"] = dict(
    VARIANTS["7b"],
    remat_policy="full",
    preset="qwen2.5_0.5b",
    base_model="Qwen/Qwen2.5-0.5B",
    reference_world_size=0,
    embedding_batch_size=256,
    generative_batch_size=32,
    embedding_chunk_size=64,
    generative_accumulation_steps=1,
)

# One host (v5e-8, v4-8, v6e-8): LoRA on a frozen bf16 base (model.lora; README "Fine-tuning GRIT on one
# host"), a smaller batch than the paper's, the paper's objective and lengths; FSDP over the 8 chips.
# The state is 1.75-2 GiB per v5e chip (benchmarks/RESULTS.md, "LoRA on one host"); check the step's
# activations with `grit-aot --config configs/gritlm.py:7b-lora --topology v5e-8` (v4-8: 4 chips, 32 GiB).
LORA = dict(
    remat_policy="full",
    embedding_batch_size=256,
    generative_batch_size=32,
    embedding_chunk_size=32,
    generative_accumulation_steps=4,
    mesh=dict(data=1, fsdp=-1, tensor=1, expert=1),
    reference_world_size=0,
    lora=dict(rank=16, alpha=32.0),
)
for _name, _preset in (("7b", "mistral_7b"), ("llama3.1-8b", "llama3.1_8b"), ("qwen3-8b", "qwen3_8b")):
    VARIANTS[f"{_name}-lora"] = dict(VARIANTS["7b"], preset=_preset, **LORA)


def get_config(arg="7b"):
    variant, mode = (arg.split(",") + ["unified"])[:2]
    if variant not in VARIANTS or mode not in MODES:
        raise ValueError(
            f"configs/gritlm.py:{arg}: expected VARIANT[,MODE] with VARIANT in "
            f"{sorted(VARIANTS)} and MODE in {MODES}, e.g. configs/gritlm.py:7b,embedding"
        )
    v = VARIANTS[variant]
    config = base_config()
    config.num_steps = 1253
    config.model.update(
        preset=v["preset"],
        base_model=v["base_model"],
        dtype="bfloat16",
        param_dtype="float32",
        remat_policy=v["remat_policy"],
    )
    config.data.update(
        embedding_batch_size=v["embedding_batch_size"],
        generative_batch_size=v["generative_batch_size"],
        train_group_size=2,
        packing=True,  # several sequences per row: no compute on padding (README "Packing")
        **PAPER_LENGTHS,
    )
    config.objective.update(
        mode=mode,
        attn="bbcc",
        pooling="mean",
        normalize=True,
        temperature=0.02,
        loss_gen_type=v["loss_gen_type"],
        loss_gen_factor=v["loss_gen_factor"],
        router_aux_loss_coef=v.get("router_aux_loss_coef", 0.02),
        embedding_chunk_size=v["embedding_chunk_size"],
        generative_accumulation_steps=v["generative_accumulation_steps"],
        # The next-token loss over blocks of 512 positions, each block's logits recomputed in the backward:
        # a row of 2048 never holds its float32 logits whole (250 MiB at vocab 32000). Compiled scratch of
        # one such row's loss gradient on a v5e chip: 676 MiB whole, 320 at 1024, 53 at 512 (python -m
        # benchmarks.loss_block_memory --topology v5e-4); 512 keeps the lm head matmul large.
        gen_loss_block=512,
        # The balance of the two losses in the runs that produced GritLM: their embedding gradient was
        # 1/W of the exact one (grit_jax.train.objective.embedding_loss). Set 0 for the exact gradient.
        reference_world_size=v["reference_world_size"],
    )
    config.optimizer.update(
        learning_rate=2e-5, schedule="linear", warmup_ratio=0.03, weight_decay=0.0, max_grad_norm=1.0
    )
    if "lora" in v:  # the base frozen in bfloat16; the adapters train in float32, at LoRA's usual rate
        config.model.update(param_dtype="bfloat16")
        config.model.lora.update(v["lora"])
        config.optimizer.learning_rate = 1e-4
    config.mesh.update(v["mesh"])
    config.checkpoint.update(every_steps=100, keep=3)
    config.log.update(every_steps=1, eval_every_steps=0)
    return config
