"""grit-embed: the shards equal each document embedded alone, a killed run resumes without losing or
repeating a document, bad records are file:line errors or (with --skip_bad) counted."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from grit_jax import GritLM
from grit_jax.programs.grit_embed import run
from grit_jax.retrieval.embedding_store import MANIFEST, load_embeddings
from tests.grit_fixtures import ROOT, make_hf_dir, make_tokenizer, tokenizer_texts

DOC_INSTRUCTION = "<|embed|>\n"


def _docs(n):
    texts = [t[: 40 + (i * 37) % 400] for i, t in enumerate(tokenizer_texts()) if t.strip()]
    return [{"_id": f"d{i}", "title": f"T{i}", "text": texts[i % len(texts)]} for i in range(n)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed")
    make_tokenizer(root / "tokenizer.model")
    _, path = make_hf_dir(root / "hf", root / "tokenizer.model")
    return root, path, GritLM.from_pretrained(path, mode="embedding")


def _write(path, docs):
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return str(path)


def test_shards_equal_encode(setup, capsys):
    root, path, model = setup
    docs = _docs(23)
    corpus = _write(root / "small.jsonl", docs)
    out = str(root / "small_out")
    args = ["--model", path, "--input", corpus, "--out", out, "--window", "7", "--batch_size", "3"]
    assert run(args + ["--field", "title+text"]) == 0
    ids, vectors = load_embeddings(out)
    assert ids == [d["_id"] for d in docs] and vectors.dtype == np.float32
    # packed several to a row, each document's vector is the one it gets embedded alone
    skip = model.instruction_length(DOC_INSTRUCTION, max_length=512)
    rows = [model.tokenize(f"{DOC_INSTRUCTION}{d['title']} {d['text']}", True, 512) for d in docs]
    want = np.concatenate([model.embed_rows([row], skip)[0] for row in rows])
    np.testing.assert_allclose(vectors, want, atol=1e-6)
    manifest = json.load(open(os.path.join(out, MANIFEST)))
    assert manifest["complete"] and manifest["count"] == 23 and len(manifest["parts"]) == 4
    assert sorted(os.listdir(out)) == sorted(
        [MANIFEST, "embed.lock"] + [f"part-{i:05d}.{e}" for i in range(4) for e in ("npy", "ids")]
    )
    # Run again: nothing to do, nothing changes; other settings in the same dir are refused.
    assert run(args + ["--field", "title+text"]) == 0
    assert load_embeddings(out)[0] == ids
    assert run(args) == 2  # --field text differs
    assert "field" in capsys.readouterr().err
    # The model sharded over this host's 8 (faked) devices: the same embeddings.
    sharded = str(root / "small_out_mesh")
    args[args.index(out)] = sharded
    assert run(args + ["--field", "title+text", "--mesh", "data=2,fsdp=2,tensor=2"]) == 0
    assert load_embeddings(sharded)[0] == ids
    np.testing.assert_allclose(load_embeddings(sharded)[1], want, atol=1e-5)
    assert run(args + ["--mesh", "pipeline=2"]) == 2
    assert "--mesh 'pipeline=2'" in capsys.readouterr().err


def test_bad_records(setup, capsys):
    root, path, _ = setup
    good = _docs(5)
    lines = [json.dumps(good[0]), "{not json", json.dumps({"id": "x"}), json.dumps({"id": "y", "text": "  "})]
    lines += [json.dumps(d) for d in good[1:]]
    corpus = root / "bad.jsonl"
    corpus.write_text("\n".join(lines) + "\n")
    out = str(root / "bad_out")
    base = ["--model", path, "--input", str(corpus), "--out", out]
    assert run(base) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{corpus}:2:" in err[0] and "--skip_bad" in err[0]
    assert run(base + ["--skip_bad"]) == 0
    ids, vectors = load_embeddings(out)
    assert ids == [d["_id"] for d in good] and vectors.shape[0] == 5
    manifest = json.load(open(os.path.join(out, MANIFEST)))
    assert manifest["skipped"] == 3
    assert [e.split(": ")[0] for e in manifest["skipped_examples"]] == [f"{corpus}:{i}" for i in (2, 3, 4)]


@pytest.mark.slow
def test_kill_and_resume(setup):
    root, path, model = setup
    docs = [{"id": f"k{i}", "text": d["text"]} for i, d in enumerate(_docs(300))]
    corpus = _write(root / "kill.jsonl", docs)
    out = root / "kill_out"
    cmd = [
        sys.executable,
        "-m",
        "grit_jax.programs.grit_embed",
        "--model",
        path,
        "--input",
        corpus,
        "--out",
        str(out),
    ]
    cmd += ["--window", "3", "--batch_size", "2"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    parts = 0
    while time.time() < deadline and proc.poll() is None:
        if (out / MANIFEST).exists():
            parts = len(json.loads((out / MANIFEST).read_text())["parts"])
            if parts >= 3:
                break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    manifest = json.loads((out / MANIFEST).read_text())
    assert not manifest["complete"] and 3 <= len(manifest["parts"]) < 100, manifest["parts"][-1:]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "docs/s" in result.stderr and "ETA" in result.stderr
    ids, vectors = load_embeddings(str(out))
    assert ids == [d["id"] for d in docs]  # every id exactly once, in input order
    want = model.encode([d["text"] for d in docs], instruction=DOC_INSTRUCTION, batch_size=64)
    np.testing.assert_allclose(vectors, want, atol=1e-5)


@pytest.mark.slow
def test_two_hosts_each_embed_their_share(setup, tmp_path):
    root, path, model = setup
    docs = _docs(50)
    corpus = _write(tmp_path / "hosts.jsonl", docs)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIT_")}
    env.update(PYTHON=sys.executable, DEVICES_PER_HOST="2", GRIT_LOCAL_MODULE="grit_jax.programs.grit_embed")
    env["LOG_DIR"] = str(tmp_path / "logs")  # not ./logs in the repository
    args = ["--model", path, "--input", corpus, "--out", str(out), "--window", "8", "--batch_size", "4"]
    args += ["--mesh", "data=2"]  # each host's model sharded over its own two devices, read into them
    result = subprocess.run(
        ["bash", "launch/local.sh", "2", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "[0] grit-embed: [0]" in result.stdout and "[1] grit-embed: [1]" in result.stdout
    hosts = [json.loads((out / f"manifest.host{p}.json").read_text()) for p in (0, 1)]
    assert [[p["name"] for p in h["parts"]] for h in hosts] == [
        [f"part-{i:05d}" for i in range(p, 7, 2)] for p in (0, 1)
    ]
    ids, vectors = load_embeddings(str(out))
    assert ids == [d["_id"] for d in docs]
    np.testing.assert_allclose(vectors, model.encode([d["text"] for d in docs], DOC_INSTRUCTION), atol=1e-5)
