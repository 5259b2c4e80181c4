"""The files that travel with a model besides its weights: the tokenizer, and grit_config.json (how to
embed with it: pooling, attention, normalisation, instruction and chat formats), so the model can be
used for embeddings without guessing.
"""

from __future__ import annotations

import json
import os
import shutil

from grit_jax.checkpoint import CheckpointSource
from grit_jax.errors import CheckpointError

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
    """The tokenizer.model to use: `explicit`, else `hint` or the first found in `dirs`; an error names every
    path tried."""
    candidates = (
        [explicit]
        if explicit
        else [hint] * bool(hint) + [os.path.join(d, "tokenizer.model") for d in dirs if d]
    )
    for c in candidates:
        if os.path.isfile(c):
            return c
    raise CheckpointError(
        f"no tokenizer: {' nor '.join(candidates)} exists (pass --tokenizer PATH/tokenizer.model)"
    )


def copy_tokenizer(tokenizer_model: str, out: str):
    src = os.path.dirname(os.path.abspath(tokenizer_model))
    shutil.copyfile(tokenizer_model, os.path.join(out, "tokenizer.model"))
    for name in TOKENIZER_FILES[1:]:
        if os.path.isfile(os.path.join(src, name)):
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


def grit_settings(source: CheckpointSource | None, **overrides) -> dict:
    """GRIT settings for grit_config.json: defaults, then the training config's objective, then overrides."""
    out = dict(DEFAULT_GRIT_CONFIG)
    for d in source.search_dirs if source else []:
        if d and os.path.isfile(os.path.join(d, GRIT_CONFIG)):
            with open(os.path.join(d, GRIT_CONFIG), encoding="utf-8") as f:
                out.update(json.load(f))
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
