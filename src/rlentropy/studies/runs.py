"""Runs of a study that survive a kill: a finished run is never trained again, an interrupted one resumes.

    trainer = train_to_end(cfg)          # None when cfg's run_dir already holds the finished run
    history = read_history(cfg.resolved_run_dir())

A run directory belongs to a config when its config.yaml is that config, apart from keys that do not
change what is computed (`train.threads`); a directory holding another config's run is replaced. A
run is finished when its newest complete checkpoint is at `train.steps` (studies keep
`checkpoint.save_final`); otherwise it resumes from its newest checkpoint, or starts again from step
0 when it has none (`rlentropy train --resume` semantics).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlentropy.runs.checkpoints import latest_checkpoint, list_checkpoints
from rlentropy.runs.config import RunConfig, config_from_dict, read_yaml
from rlentropy.train.run import run_training

EXECUTION_ONLY = (("train", "threads"),)
"""Config keys that change how fast a run goes, not what it computes."""


def _comparable(data: dict[str, Any]) -> dict[str, Any]:
    data = json.loads(json.dumps(data))
    for section, key in EXECUTION_ONLY:
        if isinstance(data.get(section), dict):
            data[section].pop(key, None)
    return data


def same_config(run_dir: str | Path, cfg: RunConfig) -> bool:
    """True when `run_dir/config.yaml` is `cfg` (execution-only keys aside)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return False
    try:
        saved = read_yaml(path)
    except Exception:  # noqa: BLE001 - an unreadable config.yaml is not this config
        return False
    try:  # read as the current schema (a key's old spelling, rollout.engine: hf, is the same config)
        saved = config_from_dict(saved).model_dump(mode="json")
    except Exception:  # noqa: BLE001 - a config.yaml this version cannot read is not this config
        return False
    return _comparable(saved) == _comparable(cfg.model_dump(mode="json"))


def is_finished(run_dir: str | Path, cfg: RunConfig) -> bool:
    """`run_dir` holds `cfg`'s run with a checkpoint at its last step."""
    last = latest_checkpoint(run_dir)
    return same_config(run_dir, cfg) and last is not None and last[0] >= cfg.train.steps


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every step's metrics of a run (metrics.jsonl, all sessions; null stays None)."""
    path = Path(run_dir) / "metrics.jsonl"
    out = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a torn last line
    return out


def train_to_end(cfg: RunConfig, *, quiet: bool = True, train_fn: Callable[..., Any] = run_training) -> Any:
    """Bring `cfg`'s run to `train.steps`: start it, resume it, or nothing when it is finished.

    Returns:
        The trainer of this session, or None when the run was already finished.
    """
    run_dir = cfg.resolved_run_dir()
    if is_finished(run_dir, cfg):
        return None
    started = same_config(run_dir, cfg) and ((run_dir / "metrics.jsonl").exists() or bool(list_checkpoints(run_dir)))
    if run_dir.exists() and not started:
        shutil.rmtree(run_dir)  # another config's run, or one that never got to its first step
    return train_fn(cfg, resume=started, quiet=quiet)
