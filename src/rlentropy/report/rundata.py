"""Read a run directory (metrics.jsonl, config.yaml, eval/, dynamics/) for the report.

Key names written by the trainer (docs/training.md) and the probes (docs/dynamics.md) are mapped to
the report's logical names in the tables at the top of this module and nowhere else: `METRIC_KEYS`
(scalars; the first key present in a run wins), `CONTROL_KEYS` (removed-token fraction of the run's
control), `QUADRANT_KEY_PATTERNS` (the four quadrant contributions) and `DYNAMICS_ARRAYS` (arrays in
dynamics/step_N.npz).

Robustness: a directory without `metrics.jsonl`, `config.yaml` or `eval/` is not a run (UserError);
a truncated last line of metrics.jsonl (a run killed mid-write) is skipped with one warning; a bad
line elsewhere is a DataError naming the file and line; null / NaN values become NaN (gaps in plots).
"""

from __future__ import annotations

import csv
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlentropy.errors import DataError, UserError

# logical name -> keys of metrics.jsonl to try, in order. The trainer's names (docs/training.md) come
# first; the others are the names other trainers use, so hand-made runs work too.
METRIC_KEYS: dict[str, tuple[str, ...]] = {
    "step": ("step",),
    "time": ("wall_time", "time", "elapsed_s"),
    "entropy": ("entropy/mean", "entropy", "actor/entropy"),
    "surprisal": ("entropy/surprisal", "surprisal"),
    "reward": ("reward/mean", "reward_mean", "reward"),
    "pass_rate": ("reward/pass_rate", "pass_rate", "accuracy"),
    "response_len": ("response/length_mean", "response_length", "response_len"),
    "pred_dH": ("probe/step_pred_dH", "pred_dH"),  # docs/dynamics.md: ∇H·Δθ on the probe batch
    "meas_dH": ("probe/step_meas_dH", "meas_dH"),  # H(θ_after) − H(θ_before) on the same batch
    "lr": ("optim/lr", "lr"),
}

# Fraction of response tokens taken out of the gradient by the run's entropy control, and the config
# entry that names the control: mask controls (Clip_B, Clip_V, high-entropy, quadrant) report
# control/frac_removed; the Clip-Cov / KL-Cov losses report control/frac_selected.
CONTROL_KEYS: dict[str, str] = {
    "control/frac_removed": "algorithm.control",
    "control/frac_selected": "algorithm.loss",
}
NO_CONTROL = ("none", "ppo", "gspo", "cispo", "ce_gppo")

# quadrant contributions to the first-order ΔH per probed step: regex, group 1 = the quadrant.
QUADRANT_KEY_PATTERNS: tuple[str, ...] = (r"^probe/quad_(pos_high|pos_low|neg_high|neg_low)/dH$",)

QUADRANT_ORDER = ("pos_high", "pos_low", "neg_high", "neg_low")

# arrays in dynamics/step_N.npz (written by rlentropy.train.probes): logical name -> keys to try.
DYNAMICS_ARRAYS: dict[str, tuple[str, ...]] = {
    "s": ("S", "s"),
    "s_bar": ("s_bar",),
    "mask": ("loss_mask", "mask", "response_mask"),
    "fisher": ("fisher_kernel",),
    "fisher_eig": ("fisher_eigvals",),
}

# eval/metrics.csv columns: "step" plus metric names from `rlentropy.evaluate` (pass@k, avg@n, ...).
EVAL_STEP_RE = re.compile(r"^step_(\d+)$")
DYN_STEP_RE = re.compile(r"^step_(\d+)\.npz$")


class TruncatedMetricsWarning(UserWarning):
    """metrics.jsonl ended in an incomplete line (the run was killed mid-write); it was skipped."""


def _to_float(value: Any) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return math.nan
    return math.nan


