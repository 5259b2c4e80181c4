"""Multislice on libtpu's compile-only devices (2 slices of a small v5e topology): the hybrid mesh puts only
the data axis across slices, the DCN bytes of known collectives are counted exactly, and `grit-aot --slices 2`
reports a generative step's gradient all-reduce over DCN at the size of the parameters."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from grit_jax import dcn_traffic, hardware, sharding
from grit_jax.errors import UsageError
from grit_jax.programs import grit_aot as aot
from tests.grit_fixtures import ROOT, needs_libtpu

pytestmark = needs_libtpu


@pytest.fixture(scope="module")
def two_slices():
    """The 8 compile-only devices of 2 x v5e-4 (each carries its slice_index)."""
    return aot.topology_devices(hardware.parse_accelerator("v5e-4"), slices=2)


@pytest.mark.parametrize(
    "axes", [dict(data=2, fsdp=4), dict(data=-1), dict(data=4, fsdp=2), dict(data=2, fsdp=2, tensor=2)]
)
def test_only_the_data_axis_spans_slices(two_slices, axes):
    mesh = sharding.make_mesh(dict(axes, slices=2), devices=two_slices)
    ids = np.vectorize(lambda d: d.slice_index)(mesh.devices)
    half = mesh.shape["data"] // 2
    assert (ids[:half] == 0).all() and (ids[half:] == 1).all(), ids  # fsdp, tensor, expert: one slice each
    assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in two_slices)


def test_the_mesh_must_match_the_slices_of_the_devices(two_slices):
    with pytest.raises(UsageError, match=r"^mesh.slices=1, but the devices are in 2 slice\(s\)"):
        sharding.make_mesh(dict(data=-1), devices=two_slices)
    with pytest.raises(UsageError, match=r"^mesh.slices=4, but the devices are in 2 slice\(s\)"):
        sharding.make_mesh(dict(data=-1, slices=4), devices=two_slices)


@pytest.mark.parametrize("axes, reduced, gathered", [(dict(data=2, fsdp=4), 1, 4), (dict(data=-1), 1 / 4, 1)])
def test_dcn_bytes_of_a_reduction_and_a_gather(two_slices, axes, reduced, gathered):
    """x [8, 1024, 256] float32 split over data. Summed over rows: each chip's partial sum (1 MiB) is
    all-reduced with the other slice; with 4 data positions a slice, XLA reduce-scatters inside the slice
    first and each chip sends a quarter. Gathered: each chip sends its rows (4 MiB, or 1 MiB) to the other
    slice."""
    mesh = sharding.make_mesh(dict(axes, slices=2), devices=two_slices)
    x = jax.ShapeDtypeStruct((8, 1024, 256), jnp.float32, sharding=NamedSharding(mesh, P("data")))
    replicated = NamedSharding(mesh, P())
    mib = 2**20
    summed = jax.jit(lambda a: a.sum(0), out_shardings=replicated).lower(x).compile()
    traffic = dcn_traffic.dcn_traffic(summed.as_text(), slices=2)
    assert traffic.by_kind == {"ALL_REDUCE": reduced * mib}  # 2 (k-1)/k = 1 times the buffer, k = 2
    gather = jax.jit(lambda a: a, out_shardings=replicated).lower(x).compile()
    assert dcn_traffic.dcn_traffic(gather.as_text(), slices=2).by_kind == {"ALL_GATHER": gathered * mib}
    assert traffic.seconds(25) == pytest.approx(reduced * mib * 8 / 25e9)


def _grit_aot(*args):
    """grit-aot as a user runs it: no faked CPU devices, the platform unset."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    return subprocess.run(
        [sys.executable, "-m", "grit_jax.programs.grit_aot", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_grit_aot_slices_reports_the_gradient_all_reduce(tmp_path):
    """A generative-only step on 2 x v5e:1x1 (pure data parallelism across two one-chip slices): the only
    DCN traffic is the all-reduce of the float32 gradient, as many bytes as the parameters (tile padding
    aside: the demo model's widths are multiples of 128)."""
    out = tmp_path / "report.json"
    args = ["--config=configs/tiny.py", "--topology=v5e:1x1", "--slices=2", f"--json={out}"]
    args += ["--config.model.preset=demo", "--config.objective.mode=generative"]
    r = _grit_aot(*args)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(out.read_text())
    assert report["slices"] == 2 and report["chips"] == 2 and report["mesh"]["data"] == 2
    dcn = report["dcn"]
    assert set(dcn["by_kind"]) == {"ALL_REDUCE"}
    assert dcn["bytes_per_chip"] == pytest.approx(report["parameter_bytes"], rel=0.01)
    assert dcn["gbps_per_chip"] == 25 and dcn["seconds"] == pytest.approx(dcn["bytes_per_chip"] * 8 / 25e9)
    assert "slice      2 x v5e:1x1 = 2 chips" in r.stdout
    assert "DCN        2.13 MiB sent per chip per step across 2 slices (all-reduce 2.13 MiB)" in r.stdout


def test_bad_slices_is_one_line_before_libtpu():
    args = ["--config=configs/tiny.py", "--topology=v5e-4", "--slices=0"]
    r = _grit_aot(*args)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == "grit-aot: error: mesh.slices=0: expected an integer >= 1\n"
