"""Join the multi-host JAX runtime when the program runs as one of several hosts.

Call `initialize_from_env()` first thing in a program, before any other use of jax (it must run
before the backends are created). Three cases:

- `launch/local.sh` sets GRIT_NUM_PROCESSES > 1, GRIT_PROCESS_ID and GRIT_COORDINATOR=host:port:
  N processes on one machine act as N hosts, with gloo collectives between their CPU devices.
- On a Cloud TPU VM pod slice (`launch/tpu.sh run` sets GRIT_DISTRIBUTED=1; TPU_WORKER_HOSTNAMES
  listing several workers also counts): `jax.distributed.initialize()` finds coordinator, process
  count and id from the TPU metadata by itself.
- Otherwise (one host, GRIT_DISTRIBUTED=0): nothing.
"""

from __future__ import annotations

import logging
import os

import jax

from grit_jax.errors import UsageError

logger = logging.getLogger(__name__)

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _local_cluster_from_env() -> tuple[str, int, int] | None:
    """(coordinator, num_processes, process_id) set by launch/local.sh, or None for one process."""
    num_processes = int(os.environ.get("GRIT_NUM_PROCESSES", "1") or "1")
    if num_processes <= 1:
        return None
    missing = [k for k in ("GRIT_PROCESS_ID", "GRIT_COORDINATOR") if not os.environ.get(k)]
    if missing:
        raise UsageError(f"GRIT_NUM_PROCESSES={num_processes} needs {' and '.join(missing)} set too")
    process_id = int(os.environ["GRIT_PROCESS_ID"])
    if not 0 <= process_id < num_processes:
        raise UsageError(f"GRIT_PROCESS_ID={process_id} is not in [0, {num_processes})")
    return os.environ["GRIT_COORDINATOR"], num_processes, process_id


def _on_tpu_pod() -> bool:
    """True on a multi-host Cloud TPU slice (or when the launch script says so)."""
    flag = os.environ.get("GRIT_DISTRIBUTED", "").strip().lower()
    if flag in _TRUE:
        return True
    if flag in _FALSE:
        return False
    if flag:
        raise UsageError(f"GRIT_DISTRIBUTED={flag!r}: expected 1 or 0")
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return len([h for h in hosts.split(",") if h.strip()]) > 1


def initialize_from_env() -> None:
    """Initialise jax.distributed from the environment, if this process is one of several hosts."""
    if jax.distributed.is_initialized():
        return
    local = _local_cluster_from_env()
    if local is not None:
        coordinator, num_processes, process_id = local
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
        )
    elif _on_tpu_pod():
        jax.distributed.initialize()
    else:
        return
    logger.info(
        "jax.distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def is_main_process() -> bool:
    """True on the process that writes logs, metrics and summaries (process 0)."""
    return jax.process_index() == 0
