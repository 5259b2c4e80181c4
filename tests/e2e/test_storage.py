"""grit_jax.storage against a real GCS emulator (tests/gcs_emulator.py): the path layer, a safetensors
directory read from the bucket by byte ranges, and an orbax checkpoint written to and read from it."""

import os

import ml_dtypes
import numpy as np
import pytest

from grit_jax import storage
from grit_jax.errors import UsageError
from tests import gcs_emulator
from tests.gcs_emulator import BUCKET
from tests.grit_fixtures import ROOT as ROOT_DIR  # the repository

ROOT = f"gs://{BUCKET}/test_storage"


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    server, env = gcs_emulator.start(str(tmp_path_factory.mktemp("gcs")))
    yield ROOT
    gcs_emulator.stop(server, env)


def test_paths_are_local_or_gs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert os.fspath(storage.as_path("run")) == os.path.join(str(tmp_path), "run")
    assert os.fspath(storage.as_path("gs://b/r")) == "gs://b/r"  # not <cwd>/gs:/b/r
    assert storage.join("gs://b/r", "checkpoints", "5") == "gs://b/r/checkpoints/5"
    for bad in ("s3://b/r", "gs://", "http://host/x"):
        with pytest.raises(UsageError, match="expected a local path or gs://"):
            storage.as_path(bad, "--workdir")
    assert storage.kvstore("gs://b/r/params") == {"driver": "gcs", "bucket": "b", "path": "r/params/"}
    assert storage.kvstore("p") == {"driver": "file", "path": os.path.join(str(tmp_path), "p")}


def test_files_and_trees_round_trip_through_the_bucket(bucket, tmp_path):
    path = storage.join(bucket, "a", "b.json")
    storage.write_text(path, '{"x": 1}')
    assert storage.isfile(path) and storage.isdir(storage.join(bucket, "a"))
    assert not storage.isfile(storage.join(bucket, "a", "missing"))
    assert storage.read_text(path) == '{"x": 1}'
    local = tmp_path / "tree"
    (local / "sub").mkdir(parents=True)
    (local / "top.txt").write_text("top")
    (local / "sub" / "inner.bin").write_bytes(bytes(range(256)))
    storage.upload_dir(str(local), storage.join(bucket, "tree"))
    copy = storage.local_copy(storage.join(bucket, "tree"), "data.data_dir")
    assert copy != str(local) and open(os.path.join(copy, "top.txt")).read() == "top"
    assert open(os.path.join(copy, "sub", "inner.bin"), "rb").read() == bytes(range(256))
    with pytest.raises(UsageError, match="no such directory"):
        storage.local_copy(storage.join(bucket, "nothing"), "data.data_dir")


def test_safetensors_dir_in_the_bucket_reads_like_the_local_one(bucket, tmp_path):
    """Sharded files with an index, written to the bucket by ShardWriter and read back by byte ranges
    (safetensors cannot map a URL): every tensor equals the local copy's, read by safetensors itself."""
    from grit_jax.weights.safetensors_io import SafetensorsDir, ShardWriter

    rng = np.random.default_rng(0)
    tensors = {
        "a.weight": rng.standard_normal((16, 8)).astype(np.float32),
        "b.weight": rng.standard_normal((4, 8, 8)).astype(ml_dtypes.bfloat16),
        "c.bias": rng.standard_normal(40).astype(np.float16),
    }
    plan = [(n, t.shape, str(t.dtype)) for n, t in tensors.items()]
    remote = storage.join(bucket, "hf")
    for out in (str(tmp_path), remote):
        writer = ShardWriter(out, 600, plan)  # three shards and an index
        for name, tensor in tensors.items():
            writer.add(name, tensor)
        writer.close()
    assert storage.isfile(storage.join(remote, "model.safetensors.index.json"))
    local, far = SafetensorsDir(str(tmp_path)), SafetensorsDir(remote)
    assert far.names() == local.names() == set(tensors)
    for name, tensor in tensors.items():
        got = far.get(name)
        assert got.dtype == tensor.dtype and got.shape == tensor.shape
        np.testing.assert_array_equal(got, local.get(name))


