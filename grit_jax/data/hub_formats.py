"""The training data as the Hugging Face hub publishes it, read by `grit-data prepare` as it is downloaded.

- Files: JSONL (`*.jsonl`) and parquet shards (`*.parquet`, e.g. `data/train-00000-of-00004.parquet`),
  given as files, directories (searched recursively, hidden folders such as `.cache/` skipped) or glob
  patterns, on local disk or under gs:// (copied to this host first: the readers open local files).
- Embedding records (GritLM/MEDI2, MEDI2BGE, the reference's E5 format): `query` [instruction, text],
  `pos` and `neg` lists of [instruction, text]; other columns are ignored, null columns are absent.
- Generative records: the reference's `text` (user and assistant turns), or the chat layout of
  allenai/tulu-v2-sft-mixture and most hub chat sets, `messages` [{role, content}], turned into `text`
  (a system message goes before the first user turn, separated by a blank line).
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

from grit_jax import storage
from grit_jax.errors import DataError

SUFFIXES = (".jsonl", ".parquet")
_GLOB = "*?["


def is_parquet(path: str) -> bool:
    return path.endswith(".parquet")


def _data_files(root: str) -> list[str]:
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        found += [os.path.join(directory, f) for f in files if f.endswith(SUFFIXES)]
    return sorted(found)


def expand_paths(paths: Sequence[str]) -> list[str]:
    """Every data file named by PATHs (a file, a directory or a glob; local or gs://), in order."""
    files = []
    for path in paths:
        local = _download(path) if storage.is_url(path) else path
        if any(c in path for c in _GLOB) and not storage.is_url(path):
            found = sorted(f for f in glob.glob(path, recursive=True) if f.endswith(SUFFIXES))
            if not found:
                raise DataError(f"{path}: the pattern matches no *.jsonl or *.parquet file")
            files.extend(found)
        elif os.path.isdir(local):
            found = _data_files(local)
            if not found:
                raise DataError(f"{path}: directory holds no *.jsonl or *.parquet file")
            files.extend(found)
        elif os.path.isfile(local):
            files.append(local)
        else:
            raise DataError(f"{path}: no such file or directory")
    return files


def _remote_files(directory):
    """Data files under a bucket directory (epath's rglob refuses gs://), hidden folders skipped."""
    for path in directory.iterdir():
        if path.is_dir():
            if not path.name.startswith("."):
                yield from _remote_files(path)
        elif path.name.endswith(SUFFIXES):
            yield path


def _download(url: str) -> str:
    """A local copy of a gs:// file (the file), or of a directory's or a glob's data files (a directory
    holding them at their relative paths). Removed when the process ends, like storage.local_copy's."""
    single = False
    if any(c in url for c in _GLOB):
        root = url[: min(url.find(c) for c in _GLOB if c in url)].rsplit("/", 1)[0]
        base = storage.as_path(root, "data path")
        remote = [p for p in base.glob(url[len(root) + 1 :]) if p.name.endswith(SUFFIXES)]
        if not remote:
            raise DataError(f"{url}: the pattern matches no *.jsonl or *.parquet file")
    else:
        base = storage.as_path(url, "data path")
        if base.is_dir():
            remote = list(_remote_files(base))
        elif base.exists():
            remote, base, single = [base], base.parent, True
        else:
            raise DataError(f"{url}: no such file or directory")
    local = tempfile.mkdtemp(prefix="grit_jax_hub_")
    atexit.register(shutil.rmtree, local, ignore_errors=True)
    for path in sorted(remote, key=str):
        target = os.path.join(local, os.path.relpath(str(path), str(base)))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with path.open("rb") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
    return os.path.join(local, remote[0].name) if single else local


def read_parquet(path: str, parse) -> Iterator[tuple[int, Any, str | None]]:
    """Yields (row number from 1, parsed record or None, error or None), as sources.read_jsonl does."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading parquet needs pyarrow: pip install pyarrow") from None
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
    except Exception as e:  # pyarrow's errors for a file that is not parquet
        raise DataError(f"{path}: not a parquet file ({type(e).__name__}: {e})") from None
    row = 0
    for batch in batches:
        for obj in batch.to_pylist():
            row += 1
            try:
                yield row, parse({k: v for k, v in obj.items() if v is not None}), None
            except DataError as e:
                yield row, None, str(e)


def messages_to_text(obj: Any) -> Any:
    """A `messages` record as the reference's `text` turns; any other record unchanged."""
    if not isinstance(obj, dict) or "text" in obj or "messages" not in obj:
        return obj
    messages = obj["messages"]
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages
    ):
        raise DataError("field 'messages' must be a list of {role, content} objects with string values")
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    turns = [m for m in messages if m["role"] != "system"]
    roles = [m["role"] for m in turns]
    if not turns or len(turns) % 2 or roles != ["user", "assistant"] * (len(turns) // 2):
        raise DataError(
            f"field 'messages' must alternate user and assistant turns, from a user's to an assistant's "
            f"(a system message may come first); got roles {roles}"
        )
    text = [m["content"] for m in turns]
    if system:
        text[0] = f"{system}\n\n{text[0]}"
    return {"text": text}
