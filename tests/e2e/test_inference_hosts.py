"""GritLM on a mesh over two hosts (launch/local.sh 2: two processes of 4 faked CPU devices): each host
reads only its shards of the weights, encode batches are split over the 8 devices of both hosts, and
every host gets the embeddings (within 1e-5) and greedy tokens of a one-process, one-device run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from grit_jax import GritLM
from tests import gritlm_hosts as hosts
from tests.grit_fixtures import ROOT, make_hf_dir, make_tokenizer

REPO = Path(ROOT)


@pytest.mark.slow
def test_two_hosts_load_encode_and_generate_like_one(tmp_path):
    make_tokenizer(tmp_path / "tokenizer.model")
    _, path = make_hf_dir(tmp_path / "hf", tmp_path / "tokenizer.model")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIT_")}
    env.update(
        PYTHON=sys.executable,
        DEVICES_PER_HOST="4",
        GRIT_LOCAL_MODULE="tests.gritlm_hosts",
        LOG_DIR=str(tmp_path / "logs"),
        KILL_AFTER="5",
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    result = subprocess.run(
        ["bash", "launch/local.sh", "2", path, str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]

    single = GritLM.from_pretrained(path)
    want_embeddings = single.encode(hosts.TEXTS, instruction=hosts.INSTRUCTION, batch_size=6)
    want_tokens = single.generate(hosts.PROMPTS, max_new_tokens=10, eos_token_id=-1)
    rag = dict(mode="query-doc", max_new_tokens=6, eos_token_id=-1)
    want_rag = single.rag_generate(hosts.QUERY, hosts.DOC, **rag)
    for p in (0, 1):
        got = json.loads((tmp_path / f"host{p}.json").read_text())
        assert (got["process"], got["processes"], got["devices"]) == (p, 2, 8)
        assert got["weight_devices"] == [8] and got["split"] > 0 and got["whole_on_host"] == []
        assert got["batch_devices"] == 8 and got["batch_on_this_host"] == 4  # 8 rows, half on each host
        np.testing.assert_allclose(np.array(got["embeddings"]), want_embeddings, atol=1e-5)
        assert got["tokens"] == want_tokens
        assert got["rag"] == want_rag
