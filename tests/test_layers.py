"""The package's layers point one way, and the trainer's functions stay small.

Every `import rlentropy.<x>` anywhere in a module — top level or inside a function — must go to a
package of a lower layer (or its own package). A function-level import does not hide a cycle from
this test. Layers (docs/architecture.md):
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "rlentropy"

LAYERS: dict[str, int] = {
    "errors": 0,
    "tokenstats": 1,
    "algorithms": 2,
    "dynamics": 3,
    "rewards": 4,
    "data": 5,
    "rollout": 6,
    "models": 7,
    "runs": 8,
    "evaluate": 9,
    "report": 9,
    "train": 10,
    "integrations": 10,
    "studies": 11,
    "check": 11,
    "cli": 12,
    "__init__": 12,
    "__main__": 12,
}


def _package(path: Path) -> str:
    return path.relative_to(SRC).parts[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported rlentropy package) of every import in the file, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names if node.module == "rlentropy"]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "rlentropy" and len(parts) > 1:
                out.append((node.lineno, parts[1]))
    return out


def test_every_package_has_a_layer():
    packages = {_package(p) for p in SRC.rglob("*.py")}
    assert packages <= set(LAYERS), packages - set(LAYERS)


def test_imports_point_down():
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        own = _package(path)
        for line, target in _imports(path):
            if target == own:
                continue
            if LAYERS[target] >= LAYERS[own]:
                bad.append(
                    f"{path.relative_to(SRC)}:{line}: {own} (layer {LAYERS[own]}) imports {target} "
                    f"(layer {LAYERS[target]})"
                )
    assert not bad, "\n".join(bad)


def test_the_checker_sees_function_level_imports(tmp_path):
    # A function-level upward import is caught like a top-level one (the test cannot pass vacuously).
    f = tmp_path / "mod.py"
    f.write_text("def f():\n    from rlentropy.train.trainer import Trainer\n    return Trainer\n")
    assert _imports(f) == [(2, "train")]


@pytest.mark.parametrize("path", sorted((SRC / "train").glob("*.py")), ids=lambda p: p.name)
def test_trainer_functions_are_at_most_60_lines(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    long = [
        f"{n.name}: {n.end_lineno - n.lineno + 1} lines"
        for n in ast.walk(tree)
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 60
    ]
    assert not long, long
