"""Appending one row to a table section of benchmarks/RESULTS.md (the section is created on first use)."""

from __future__ import annotations

import os

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")


def add_row(heading: str, preamble: str, row: str, path: str = RESULTS) -> None:
    """Appends `row` to the section titled `heading`, which starts with `preamble` (its text and table head)
    when the section does not exist yet; the sections after it stay where they are."""
    text = open(path, encoding="utf-8").read() if os.path.exists(path) else "# Benchmark results\n"
    if heading not in text:
        text = text.rstrip("\n") + f"\n\n{heading}\n\n{preamble}"
    start = text.index(heading)
    following = text.find("\n## ", start + len(heading))
    end = len(text) if following < 0 else following + 1
    section = text[start:end].rstrip("\n") + "\n" + row
    text = text[:start] + section + ("\n" + text[end:] if following >= 0 else "")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
