"""grit-convert never mixes exports (grit_jax.programs.grit_convert.check_out): a non-empty --out is
refused unless --overwrite, which removes the earlier export's weight files and index first; a training
work dir is never written into."""

import glob
import json
import os
import shutil

import numpy as np
import pytest
import safetensors.numpy

from grit_jax.programs.grit_convert import run as convert
from tests.grit_fixtures import make_hf_dir, make_tokenizer


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two orbax checkpoints (hf-to-orbax) of one model, the second's weights a little changed."""
    root = tmp_path_factory.mktemp("convert")
    make_tokenizer(root / "tokenizer.model")
    _, first = make_hf_dir(root / "hf_a", root / "tokenizer.model")
    second = str(root / "hf_b")
    shutil.copytree(first, second)
    for file in glob.glob(os.path.join(second, "*.safetensors")):
        tensors = safetensors.numpy.load_file(file)
        safetensors.numpy.save_file({k: v + 1e-3 for k, v in tensors.items()}, file, {"format": "pt"})
    out = []
    for name, hf_dir in (("a", first), ("b", second)):
        assert convert(["hf-to-orbax", "--hf_dir", hf_dir, "--out", str(root / name)]) == 0
        out.append(str(root / name))
    return out, second


def _tensors(directory):
    found = {}
    for file in glob.glob(os.path.join(directory, "*.safetensors")):
        found.update(safetensors.numpy.load_file(file))
    return found


def test_a_second_export_into_the_same_out_needs_overwrite_and_replaces_the_first(
    tmp_path, checkpoints, capsys
):
    (first, second), second_hf = checkpoints
    out = str(tmp_path / "export")
    assert convert(["orbax-to-hf", "--ckpt", first, "--out", out, "--max_shard_size", "100KB"]) == 0
    assert os.path.isfile(os.path.join(out, "model.safetensors.index.json"))  # sharded
    capsys.readouterr()
    assert convert(["orbax-to-hf", "--ckpt", second, "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "is not empty" in err and "--overwrite" in err
    assert convert(["orbax-to-hf", "--ckpt", second, "--out", out, "--overwrite"]) == 0
    assert sorted(os.path.basename(f) for f in glob.glob(os.path.join(out, "*.safetensors*"))) == [
        "model.safetensors"
    ]  # one file, no index or shard of the first export left for a loader to pick up
    got, want = _tensors(out), _tensors(second_hf)
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def test_a_training_work_dir_is_never_an_export_target(tmp_path, checkpoints, capsys):
    (first, _), _ = checkpoints
    workdir = tmp_path / "run"
    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps({"model": {"preset": "tiny"}}))
    for extra in ([], ["--overwrite"]):
        assert convert(["orbax-to-hf", "--ckpt", first, "--out", str(workdir), *extra]) == 2
        assert "is a training work dir" in capsys.readouterr().err
    assert json.loads((workdir / "config.json").read_text()) == {"model": {"preset": "tiny"}}
    assert sorted(os.listdir(workdir)) == ["checkpoints", "config.json"]
