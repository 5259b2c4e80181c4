"""The closed sets of names a configuration may use, each written once (no jax here)."""

MODES = ("unified", "embedding", "generative")
# The reference's `attn`: first two letters the embedding pass, last two generation (b bidirectional,
# c causal); training uses these two.
ATTENTIONS = {"bbcc": "bidirectional", "cccc": "causal"}
POOLINGS = ("mean", "weightedmean", "lasttoken", "cls")
LOSS_GEN_TYPES = ("mixed", "token")
SCHEDULES = ("linear", "cosine", "constant")
DTYPES = ("float32", "bfloat16", "float16")
# remat_policy -> the name of a jax.checkpoint_policies member; "none" runs without remat, "full" saves
# nothing inside a layer, "matmuls" saves the outputs of the attention and MLP matmuls (q, k, v, the
# attention and its projection, gate and up) and recomputes the rest; "attention_up" all but the gate
# (recomputed); "attention" the attention block's (q, k, v, the attention and its projection), the MLP's
# gate and up recomputed (the names each keeps: grit_jax.model.layers.SAVED_OUTPUTS).
REMAT_POLICIES = {
    "none": None,
    "full": "nothing_saveable",
    "dots": "checkpoint_dots",
    "dots_no_batch": "dots_with_no_batch_dims_saveable",
    "matmuls": "save_only_these_names",
    "attention_up": "save_only_these_names",
    "attention": "save_only_these_names",
}
# model.attention_impl: "auto" picks by platform (splash on TPU, cudnn on GPU, dense elsewhere).
ATTENTION_IMPLS = ("auto", "dense", "splash", "cudnn")
MESH_AXES = ("data", "fsdp", "tensor", "expert")
# Mesh axes that split the batch; their product is the data-parallel size W.
BATCH_AXES = ("data", "fsdp", "expert")
# The paper's sequence limits (query, passage, generative), in tokens.
PAPER_LENGTHS = {"query_max_len": 256, "passage_max_len": 2048, "generative_max_len": 2048}
# Hugging Face model_type -> architecture: the families one decoder runs (grit_jax.model.hf_config).
MODEL_TYPES = {
    "mistral": "MistralForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
}
MOE_MODEL_TYPES = ("mixtral", "qwen3_moe")
# How a sparse MoE runs its experts: "dense" every expert on every token, "ragged" only the routed
# tokens (grouped matmuls), "auto" the faster one on the platform (grit_jax.model.moe_dispatch).
MOE_IMPLS = ("auto", "dense", "ragged")
# "llama3": Llama 3.1's frequency-dependent scaling of the rotary frequencies.
ROPE_TYPES = ("default", "llama3")
# model.lora.targets: the projections that may carry LoRA adapters, named as PEFT names them. On Mixtral
# and Qwen3-MoE the MLP names have no dense MLP to adapt (the experts stay frozen; grit_jax/model/lora.py).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
