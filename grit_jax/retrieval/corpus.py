"""Reading document collections: JSONL records (`{"id", "text"}` or BEIR `{"_id", "title", "text"}`),
BEIR queries and qrels. Every bad record is a DataError naming `file:line`, or, when skipping, counted.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from grit_jax.errors import DataError

FIELDS = ("text", "title+text")


@dataclass
class Skipped:
    """Bad records left out (with --skip_bad): how many, and the first few `file:line: why`."""

    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, message: str):
        self.count += 1
        if len(self.examples) < 20:
            self.examples.append(message)


def utf8_line(raw: bytes) -> str:
    """A line of a file as text; ValueError when its bytes are not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 ({e.reason} at byte {e.start})") from None


def valid_text(text: str, what: str) -> str:
    """The text, or ValueError when it holds a lone surrogate (JSON's escaped "\\ud800" decodes to one,
    and no tokenizer can encode it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{what} holds a lone surrogate {text[e.start]!r} (not valid Unicode)") from None
    return text


def record_text(record: dict, text_field: str) -> str:
    """The text to embed: `text`, or with title+text the title, a space and the text (as the reference joins
    BEIR documents; a missing or empty title gives the text alone)."""
    text = record.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("missing or empty 'text'")
    title = record.get("title") if text_field == "title+text" else None
    return valid_text(f"{title} {text}" if isinstance(title, str) and title else text, "the text")


def check_id(rid) -> str:
    """The id as a string, or ValueError when it cannot be written one per line and read back the same
    (embedding_store's .ids files, TREC run files): empty, whitespace or control characters."""
    if rid is None or str(rid) == "":
        raise ValueError("missing 'id' (or BEIR '_id')")
    rid = str(rid)
    if any(c.isspace() or not c.isprintable() for c in rid):
        raise ValueError(f"id {rid!r} holds whitespace or a control character (ids are written one per line)")
    return rid


def read_records(
    paths: list[str], text_field: str = "text", skip_bad: bool = False, skipped: Skipped | None = None
) -> Iterator[tuple[str, str]]:
    """(id, text) of every record of the JSONL files in order; blank lines are ignored. Ids must be
    unique across the files and round-trip through a line of text (check_id)."""
    seen: set[str] = set()
    for path in paths:
        if not os.path.isfile(path):
            raise DataError(f"{path}: no such file")
        with open(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(utf8_line(raw))
                    if not isinstance(record, dict):
                        raise ValueError("not a JSON object")
                    rid = check_id(record.get("id", record.get("_id")))
                    if rid in seen:
                        raise ValueError(f"duplicate id {rid!r} (an earlier record has it)")
                    text = record_text(record, text_field)
                except ValueError as e:  # json.JSONDecodeError is a ValueError
                    message = f"{path}:{number}: {e}"
                    if not skip_bad:
                        raise DataError(
                            message + " (pass --skip_bad to skip and count bad records)"
                        ) from None
                    if skipped is not None:
                        skipped.add(message)
                    continue
                seen.add(rid)
                yield rid, text


def count_lines(paths: list[str]) -> int:
    """Non-blank lines of the files: the number of records, for progress and ETA."""
    total = 0
    for path in paths:
        if not os.path.isfile(path):
            raise DataError(f"{path}: no such file")
        with open(path, "rb") as f:
            total += sum(1 for line in f if line.strip())
    return total


def read_qrels(path: str) -> dict[str, dict[str, int]]:
    """BEIR qrels (TSV `query-id  corpus-id  score`, an optional header): {query id: {doc id: score}}."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file (the BEIR layout has qrels/test.tsv)")
    qrels: dict[str, dict[str, int]] = {}
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = utf8_line(raw)
                cols = line.rstrip("\r\n").split("\t")
                if not line.strip() or (number == 1 and cols[0] in ("query-id", "query_id", "qid")):
                    continue
                if len(cols) != 3:
                    raise ValueError(f"expected 3 tab-separated columns, got {len(cols)}")
                if not re.fullmatch(r"-?\d+", cols[2].strip()):
                    raise ValueError(f"relevance {cols[2]!r} is not an integer")
                qrels.setdefault(cols[0], {})[cols[1]] = int(cols[2])
            except ValueError as e:
                raise DataError(f"{path}:{number}: {e}") from None
    if not qrels:
        raise DataError(f"{path}: no judgements (empty qrels)")
    return qrels
