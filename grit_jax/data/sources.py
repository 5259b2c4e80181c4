"""Reads the reference's JSONL formats, validates them, tokenizes once and writes versioned
TFDS array_record datasets (one per source file, no TensorFlow needed).

Layout of a prepared directory `OUT`:
  OUT/manifest.json                     sources, counts, limits, tokenizer fingerprint, length stats
  OUT/tokenizer.model or tokenizer.json  copy of the tokenizer used (a tokenizer.json with its config)
  OUT/<split>/<kind>/<name>.<hash>/grit_source/<name>/1.0.0/*.array_record  (split: train | eval;
                                        kind: embedding | generative; grit_jax.data.tfds_io)
  OUT/<split>/<kind>/<name>.<hash>/lengths.npz  every example's token lengths (grit_jax.data.lengths)
Each source goes into a new directory per content, then manifest.json is replaced in one step: a failed
or killed prepare leaves the previous dataset whole (grit_jax.data.prepared_files).
Stored per embedding record: query [Lq] int32, query_instruction_len, passages (flat int32),
passage_lens, passage_instruction_lens, num_pos (positives first). Per generative record:
tokens [L] int32, targets [L] uint8 (1 = trained token), last_start (start of the last trained turn).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from grit_jax.data import hub_formats, prepared_files, tfds_io
from grit_jax.data import prompts as fmt
from grit_jax.data.lengths import write_lengths
from grit_jax.data.tokenizer import Tokenizer
from grit_jax.errors import DataError

MANIFEST = "manifest.json"
_GROUPS = [(split, kind) for split in ("train", "eval") for kind in ("embedding", "generative")]
ENCODE_CHUNK = 2048
FORMAT_REVISION = 2  # part of each source's hash: data prepared by older rules is built again


@dataclasses.dataclass
class BadRecord:
    path: str
    line: int
    message: str

    def __str__(self):
        return f"{self.path}:{self.line}: {self.message}"


def expand_paths(paths: Sequence[str]) -> list[str]:
    """JSONL and parquet files, directories and globs, local or gs:// (grit_jax.data.hub_formats)."""
    return hub_formats.expand_paths(paths)


def _check_embed_text(value: Any, field: str) -> fmt.EmbedText:
    if isinstance(value, str):
        fmt.check_unicode([value], field)
        return value
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value):
        fmt.check_unicode(value, field)
        return value
    raise DataError(
        f"field {field!r} must be a string or an [instruction, text] pair of strings, "
        f"got {type(value).__name__}"
    )


def parse_embedding(obj: Any) -> tuple[fmt.EmbedText, list, list]:
    """Validates one embedding record: query, pos (non-empty list), neg (list, optional)."""
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {type(obj).__name__}")
    for field in ("query", "pos"):
        if field not in obj:
            raise DataError(f"missing field {field!r}")
    query = _check_embed_text(obj["query"], "query")
    lists = []
    for field in ("pos", "neg"):
        values = obj.get(field)
        values = [] if values is None else values  # null: how hub exports write a missing list
        if not isinstance(values, list):
            raise DataError(f"field {field!r} must be a list, got {type(values).__name__}")
        lists.append([_check_embed_text(v, f"{field}[{i}]") for i, v in enumerate(values)])
    if not lists[0]:
        raise DataError("field 'pos' is empty")
    return query, lists[0], lists[1]


def parse_generative(obj: Any) -> str | list[str]:
    obj = hub_formats.messages_to_text(obj)  # the hub's chat layout (tulu2)
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {type(obj).__name__}")
    if "text" not in obj:
        raise DataError("missing field 'text'")
    text = obj["text"]
    if isinstance(text, str) or (isinstance(text, list) and all(isinstance(t, str) for t in text)):
        fmt.check_unicode([text] if isinstance(text, str) else text, "text")
        return text
    raise DataError("field 'text' must be a string or a list of strings (user/assistant turns)")


