"""A small real corpus every machine has: the docstrings of the installed Python standard library.

Retrieval: query = [instruction, "name(signature)\\nsummary line"], positive = the rest of the docstring,
hard negatives = the rest of neighbouring docstrings of the same module. Chat: "What does `name` do?"
-> the docstring (some two-turn chats, some module docstrings as plain text). Deterministic for a given
Python version (the build records it); one name in five (by CRC32) is held out for evaluation, and no
training record holds a held-out text (not as a hard negative, not in a chat). Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib

from grit_jax.data import sources
from grit_jax.data.tokenizer import Tokenizer, train_tokenizer

FUNCTION_INSTRUCTION = "Retrieve the documentation of this function"
CLASS_INSTRUCTION = "Retrieve the documentation of this class or method"
PREPARE_LIMITS = (128, 512, 512)  # stored lengths; training may truncate further
NUM_NEGATIVES = 3
HELD_OUT_ONE_IN = 5  # Python 3.11.7: 304 held-out queries of 1,662 functions and classes
STDLIB_DOCS_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stdlib_docs.py")


def stdlib_entries() -> dict[str, list]:
    """{'functions' | 'classes': [(module, name, signature, summary, rest)], 'modules': [(module, doc)]},
    collected by a fresh interpreter (see stdlib_docs.py) so that only the Python version decides it."""
    result = subprocess.run(
        [sys.executable, "-I", "-S", STDLIB_DOCS_SCRIPT], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout)


def _held_out(name: str) -> bool:
    return zlib.crc32(name.encode()) % HELD_OUT_ONE_IN == 0


def _rows(items: list, held_out: list[bool], split: str, instruction: str) -> tuple[list, list]:
    """(retrieval rows, chats) of the items in `split`. A held-out row's hard negatives are its
    neighbours; a training row's are the next training items, so that no held-out text is trained on."""
    members = [j for j, h in enumerate(held_out) if h == (split == "eval")]
    rows, chats = [], []
    for n, i in enumerate(members):
        _, name, signature, summary, rest = items[i]
        if split == "eval":
            neighbours = [(i + k) % len(items) for k in range(1, NUM_NEGATIVES + 1)]
        else:
            neighbours = [members[(n + k) % len(members)] for k in range(1, NUM_NEGATIVES + 1)]
        rows.append(
            {
                "query": [instruction, f"{name}{signature}\n{summary}"],
                "pos": [rest],
                "neg": [items[j][4] for j in neighbours],
            }
        )
        chat = [f"What does `{name}` do?", f"{summary}\n\n{rest}"]
        if i % 4 == 3 and (split == "eval" or not held_out[i - 1]):  # a two-turn chat with the one before
            chat = [f"What does `{items[i - 1][1]}` do?", f"{items[i - 1][3]}\n\n{items[i - 1][4]}"] + chat
        chats.append({"text": chat})
    return rows, chats


def build_jsonl(out_dir: str) -> dict[str, list[str]]:
    """Writes the demo JSONL files; returns the paths by role."""
    os.makedirs(out_dir, exist_ok=True)
    entries = stdlib_entries()
    files = {"embedding": [], "generative": [], "eval_embedding": [], "eval_generative": []}
    chats = {"train": [], "eval": []}
    for kind, instruction in (("functions", FUNCTION_INSTRUCTION), ("classes", CLASS_INSTRUCTION)):
        items, rows = entries[kind], {}
        for split in ("train", "eval"):
            rows[split], split_chats = _rows(items, [_held_out(e[1]) for e in items], split, instruction)
            chats[split] += split_chats
        for split, prefix in (("train", ""), ("eval", "eval_")):
            path = os.path.join(out_dir, f"{prefix}stdlib_{kind}.jsonl")
            _write(path, rows[split])
            files[f"{prefix}embedding"].append(path)
    for module_name, doc in entries["modules"]:  # module docstrings as plain text
        chats["eval" if _held_out(module_name) else "train"].append({"text": doc})
    for split, prefix in (("train", ""), ("eval", "eval_")):
        path = os.path.join(out_dir, f"{prefix}stdlib_chat.jsonl")
        _write(path, chats[split])
        files[f"{prefix}generative"].append(path)
    return files


def _write(path: str, rows: list[dict]):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value[:4000]]
    if isinstance(value, dict):
        value = list(value.values())
    return [s for v in value for s in _strings(v)]


def _training_texts(files: dict) -> list[str]:
    texts = []
    for path in files["embedding"] + files["generative"]:
        with open(path, encoding="utf-8") as f:
            texts.extend(s for line in f for s in _strings(json.loads(line)))
    return texts


def prepare_demo_data(
    out_dir: str,
    vocab_size: int = 1024,
    query_max_len: int = 128,
    passage_max_len: int = 512,
    *,
    generative_max_len: int = 512,
    tokenizer: str | None = None,
) -> dict:
    """Builds the stdlib corpus, a tokenizer and the TFDS datasets into out_dir (cached: returns at once if
    out_dir already holds this exact build). tokenizer: a pretrained model's (a dir or file) instead of a
    sentencepiece one trained on the corpus. Texts are stored at lengths of at least PREPARE_LIMITS so that
    shorter training lengths share one build. Returns {"data_dir", "tokenizer"}."""
    limits = [max(n, m) for n, m in zip((query_max_len, passage_max_len, generative_max_len), PREPARE_LIMITS)]
    stamp = {"python": sys.version, "vocab_size": vocab_size, "limits": limits, "held_out": HELD_OUT_ONE_IN}
    if tokenizer is not None:
        tokenizer = Tokenizer(tokenizer)
        stamp = {**stamp, "vocab_size": None, "tokenizer": tokenizer.fingerprint}
    stamp_path = os.path.join(out_dir, "demo.json")
    result = {"data_dir": out_dir, "tokenizer": out_dir}  # Tokenizer(directory) reads the copy there
    if os.path.isfile(stamp_path) and os.path.isfile(os.path.join(out_dir, sources.MANIFEST)):
        with open(stamp_path) as f:
            if json.load(f) == stamp:
                return result
    files = build_jsonl(os.path.join(out_dir, "jsonl"))
    if tokenizer is None:
        tokenizer = train_tokenizer(
            _training_texts(files), os.path.join(out_dir, "demo_tokenizer.model"), vocab_size=vocab_size
        )
    sources.prepare(
        out_dir,
        tokenizer,
        files["embedding"],
        files["generative"],
        eval_embedding=files["eval_embedding"],
        eval_generative=files["eval_generative"],
        query_max_len=limits[0],
        passage_max_len=limits[1],
        generative_max_len=limits[2],
        plain_strings="formatted",  # plain passages, docstrings: `<s><|embed|>\n...`, `<s>...</s>`
    )
    with open(stamp_path, "w") as f:
        json.dump(stamp, f)
    return result
