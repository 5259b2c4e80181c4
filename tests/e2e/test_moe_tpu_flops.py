"""The FLOPs XLA compiles for TPU for one MoE layer: ragged runs only the routed ones (libtpu, subprocess)."""

import os
import subprocess
import sys

import pytest

from tests.grit_fixtures import ROOT, needs_libtpu

_TPU_FLOPS = """
import jax, jax.numpy as jnp
from flax import nnx
from grit_jax import hardware, sharding
from grit_jax.model import ModelConfig
from grit_jax.programs import grit_aot as aot
from grit_jax.model.moe import SparseMoE

devices = aot.topology_devices(hardware.parse_accelerator("v5e-4"))
mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1, expert=4), devices=devices)
cfg = ModelConfig.preset("tiny_moe", hidden_size=512, intermediate_size=1024, num_local_experts=8,
                         dtype="bfloat16", moe_impl="{impl}")
layer = SparseMoE(cfg, rngs=nnx.Rngs(0))
graphdef, state = nnx.split(layer)
x = jax.ShapeDtypeStruct((8, 1024, 512), jnp.bfloat16)

def loss(state, x):
    with sharding.use_mesh(mesh):
        y, logits = nnx.merge(graphdef, state)(x)
    return jnp.sum(y.astype(jnp.float32) ** 2) + jnp.sum(logits)

batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp", "expert")))
replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
step = jax.jit(jax.grad(loss, argnums=(0, 1)), in_shardings=(replicated, batch))
compiled = step.lower(state, x).compile()
text = compiled.as_text()
print("FLOPS", compiled.cost_analysis()["flops"] * 4, "GMM", text.count("gmm"))
"""


@needs_libtpu
@pytest.mark.slow
def test_tpu_compile_runs_only_the_routed_flops():
    """Compiled for a v5e-4 on this CPU: the ragged layer's FLOPs (XLA's cost analysis) are near the
    routed work; the dense layer's are E/k times larger."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    flops = {}
    for impl in ("dense", "ragged"):
        r = subprocess.run(
            [sys.executable, "-c", _TPU_FLOPS.replace("{impl}", impl)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
        words = r.stdout.split()
        flops[impl] = float(words[words.index("FLOPS") + 1])
        assert (int(words[words.index("GMM") + 1]) > 0) == (impl == "ragged")
    tokens, d, f, k, e = 8 * 1024, 512, 1024, 2, 8
    routed = 3 * (2 * 3 * tokens * k * d * f)  # forward + backward of w1, w3, w2 over the routed rows
    router = 3 * 2 * tokens * d * e
    assert routed + router <= flops["ragged"] < 1.2 * (routed + router), flops
    assert flops["dense"] > 3 * flops["ragged"], flops
