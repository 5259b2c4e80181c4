"""Facts about the hardware grit_jax runs on or compiles for, each written once.

- Which JAX platform a command runs on, decided before JAX starts its backends. With libtpu installed
  (the ``aot`` extra), JAX tries the TPU backend first; on a machine without a TPU that prints libtpu's
  initialisation warnings. ``quiet_platform()``, called at the top of every command before JAX is used,
  pins ``JAX_PLATFORMS`` to what the machine has when the user did not choose: the TPU when there is
  one, else a GPU whose JAX plugin is installed, else the CPU. ``quiet_libtpu(accelerator_type)`` gives
  libtpu the host description it looks for, so that ``grit-aot`` stays quiet on a CPU machine too.
- Cloud TPU generations (HBM per chip, how slice names count) and slice names -> libtpu topologies.
- Dense bf16 peak FLOP/s per device, for MFU; per TPU generation also the HBM bandwidth per chip, for
  grit-aot's roofline estimate of a step (grit_jax/train/step_cost.py).
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import math
import os
import pathlib
import re
import sys

from grit_jax.errors import UsageError

GiB = 2**30

# ----------------------------------------------------------------------------- this machine

_GOOGLE_PCI_VENDOR = "0x1ae0"
# PCI device ids of TPU chips (v3, v4, v5p, v5e, v6e, 7x), as jax._src.hardware_utils lists them.
_TPU_PCI_DEVICES = {"0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076"}
_NVIDIA_DEVICES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg")


def _read(path: str) -> str:
    try:
        return pathlib.Path(path).read_text().strip()
    except OSError:
        return ""


def has_tpu() -> bool:
    """True when a TPU chip is attached to this machine (PCI, /dev/accel*, /dev/vfio/N)."""
    for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
        if (
            _read(vendor) == _GOOGLE_PCI_VENDOR
            and _read(os.path.join(os.path.dirname(vendor), "device")) in _TPU_PCI_DEVICES
        ):
            return True
    return bool(glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*"))


def _installed(*modules: str) -> bool:
    return any(importlib.util.find_spec(m) is not None for m in modules)


def _has_cuda() -> bool:
    return any(os.path.exists(d) for d in _NVIDIA_DEVICES) and _installed(
        "jax_cuda12_plugin", "jax_cuda13_plugin"
    )


def _has_rocm() -> bool:
    return os.path.exists("/dev/kfd") and _installed(
        "jax_rocm7_plugin", "jax_rocm60_plugin", "jax_rocm_plugin"
    )


def default_platforms() -> str | None:
    """JAX_PLATFORMS for this machine: None (JAX chooses) with a TPU, else "cuda,cpu", "rocm,cpu" or "cpu"."""
    if has_tpu():
        return None
    if _has_cuda():
        return "cuda,cpu"
    if _has_rocm():
        return "rocm,cpu"
    return "cpu"


def quiet_platform(platforms: str | None = None) -> str | None:
    """Pin JAX_PLATFORMS to ``platforms`` (default: this machine's accelerator) unless the user set it;
    returns the value in force.

    Call it before JAX initialises a backend (importing jax is fine; ``jax.devices()`` is not).
    """
    if not os.environ.get("JAX_PLATFORMS"):
        platforms = platforms or default_platforms()
        if platforms:
            os.environ["JAX_PLATFORMS"] = platforms
            if "jax" in sys.modules:  # imported already: its config read the environment at import
                sys.modules["jax"].config.update("jax_platforms", platforms)
    return os.environ.get("JAX_PLATFORMS")


def quiet_libtpu(accelerator_type: str) -> None:
    """Describe a one-host TPU slice to libtpu (unless this is a TPU VM), so that creating a
    compile-only topology on a CPU machine does not print warnings about the missing metadata."""
    if has_tpu():
        return
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", accelerator_type)
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_WORKER_ID", "0")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    # several compiles at once (tests, a table script) must not fight over /tmp/libtpu_lockfile
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


# ----------------------------------------------------------------------------- Cloud TPU slices


@dataclasses.dataclass(frozen=True)
class Generation:
    prefix: str  # the platform prefix libtpu's topology names use
    cores_per_chip_in_name: int  # 2: the Cloud name counts TensorCores (v4, v5p)
    dims: int  # 3: 3-D torus (v4, v5p); 2: 2-D (v5e, v6e)
    hbm_bytes: int  # per chip (one JAX device: v4 and v5p megacore)
    cloud_type: str  # TPU_ACCELERATOR_TYPE spelling of a slice
    peak_flops: float  # dense bf16 FLOP/s per chip
    hbm_bandwidth: float  # HBM bytes/s per chip


# Peak bf16 FLOP/s and HBM bandwidth per chip: Google Cloud's TPU pages (docs.cloud.google.com/tpu/docs/
# v4, v5e, v5p, v6e, "key chip specifications"): v4 275 TFLOP/s, 1200 GBps; v5e 197 TFLOP/s, 819 GBps;
# v5p 459 TFLOP/s, 2765 GBps; v6e 918 TFLOP/s, 1640 GBps.
GENERATIONS = {
    "v4": Generation("v4", 2, 3, 32 * GiB, "v4-{n}", 275e12, 1200e9),
    "v5p": Generation("v5p", 2, 3, 95 * GiB, "v5p-{n}", 459e12, 2765e9),
    "v5e": Generation("v5e", 1, 2, 16 * GiB, "v5litepod-{n}", 197e12, 819e9),
    "v6e": Generation("v6e", 1, 2, 32 * GiB, "v6e-{n}", 918e12, 1640e9),
}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6lite": "v6e", "v5": "v5p"}


@dataclasses.dataclass(frozen=True)
class Accelerator:
    name: str  # as given, e.g. "v5p-128"
    generation: str  # key of GENERATIONS
    chips: int
    topology: str  # libtpu topology name, e.g. "v5p:4x4x4"

    @property
    def hbm_bytes(self) -> int:
        return GENERATIONS[self.generation].hbm_bytes

    @property
    def peak_flops(self) -> float:
        return GENERATIONS[self.generation].peak_flops

    @property
    def hbm_bandwidth(self) -> float:
        return GENERATIONS[self.generation].hbm_bandwidth

    @property
    def cloud_type(self) -> str:
        g = GENERATIONS[self.generation]
        return g.cloud_type.format(n=self.chips * g.cores_per_chip_in_name)


def torus_shape(chips: int, dims: int) -> tuple[int, ...]:
    """Cloud TPU's slice shape for ``chips`` (a power of two): 64 -> 8x8 (2-D) or 4x4x4 (3-D)."""
    if chips < 1 or chips & (chips - 1):
        raise UsageError(f"{chips} chips: Cloud TPU slices have a power-of-two number of chips")
    shape = [1] * dims
    while math.prod(shape) < chips:
        if dims == 3 and math.prod(shape) < 4:  # 3-D slices start as 2x2x1
            shape[shape.index(1)] = 2
            continue
        smallest = min(shape)  # then double the last of the smallest dimensions: 2x2x2, 2x2x4, 2x4x4, 4x4x4
        shape[max(i for i, s in enumerate(shape) if s == smallest)] *= 2
    return tuple(shape)


def parse_accelerator(name: str) -> Accelerator:
    """v4-N / v5p-N (TensorCores), v5e-N / v5litepod-N / v6e-N (chips), or a raw ``v5e:2x4`` topology."""
    raw = re.fullmatch(r"(v\w+?):(\d+(?:x\d+)+)", name or "")
    if raw:
        gen = _ALIASES.get(raw.group(1), raw.group(1))
        sizes = tuple(int(s) for s in raw.group(2).split("x"))
        if gen not in GENERATIONS or len(sizes) != GENERATIONS[gen].dims:
            raise UsageError(
                f"--topology {name}: expected e.g. v5e:2x4 or v5p:2x2x2 ({', '.join(GENERATIONS)})"
            )
        return Accelerator(name, gen, math.prod(sizes), f"{gen}:{raw.group(2)}")
    cloud = re.fullmatch(r"(v\w+?)-(\d+)", name or "")
    gen = _ALIASES.get(cloud.group(1), cloud.group(1)) if cloud else None
    if gen not in GENERATIONS:
        raise UsageError(
            f"--topology {name!r}: expected a Cloud TPU type such as v4-128, v5p-256, v5e-64 or v6e-64 "
            f"(v4/v5p count TensorCores, v5e/v6e count chips)"
        )
    g, count = GENERATIONS[gen], int(cloud.group(2))
    if count % g.cores_per_chip_in_name:
        raise UsageError(f"--topology {name}: {gen}-N counts TensorCores, two per chip; N must be even")
    chips = count // g.cores_per_chip_in_name
    shape = torus_shape(chips, g.dims)
    return Accelerator(name, gen, chips, f"{gen}:{'x'.join(map(str, shape))}")


# ----------------------------------------------------------------------------- peak FLOP/s

# Dense bf16 peak FLOP/s per JAX device (a chip: v4 and v5p megacores show as one device), vendor figures.
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
}


def device_peak_flops(device) -> float:
    """The peak of a known accelerator, or 0 (unknown: MFU is not reported; benchmarks measure it)."""
    kind = getattr(device, "device_kind", "")
    for name, peak in sorted(PEAK_FLOPS.items(), key=lambda item: -len(item[0])):
        if kind.startswith(name):
            return peak
    return 0.0
