"""Where the metrics go: metrics.jsonl (the source of truth), TensorBoard, wandb, a rich progress bar,
and gzipped rollout dumps.
"""

from __future__ import annotations

import gzip
import json
import math
import os
from pathlib import Path
from typing import Any

from rlentropy.errors import ConfigError

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
    tmp.write_text("".join(k + "\n" for k in keep), encoding="utf-8")
    os.replace(tmp, path)


class MetricsSink:
    """Appends one JSON object per step to metrics.jsonl and mirrors scalars to TensorBoard / wandb.

    Args:
        run_dir: the run directory.
        tensorboard: write run_dir/tensorboard event files.
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
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        if wandb_mod is not None:
            self._wandb = wandb_mod.init(project=wandb_project, name=run_name, config=config or {}, dir=str(run_dir))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Write one step's scalars (already Python floats / ints)."""
        record = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value)):
                    self._tb.add_scalar(key, float(value), step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


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
    with gzip.open(tmp, "wt", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    os.replace(tmp, path)
