"""Embedding many texts (packed several to a row, longest first), and the on-disk store grit-embed writes.

The store is plain numpy: `DIR/part-NNNNN.npy` (float32 [n, D]) beside `DIR/part-NNNNN.ids` (one id per
line, the same order; grit_jax.retrieval.corpus.check_id keeps every id on one line) and
`DIR/manifest.json`, which lists the complete parts, each with its files' sizes and checksums, and the
settings that made them (the model's weights fingerprint and the inputs' content hashes among them).
Part k holds window k of the input (k-th run of `window` good records, in input order); every file is
written to a temporary name and renamed, and a part enters the manifest only once both files are in
place, so a killed run resumes at the first part the manifest lacks, losing and repeating nothing; a part
whose files are not those written is embedded again. Read a store with `load_embeddings(DIR)` (ids and
vectors checked, aligned; refused until the run that writes it has finished).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from collections.abc import Callable

import numpy as np

from grit_jax.errors import DataError, UsageError
from grit_jax.inference import packed_encode

MANIFEST = "manifest.json"
FORMAT = "grit-embed/1"


def embed_texts(model, texts: list[str], instruction: str = "", batch_size: int = 64, *, max_length=512):
    """model.encode(texts, instruction) (float32 [len(texts), D], the same rows in the same order)."""
    rows = [model.tokenize(instruction + t + model.embed_eos, True, max_length) for t in texts]
    return embed_token_rows(model, rows, model.instruction_length(instruction, False, max_length), batch_size)


def embed_token_rows(model, rows: list[list[int]], skip: int, batch_size: int) -> np.ndarray:
    """The embeddings of token rows in their order, packed several to a row, longest first
    (grit_jax.inference.packed_encode); a bad output (BadRow) names its index in `rows`."""
    return packed_encode.encode_rows(model, rows, skip, batch_size)


def part_name(index: int) -> str:
    return f"part-{index:05d}"


def _written(data: bytes) -> list:
    return [len(data), hashlib.sha256(data).hexdigest()]


def _part_files(part: dict) -> dict[str, bytes]:
    """{suffix: bytes} of a part's files, DataError when one is missing or not what was written."""
    out = {}
    for suffix, (size, digest) in part["files"].items():
        try:
            with open(part["path"] + suffix, "rb") as f:
                data = f.read()
        except OSError:
            raise DataError(f"{part['path']}{suffix}: missing") from None
        if _written(data) != [size, digest]:
            raise DataError(f"{part['path']}{suffix}: {len(data)} bytes, not the {size} bytes written")
        out[suffix] = data
    return out


def _atomic(path: str, write: Callable):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class EmbeddingStore:
    """The parts and manifest of one output directory, as one host sees them.

    With several hosts each writes its own `manifest.hostP.json`; `merge_hosts` (process 0, after all
    finished) writes `manifest.json` listing every part.
    """

    def __init__(self, out: str, settings: dict, process_index: int = 0, process_count: int = 1):
        self.out, self.settings = out, settings
        name = MANIFEST if process_count == 1 else f"manifest.host{process_index}.json"
        self.path = os.path.join(out, name)
        os.makedirs(out, exist_ok=True)
        self.manifest = {"format": FORMAT, "settings": settings, "complete": False, "parts": []}
        if os.path.isfile(self.path):
            self.manifest = read_manifest(self.path)
            if self.manifest.get("settings") != settings:
                changed = sorted(
                    k
                    for k in set(settings) | set(self.manifest.get("settings", {}))
                    if settings.get(k) != self.manifest.get("settings", {}).get(k)
                )
                why = "; an input file changed since (content hash)" if "inputs" in changed else ""
                raise UsageError(
                    f"{out} holds embeddings made with other settings ({', '.join(changed)} differ{why}); "
                    "use a new --out directory, or the same model, inputs and arguments to resume"
                )
        self.manifest["parts"] = [p for p in self.manifest["parts"] if self._intact(p)]
        self.done = {p["name"] for p in self.manifest["parts"]}

    def _intact(self, part: dict) -> bool:
        """Whether a listed part's files are those written; a damaged one is said and embedded again."""
        if "files" not in part:
            return True
        try:
            _part_files({**part, "path": os.path.join(self.out, part["name"])})
            return True
        except DataError as e:
            print(f"grit-embed: {e} (damaged: embedding it again)", file=sys.stderr, flush=True)
            return False

    def has(self, index: int) -> bool:
        return part_name(index) in self.done

    def write_part(self, index: int, ids: list[str], vectors: np.ndarray, skipped_total: int):
        name = part_name(index)
        base = os.path.join(self.out, name)
        ids_bytes, npy = "".join(i + "\n" for i in ids).encode("utf-8"), io.BytesIO()
        np.save(npy, vectors.astype(np.float32))
        _atomic(base + ".ids", lambda f: f.write(ids_bytes))
        _atomic(base + ".npy", lambda f: f.write(npy.getvalue()))
        files = {".ids": _written(ids_bytes), ".npy": _written(npy.getvalue())}
        self.manifest["parts"].append({"name": name, "count": len(ids), "files": files})
        self.manifest["parts"].sort(key=lambda p: p["name"])
        self.manifest["dim"] = int(vectors.shape[1])
        self.manifest["skipped"] = skipped_total
        self.save()
        self.done.add(name)

    def finish(self, skipped: int, skipped_examples: list[str]):
        self.manifest.update(complete=True, skipped=skipped, skipped_examples=skipped_examples)
        self.manifest["count"] = sum(p["count"] for p in self.manifest["parts"])
        self.save()

    def save(self):
        _atomic(self.path, lambda f: f.write(json.dumps(self.manifest, indent=1).encode("utf-8")))