def read_metrics_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete JSON line of ``path``; a truncated LAST line is skipped with one warning.

    Raises:
        DataError: a malformed line other than the last, or a line that is not a JSON object.
    """
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    # A file killed mid-write has no final newline; its last piece may be a partial object.
    rows: list[dict[str, Any]] = []
    last_idx = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            if i == last_idx:
                warnings.warn(
                    f"{path}: line {i + 1} is incomplete (run killed mid-write?); read the {len(rows)} complete lines",
                    TruncatedMetricsWarning,
                    stacklevel=2,
                )
                break
            raise DataError(f"{path}:{i + 1}: not valid JSON ({err.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{i + 1}: expected a JSON object, got {type(obj).__name__}")
        rows.append(obj)
    return rows


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise DataError(f"{path}: not valid YAML ({err})") from None
    return data if isinstance(data, dict) else {}


def read_eval_table(run_dir: Path) -> list[dict[str, float]]:
    """Eval rows sorted by step: ``eval/step_N/metrics.json`` files, else ``eval/metrics.csv``."""
    eval_dir = run_dir / "eval"
    if not eval_dir.is_dir():
        return []
    rows: dict[int, dict[str, float]] = {}
    for sub in eval_dir.iterdir():
        m = EVAL_STEP_RE.match(sub.name)
        f = sub / "metrics.json"
        if not (m and f.is_file()):
            continue
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataError(f"{f}: not valid JSON ({err.msg})") from None
        row = {k: _to_float(v) for k, v in data.items() if v is None or isinstance(v, (int, float))}
        row["step"] = float(m.group(1))
        rows[int(m.group(1))] = row
    if not rows and (eval_dir / "metrics.csv").is_file():
        with open(eval_dir / "metrics.csv", newline="", encoding="utf-8") as fh:
            for rec in csv.DictReader(fh):
                row = {k: _to_float(v) for k, v in rec.items() if k}
                if math.isfinite(row.get("step", math.nan)):
                    rows[int(row["step"])] = row
    return [rows[s] for s in sorted(rows)]


@dataclass
class RunData:
    """One run as the report sees it.

    Attributes:
        path: the run directory.
        name: display name (the directory name, made unique by `load_runs`).
        config: config.yaml as a dict ({} when absent).
        rows: metrics.jsonl objects in file order.
        eval_rows: eval metrics per evaluated step (each has "step").
        dynamics: step -> path of dynamics/step_N.npz.
    """

    path: Path
    name: str
    config: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    eval_rows: list[dict[str, float]] = field(default_factory=list)
    dynamics: dict[int, Path] = field(default_factory=dict)

    def raw_keys(self) -> set[str]:
        keys: set[str] = set()
        for r in self.rows:
            keys.update(r)
        return keys

    def resolve(self, logical: str) -> str | None:
        """The metrics.jsonl key used for a logical name in this run (None when absent)."""
        keys = self.raw_keys()
        for k in METRIC_KEYS[logical]:
            if k in keys:
                return k
        return None

    def steps(self) -> np.ndarray:
        """[R] float64 step of each row (row index when the row has no step)."""
        out = np.empty(len(self.rows), dtype=np.float64)
        for i, r in enumerate(self.rows):
            v = _to_float(r.get("step"))
            out[i] = v if math.isfinite(v) else float(i)
        return out

    def raw_series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps [R], values [R]) of a raw key; missing / null / non-numeric values are NaN."""
        vals = np.array([_to_float(r.get(key)) for r in self.rows], dtype=np.float64)  # [R]
        return self.steps(), vals

    def series(self, logical: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(steps, values) of a logical metric, or None when the run never logged it (or only NaN)."""
        key = self.resolve(logical)
        if key is None:
            return None
        steps, vals = self.raw_series(key)
        if not np.isfinite(vals).any():
            return None
        return steps, vals

    def family(self, patterns: tuple[str, ...]) -> dict[str, str]:
        """{group name: raw key} for the keys matching a pattern table (first pattern wins per name)."""
        found: dict[str, str] = {}
        keys = sorted(self.raw_keys())
        for pat in patterns:
            rx = re.compile(pat)
            for k in keys:
                m = rx.match(k)
                if m and m.group(1) not in found:
                    found[m.group(1)] = k
        return found

    def controls(self) -> list[tuple[str, str]]:
        """[(control name, raw key)] of the removed-token fractions this run logged (see CONTROL_KEYS).

        A run whose config names no control (algorithm.control none and a plain loss) has none, even
        though the trainer logs zeros for it.
        """
        keys = self.raw_keys()
        out = []
        for key, cfg_path in CONTROL_KEYS.items():
            if key not in keys:
                continue
            cur: Any = self.config
            for part in cfg_path.split("."):
                cur = cur.get(part) if isinstance(cur, dict) else None
            if cur is None:
                _, v = self.raw_series(key)
                if not (np.isfinite(v) & (v != 0)).any():
                    continue
                name = key.rsplit("/", 1)[-1]
            else:
                name = str(cur)
                if name in NO_CONTROL:
                    continue
            out.append((name, key))
        return out

    def eval_series(self, column: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(steps, values) of an eval column, or None when absent."""
        pts = [(r["step"], r.get(column, math.nan)) for r in self.eval_rows if column in r]
        if not pts or not any(math.isfinite(v) for _, v in pts):
            return None
        arr = np.array(pts, dtype=np.float64)  # [E, 2]
        return arr[:, 0], arr[:, 1]

    def eval_columns(self, prefix: str) -> list[str]:
        """Eval columns starting with ``prefix`` (e.g. "pass@"), ordered by their k."""
        cols: set[str] = set()
        for r in self.eval_rows:
            cols.update(c for c in r if c.startswith(prefix))

        def _k(c: str) -> float:
            try:
                return float(c[len(prefix) :])
            except ValueError:
                return math.inf

        return sorted(cols, key=_k)

    def load_dynamics(self, step: int) -> dict[str, np.ndarray]:
        """The arrays of dynamics/step_N.npz under their logical names (absent ones left out)."""
        path = self.dynamics[step]
        try:
            with np.load(path, allow_pickle=False) as data:
                out: dict[str, np.ndarray] = {}
                for logical, cands in DYNAMICS_ARRAYS.items():
                    for c in cands:
                        if c in data.files:
                            out[logical] = np.asarray(data[c])
                            break
                return out
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: cannot read ({err})") from None


def load_run(path: Path | str) -> RunData:
    """Read one run directory.

    Raises:
        UserError: ``path`` is not a directory or holds none of metrics.jsonl, config.yaml, eval/.
    """
    run = Path(path)
    if not run.is_dir():
        raise UserError(f"{run}: not a run directory (does not exist or is not a directory)")
    has_metrics = (run / "metrics.jsonl").is_file()
    has_config = (run / "config.yaml").is_file()
    has_eval = (run / "eval").is_dir()
    if not (has_metrics or has_config or has_eval):
        raise UserError(f"{run}: not a run directory (no metrics.jsonl, config.yaml or eval/)")
    data = RunData(path=run, name=run.resolve().name)
    if has_config:
        data.config = _read_yaml(run / "config.yaml")
    if has_metrics:
        data.rows = read_metrics_jsonl(run / "metrics.jsonl")
    data.eval_rows = read_eval_table(run)
    dyn = run / "dynamics"
    if dyn.is_dir():
        for f in dyn.iterdir():
            m = DYN_STEP_RE.match(f.name)
            if m and f.is_file():
                data.dynamics[int(m.group(1))] = f
    return data


def load_runs(paths: list[Path | str]) -> list[RunData]:
    """`load_run` for each path; duplicate display names get a ``#2``, ``#3`` suffix."""
    if not paths:
        raise UserError("report: give at least one run directory")
    runs = [load_run(p) for p in paths]
    seen: dict[str, int] = {}
    for r in runs:
        c = seen.get(r.name, 0) + 1
        seen[r.name] = c
        if c > 1:
            r.name = f"{r.name}#{c}"
    return runs
