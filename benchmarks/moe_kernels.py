"""Dense vs dropless (ragged) MoE: CPU step time of one MoE layer, and the FLOPs XLA compiles for TPU.

    python -m benchmarks.moe_kernels cpu    # seconds per forward+backward of one MoE layer, on this CPU
    python -m benchmarks.moe_kernels tpu [--topology v5p-16] [--layers 2]

`tpu` compiles the GritLM-8x7B train step (Mixtral 8x7B, configs/gritlm.py:8x7b with a smaller batch,
`--layers` layers unscanned so that XLA's cost analysis counts every layer, no remat, no GradCache)
for a TPU slice on this CPU, with moe_impl dense and ragged (megablox gmm), and prints the compiled
FLOPs (cost analysis, per chip x chips) against the analytic model FLOPs of grit_jax.train.flops.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
from flax import nnx

from benchmarks.common import best_of, model_config
from grit_jax.model import ModelConfig
from grit_jax.model.moe import SparseMoE


def cpu_layer_seconds(impl: str, cfg: ModelConfig, tokens: int, repeats: int = 3) -> float:
    """Best of `repeats` seconds for value-and-grad of one MoE layer on [1, tokens, D] float32."""
    layer = SparseMoE(cfg.replace(moe_impl=impl), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(layer)
    x = jax.random.normal(jax.random.key(1), (1, tokens, cfg.hidden_size))

    @jax.jit
    def step(state, x):
        def loss(state, x):
            y, logits = nnx.merge(graphdef, state)(x)
            return jnp.sum(y**2) + jnp.sum(logits**2)

        return jax.value_and_grad(loss, argnums=(0, 1))(state, x)

    return best_of(lambda: jax.block_until_ready(step(state, x)), repeats)


def cpu_main():
    shapes = [
        ("8 experts, top 2, D=256, F=1024", "bench_moe_8x256"),
        ("4 experts, top 2, D=64, F=64 (tiny_moe)", "tiny_moe"),
        ("128 experts, top 8, D=256, F=128", "bench_moe_128x256"),
    ]
    print("| MoE layer (fwd+bwd, fp32) | tokens | dense s | ragged (ragged_dot) s | dense / ragged |")
    print("|---|---|---|---|---|")
    for name, preset in shapes:
        cfg = model_config(preset)
        for tokens in (512, 2048):
            dense = cpu_layer_seconds("dense", cfg, tokens)
            ragged = cpu_layer_seconds("ragged", cfg, tokens)
            print(f"| {name} | {tokens} | {dense:.3f} | {ragged:.3f} | {dense / ragged:.2f} |", flush=True)


def tpu_flops(impl: str, topology: str, layers: int) -> dict:
    from grit_jax import sharding
    from grit_jax.model.model_config import PRESETS
    from grit_jax.programs import grit_aot as aot
    from grit_jax.train import flops
    from grit_jax.train.state import TrainSetup
    from grit_jax.train.step import make_train_step

    PRESETS["mixtral_8x7b_short"] = dict(PRESETS["mixtral_8x7b"], num_hidden_layers=layers)  # --layers
    from configs import gritlm  # the repository root is on sys.path under `python -m`

    config = gritlm.get_config("8x7b")
    config.model.update(preset="mixtral_8x7b_short", scan_layers=False, remat_policy="none", moe_impl=impl)
    config.data.update(embedding_batch_size=16, generative_batch_size=16)
    config.data.update(query_max_len=256, passage_max_len=512, generative_max_len=512)
    config.objective.update(embedding_chunk_size=0, generative_accumulation_steps=1)
    config.mesh.update(data=1, fsdp=-1, tensor=1, expert=8)
    devices = aot.topology_devices(aot.parse_accelerator(topology))
    setup = TrainSetup(config, sharding.make_mesh(config.mesh, devices=devices))
    compiled = make_train_step(setup).lower(setup.abstract_state(), aot.abstract_batch(setup)).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    chips = setup.mesh.devices.size
    return dict(
        chips=chips,
        compiled=float(cost["flops"]) * chips,
        analytic=flops.train_step_flops(config, setup.model_config),
        temp=compiled.memory_analysis().temp_size_in_bytes,
    )


def tpu_main(topology: str, layers: int):
    print("| moe_impl | slice | layers | compiled FLOPs (cost analysis x chips) | analytic | ratio |")
    print("|---|---|---|---|---|---|")
    for impl in ("dense", "ragged"):
        r = tpu_flops(impl, topology, layers)
        print(
            f"| {impl} | {topology} ({r['chips']} chips) | {layers} | {r['compiled']:.3e} "
            f"| {r['analytic']:.3e} | {r['compiled'] / r['analytic']:.2f} |",
            flush=True,
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("cpu", "tpu"))
    parser.add_argument("--topology", default="v5p-16")
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    if args.what == "cpu":
        cpu_main()
    else:
        tpu_main(args.topology, args.layers)


if __name__ == "__main__":
    sys.exit(main())