def read_manifest(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a grit-embed manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path}: not a grit-embed manifest (format {FORMAT!r} expected)")
    return manifest


def merge_hosts(out: str, process_count: int) -> dict:
    """manifest.json from every host's manifest (run on one process once all hosts finished)."""
    hosts = [read_manifest(os.path.join(out, f"manifest.host{p}.json")) for p in range(process_count)]
    incomplete = [p for p, m in enumerate(hosts) if not m.get("complete")]
    if incomplete:
        raise DataError(f"{out}: hosts {incomplete} have not finished; run grit-embed again to resume")
    merged = {
        "format": FORMAT,
        "settings": hosts[0]["settings"],
        "complete": True,
        "parts": sorted((p for m in hosts for p in m["parts"]), key=lambda p: p["name"]),
        "dim": next((m["dim"] for m in hosts if "dim" in m), None),
        # every host reads every record, so each counted every bad one
        "skipped": hosts[0].get("skipped", 0),
        "skipped_examples": hosts[0].get("skipped_examples", []),
    }
    merged["count"] = sum(p["count"] for p in merged["parts"])
    _atomic(os.path.join(out, MANIFEST), lambda f: f.write(json.dumps(merged, indent=1).encode("utf-8")))
    return merged


def load_embeddings(out: str) -> tuple[list[str], np.ndarray]:
    """(ids, float32 [n, D]) of every part of a finished grit-embed directory, in part order; each part's
    files are checked against the manifest and its ids against its rows (DataError if not, or if the run
    that writes it has not finished)."""
    manifest = read_manifest(os.path.join(out, MANIFEST))
    if not manifest.get("complete"):
        raise DataError(
            f"{out}: incomplete (its manifest says complete=false: the grit-embed run writing it stopped or "
            "is still running); run grit-embed again with the same arguments to finish it"
        )
    ids, vectors = [], []
    for part in manifest["parts"]:
        base = os.path.join(out, part["name"])
        if "files" in part:
            files = _part_files({**part, "path": base})
            part_ids = files[".ids"].decode("utf-8").split("\n")[:-1]
            rows = np.load(io.BytesIO(files[".npy"]))
        else:  # written before the manifest held sizes and checksums
            with open(base + ".ids", encoding="utf-8", newline="\n") as f:
                part_ids = f.read().split("\n")[:-1]
            rows = np.load(base + ".npy")
        if not len(part_ids) == len(rows) == part["count"]:
            raise DataError(
                f"{base}: {len(part_ids)} ids, {len(rows)} vectors, the manifest says {part['count']}"
            )
        ids.extend(part_ids)
        vectors.append(rows)
    dim = manifest.get("dim") or 0
    return ids, np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)
