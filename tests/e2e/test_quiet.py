"""A normal load says nothing alarming: no orbax "Metadata file does not exist" warning, and, on a machine
without a TPU, no libtpu errors from the Python API (JAX_PLATFORMS unset, as a user's shell has it)."""

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import sys
    from grit_jax.inference.gritlm import GritLM
    from grit_jax.programs import grit_convert
    from tests.grit_fixtures import make_hf_dir, make_tokenizer

    out = sys.argv[1]
    make_tokenizer(out + "/tokenizer.model")
    _, hf = make_hf_dir(out + "/hf", out + "/tokenizer.model")
    assert grit_convert.run(["hf-to-orbax", "--hf_dir", hf, "--out", out + "/orbax"]) == 0
    for path in (hf, out + "/orbax"):
        model = GritLM.from_pretrained(path)
        print(model.encode("a sentence", max_length=8).shape, len(model.generate("hi", max_new_tokens=2)))
""")


@pytest.mark.slow
def test_load_and_save_are_quiet(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "TPU_"))}
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    outputs = [line for line in proc.stdout.splitlines() if line.startswith("(")]
    assert len(outputs) == 2  # both loads embedded and generated (grit-convert's own lines come before)
    for noise in ("Metadata file does not exist", "libtpu", "TPU_WORKER_HOSTNAMES", "unexpected worker"):
        assert noise not in proc.stderr, proc.stderr
