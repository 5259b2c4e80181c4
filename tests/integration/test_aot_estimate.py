"""grit-aot's compiled-cost estimate and its search of the step's memory/recompute choices, on real TPU
compiles (libtpu, compile-only devices) of the tiny config for a v5e-4 slice.

What XLA's cost analysis says on this JAX/libtpu: per device, each while-loop body counted once;
step_cost counts each body by its trips, with the splash kernels' FLOPs and those other Pallas kernels
declare (megablox gmm); remat recomputation shows.
"""

import dataclasses
import importlib.util
import json
import os

import pytest

from grit_jax import hardware
from grit_jax.train import step_cost, step_search
from grit_jax.train.state import resolve_model_config
from tests.grit_fixtures import ROOT, needs_libtpu

pytestmark = [needs_libtpu, pytest.mark.slow]


def _tiny(**overrides):
    spec = importlib.util.spec_from_file_location("tiny_config", os.path.join(ROOT, "configs", "tiny.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    # lengths of 128: splash attention runs (the TPU kernel whose FLOPs XLA does not count)
    config.data.update(query_max_len=128, passage_max_len=128, generative_max_len=128)
    for key, value in overrides.items():
        group, field = key.split(".")
        config[group][field] = value
    return config


@pytest.fixture(scope="module")
def v5e4():
    hardware.quiet_platform("cpu")
    from grit_jax.programs import grit_aot

    accelerator = hardware.parse_accelerator("v5e-4")
    grit_aot.topology_devices(accelerator)  # libtpu's compile-only devices, once
    return grit_aot, accelerator


def test_cost_analysis_is_per_device_and_counts_a_loop_once(v5e4):
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    grit_aot, accelerator = v5e4
    mesh = Mesh(grit_aot.topology_devices(accelerator), ("d",))
    w = jax.ShapeDtypeStruct((256, 256), jnp.float32, sharding=NamedSharding(mesh, PartitionSpec()))
    x = jax.ShapeDtypeStruct((1024, 256), jnp.float32, sharding=NamedSharding(mesh, PartitionSpec("d")))

    def compiled(trips):
        def f(w, x):
            return jax.lax.scan(lambda x, _: (x @ w, None), x, None, length=trips)[0].sum()

        return jax.jit(f).lower(w, x).compile()

    matmul = 2 * 1024 * 256 * 256 / 4  # one iteration's matmul on one of the 4 devices (rows sharded)
    once = {t: compiled(t).cost_analysis()["flops"] for t in (1, 8)}
    assert once[1] == pytest.approx(matmul, rel=0.05)  # per device, not the whole program
    assert once[8] == pytest.approx(once[1], rel=0.05)  # 8 iterations, the body counted once
    cost = step_cost.loop_cost(compiled(8))
    assert cost.loops == 1 and cost.unknown_trips == 0
    assert cost.flops == pytest.approx(8 * matmul, rel=0.05)
    assert cost.flops_once == once[8]


def test_a_windowed_einsum_loop_that_counts_by_two_is_counted_once_per_shard(v5e4):
    """Under FSDP XLA runs a large matmul as a loop over the weight's shards (a windowed einsum) whose
    counter goes up by 2 to its bound: its trips are half the bound, and the matmul is counted once."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    grit_aot, _ = v5e4
    mesh = Mesh(grit_aot.topology_devices(hardware.parse_accelerator("v5e-8")), ("f",))  # 4 chips: no loop
    rows = NamedSharding(mesh, PartitionSpec("f", None))
    m, k, n = 16384, 4096, 14336
    x, w = (jax.ShapeDtypeStruct(s, jnp.bfloat16, sharding=rows) for s in ((m, k), (k, n)))
    compiled = jax.jit(lambda x, w: jax.lax.with_sharding_constraint(x @ w, rows)).lower(x, w).compile()
    assert "windowed_dot_general_body" in compiled.as_text()
    cost = step_cost.loop_cost(compiled)
    assert cost.loops >= 1 and cost.unknown_trips == 0
    assert cost.flops == pytest.approx(2 * m * k * n / 8, rel=0.01)
    # libtpu keeps x, the weight shards in flight and the accumulator in on-chip memory for the loop: XLA
    # counted 1.51 GB per chip as HBM, where each chip's x, weight shard and result are 0.09 GB
    shards = 2 * (m * k + k * n + m * n) / 8
    assert shards <= cost.bytes_accessed < cost.bytes_once / 1.5


def test_hbm_bytes_leave_out_what_is_in_on_chip_memory():
    """A copy into memory space 1 reads HBM once; work on the copy there moves no HBM bytes; the result
    written to HBM and the HBM operand read by the last instruction count (3 x 256 KiB here)."""
    import jax

    from grit_jax import hlo_text

    text = """HloModule m

ENTRY %e (p: f32[256,256]) -> f32[256,256] {
  %p = f32[256,256]{1,0} parameter(0)
  %start = (f32[256,256]{1,0:S(1)}, f32[256,256]{1,0}, u32[]) copy-start(%p)
  %done = f32[256,256]{1,0:S(1)} copy-done(%start)
  %n = f32[256,256]{1,0:S(1)} negate(%done)
  ROOT %a = f32[256,256]{1,0} add(%n, %p)
}
"""
    computations, entry = hlo_text.split(text)
    client = jax.local_devices(backend="cpu")[0].client
    _, hbm, unread = step_cost._xla_cost(computations, entry, client)
    on_chip, _ = step_cost.hbm_bytes.on_chip_correction(computations, entry, client)
    assert hbm == 3 * 256 * 256 * 4 and unread == 0
    generic = hbm + on_chip
    assert generic > 3 * 256 * 256 * 4  # XLA's own count charges the on-chip reads and writes too


def test_a_pallas_kernel_in_a_loop_counts_what_it_declares_each_trip(v5e4):
    """megablox gmm (a MoE's experts) declares its FLOPs to XLA; the TPU's count of the program has them
    once, and each further trip of the loop around it must add them again (GritLM-8x7B read 0.25x)."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    from grit_jax.model import moe_dispatch

    grit_aot, accelerator = v5e4
    one_chip = NamedSharding(
        jax.sharding.Mesh(grit_aot.topology_devices(accelerator)[:1], ("d",)), PartitionSpec()
    )
    m, k, experts = 512, 256, 4
    x = jax.ShapeDtypeStruct((m, k), jnp.float32, sharding=one_chip)
    w = jax.ShapeDtypeStruct((experts, k, k), jnp.float32, sharding=one_chip)
    sizes = jax.ShapeDtypeStruct((experts,), jnp.int32, sharding=one_chip)

    def f(x, w, sizes):
        step = lambda x, _: (moe_dispatch.gmm(x, w, sizes), None)  # noqa: E731
        return jax.lax.scan(step, x, None, length=6)[0]

    compiled = jax.jit(f).lower(x, w, sizes).compile()
    cost = step_cost.loop_cost(compiled)
    assert cost.loops == 1 and cost.unknown_trips == 0
    assert cost.flops == pytest.approx(6 * 2 * m * k * k, rel=0.01)


def test_estimate_follows_from_the_cost_and_the_chip_and_sees_remat(v5e4):
    grit_aot, accelerator = v5e4
    reports = {
        p: grit_aot.compile_report(_tiny(**{"model.remat_policy": p}), accelerator) for p in ("none", "full")
    }
    for r in reports.values():
        e = r.estimate
        assert r.fits and e["peak_flops"] == 197e12 and e["hbm_bandwidth"] == 819e9  # v5e, vendor figures
        assert e["compute_seconds"] == pytest.approx(e["compiled_flops"] / 197e12)
        assert e["memory_seconds"] == pytest.approx(e["bytes_accessed"] / 819e9)
        assert e["step_seconds"] == max(e["compute_seconds"], e["memory_seconds"])
        assert e["mfu"] == pytest.approx(e["model_flops"] / (4 * 197e12 * e["step_seconds"]))
        assert e["flops_ratio"] == pytest.approx(4 * e["compiled_flops"] / e["model_flops"])
        assert e["unknown_trips"] == 0 and e["loops"] >= 2  # the scanned layers, forward and backward
        # the model FLOPs: the compiled batch (8 queries, 16 passages, 8 chats of 128) all real, no GradCache
        assert r.estimate_tokens == 32 * 128
        cfg = resolve_model_config(_tiny())
        counts = {
            "query": (1024, 1024 * 128),
            "passage": (2048, 2048 * 128),
            "generative": (1024, 1024 * 64.5),
        }
        assert e["model_flops"] == pytest.approx(step_cost.needed_flops(cfg, counts, gradcache=set()))
    none, full = (reports[p].estimate for p in ("none", "full"))
    # full remat recomputes each layer's forward in the backward: about a third more FLOPs (the tiny
    # model's elementwise work and logits dilute it), and XLA's count shows it
    assert 1.15 < full["compiled_flops"] / none["compiled_flops"] < 1.45
    assert 0.9 < none["flops_ratio"] < 1.35  # splash's FLOPs counted: without them it would be ~0.77


def test_search_keeps_only_candidates_that_compile_and_fit(v5e4, tmp_path):
    """A real search (each candidate a compile) against an HBM budget just above what the config's own
    setting needs: every candidate that needs more does not fit, and is never chosen."""
    grit_aot, accelerator = v5e4
    start = {
        "model.remat_policy": "full",
        "objective.embedding_chunk_size": 16,
        "objective.generative_accumulation_steps": 2,
        "objective.gen_loss_block": 0,
    }
    config = _tiny(**start, **{"data.embedding_batch_size": 32, "data.generative_batch_size": 32})
    hbm = {}

    def evaluate(candidate_config, setting):
        r = grit_aot.compile_report(candidate_config, accelerator, hbm_bytes=hbm.get("bytes", 0))
        hbm.setdefault(
            "bytes", int(r.total_bytes / (1 - step_search.SPARE) * 1.005)
        )  # the start fits, barely
        return dataclasses.replace(step_search.Candidate.from_report(setting, r), hbm_bytes=hbm["bytes"])

    path = tmp_path / "search.json"
    candidates = step_search.search(config, evaluate, data_parallel=4, budget=4, json_path=str(path))
    assert len(candidates) == 4 and len(json.loads(path.read_text())) == 4
    assert candidates[0].setting == start and candidates[0].fits
    # round 1 tries the first value of each choice on top of the best so far
    assert candidates[1].setting == {**start, "model.remat_policy": "matmuls"}
    for c in candidates:
        assert c.compiled and c.estimate
        assert c.fits == (c.total_bytes <= (1 - step_search.SPARE) * hbm["bytes"])
    assert any(not c.fits for c in candidates)
    chosen = step_search.best(candidates)
    fastest = min(c.seconds_per_token for c in candidates if c.fits)
    assert chosen.fits and chosen.seconds_per_token <= fastest * (1 + step_search.TIE)
    text = step_search.table(config, candidates)
    assert "**chosen**" in text and text.endswith(
        f"chosen: {step_search.overrides(config, chosen) or 'the config as it is'}"
    )
