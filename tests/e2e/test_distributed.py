"""Several hosts on one machine: N processes joined by jax.distributed (gloo), global arrays across them."""

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import pytest

from grit_jax import distributed
from grit_jax.errors import UsageError
from tests.grit_fixtures import ROOT, xla_flags

REPO = Path(ROOT)

# Each process feeds its own rows (global rows p*4 .. p*4+3 hold the value of their row index) into an
# array sharded over the 8 devices of both processes, and reduces it with jit.
WORKER = textwrap.dedent(
    """
    from grit_jax.distributed import initialize_from_env, is_main_process
    initialize_from_env()
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P

    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    sharding = NamedSharding(mesh, P("data"))
    n, p = jax.local_device_count(), jax.process_index()
    rows = np.repeat(np.arange(p * n, (p + 1) * n, dtype=np.float32)[:, None], 3, axis=1)
    x = jax.make_array_from_process_local_data(sharding, rows, (jax.device_count(), 3))
    total = jax.jit(jnp.sum)(x)
    weighted = jax.jit(lambda a: jnp.sum(a[:, 0] * jnp.arange(a.shape[0])))(x)
    print("RESULT", p, jax.process_count(), jax.device_count(), n, float(total), float(weighted),
          is_main_process(), flush=True)
    """
)
EXPECTED_TOTAL = 3.0 * sum(range(8))  # 84
EXPECTED_WEIGHTED = float(sum(i * i for i in range(8)))  # 140: rows landed in global order


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _clean_env(**extra) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GRIT_", "TPU_", "JAX_COORDINATOR")) and k != "XLA_FLAGS"
    }
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def _check_results(outputs: list[str]) -> None:
    results = {}
    for out in outputs:
        lines = [line for line in out.splitlines() if "RESULT" in line]
        assert len(lines) == 1, out
        fields = lines[0].split("RESULT", 1)[1].split()
        results[int(fields[0])] = fields[1:]
    assert sorted(results) == [0, 1]
    for p, (count, devices, local, total, weighted, main) in results.items():
        assert (int(count), int(devices), int(local)) == (2, 8, 4)
        assert float(total) == EXPECTED_TOTAL and float(weighted) == EXPECTED_WEIGHTED
        assert main == str(p == 0)


@pytest.mark.slow
def test_two_processes_make_one_cluster(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(script)],
            env=_clean_env(
                GRIT_NUM_PROCESSES="2",
                GRIT_PROCESS_ID=str(i),
                GRIT_COORDINATOR=f"localhost:{port}",
                JAX_PLATFORMS="cpu",
                XLA_FLAGS=xla_flags(4),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    try:
        outputs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], outputs
    _check_results(outputs)


@pytest.mark.slow
def test_local_launcher_runs_the_cluster(tmp_path):
    (tmp_path / "worker_module.py").write_text(WORKER)
    log_dir = tmp_path / "logs"
    env = _clean_env(
        PYTHON=sys.executable,
        GRIT_LOCAL_MODULE="worker_module",
        LOG_DIR=str(log_dir),
        XLA_FLAGS=xla_flags(8),
    )  # local.sh's 4 must win
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{env['PYTHONPATH']}"
    proc = subprocess.run(
        [str(REPO / "launch/local.sh"), "2"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[0] RESULT 0" in proc.stdout and "[1] RESULT 1" in proc.stdout
    _check_results([(log_dir / f"process_{i}.log").read_text() for i in range(2)])


# ---- initialize_from_env: which case is chosen (jax.distributed.initialize recorded, not run) -------


@pytest.fixture
def calls(monkeypatch):
    recorded = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: recorded.append((a, k)))
    for key in (
        "GRIT_NUM_PROCESSES",
        "GRIT_PROCESS_ID",
        "GRIT_COORDINATOR",
        "GRIT_DISTRIBUTED",
        "TPU_WORKER_HOSTNAMES",
    ):
        monkeypatch.delenv(key, raising=False)
    return recorded


def test_single_host_does_nothing(calls, monkeypatch):
    distributed.initialize_from_env()
    monkeypatch.setenv("GRIT_NUM_PROCESSES", "1")
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "localhost")  # a one-host TPU VM
    distributed.initialize_from_env()
    monkeypatch.setenv("GRIT_DISTRIBUTED", "0")
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "10.0.0.1,10.0.0.2")
    distributed.initialize_from_env()
    assert calls == []
    assert distributed.is_main_process()


def test_tpu_pod_initializes_without_arguments(calls, monkeypatch):
    monkeypatch.setenv("GRIT_DISTRIBUTED", "1")
    distributed.initialize_from_env()
    monkeypatch.delenv("GRIT_DISTRIBUTED")
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "10.0.0.1,10.0.0.2")
    distributed.initialize_from_env()
    assert calls == [((), {}), ((), {})]


def test_local_cluster_arguments_and_errors(calls, monkeypatch):
    monkeypatch.setenv("GRIT_NUM_PROCESSES", "3")
    with pytest.raises(UsageError, match="GRIT_PROCESS_ID and GRIT_COORDINATOR"):
        distributed.initialize_from_env()
    monkeypatch.setenv("GRIT_PROCESS_ID", "3")
    monkeypatch.setenv("GRIT_COORDINATOR", "localhost:1234")
    with pytest.raises(UsageError, match="not in"):
        distributed.initialize_from_env()
    monkeypatch.setenv("GRIT_PROCESS_ID", "2")
    distributed.initialize_from_env()
    assert calls == [((), dict(coordinator_address="localhost:1234", num_processes=3, process_id=2))]
    assert jax.config.jax_cpu_collectives_implementation == "gloo"
