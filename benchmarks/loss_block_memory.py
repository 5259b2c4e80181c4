"""Scratch memory and FLOPs of the generative loss's gradient as objective.gen_loss_block varies.

The 7B recipe's lm head on a small body: vocab 32000, bfloat16 compute, one row of 2048 tokens (one
chip's generative micro-batch on v5e-64), hidden 256 and one layer so that the logits dominate. Compiles
the gradient of the generative loss for each block on one CPU device and prints XLA's memory_analysis()
temp bytes (peak scratch beyond arguments and outputs) and cost_analysis() FLOPs. Nothing runs.

    python -m benchmarks.loss_block_memory
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import types  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from grit_jax.model import ModelConfig, abstract_model  # noqa: E402
from grit_jax.model.batch import PaddedChat  # noqa: E402
from grit_jax.train import objective  # noqa: E402

BLOCKS = (0, 2048, 1024, 512, 256, 128)
ROWS, LENGTH = 1, 2048


def compiled(graphdef, abstract, block):
    obj = types.SimpleNamespace(
        gen_loss_block=block, loss_gen_type="mixed", loss_gen_factor=1.0, router_aux_loss_coef=0.0
    )

    def grad(params, chat):
        return jax.grad(lambda p: objective.generative_loss(graphdef, p, chat, obj, steps=1)[0])(params)

    chat = PaddedChat(
        tokens=jax.ShapeDtypeStruct((ROWS, LENGTH), jnp.int32),
        mask=jax.ShapeDtypeStruct((ROWS, LENGTH), jnp.bool_),
        loss_mask=jax.ShapeDtypeStruct((ROWS, LENGTH), jnp.bool_),
    )
    return jax.jit(grad).lower(abstract, chat).compile()


def main():
    cfg = ModelConfig.preset(
        "tiny",
        vocab_size=32000,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=1,
        dtype="bfloat16",
    )
    graphdef, abstract = abstract_model(cfg)
    logits = ROWS * LENGTH * cfg.vocab_size * 4 / 2**20
    print(
        f"vocab {cfg.vocab_size}, hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layer, {ROWS} x {LENGTH} "
        f"tokens, {cfg.dtype}; float32 logits {logits:.0f} MiB; {jax.devices()[0].platform}"
    )
    print("| gen_loss_block | temp (peak scratch) MiB | GFLOPs |")
    print("|---|---|---|")
    for block in BLOCKS:
        c = compiled(graphdef, abstract, block)
        cost = c.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        temp = c.memory_analysis().temp_size_in_bytes / 2**20
        print(f"| {block or 'whole'} | {temp:.1f} | {cost.get('flops', 0) / 1e9:.2f} |")


if __name__ == "__main__":
    main()
