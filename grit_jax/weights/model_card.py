"""The README.md (model card) of an exported Hugging Face directory: how to embed and generate with it
(formats, attention, pooling; transformers or the reference `gritlm` package) and the training config
and data it came from, so that a transformers user does not have to guess.
"""

from __future__ import annotations

import json
import os

from grit_jax import storage

ATTENTION = {
    "bbcc": "bidirectional for embeddings, causal for generation",
    "cccc": "causal for both",
    "bb": "bidirectional",
    "cc": "causal",
}


def _data_lines(training: dict) -> list[str]:
    """The training data's sources and example counts, from the prepared directory's manifest."""
    data_dir = (training.get("data") or {}).get("data_dir", "")
    path = storage.join(data_dir, "manifest.json") if data_dir else ""
    if not path or not storage.isfile(path):
        return [f"- prepared data: `{data_dir or 'unknown'}` (its manifest.json was not readable at export)"]
    manifest = json.loads(storage.read_text(path))
    lines = [f"- prepared data: `{data_dir}` (`grit-data prepare`)"]
    for kind in ("embedding", "generative"):
        for entry in manifest.get("train", {}).get(kind, []):
            lines.append(
                f"- {kind}: `{entry.get('path', entry['name'])}`: {entry['num_examples']:,} examples"
            )
    return lines


def _training_section(training: dict | None) -> list[str]:
    if not training:
        return ["## Training", "", "Converted from an orbax checkpoint without a training config.", ""]
    model, objective = training.get("model", {}), training.get("objective", {})
    data, optimizer = training.get("data", {}), training.get("optimizer", {})
    base = model.get("base_model") or model.get("hf_dir") or model.get("init_checkpoint") or "random init"
    lines = [
        "## Training",
        "",
        "GRIT (generative representational instruction tuning) with grit_jax (JAX):",
        "",
        f"- started from: `{base}`",
        f"- objective: mode `{objective.get('mode')}`, temperature {objective.get('temperature')}, "
        f"generative loss `{objective.get('loss_gen_type')}` x {objective.get('loss_gen_factor')}",
        f"- steps: {training.get('num_steps')}; global batch: {data.get('embedding_batch_size')} embedding, "
        f"{data.get('generative_batch_size')} generative; learning rate {optimizer.get('learning_rate')}",
        f"- lengths: query {data.get('query_max_len')}, passage {data.get('passage_max_len')}, "
        f"generative {data.get('generative_max_len')} tokens",
        *_data_lines(training),
        "",
        "The full training config:",
        "",
        "```json",
        json.dumps(training, indent=1, sort_keys=True),
        "```",
        "",
    ]
    return lines


def model_card(name: str, settings: dict, training: dict | None) -> str:
    pooling, attn = settings["pooling_method"], settings["attn"]
    with_instruction = settings["instruction_format"].format(instruction="{instruction}")
    lines = [
        "---",
        "library_name: transformers",
        "tags: [gritlm, grit_jax, text-embeddings, text-generation]",
        "---",
        "",
        f"# {name}",
        "",
        "One model for text embeddings and text generation (GRIT), exported by `grit-convert orbax-to-hf`.",
        "`grit_config.json` beside this card holds the settings below; the reference `gritlm` package and",
        "`grit_jax.GritLM.from_pretrained` read this directory as it is.",
        "",
        "## Embeddings",
        "",
        f"- attention: {ATTENTION.get(attn, attn)} (`attn={attn!r}`): load the model with bidirectional",
        "  attention to embed; a plain causal transformers forward gives different (worse) embeddings",
        f"- pooling: {pooling} over the text's tokens, the instruction's tokens (and BOS) left out; "
        f"{'L2-normalised' if settings['normalized'] else 'not normalised'}",
        f"- a query: `<s>{with_instruction}` + text; a document: "
        f"`<s>{settings['instruction_format_without_instruction']}` + text (no instruction)",
        "",
        "```python",
        "from gritlm import GritLM  # pip install gritlm; or: from grit_jax import GritLM",
        f'model = GritLM("{name}", torch_dtype="auto", pooling_method="{pooling}", attn="{attn}")',
        'instr = "<|user|>\\nRetrieve documents that support or refute the claim\\n<|embed|>\\n"',
        'q = model.encode(["what is GRIT?"], instruction=instr)',
        'd = model.encode(["GRIT unifies embedding and generation."], instruction="<|embed|>\\n")',
        "```",
        "",
        "## Generation",
        "",
        f"Causal attention, the chat format `{settings['chat_format']}` (turns joined by a newline, each",
        "assistant turn ending with `</s>`):",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'tok, lm = AutoTokenizer.from_pretrained("{name}"), AutoModelForCausalLM.from_pretrained("{name}")',
        'ids = tok("<|user|>\\nWhat is GRIT?\\n<|assistant|>\\n", return_tensors="pt").input_ids',
        "print(tok.decode(lm.generate(ids, max_new_tokens=64)[0]))",
        "```",
        "",
        *_training_section(training),
    ]
    return "\n".join(lines) + "\n"


def write_model_card(out: str, settings: dict, training: dict | None) -> None:
    name = os.path.basename(os.path.normpath(out))
    with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as f:
        f.write(model_card(name, settings, training))
