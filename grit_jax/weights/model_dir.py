"""What a model directory holds besides the parameter layout: the tokenizer, grit_config.json (how to
embed with it: pooling, attention, normalisation, instruction and chat formats, so the model can be used
for embeddings without guessing), and `load_pretrained`, which reads all of it with the weights.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile

from jax.sharding import Mesh

from grit_jax import storage
from grit_jax.data.hf_tokenizer import TOKENIZER_JSON
from grit_jax.data.tokenizer import SENTENCEPIECE, Tokenizer, tokenizer_file
from grit_jax.errors import CheckpointError
from grit_jax.weights.checkpoints import CheckpointSource
from grit_jax.weights.loading import open_weights
from grit_jax.weights.peft_adapter import merge_into

GRIT_CONFIG = "grit_config.json"
TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
# What an embedding user needs to know (written next to an exported model as grit_config.json).
DEFAULT_GRIT_CONFIG = {
    "pooling_method": "mean",
    "attn": "bbcc",  # grit_jax.choices.ATTENTIONS
    "normalized": True,
    "embed_instruction": False,  # instruction tokens (with BOS) are excluded from mean pooling
    "instruction_format": "<|user|>\n{instruction}\n<|embed|>\n",
    "instruction_format_without_instruction": "<|embed|>\n",
    "chat_format": "<s><|user|>\n{user}\n<|assistant|>\n",
    "projection": None,
}


def find_tokenizer(dirs: list[str], explicit: str | None = None, hint: str | None = None) -> str:
    """The tokenizer file to use (tokenizer.model or tokenizer.json): `explicit`, else `hint` or the first
    found in `dirs` (a tokenizer.model before a tokenizer.json); an error names every path tried."""
    names = (SENTENCEPIECE, TOKENIZER_JSON)
    candidates = (
        [explicit]
        if explicit
        else [hint] * bool(hint) + [storage.join(d, n) for d in dirs if d for n in names]
    )
    for c in candidates:
        if storage.is_url(c) and storage.isdir(c):
            c = next((storage.join(c, n) for n in names if storage.isfile(storage.join(c, n))), c)
        if storage.is_url(c) and storage.isfile(c):
            return tokenizer_file(_local_tokenizer(c))
        if os.path.exists(c):
            return tokenizer_file(c)
    raise CheckpointError(
        f"no tokenizer: {' nor '.join(candidates)} exists (pass --tokenizer PATH: a tokenizer.model, a "
        "tokenizer.json or a directory)"
    )


def _local_tokenizer(url: str) -> str:
    """sentencepiece and tokenizers open local files: a gs:// tokenizer and the Hugging Face files beside
    it are copied to a local temporary directory (removed at exit)."""
    local = tempfile.mkdtemp(prefix="grit_jax_tokenizer_")
    atexit.register(shutil.rmtree, local, ignore_errors=True)
    folder = storage.as_path(url).parent
    for name in {storage.as_path(url).name, *TOKENIZER_FILES}:
        if (folder / name).is_file():
            with open(os.path.join(local, name), "wb") as f:
                f.write((folder / name).read_bytes())
    return os.path.join(local, storage.as_path(url).name)


def copy_tokenizer(tokenizer: str, out: str):
    """Copies a tokenizer.model or tokenizer.json with the Hugging Face files beside it into `out`; a lone
    tokenizer.model gets the tokenizer_config.json of a Llama/Mistral sentencepiece tokenizer."""
    src = os.path.dirname(os.path.abspath(tokenizer))
    main = TOKENIZER_JSON if tokenizer.endswith(".json") else SENTENCEPIECE
    shutil.copyfile(tokenizer, os.path.join(out, main))
    for name in TOKENIZER_FILES:
        if name != main and os.path.isfile(os.path.join(src, name)):
            shutil.copyfile(os.path.join(src, name), os.path.join(out, name))
    if not os.path.isfile(os.path.join(out, "tokenizer_config.json")):
        with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(
                {
                    "tokenizer_class": "LlamaTokenizer",
                    "bos_token": "<s>",
                    "eos_token": "</s>",
                    "unk_token": "<unk>",
                    "add_bos_token": True,
                    "add_eos_token": False,
                    "padding_side": "right",
                },
                f,
                indent=2,
            )


def with_tokenizer_bos(chat_format: str, tokenizer: Tokenizer) -> str:
    """The chat format with the tokenizer's own BOS in place of `<s>` (none for a tokenizer without BOS)."""
    if not chat_format.startswith("<s>"):
        return chat_format
    bos = "" if tokenizer.bos_id is None else tokenizer.id_to_piece(tokenizer.bos_id)
    return bos + chat_format[len("<s>") :]


def grit_settings(source: CheckpointSource | None, **overrides) -> dict:
    """GRIT settings for grit_config.json: defaults, then the training config's objective, then overrides."""
    out = dict(DEFAULT_GRIT_CONFIG)
    for d in source.search_dirs if source else []:
        if d and storage.isfile(storage.join(d, GRIT_CONFIG)):
            out.update(json.loads(storage.read_text(storage.join(d, GRIT_CONFIG))))
            break
    objective = (source.training_config or {}).get("objective") if source else None
    if objective:
        out.update(
            pooling_method=objective.get("pooling", out["pooling_method"]),
            attn=objective.get("attn", out["attn"]),
            normalized=objective.get("normalize", out["normalized"]),
            projection=objective.get("projection_dim") or None,
        )
    out.update({k: v for k, v in overrides.items() if v is not None})
    return out


def load_pretrained(
    path: str,
    dtype: str = "float32",
    step: int | None = None,
    tokenizer=None,
    *,
    mesh: Mesh | None = None,
    adapter: str | None = None,
):
    """(Transformer with the weights, Tokenizer, GRIT settings) of a Hugging Face directory (config.json +
    safetensors) or an orbax checkpoint (hf-to-orbax dir, training step dir or work dir); `dtype` is the
    compute dtype, `tokenizer` a Tokenizer or a tokenizer file or directory (default: beside the model).
    Parameters keep their stored dtype (float32 if a model cannot hold it); with `mesh` each is read
    straight into its shards on that mesh (grit_jax.weights.loading), else onto this host's first device.
    `adapter`: a PEFT LoRA directory merged into the weights (grit_jax.weights.peft_adapter)."""
    weights = open_weights(path, step=step, dtype=dtype)
    checkpoint, hint = weights.checkpoint, None
    if checkpoint is None:  # a Hugging Face directory
        search, settings = [weights.path], grit_settings(None)
        if storage.isfile(storage.join(weights.path, GRIT_CONFIG)):
            settings.update(json.loads(storage.read_text(storage.join(weights.path, GRIT_CONFIG))))
    else:
        search, settings, hint = checkpoint.search_dirs, grit_settings(checkpoint), checkpoint.tokenizer_file
    tokenizer = tokenizer or Tokenizer(find_tokenizer(search, hint=hint))
    if isinstance(tokenizer, str):
        tokenizer = Tokenizer(find_tokenizer([], tokenizer))
    model = weights.model(mesh, param_dtype=weights.stored_param_dtype())
    return (model if adapter is None else merge_into(model, adapter)), tokenizer, settings
