"""grit-aot: Cloud TPU names, a real compile of the tiny config for a v5e slice, a config that does
not fit, usage errors, and quiet stderr on CPU (libtpu installed, JAX_PLATFORMS unset)."""

import json
import os
import subprocess
import sys

import pytest

from grit_jax import hardware
from grit_jax.errors import UsageError
from grit_jax.programs import grit_aot as aot
from tests.grit_fixtures import ROOT, needs_libtpu


def _run(*args, unset_platforms=True):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # no faked CPU devices: the run must behave as a user's would
    if unset_platforms:
        env.pop("JAX_PLATFORMS", None)
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "name, chips, topology",
    [
        ("v4-128", 64, "v4:4x4x4"),
        ("v5p-128", 64, "v5p:4x4x4"),
        ("v5p-256", 128, "v5p:4x4x8"),
        ("v5p-512", 256, "v5p:4x8x8"),
        ("v5p-8", 4, "v5p:2x2x1"),
        ("v4-16", 8, "v4:2x2x2"),
        ("v5e-64", 64, "v5e:8x8"),
        ("v5litepod-16", 16, "v5e:4x4"),
        ("v6e-64", 64, "v6e:8x8"),
        ("v6e-8", 8, "v6e:2x4"),
        ("v5e:2x4", 8, "v5e:2x4"),
    ],
)
def test_cloud_tpu_names(name, chips, topology):
    a = hardware.parse_accelerator(name)
    assert (a.chips, a.topology) == (chips, topology)


@pytest.mark.parametrize("name", ["v5p-7", "v5e-12", "v7-8", "tpu", "v5e:2x2x2", ""])
def test_bad_names(name):
    with pytest.raises(UsageError):
        hardware.parse_accelerator(name)


def test_hbm_per_chip():
    gib = 2**30
    assert [hardware.parse_accelerator(n).hbm_bytes // gib for n in ("v4-8", "v5p-8", "v5e-4", "v6e-4")] == [
        32,
        95,
        16,
        32,
    ]


def test_without_libtpu_says_how_to_install(monkeypatch):
    monkeypatch.setattr(aot.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UsageError, match=r"pip install -e \.\[aot\]"):
        aot.topology_devices(hardware.parse_accelerator("v5e-4"))


