"""Where the metrics go: metrics.jsonl (the source of truth), TensorBoard, wandb, a rich progress bar,
gzipped rollout dumps, run_info.json (what each session ran with: threads, versions, data counts,
notices) and the notices printed on stderr.

Every writer turns a full disk into `DiskFullError` naming its path (`rlentropy.errors.writing`).
"""

from __future__ import annotations

import gzip
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlentropy.errors import ConfigError, writing

PROGRESS_KEYS = (("reward/mean", "R"), ("entropy/mean", "H"), ("control/frac_controlled", "ctl"))


def _clean(value: Any) -> Any:
    """JSON-safe scalar: NaN / Inf become None (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop lines of metrics.jsonl whose step is > `last_step` (used when resuming)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line from a crash
        if int(rec.get("step", 0)) <= last_step:
            keep.append(line)
    tmp = path.with_suffix(".jsonl.tmp")
    with writing(path):
        tmp.write_text("".join(k + "\n" for k in keep), encoding="utf-8")
    os.replace(tmp, path)


def set_aside(path: Path) -> Path | None:
    """Rename `path` to `<name>.aborted-<YYYYmmdd-HHMMSS>` (kept, out of the way); None when absent."""
    if not path.exists():
        return None
    target = path.with_name(f"{path.name}.aborted-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while target.exists():
        target, n = path.with_name(f"{path.name}.aborted-{time.strftime('%Y%m%d-%H%M%S')}-{n}"), n + 1
    os.replace(path, target)
    return target


def notify(message: str) -> None:
    """One line the user must see while a run starts (skipped rows, a restart), on stderr."""
    print(message, file=sys.stderr, flush=True)


@dataclass
class RunInfo:
    """What a session of a run ran with, appended to run_dir/run_info.json as {"sessions": [...]}."""

    threads: int | None = None
    data: dict[str, Any] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)

    def write(self, run_dir: Path, **session: Any) -> Path:
        """Append this session (time, torch threads, versions, `session`, data counts, notices)."""
        import torch
        import transformers

        path = Path(run_dir) / "run_info.json"
        sessions: list[Any] = []
        if path.is_file():
            try:
                sessions = list(json.loads(path.read_text(encoding="utf-8")).get("sessions", []))
            except (ValueError, AttributeError):
                sessions = []
        sessions.append(
            {
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "torch_threads": self.threads,
                "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
                **session,
                "data": self.data,
                "notices": self.notices,
            }
        )
        tmp = path.with_name(path.name + ".tmp")
        with writing(path):
            tmp.write_text(json.dumps({"sessions": sessions}, indent=1, default=str), encoding="utf-8")
        os.replace(tmp, path)
        return path


class MetricsSink:
    """Appends one JSON object per step to metrics.jsonl and mirrors scalars to TensorBoard / wandb.

    Args:
        run_dir: the run directory.
        tensorboard: write run_dir/tensorboard event files.
        purge_step: on resume, the first step to log again (the checkpoint's step + 1): TensorBoard
            drops its earlier events of that step and later ones, so no step shows twice.
        wandb: also log to Weights & Biases (raises ConfigError when the package is missing).
        wandb_project: the wandb project. run_name: the wandb run name. config: logged to wandb.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        tensorboard: bool,
        wandb: bool,
        wandb_project: str = "rlentropy",
        run_name: str = "run",
        config: dict[str, Any] | None = None,
        purge_step: int | None = None,
    ) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tb = None
        self._wandb = None
        wandb_mod = None
        if wandb:
            try:
                import wandb as wandb_mod
            except ImportError as err:
                raise ConfigError(
                    "logging.wandb: the wandb package is not installed (pip install 'rlentropy[wandb]')"
                ) from err
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tb_dir = Path(run_dir) / "tensorboard"
        with writing(self.path):
            self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            with writing(self._tb_dir):
                self._tb = SummaryWriter(log_dir=str(self._tb_dir), purge_step=purge_step)
        if wandb_mod is not None:
            self._wandb = wandb_mod.init(project=wandb_project, name=run_name, config=config or {}, dir=str(run_dir))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Write one step's scalars (already Python floats / ints)."""
        record = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        with writing(self.path):
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        if self._tb is not None:
            with writing(self._tb_dir):
                for key, value in metrics.items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value)):
                        self._tb.add_scalar(key, float(value), step)
                self._tb.flush()
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    def close(self) -> None:
        """Close every sink (all of them, even when one fails; the first failure is raised)."""
        failures: list[Exception] = []
        for target, close in (
            (self.path, self._file.close),
            (self._tb_dir, self._tb.close if self._tb is not None else None),
            ("wandb", self._wandb.finish if self._wandb is not None else None),
        ):
            if close is None:
                continue
            try:
                with writing(target):
                    close()
            except Exception as err:  # noqa: BLE001 - closed the others first, raised below
                failures.append(err)
        if failures:
            raise failures[0]


class Progress:
    """A rich progress bar with ETA and the key metrics; a no-op when `enabled` is False."""

    def __init__(self, total: int, *, start: int = 0, enabled: bool = True, description: str = "train") -> None:
        self.enabled = enabled
        self._bar = None
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import (
            Progress as RichProgress,
        )

        self._bar = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            transient=False,
        )
        self._task = self._bar.add_task(description, total=total, completed=start, info="")
        self._bar.start()

    def update(self, step: int, metrics: dict[str, Any]) -> None:
        if self._bar is None:
            return
        parts = []
        for key, short in PROGRESS_KEYS:
            v = metrics.get(key)
            if isinstance(v, (int, float)):
                parts.append(f"{short}={v:.3g}")
        self._bar.update(self._task, completed=step, info=" ".join(parts))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def write_rollouts(path: Path, rows: list[dict[str, Any]]) -> None:
    """rollouts/step_N.jsonl.gz: one JSON object per sampled sequence."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with writing(path), gzip.open(tmp, "wt", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    os.replace(tmp, path)
