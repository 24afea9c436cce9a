"""Atomic checkpoints: write `checkpoints/.tmp-step_N`, fsync, rename to `step_N`, keep the last N.

A checkpoint directory holds
    model.safetensors + config.json (full parameters)  or  adapter_model.safetensors + adapter_config.json
    tokenizer files                                     (loadable with `from_pretrained`)
    trainer_state.pt    optimizer, scheduler, controller states, RNG states, data cursor, step
    trainer_state.json  the same step / cursor in readable form
A directory named `step_N` is complete by construction (the rename is the last operation); leftover
`.tmp-*` directories from a crash are ignored and removed by the next save.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

_STEP_RE = re.compile(r"^step_(\d+)$")
STATE_FILE = "trainer_state.pt"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA when present) global RNG states."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run as (step, path), oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _STEP_RE.match(child.name)
        if m and child.is_dir() and (child / STATE_FILE).is_file():
            found.append((int(m.group(1)), child))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> tuple[int, Path] | None:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model: torch.nn.Module,
    tokenizer: Any,
    state: dict[str, Any],
    keep_last: int,
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write `checkpoints/step_<step>` atomically and prune to the newest `keep_last`.

    Args:
        run_dir: the run directory.
        step: the number of completed training steps.
        model: the unwrapped model (HF `PreTrainedModel` or peft `PeftModel`); saved with
            `save_pretrained(safe_serialization=True)`.
        tokenizer: saved next to it.
        state: everything else (optimizer, scheduler, controllers, cursor, ...), saved with torch.save.
        keep_last: complete checkpoints to keep.
        weights: the model's full state dict when the live parameters are sharded (FSDP); None: read
            them from `model`.

    Returns:
        The final checkpoint directory.
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-step_*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-step_{step}"
    final = root / f"step_{step}"
    tmp.mkdir()
    try:
        extra = {} if weights is None else {"state_dict": weights}
        model.save_pretrained(str(tmp), safe_serialization=True, **extra)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        torch.save({**state, "step": step, "rng": rng_state()}, tmp / STATE_FILE)
        readable = {
            "step": step,
            **{
                k: v
                for k, v in state.items()
                if isinstance(v, (int, float, str, list, dict)) and k in ("cursor", "consecutive_nonfinite")
            },
        }
        (tmp / "trainer_state.json").write_text(json.dumps(readable, indent=1, default=str))
        _fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for _, old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_state(ckpt_dir: str | Path) -> dict[str, Any]:
    """The `trainer_state.pt` of a checkpoint (CPU tensors)."""
    return torch.load(Path(ckpt_dir) / STATE_FILE, map_location="cpu", weights_only=False)
