"""Scratch memory and FLOPs of the generative loss's gradient as objective.gen_loss_block varies.

The 7B recipe's lm head on a small body: vocab 32000, bfloat16 compute, one row of 2048 tokens (one
chip's generative micro-batch on v5e-64), hidden 256 and one layer so that the logits dominate. Compiles
the gradient of the generative loss for each block on one CPU device (or, with --topology, one chip of
a TPU slice through libtpu's compile-only devices: the aot extra) and prints XLA's memory_analysis()
temp bytes (peak scratch beyond arguments and outputs) and cost_analysis() FLOPs. Nothing runs. XLA's
cost analysis counts a loop body once, so the blocked rows' FLOPs are one block's, not the loss's.

    python -m benchmarks.loss_block_memory [--topology v5e-4] [--blocks 0,1024,512]
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import types  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from grit_jax.model import ModelConfig, abstract_model  # noqa: E402
from grit_jax.model.batch import PaddedChat  # noqa: E402
from grit_jax.train import objective  # noqa: E402

BLOCKS = (0, 2048, 1024, 512, 256, 128)
ROWS, LENGTH = 1, 2048


def compiled(graphdef, abstract, block, place):
    obj = types.SimpleNamespace(
        gen_loss_block=block, loss_gen_type="mixed", loss_gen_factor=1.0, router_aux_loss_coef=0.0
    )

    def grad(params, chat):
        return jax.grad(lambda p: objective.generative_loss(graphdef, p, chat, obj, steps=1)[0])(params)

    chat = PaddedChat(
        tokens=place((ROWS, LENGTH), jnp.int32),
        mask=place((ROWS, LENGTH), jnp.bool_),
        loss_mask=place((ROWS, LENGTH), jnp.bool_),
    )
    return jax.jit(grad).lower(abstract, chat).compile()


def placement(topology: str):
    """ShapeDtypeStruct factory: on the default device, or on the first chip of a TPU slice."""
    if not topology:
        return jax.ShapeDtypeStruct, jax.devices()[0].platform
    from grit_jax.hardware import parse_accelerator
    from grit_jax.programs.grit_aot import topology_devices

    chip = jax.sharding.SingleDeviceSharding(topology_devices(parse_accelerator(topology))[0])
    return (lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=chip)), f"one {topology} chip"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--topology", default="", help="compile for one chip of this TPU slice (libtpu)")
    parser.add_argument("--blocks", default=",".join(map(str, BLOCKS)), help="gen_loss_block values")
    args = parser.parse_args()
    place, where = placement(args.topology)
    cfg = ModelConfig.preset(
        "tiny",
        vocab_size=32000,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=1,
        dtype="bfloat16",
    )
    graphdef, abstract = abstract_model(cfg)
    abstract = jax.tree.map(lambda a: place(a.shape, a.dtype), abstract)
    logits = ROWS * LENGTH * cfg.vocab_size * 4 / 2**20
    print(
        f"vocab {cfg.vocab_size}, hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layer, {ROWS} x {LENGTH} "
        f"tokens, {cfg.dtype}; float32 logits {logits:.0f} MiB; {where}"
    )
    print("| gen_loss_block | temp (peak scratch) MiB | GFLOPs |")
    print("|---|---|---|")
    for block in (int(b) for b in args.blocks.split(",")):
        c = compiled(graphdef, abstract, block, place)
        cost = c.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        temp = c.memory_analysis().temp_size_in_bytes / 2**20
        print(f"| {block or 'whole'} | {temp:.1f} | {cost.get('flops', 0) / 1e9:.2f} |")


if __name__ == "__main__":
    main()
