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


def public(value):
    """`value` as a published card may show it: an absolute local path (this machine's folders, which
    mean nothing to a reader and may name a user) cut to `.../` and its last part, in dicts and lists
    too; gs:// URLs, relative paths and other values as they are."""
    if isinstance(value, dict):
        return {k: public(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [public(v) for v in value]
    if isinstance(value, str) and os.path.isabs(value) and "\n" not in value:
        parts = [p for p in value.split("/") if p]
        return value if len(parts) <= 1 else ".../" + parts[-1]
    return value


def code(text: str) -> str:
    """Inline code that renders as one line: newlines and tabs shown escaped, as in a Python string."""
    return "`" + json.dumps(text, ensure_ascii=False)[1:-1].replace('\\"', '"') + "`"


def _data_lines(training: dict) -> list[str]:
    """The training data's sources and example counts, from the prepared directory's manifest."""
    data_dir = (training.get("data") or {}).get("data_dir", "")
    path = storage.join(data_dir, "manifest.json") if data_dir else ""
    if not path or not storage.isfile(path):
        shown = public(data_dir) or "unknown"
        return [f"- prepared data: `{shown}` (its manifest.json was not readable at export)"]
    manifest = json.loads(storage.read_text(path))
    lines = [f"- prepared data: `{public(data_dir)}` (`grit-data prepare`)"]
    for kind in ("embedding", "generative"):
        for entry in manifest.get("train", {}).get(kind, []):
            lines.append(
                f"- {kind}: `{entry['name']}` (`{public(entry.get('path', entry['name']))}`): "
                f"{entry['num_examples']:,} examples"
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
        f"- started from: `{public(base)}`",
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
        json.dumps(public(training), indent=1, sort_keys=True),
        "```",
        "",
    ]
    return lines


EXPORTED = "exported by `grit-convert orbax-to-hf`"


def model_card(name: str, settings: dict, training: dict | None, made=EXPORTED, *, origin=None) -> str:
    """The card; `made`: how the directory was made, `origin`: the lines that say what it came from
    (default: the training section of `training`, a run's config.json)."""
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
        f"One model for text embeddings and text generation (GRIT), {made}.",
        "`grit_config.json` beside this card holds the settings below; the reference `gritlm` package and",
        "`grit_jax.GritLM.from_pretrained` read this directory as it is.",
        "",
        "## Embeddings",
        "",
        f"- attention: {ATTENTION.get(attn, attn)} (`attn={attn!r}`): load the model with bidirectional",
        "  attention to embed; a plain causal transformers forward gives different (worse) embeddings",
        f"- pooling: {pooling} over the text's tokens, the instruction's tokens (and BOS) left out; "
        f"{'L2-normalised' if settings['normalized'] else 'not normalised'}",
        f"- a query: {code('<s>' + with_instruction)} + text; a document: "
        f"{code('<s>' + settings['instruction_format_without_instruction'])} + text (no instruction)",
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
        f"Causal attention, the chat format {code(settings['chat_format'])} (turns joined by a newline, each",
        "assistant turn ending with `</s>`):",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'tok, lm = AutoTokenizer.from_pretrained("{name}"), AutoModelForCausalLM.from_pretrained("{name}")',
        'ids = tok("<|user|>\\nWhat is GRIT?\\n<|assistant|>\\n", return_tensors="pt").input_ids',
        "print(tok.decode(lm.generate(ids, max_new_tokens=64)[0]))",
        "```",
        "",
        *(_training_section(training) if origin is None else origin),
    ]
    return "\n".join(lines) + "\n"


def write_model_card(out: str, settings: dict, training: dict | None) -> None:
    name = os.path.basename(os.path.normpath(out))
    with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as f:
        f.write(model_card(name, settings, training))


def write_merged_card(out: str, settings: dict, base: str, adapter: str, *, adapter_config: dict) -> None:
    """The card of `grit-convert merge-adapter`'s output (not the base's card, which it replaces)."""
    name = os.path.basename(os.path.normpath(out))
    targets = ", ".join(adapter_config.get("target_modules") or [])
    origin = [
        "## Where it comes from",
        "",
        f"- base: `{public(base)}`",
        f"- LoRA adapter: `{public(adapter)}` (r={adapter_config.get('r')}, "
        f"lora_alpha={adapter_config.get('lora_alpha')}, target modules {targets}), merged into the base's "
        "weights (W + lora_alpha / r x B A) in the base's dtypes; no adapter is needed to load it",
        "",
    ]
    made = "the base model below with a LoRA adapter merged in by `grit-convert merge-adapter`"
    with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as f:
        f.write(model_card(name, settings, None, made, origin=origin))
