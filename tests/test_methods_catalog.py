"""The method catalog: `rlentropy methods` lists every registry entry, and docs/algorithms.md embeds the
current table (regenerate it with `rlentropy methods --markdown`)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from rlentropy.algorithms.catalog import FAMILIES, markdown_notes, markdown_table, rows

DOC = Path(__file__).resolve().parents[1] / "docs" / "algorithms.md"


def test_every_registered_method_is_a_row():
    names = {(r.family, r.name) for r in rows()}
    expected = {(fam, name) for fam, reg in FAMILIES.items() for name in reg.names()}
    assert names == expected and len(names) >= 17


def test_docs_table_is_current():
    text = DOC.read_text(encoding="utf-8")
    m = re.search(r"<!-- methods-table:start -->\n(.*?)<!-- methods-table:end -->", text, re.S)
    assert m, "docs/algorithms.md lost its methods-table markers"
    assert m.group(1) == markdown_table(), "docs/algorithms.md is stale: paste `rlentropy methods --markdown`"
    notes = re.search(r"<!-- methods-notes:start -->\n(.*?)<!-- methods-notes:end -->", text, re.S)
    assert notes and notes.group(1) == markdown_notes(), "docs/algorithms.md notes are stale (catalog.markdown_notes)"


def test_cli_prints_the_table_and_rejects_a_bad_family():
    out = subprocess.run(
        [sys.executable, "-m", "rlentropy.cli", "methods", "--markdown", "--family", "control"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and out.stdout == markdown_table("control")
    assert "`clip_b` | control | mask | old | s | mu=2.5" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "rlentropy.cli", "methods", "--family", "losses"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "error: --family: 'losses' is not allowed; allowed: advantage, loss, control, controller"
    )
