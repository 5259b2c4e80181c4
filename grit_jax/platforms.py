"""Which JAX platform a command runs on, decided before JAX starts its backends.

With libtpu installed (the ``aot`` extra), JAX tries the TPU backend first; on a machine without a
TPU that prints libtpu's initialisation warnings to stderr. ``quiet_platform()``, called at the top
of every command before JAX is used, pins ``JAX_PLATFORMS`` to what the machine has when the user
did not choose: the TPU when there is one, else a GPU whose JAX plugin is installed, else the CPU.

``quiet_libtpu(accelerator_type)`` is for ``grit-aot``: it gives libtpu the host description it
looks for, so that building a compile-only TPU topology on a CPU machine stays quiet too.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pathlib
import sys

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
    """JAX_PLATFORMS for this machine: None (let JAX choose) with a TPU, else "cuda,cpu", "rocm,cpu" or "cpu"."""
    if has_tpu():
        return None
    if _has_cuda():
        return "cuda,cpu"
    if _has_rocm():
        return "rocm,cpu"
    return "cpu"


def quiet_platform() -> str | None:
    """Pin JAX_PLATFORMS to this machine's accelerator unless the user set it; returns the value in force.

    Call it before JAX initialises a backend (importing jax is fine; ``jax.devices()`` is not).
    """
    if not os.environ.get("JAX_PLATFORMS"):
        platforms = default_platforms()
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
