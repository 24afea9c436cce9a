"""Shared pieces of the GPU validation suite: result rows, budgets, timing, memory, tolerances.

Every section of `suite.py` gets a `Recorder` (one JSON file per section, rewritten after every row so
that a section killed at its time limit still leaves what it measured) and a `Ctx` (mode, device,
folders, budget). Nothing here imports rlentropy.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PASS, FAIL, SKIP, INFO = "PASS", "FAIL", "SKIP", "INFO"

# Distributions the GPU machine provides (the list) and the wheels fetch_wheels.sh carries.
MACHINE_DISTS = ("torch", "transformers", "peft", "accelerate", "triton", "numpy", "pytest")
CARRIED_DISTS = (
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-inspection",
    "typing-extensions",
    "liger-kernel",
)


def canon(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return name.lower().replace("_", "-").replace(".", "-")


@dataclass
class Ctx:
    """What a section needs to know about the run.

    Attributes:
        dry: toy sizes on CPU (the `--dry-run` of run.sh) instead of real sizes on CUDA.
        out: the output folder (JSON, logs); small files only.
        work: scratch folder for models and run directories (large files; deleted by run.sh).
        budget_s: this section's wall-clock budget (soft: the section skips what no longer fits).
        started: time.monotonic() at the start of the section.
        console: a stream to the terminal (the section's stdout/stderr go to its log file).
    """

    dry: bool
    out: Path
    work: Path
    budget_s: float
    started: float = field(default_factory=time.monotonic)
    console: Any = None
    log_file: Any = None

    @property
    def device(self) -> str:
        return "cpu" if self.dry else "cuda"

    def left(self) -> float:
        """Seconds left of this section's budget."""
        return self.budget_s - (time.monotonic() - self.started)

    def log(self, msg: str) -> None:
        """A line to the section log and to the terminal."""
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        for stream in (self.log_file, self.console):
            if stream is not None:
                print(line, file=stream, flush=True)


def fmt(x: Any, digits: int = 3) -> str:
    """Compact number formatting for the table."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if math.isnan(x) or math.isinf(x):
            return str(x)
        if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
            return f"{x:.{digits - 1}e}"
        return f"{x:.{digits}g}"
    return str(x)


class Recorder:
    """Rows of one section, saved to `<out>/<section>.json` after every row.

    A row is {item, status, value, target, detail, number}: `status` is PASS / FAIL (a check or a
    target), INFO (a measured figure with no target) or SKIP (not run; `detail` says why), `number`
    the main figure as a float (for tests and later analysis), `value` its display form.
    """

    def __init__(self, section: str, ctx: Ctx):
        self.section = section
        self.ctx = ctx
        self.path = ctx.out / f"{section}.json"
        self.rows: list[dict[str, Any]] = []
        self.data: dict[str, Any] = {}
        self.status = "running"
        self.t0 = time.monotonic()
        self.modules: list[str] = []
        self.save()

    def _add(self, item: str, status: str, value: Any, target: str, detail: str, number: float | None) -> None:
        row = {
            "item": item,
            "status": status,
            "value": value if isinstance(value, str) else fmt(value),
            "target": target,
            "detail": detail,
            "number": _num(number if number is not None else value),
        }
        self.rows.append(row)
        shown = status if status != SKIP else f"SKIP({detail})"
        self.ctx.log(f"{self.section}: {item}: {row['value']} {('[' + target + ']') if target else ''} -> {shown}")
        self.save()

    def check(
        self, item: str, ok: bool, value: Any = "", target: str = "", detail: str = "", number: float | None = None
    ) -> bool:
        """A pass/fail row; returns `ok`."""
        self._add(item, PASS if ok else FAIL, value, target, detail, number)
        return bool(ok)

    def info(self, item: str, value: Any, detail: str = "", number: float | None = None) -> None:
        """A measured figure without a target."""
        self._add(item, INFO, value, "", detail, number)

    def skip(self, item: str, reason: str) -> None:
        """A row that was not run, with the reason (budget, OOM, missing package, ...)."""
        self._add(item, SKIP, "-", "", reason, None)

    def fail(self, item: str, err: BaseException | str) -> None:
        """A FAIL row for an exception (type and first line of the message)."""
        if isinstance(err, str):
            text = err
        else:
            lines = str(err).strip().splitlines()
            text = f"{type(err).__name__}: {lines[0] if lines else ''}"
        self._add(item, FAIL, "error", "", text[:300], None)

    def over_budget(self, item: str, need_s: float = 0.0) -> bool:
        """True (and a SKIP(budget) row for `item`) when less than `need_s` seconds are left."""
        if self.ctx.left() < need_s:
            self.skip(item, "budget")
            return True
        return False

    def save(self) -> None:
        doc = {
            "section": self.section,
            "mode": "dry-run" if self.ctx.dry else "gpu",
            "status": self.status,
            "wall_s": round(time.monotonic() - self.t0, 2),
            "rows": self.rows,
            "data": self.data,
            "modules": self.modules,
        }
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=1, default=str), encoding="utf-8")
        os.replace(tmp, self.path)


def _num(x: Any) -> float | None:
    if isinstance(x, bool):
        return float(x)
    if isinstance(x, (int, float)):
        return float(x)
    return None


# ------------------------------------------------------------------------------------------ timing


def sync(device: str) -> None:
    """Wait for the device (no-op on CPU)."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def time_once(fn: Callable[[], Any], device: str) -> float:
    """Seconds of one call: CUDA events on the GPU (after a synchronize), perf_counter on CPU."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_reps(fn: Callable[[], Any], device: str, *, max_reps: int = 5, target_s: float = 1.0) -> tuple[float, int]:
    """Median seconds over a few calls (the caller warms up first): one call when a call takes more
    than `target_s`, otherwise up to `max_reps` calls within about `target_s` (at least 2).

    Returns:
        (median seconds, number of timed calls).
    """
    times = [time_once(fn, device)]
    while len(times) < max_reps and (sum(times) < target_s or len(times) < 2) and times[0] < target_s:
        times.append(time_once(fn, device))
    times.sort()
    return times[len(times) // 2], len(times)


def peak_bytes(fn: Callable[[], Any], device: str) -> int | None:
    """Growth of the CUDA allocator's peak over what was allocated before `fn` (None on CPU)."""
    if device != "cuda":
        fn()
        return None
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated() - base)


