"""The method catalog, read from the registries: one row per registered method.

`rlentropy methods` prints it and docs/algorithms.md embeds `markdown_table()` (a test checks the two
agree), so the table cannot drift from the code: a method registered anywhere appears here with its
family, what it changes, when it runs, its defaults, its paper and which other frameworks ship it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlentropy.algorithms.advantages import ADVANTAGES
from rlentropy.algorithms.controllers import CONTROLLERS
from rlentropy.algorithms.controls import CONTROLS
from rlentropy.algorithms.losses import POLICY_LOSSES
from rlentropy.algorithms.registry import TOKEN_STATS_FIELDS, Registry

FAMILIES: dict[str, Registry[Any]] = {
    "advantage": ADVANTAGES,
    "loss": POLICY_LOSSES,
    "control": CONTROLS,
    "controller": CONTROLLERS,
}
"""Family name (as `rlentropy methods --family` takes it) → registry."""

CONFIG_KEY = {
    "advantage": "algorithm.advantage",
    "loss": "algorithm.loss",
    "control": "algorithm.control",
    "controller": "algorithm.controller",
}


@dataclass(frozen=True)
class MethodRow:
    """One catalog row.

    Attributes:
        name: registry name. family: advantage / loss / control / controller. changes: what it changes
        (advantage, loss, mask, loss term, coefficient). stage: when it runs ("old", "current", or
        both, default first). reads: the TokenStats fields it reads. defaults: `k=v` of its parameters
        (required ones as `k=?`). paper: source. also_in: other frameworks that ship it. summary: one line.
    """

    name: str
    family: str
    changes: str
    stage: str
    reads: str
    defaults: str
    paper: str
    also_in: str
    summary: str


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return value
    return repr(value)


def rows(family: str | None = None) -> list[MethodRow]:
    """Every registered method (of one family), in registration order within each family."""
    out = []
    for fam, reg in FAMILIES.items():
        if family is not None and fam != family:
            continue
        for spec in reg.specs():
            params = [f"{k}=?" for k in spec.required] + [f"{k}={_fmt(v)}" for k, v in spec.defaults.items()]
            reads = [f for f in spec.inputs if f in TOKEN_STATS_FIELDS]
            changes = spec.changes
            if fam == "controller":
                changes = f"{spec.drives} of {' / '.join(spec.controls)}"
            out.append(
                MethodRow(
                    name=spec.name,
                    family=fam,
                    changes=changes,
                    stage=" / ".join(spec.stages),
                    reads=", ".join(reads),
                    defaults=", ".join(params),
                    paper=spec.paper,
                    also_in=", ".join(spec.also_in),
                    summary=spec.summary,
                )
            )
    return out


HEADERS = ("name", "family", "changes", "stage", "reads", "defaults", "also in", "paper")


def markdown_table(family: str | None = None) -> str:
    """The catalog as a markdown table (what docs/algorithms.md embeds)."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|") or "–"

    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for r in rows(family):
        values = (f"`{r.name}`", r.family, r.changes, r.stage, r.reads, r.defaults, r.also_in, r.paper)
        lines.append("| " + " | ".join(cell(v) for v in values) + " |")
    return "\n".join(lines) + "\n"


def markdown_notes(family: str | None = None) -> str:
    """Per method with notes: where we chose a detail a paper leaves open, the evidence behind a formula
    or default, and where we differ from upstream (what docs/algorithms.md embeds under the table)."""
    lines = []
    for fam, reg in FAMILIES.items():
        if family is not None and fam != family:
            continue
        for spec in reg.specs():
            if spec.notes:
                summary = f" — {spec.summary}" if spec.summary else ""
                lines.append(f"- **`{spec.name}`** ({fam}){summary}. {spec.notes}")
    return "\n".join(lines) + "\n"
