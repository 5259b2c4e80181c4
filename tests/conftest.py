"""Test setup: eight faked CPU devices, set before jax is imported anywhere; the fixtures every tier shares
(session-scoped: each is built once per run)."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402 (after the device flags)

from tests.grit_fixtures import make_tokenizer  # noqa: E402
from tests.train_runs import ok, run_train  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer_model(tmp_path_factory):
    """The tests' sentencepiece tokenizer (tests/grit_fixtures.py), as a file path."""
    path = str(tmp_path_factory.mktemp("tokenizer") / "tokenizer.model")
    make_tokenizer(path)
    return path


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    from grit_jax.data.demo import prepare_demo_data

    return prepare_demo_data(str(tmp_path_factory.mktemp("demo_data")), vocab_size=512)["data_dir"]


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory):
    """The corpus as configs/demo.py prepares it (vocabulary 1024); ~2 s to build."""
    from grit_jax.data.demo import prepare_demo_data

    return prepare_demo_data(str(tmp_path_factory.mktemp("demo_data_1024")))["data_dir"]


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(scope="session")
def reference(tmp_path_factory, data_dir, compile_cache):
    """An uninterrupted 8-device run: its work directory."""
    workdir = str(tmp_path_factory.mktemp("reference"))
    ok(run_train(workdir, data_dir, compile_cache))
    return workdir