def read_jsonl(path: str, parse) -> Iterator[tuple[int, Any, str | None]]:
    """Yields (line number, parsed record or None, error or None); blank lines are skipped."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield number, None, f"not UTF-8 ({e.reason} at byte {e.start})"
                continue
            if not line.strip():
                continue
            try:
                yield number, parse(json.loads(line)), None
            except json.JSONDecodeError as e:
                yield number, None, f"invalid JSON: {e.msg} (column {e.colno})"
            except DataError as e:
                yield number, None, str(e)


def _chunks(items, size):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def tokenize_embedding(
    tokenizer: Tokenizer, records, limits: dict, path: str, *, bad: list, dropped: list, plain_strings="raw"
) -> list[dict]:
    """records: [(line, (query, pos, neg))] -> stored examples; failures appended to `bad`."""
    out = []
    max_chars = fmt.CHARS_PER_TOKEN_CUT * max(limits.values())  # the reference's max_char_len
    for chunk in _chunks(records, ENCODE_CHUNK):
        strings, plans = [], []
        for line, (query, pos, neg) in chunk:
            try:
                texts = [(query, limits["query_max_len"])] + [
                    (t, limits["passage_max_len"]) for t in pos + neg
                ]
                pairs = [(fmt.embed_strings(t, max_chars, plain_strings), m) for t, m in texts]
            except DataError as e:
                bad.append(BadRecord(path, line, str(e)))
                continue
            plans.append((line, len(strings), pairs, len(pos)))
            for (prefix, full, _), _ in pairs:
                strings.extend([prefix, full])
        ids = tokenizer.encode_batch(strings)
        for line, offset, pairs, num_pos in plans:
            try:
                encoded = [
                    fmt.finish_embedding(tokenizer, ids[offset + 2 * k], ids[offset + 2 * k + 1], m, raw=raw)
                    for k, ((_, _, raw), m) in enumerate(pairs)
                ]
            except DataError as e:
                bad.append(BadRecord(path, line, str(e)))
                continue
            passages = encoded[1:]
            out.append(
                {
                    "query": encoded[0][0],
                    "query_instruction_len": np.int32(encoded[0][1]),
                    "passages": np.concatenate([p for p, _ in passages]),
                    "passage_lens": np.asarray([len(p) for p, _ in passages], np.int32),
                    "passage_instruction_lens": np.asarray([n for _, n in passages], np.int32),
                    "num_pos": np.int32(num_pos),
                }
            )
    return out


def tokenize_generative(
    tokenizer: Tokenizer, records, limits: dict, path: str, *, bad: list, dropped: list, plain_strings="raw"
) -> list[dict]:
    """records: [(line, text)] -> stored examples. Chats whose first prompt alone reaches the limit are
    dropped (their lines appended to `dropped`), as the reference filters them."""
    out, max_len = [], limits["generative_max_len"]
    for chunk in _chunks(records, ENCODE_CHUNK):
        strings, plans = [], []
        for line, text in chunk:
            try:
                segments = fmt.chat_segments(text, max_len)
            except DataError as e:
                bad.append(BadRecord(path, line, str(e)))
                continue
            plans.append((line, len(strings), len(segments), isinstance(text, str)))
            strings.extend([p for p, _ in segments] + [p + a for p, a in segments])
        ids = tokenizer.encode_batch(strings)
        for line, offset, n, plain in plans:
            if not plain and len(ids[offset]) >= max_len:  # `<|user|>\n{user}\n<|assistant|>\n`, no BOS
                dropped.append(line)
                continue
            tokens, target, last_start = fmt.finish_chat(
                tokenizer,
                ids[offset : offset + n],
                ids[offset + n : offset + 2 * n],
                plain,
                max_len=max_len,
                plain_strings=plain_strings,
            )
            out.append(
                {"tokens": tokens, "targets": target.astype(np.uint8), "last_start": np.int32(last_start)}
            )
    return out


def length_stats(lengths: Sequence[int]) -> dict:
    if len(lengths) == 0:
        return {}
    q = np.percentile(np.asarray(lengths), [50, 90, 99, 100])
    return {"p50": int(q[0]), "p90": int(q[1]), "p99": int(q[2]), "max": int(q[3])}


def _source_names(files: Sequence[str]) -> list[str]:
    names, seen = [], set()
    for path in files:
        base = re.sub(r"[^a-z0-9_]", "_", os.path.splitext(os.path.basename(path))[0].lower()) or "source"
        name, k = base, 1
        while name in seen:
            k, name = k + 1, f"{base}_{k}"
        seen.add(name)
        names.append(name)
    return names


def _file_hash(path: str, extra: str) -> str:
    digest = hashlib.sha256(extra.encode())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _read_records(path: str, parse) -> tuple[list, list]:
    """(bad records, [(line, record)]) of one JSONL or parquet file."""
    bad, records = [], []
    read = hub_formats.read_parquet if hub_formats.is_parquet(path) else read_jsonl
    for line, record, error in read(path, parse):
        if error:
            bad.append(BadRecord(path, line, error))
        else:
            records.append((line, record))
    return bad, records


def build_sources(
    files: Sequence[str],
    kind: str,
    tokenizer: Tokenizer,
    out_dir: str,
    *,
    subdir: str,
    limits: dict,
    skip_bad: bool,
    previous: dict,
    plain_strings: str,
    built: list[str],
) -> list[dict]:
    """Validates, tokenizes and writes every file of one kind (new directories into `built`)."""
    entries = []
    parse = parse_embedding if kind == "embedding" else parse_generative
    tokenize = tokenize_embedding if kind == "embedding" else tokenize_generative
    for path, name in zip(files, _source_names(files)):
        settings = [kind, limits, tokenizer.fingerprint, plain_strings, FORMAT_REVISION]
        key = _file_hash(path, json.dumps(settings, sort_keys=True))
        old = previous.get(name)
        if old and old.get("hash") == key and os.path.isdir(os.path.join(out_dir, old["dir"])):
            if not old.get("lengths"):  # prepared before the length index existed
                root = old["dir"].split(os.sep)[:3]  # <split>/<kind>/<its directory>
                old["lengths"] = _length_index(kind, out_dir, old["dir"], os.path.join(out_dir, *root))
            entries.append(old)
            continue
        (bad, records), dropped = _read_records(path, parse), []
        examples = tokenize(
            tokenizer, records, limits, path, bad=bad, dropped=dropped, plain_strings=plain_strings
        )
        bad.sort(key=lambda b: b.line)
        if bad and not skip_bad:
            shown = "\n  ".join(map(str, bad[:20]))
            more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
            raise DataError(
                f"{len(bad)} bad record(s) (use --skip_bad to skip and count them):\n  {shown}{more}"
            )
        entry = {
            "name": name,
            "kind": kind,
            "path": os.path.abspath(path),
            "hash": key,
            "num_examples": len(examples),
            "num_skipped": len(bad),
            "skipped": [str(b) for b in bad[:100]],
            "num_dropped": len(dropped),  # generative: first prompt too long, as the reference drops
            "dropped": [f"{path}:{line}" for line in dropped[:100]],
        }
        if examples:
            built.append(target := os.path.join(out_dir, subdir, f"{name}.{key}"))  # a new dir per content
            shutil.rmtree(target, ignore_errors=True)
            entry["dir"] = os.path.relpath(tfds_io.write_tfds(examples, kind, name, target), out_dir)
            entry["lengths"] = _length_index(kind, out_dir, entry["dir"], target)
            entry["files"] = prepared_files.sizes(out_dir, entry["dir"])
            entry.update(_example_stats(kind, examples))
        entries.append(entry)
    return entries


def _length_index(kind: str, out_dir: str, written: str, target: str) -> str:
    """Writes the token lengths of a written source into ``target``; returns the file relative to out_dir.
    They are read back, as TFDS stores the examples in an order of its own (shuffled by key)."""
    stored = tfds_io.open_source(os.path.join(out_dir, written))
    records = (stored[i] for i in range(len(stored)))
    return os.path.relpath(write_lengths(kind, records, target), out_dir)


def _example_stats(kind: str, examples: list) -> dict:
    if kind == "embedding":
        return {
            "query_tokens": length_stats([len(e["query"]) for e in examples]),
            "passage_tokens": length_stats(np.concatenate([e["passage_lens"] for e in examples])),
            "min_negatives": int(min(len(e["passage_lens"]) - e["num_pos"] for e in examples)),
            "max_query_instruction_len": int(max(e["query_instruction_len"] for e in examples)),
            "max_passage_instruction_len": int(max(e["passage_instruction_lens"].max() for e in examples)),
            "total_tokens": int(sum(len(e["query"]) + len(e["passages"]) for e in examples)),
        }
    return {
        "tokens": length_stats([len(e["tokens"]) for e in examples]),
        "total_tokens": int(sum(len(e["tokens"]) for e in examples)),
    }


def read_manifest(out_dir: str) -> dict:
    path = os.path.join(out_dir, MANIFEST)
    if not os.path.isfile(path):
        raise DataError(f"{out_dir}: not a prepared data directory (no {MANIFEST}); run `grit-data prepare`")
    with open(path) as f:
        return json.load(f)


def prepare(
    out_dir: str,
    tokenizer: Tokenizer,
    embedding: Sequence[str] = (),
    generative: Sequence[str] = (),
    *,
    eval_embedding: Sequence[str] = (),
    eval_generative: Sequence[str] = (),
    skip_bad: bool = False,
    query_max_len: int = 256,
    passage_max_len: int = 2048,
    generative_max_len: int = 2048,
    plain_strings: str = "raw",
) -> dict:
    """Validates and builds every source into out_dir; unchanged sources are reused. Returns the manifest.

    plain_strings: "raw" (the reference: plain strings are not formatted) or "formatted" (they get BOS
    and `<|embed|>\n`, or BOS and EOS for generative text)."""
    fmt.check_plain_strings(plain_strings)
    limits = {
        "query_max_len": query_max_len,
        "passage_max_len": passage_max_len,
        "generative_max_len": generative_max_len,
    }
    os.makedirs(out_dir, exist_ok=True)
    try:
        old = read_manifest(out_dir)
    except DataError:
        old = {}
    manifest = {
        "version": tfds_io.TFDS_VERSION,
        "limits": limits,
        "plain_strings": plain_strings,
        "tokenizer": tokenizer.fingerprint,
        "bos_id": tokenizer.bos_id,
        "eos_id": tokenizer.eos_id,
        "pad_id": tokenizer.pad_id,
        "vocab_size": tokenizer.vocab_size,
    }
    built: list[str] = []  # new source directories: removed again if anything fails
    tmp = os.path.join(out_dir, MANIFEST + ".tmp")
    try:
        groups = {"train": (embedding, generative), "eval": (eval_embedding, eval_generative)}
        for split, kind in _GROUPS:
            paths = groups[split][kind == "generative"]
            previous = {e["name"]: e for e in old.get(split, {}).get(kind, [])}
            manifest.setdefault(split, {})[kind] = build_sources(
                expand_paths(paths), kind, tokenizer, out_dir, subdir=os.path.join(split, kind),
                limits=limits, skip_bad=skip_bad, previous=previous,
                plain_strings=plain_strings, built=built,
            )  # fmt: skip
        with open(tmp, "w") as f:  # a write that fails (disk full) fails here, before anything is replaced
            json.dump(manifest, f, indent=1)
        tokenizer.copy_to(out_dir)
        os.replace(tmp, os.path.join(out_dir, MANIFEST))  # the swap: the new dataset, whole
    except BaseException:
        prepared_files.remove_partial(built, tmp)
        raise
    prepared_files.remove_unused(out_dir, old, manifest)
    return manifest