def test_hf_weights_and_converted_checkpoint_in_the_bucket(bucket, tmp_path):
    """A Hugging Face directory uploaded to the bucket reads the same parameters as the local one, and
    grit-convert hf-to-orbax from the bucket to the bucket gives a checkpoint (read by tensorstore's gcs
    driver) with those parameters."""
    from grit_jax.programs.grit_convert import run as convert
    from grit_jax.weights import hf, open_weights
    from grit_jax.weights.model_dir import load_pretrained
    from tests.grit_fixtures import make_hf_dir, make_tokenizer

    make_tokenizer(tmp_path / "tokenizer.model")
    _, hf_dir = make_hf_dir(tmp_path / "hf", str(tmp_path / "tokenizer.model"), hidden_size=32)
    remote_hf, out = storage.join(bucket, "model_hf"), storage.join(bucket, "converted")
    storage.upload_dir(hf_dir, remote_hf)
    cfg = hf.read_hf_config(remote_hf)
    assert cfg == hf.read_hf_config(hf_dir)
    want = open_weights(hf_dir, config=cfg).read()
    got = open_weights(remote_hf, config=cfg).read()
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    assert convert(["hf-to-orbax", "--hf_dir", remote_hf, "--out", out]) == 0
    assert storage.isfile(storage.join(out, "tokenizer.model"))
    restored = open_weights(out).read()
    for name in want:
        np.testing.assert_array_equal(restored[name], want[name])
    model, tokenizer, _ = load_pretrained(out)  # what GritLM.from_pretrained reads, tokenizer included
    np.testing.assert_array_equal(model.embed_tokens.embedding.get_value(), want["embed_tokens.embedding"])
    assert tokenizer.vocab_size == 400


def test_grit_data_prepares_into_the_bucket(bucket, tmp_path):
    """`grit-data prepare --out gs://...` prepares locally and uploads: a host's local copy of the bucket's
    directory reads back the examples (array_record opens local files only)."""
    import json

    from grit_jax.data import sources, tfds_io
    from grit_jax.data.tokenizer import train_tokenizer
    from grit_jax.programs.grit_data import run

    texts = ["Serialize obj to a JSON formatted string.", "Retrieve docs", "What does it do?"] * 20
    tok = train_tokenizer(texts, str(tmp_path / "t.model"), vocab_size=300)
    record = {"query": ["Retrieve docs", "json.dumps"], "pos": ["Serialize obj."], "neg": ["Parse a file."]}
    (tmp_path / "e.jsonl").write_text((json.dumps(record) + "\n") * 3)
    out = storage.join(bucket, "prepared")
    args = ["prepare", "--embedding", str(tmp_path / "e.jsonl"), "--tokenizer", tok.model_path, "--out", out]
    assert run(args + ["--query_max_len", "32"]) == 0
    assert not os.path.exists("gs:")
    local = storage.local_copy(out, "data.data_dir")
    entry = sources.read_manifest(local)["train"]["embedding"][0]
    assert entry["num_examples"] == 3 and len(tfds_io.open_source(os.path.join(local, entry["dir"]))) == 3


def test_compilation_cache_in_the_bucket(bucket, tmp_path):
    """A gs:// compile_cache_dir (JAX's own cache, through epath): a second process finds the first one's
    compiled program there."""
    import subprocess
    import sys

    cache = storage.join(bucket, "compile_cache")
    code = (
        "import jax, jax.numpy as jnp\n"
        "from grit_jax.train.compile_cache import CompileCache\n"
        f"cache = CompileCache({cache!r}, '.')\n"
        "jax.jit(lambda x: jnp.tanh(x @ x.T).sum())(jnp.ones((64, 64))).block_until_ready()\n"
        "print(cache.summary())\n"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    runs = [
        subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT_DIR, env=env, capture_output=True, text=True, timeout=120
        )
        for _ in range(2)
    ]
    assert all(r.returncode == 0 for r in runs), runs[-1].stderr[-2000:]
    first, second = (r.stdout.strip().splitlines()[-1] for r in runs)
    assert first.startswith(f"compilation cache {cache}: 0 hits") and "0 misses" not in first
    assert second.startswith(f"compilation cache {cache}: ") and " 0 hits" not in second
    assert any(p.name.startswith("jit_") for p in storage.as_path(cache).iterdir())