@needs_libtpu
@pytest.mark.slow
def test_tiny_compiles_for_v5e(tmp_path):
    out = tmp_path / "report.json"
    r = _run(
        "-m",
        "grit_jax.programs.grit_aot",
        "--config",
        "configs/tiny.py",
        "--topology",
        "v5e-4",
        f"--json={out}",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    # no libtpu / TPU-initialisation noise; only the tiny lengths' one-line fallback from splash to dense
    noise = [line for line in r.stderr.splitlines() if "dense attention instead" not in line]
    assert noise == [] and "splash cannot run length 32" in r.stderr
    assert r.stdout.startswith("fits: needs ")
    report = json.loads(out.read_text())
    assert report["chips"] == 4 and report["device_kind"] == "TPU v5 lite" and report["topology"] == "v5e:2x2"
    assert report["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1, "expert": 1}
    assert report["fits"] and report["hbm_bytes"] == 16 * 2**30

    import importlib.util

    import jax

    from grit_jax.model import abstract_model
    from grit_jax.train import flops
    from grit_jax.train.state import resolve_model_config

    spec = importlib.util.spec_from_file_location("tiny_config", os.path.join(ROOT, "configs", "tiny.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    cfg = resolve_model_config(config)
    num_params = sum(x.size for x in jax.tree.leaves(abstract_model(resolve_model_config(config))[1]))
    # data parallel: every chip holds all float32 parameters and Adam's two moments
    assert report["parameter_bytes"] == 4 * num_params
    assert 2 * 4 * num_params <= report["optimizer_bytes"] <= 2 * 4 * num_params + 64
    assert report["argument_bytes"] >= report["parameter_bytes"] + report["optimizer_bytes"]
    assert report["total_bytes"] >= report["argument_bytes"] + report["temp_bytes"]
    assert report["step_flops"] == pytest.approx(flops.train_step_flops(config, cfg))
    assert report["step_seconds"] == pytest.approx(report["step_flops"] / (4 * 197e12 * 0.5))
    assert report["top"] and report["top"][0][1] == max(b for _, b, _ in report["top"])


# a step whose token gathers libtpu 0.0.52 offloads to a v6e chip's SparseCores (64 sequences of 256)
SPARSECORE_GATHERS = [
    "--config.data.embedding_batch_size=64",
    "--config.data.generative_batch_size=64",
    "--config.data.query_max_len=256",
    "--config.data.passage_max_len=256",
    "--config.data.generative_max_len=256",
]


@needs_libtpu
@pytest.mark.slow
def test_v6e_step_gets_its_estimate_and_one_that_cannot_be_read_back_keeps_its_memory(tmp_path, monkeypatch):
    """On v5p and v6e libtpu offloads the embedding's gathers to the SparseCores as async ops whose
    compiled HLO it cannot read back; grit-aot keeps them on the TensorCores, so the step is costed. With
    the offload forced back on (a user's LIBTPU_INIT_ARGS wins), the report still gives the memory."""
    args = ["-m", "grit_jax.programs.grit_aot", "--config", "configs/tiny.py", "--topology", "v6e-8"]
    r = _run(*args, *SPARSECORE_GATHERS, f"--json={tmp_path / 'a.json'}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("fits: needs ") and "\nestimate " in r.stdout
    assert json.loads((tmp_path / "a.json").read_text())["estimate"]["compiled_flops"] > 0

    monkeypatch.setenv("LIBTPU_INIT_ARGS", "--xla_tpu_offload_gather_to_sparsecore=auto")
    r = _run(*args, *SPARSECORE_GATHERS, f"--json={tmp_path / 'b.json'}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("no estimate: the compiled program could not be read back: ")
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["fits"] and report["total_bytes"] > 0 and report["estimate"] == {}


@needs_libtpu
@pytest.mark.slow
def test_a_moe_step_on_v5p_gets_its_estimate(tmp_path, monkeypatch):
    """A MoE's scatters go to v5p's SparseCores too, and that program could not be read back either
    (GritLM-8x7B on v5p-256 had no estimate); grit-aot keeps them on the TensorCores."""
    monkeypatch.delenv("LIBTPU_INIT_ARGS", raising=False)
    moe = ["--config.model.preset=tiny_moe", "--config.mesh.data=1", "--config.mesh.fsdp=-1"]
    args = ["-m", "grit_jax.programs.grit_aot", "--config", "configs/tiny.py", "--topology", "v5p-8", *moe]
    r = _run(*args, "--config.mesh.expert=2", f"--json={tmp_path / 'moe.json'}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "\nestimate " in r.stdout and "no estimate" not in r.stdout
    assert json.loads((tmp_path / "moe.json").read_text())["estimate"]["compiled_flops"] > 0


@needs_libtpu
@pytest.mark.slow
def test_config_that_does_not_fit_says_so():
    # 4096 generative sequences of 2048 tokens on 4 chips: the float32 logits alone exceed 16 GiB a chip
    r = _run(
        "-m",
        "grit_jax.programs.grit_aot",
        "--config",
        "configs/tiny.py",
        "--topology",
        "v5e-4",
        "--top=3",
        "--config.objective.mode=generative",
        "--config.data.generative_batch_size=4096",
        "--config.data.generative_max_len=2048",
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr == ""
    first, *rest = r.stdout.splitlines()
    assert first.startswith("does not fit: needs ") and " GiB of 16.00 GiB per chip" in first
    needed = float(first.split("needs ")[1].split(" GiB")[0])
    assert needed > 16
    consumers = rest[rest.index("top consumers per chip:") + 1 :][:3]
    assert "temporaries" in consumers[0]


def test_usage_errors_are_one_line():
    r = _run("-m", "grit_jax.programs.grit_aot", "--config", "configs/tiny.py", "--topology", "v5p-7")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("grit-aot: error: --topology v5p-7")
    r = _run(
        "-m",
        "grit_jax.programs.grit_aot",
        "--config",
        "configs/tiny.py",
        "--topology",
        "v5e-4",
        "--config.data.embedding_batch_size=6",
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "embedding_batch_size=6" in r.stderr
    r = _run("-m", "grit_jax.programs.grit_aot", "--config", "configs/nope.py", "--topology", "v5e-4")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr


def test_quiet_platform_on_cpu():
    """With libtpu installed and JAX_PLATFORMS unset, a CPU command prints nothing to stderr."""
    code = (
        "from grit_jax import hardware; p = hardware.quiet_platform(); import jax; "
        "print(p, jax.devices()[0].platform, 'libtpu' in open('/proc/self/maps').read())"
    )
    r = _run("-c", code)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    # on this CPU machine libtpu is never even loaded (loading it is what prints the noise)
    assert r.stdout.split() == [hardware.default_platforms() or "None", "cpu", str(hardware.has_tpu())]


def test_quiet_platform_after_jax_import():
    code = (
        "import jax; from grit_jax import hardware; hardware.quiet_platform(); "
        "print(jax.devices()[0].platform, "
        "'libtpu' in open('/proc/self/maps').read())"
    )
    r = _run("-c", code)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.split() == ["cpu", str(hardware.has_tpu())]


def test_quiet_platform_keeps_the_users_choice(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert hardware.quiet_platform() == "cpu"


def test_train_cli_is_quiet_on_cpu(tmp_path):
    """grit-train stopping on a config error says one line, with no TPU-initialisation noise."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.json").write_text("{}")
    # the mesh is built (JAX starts its backends) before the config check fails
    r = _run(
        "-m",
        "grit_jax.programs.grit_train",
        "--config",
        "configs/tiny.py",
        f"--workdir={tmp_path / 'work'}",
        f"--config.data.data_dir={tmp_path / 'data'}",
        "--config.data.train_group_size=1",
        "--config.data.embedding_batch_size=1",
    )
    assert r.returncode == 2
    assert r.stderr.startswith("grit-train: error: data.train_group_size=1") and r.stderr.count("\n") == 1, (
        r.stderr
    )