def free_device_memory(device: str) -> None:
    """Collect garbage and return cached blocks (after an OOM or between large cases)."""
    import gc

    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


def is_oom(err: BaseException) -> bool:
    """Whether `err` is a CUDA (or CPU allocator) out-of-memory error."""
    import torch

    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(err, oom_type):
        return True
    return isinstance(err, (MemoryError, RuntimeError)) and "out of memory" in str(err).lower()


# ------------------------------------------------------------------------------------------ imports


def third_party_dists(modules: list[str]) -> dict[str, str]:
    """Top-level module names -> the distribution that provides them (stdlib and unknown left out)."""
    from importlib import metadata

    mapping = metadata.packages_distributions()
    out: dict[str, str] = {}
    for m in modules:
        if m in sys.stdlib_module_names or m.startswith("_"):
            continue
        for dist in mapping.get(m, []):
            out[m] = canon(dist)
    return out


def _unconditional(text: str, requirement: type) -> bool:
    """Whether a requirement string parses and applies without extras on this platform."""
    try:
        req = requirement(text)
        return req.marker is None or bool(req.marker.evaluate({"extra": ""}))
    except Exception:  # noqa: BLE001 - a malformed requirement or marker: not followed
        return False


def requirement_closure(roots: tuple[str, ...]) -> set[str]:
    """Installed distributions reachable from `roots` through their unconditional requirements."""
    from importlib import metadata

    try:
        from packaging.requirements import Requirement
    except ImportError:  # pragma: no cover - packaging ships with transformers
        return {canon(r) for r in roots}
    seen: set[str] = set()
    todo = [canon(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            reqs = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        for text in reqs:
            if _unconditional(text, Requirement):
                todo.append(canon(Requirement(text).name))
    return seen
