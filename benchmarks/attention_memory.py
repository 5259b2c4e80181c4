"""Temporaries of one GritLM-7B attention layer (forward + gradient) per TPU chip: dense mask vs splash.

    python -m benchmarks.attention_memory [--topology v5e-4] [--rows 4] [--length 2048] [--kinds causal]

Compiled for a TPU slice on this CPU (libtpu, the ``aot`` extra), rows sharded over the chips: the
per-chip shapes of the 7B recipe's passage chunks (256 sequences of 2048 tokens over 64 chips = 4 rows
per chip). Seconds per compile, where a whole grit-aot row of the 7B step takes minutes.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from grit_jax import hardware, sharding
from grit_jax.model import ModelConfig  # noqa: E402
from grit_jax.model.attention import attention_spec  # noqa: E402
from grit_jax.model.layers import Attention  # noqa: E402
from grit_jax.model.rope import inverse_frequencies, rotary_tables  # noqa: E402
from grit_jax.programs import grit_aot as aot


def temporaries(impl: str, kind: str, devices, rows: int, length: int) -> int:
    cfg = ModelConfig.preset("mistral_7b", dtype="bfloat16", attention_impl=impl)
    graphdef, params = nnx.split(nnx.eval_shape(lambda: Attention(cfg, rngs=nnx.Rngs(0))))
    mesh = sharding.make_mesh(dict(data=-1), devices=devices)
    chips = mesh.devices.size
    by_row = NamedSharding(mesh, PartitionSpec(("data",)))
    x = jax.ShapeDtypeStruct((rows * chips, length, cfg.hidden_size), jnp.bfloat16, sharding=by_row)
    valid = jax.ShapeDtypeStruct((rows * chips, length), jnp.bool_, sharding=by_row)
    replicated = NamedSharding(mesh, PartitionSpec())
    params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, jnp.float32, sharding=replicated), params)

    def loss(params, x, valid):
        with sharding.use_mesh(mesh):
            positions = jnp.broadcast_to(jnp.arange(length), valid.shape)
            cos, sin = rotary_tables(positions, inverse_frequencies(cfg), jnp.bfloat16)
            spec = attention_spec(valid, kind, cfg.sliding_window, impl)
            y, _ = nnx.merge(graphdef, params)(x, spec, cos, sin)
            return jnp.sum(y.astype(jnp.float32))

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x, valid).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topology", default="v5e-4")
    parser.add_argument("--rows", type=int, default=4, help="sequences per chip")
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--kinds", default="bidirectional,causal", help="attention kinds, comma-separated")
    args = parser.parse_args()
    devices = aot.topology_devices(hardware.parse_accelerator(args.topology))
    print(f"one Mistral-7B attention layer, forward + gradient, {args.rows} x {args.length} tokens per chip")
    for kind in args.kinds.split(","):
        for impl in ("dense", "splash"):
            temp = temporaries(impl, kind, devices, args.rows, args.length)
            print(f"{args.topology} {kind:13s} {impl:6s} temporaries {temp / 2**20:9.1f} MiB per chip")


if __name__ == "__main__":
    main()
