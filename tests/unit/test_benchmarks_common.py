"""benchmarks/common.py's RESULTS.md edits: a result goes first in its topic's section (its table's
first row, or the section's first entry), and the other sections stay byte for byte."""

import re

from benchmarks.common import RESULTS, _anchor, add_entry, add_row

DOC = """# Benchmark results

## Index

- [A](#a)
- [B](#b)

## A

What A measures.

### A, 2026-11-27

| x | date |
|---|---|
| 2 | 2026-11-27 |
| 1 | 2026-11-26 |

### A, 2026-11-26

older text

## B

B's only entry.
"""
HEAD = "| x | date |\n|---|---|\n"


def test_add_row_puts_the_row_first_in_its_table(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text(DOC)
    add_row("A", "### A, new table\n\nWhat.\n\n" + HEAD, "| 3 | 2026-12-02 |", path=str(path))
    assert path.read_text() == DOC.replace(HEAD, HEAD + "| 3 | 2026-12-02 |\n")


def test_add_row_without_its_table_adds_the_newest_entry(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text(DOC)
    add_row("A", "### A, new table\n\n| y |\n|---|\n", "| 9 |\n", path=str(path))
    text = path.read_text()
    assert text == DOC.replace(
        "### A, 2026-11-27", "### A, new table\n\n| y |\n|---|\n| 9 |\n\n### A, 2026-11-27"
    )


def test_add_entry_first_in_section_and_new_topics_at_the_end(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text(DOC)
    add_entry("B", "### B, 2026-12-02\n\nnew figure\n", path=str(path))
    assert path.read_text() == DOC + "\n### B, 2026-12-02\n\nnew figure\n"
    add_entry("C (new, 2x)", "### C, 2026-12-02\n\nfirst\n", path=str(path))
    assert path.read_text().endswith("new figure\n\n## C (new, 2x)\n\n### C, 2026-12-02\n\nfirst\n")
    assert "- [B](#b)\n- [C (new, 2x)](#c-new-2x)\n\n## A" in path.read_text()
    add_entry("A", "### A, 2026-12-02\n\nnewest\n", path=str(path))
    text = path.read_text()
    assert text.index("### A, 2026-12-02") < text.index("### A, 2026-11-27") < text.index("## B")


def test_results_index_lists_every_topic():
    text = open(RESULTS, encoding="utf-8").read()
    topics = [t for t in re.findall(r"^## (.+)$", text, flags=re.M) if t != "Index"]
    index = text.split("\n## Index\n", 1)[1].split("\n## ", 1)[0]
    assert re.findall(r"^- \[(.+?)\]\(#(.+?)\)", index, flags=re.M) == [(t, _anchor(t)) for t in topics]
