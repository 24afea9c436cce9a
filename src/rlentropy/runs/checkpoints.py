"""Atomic checkpoints: write `checkpoints/.tmp-step_N`, fsync, rename to `step_N`, keep the last N.

A checkpoint directory holds
    model.safetensors + config.json (full parameters)  or  adapter_model.safetensors + adapter_config.json
    tokenizer files                                     (loadable with `from_pretrained`)
    trainer_state.pt    optimizer, scheduler, controller states, RNG states, data cursor, step
    trainer_state.json  the same step / cursor in readable form
A directory named `step_N` is complete by construction (the rename is the last operation); leftover
`.tmp-*` directories from a crash are ignored and removed by the next save. Pruning renames an old
checkpoint to `.trash-step_N` before deleting it, so a kill mid-prune never leaves a half-deleted
`step_N`; `.trash-*` leftovers are removed by the next save or resume (`remove_leftovers`). A
`step_N` that lacks a file a checkpoint needs (one half-deleted by an older version) is not listed as
complete; `scan_checkpoints` names it and the problem.
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

from rlentropy.errors import DiskFullError, is_disk_full

_STEP_RE = re.compile(r"^step_(\d+)$")
STATE_FILE = "trainer_state.pt"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
LEFTOVER_PREFIXES = (".tmp-step_", ".trash-step_")


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


def checkpoint_problem(ckpt: str | Path, *, need_state: bool = True) -> str | None:
    """What a checkpoint directory lacks (one line naming the missing file), or None when complete.

    Args:
        ckpt: a `checkpoints/step_N` directory.
        need_state: also require `trainer_state.pt` (needed to resume; evaluation only needs weights).
    """
    ckpt = Path(ckpt)
    if not ckpt.is_dir():
        return f"{ckpt} is not a directory"
    if (ckpt / "adapter_config.json").is_file():
        if not any((ckpt / f).is_file() for f in ADAPTER_FILES):
            return f"missing checkpoint file {ckpt / ADAPTER_FILES[0]} (LoRA adapter weights)"
    elif not (ckpt / "config.json").is_file():
        return f"missing checkpoint file {ckpt / 'config.json'} (not an HF model or adapter)"
    elif not any((ckpt / f).is_file() for f in WEIGHT_FILES):
        return f"missing checkpoint file {ckpt / WEIGHT_FILES[0]} (model weights)"
    if need_state and not (ckpt / STATE_FILE).is_file():
        return f"missing checkpoint file {ckpt / STATE_FILE} (optimizer and trainer state)"
    return None


def scan_checkpoints(run_dir: str | Path) -> tuple[list[tuple[int, Path]], list[tuple[int, Path, str]]]:
    """(complete, broken) `step_N` directories of a run, oldest first; broken ones with their problem."""
    root = Path(run_dir) / "checkpoints"
    complete: list[tuple[int, Path]] = []
    broken: list[tuple[int, Path, str]] = []
    if not root.is_dir():
        return complete, broken
    for child in root.iterdir():
        m = _STEP_RE.match(child.name)
        if not (m and child.is_dir()):
            continue
        problem = checkpoint_problem(child)
        if problem is None:
            complete.append((int(m.group(1)), child))
        else:
            broken.append((int(m.group(1)), child, problem))
    return sorted(complete), sorted(broken)


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run as (step, path), oldest first."""
    return scan_checkpoints(run_dir)[0]


def latest_checkpoint(run_dir: str | Path) -> tuple[int, Path] | None:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def remove_leftovers(run_dir: str | Path) -> list[str]:
    """Delete `.tmp-step_*` (an interrupted save) and `.trash-step_*` (an interrupted prune) under
    checkpoints/; returns their names."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    gone = []
    for child in sorted(root.iterdir()):
        if child.name.startswith(LEFTOVER_PREFIXES):
            shutil.rmtree(child, ignore_errors=True)
            gone.append(child.name)
    return gone


def _discard(path: Path) -> None:
    """Rename `checkpoints/step_N` to `.trash-step_N` (atomic: it stops being a checkpoint at once),
    then delete it."""
    trash = path.with_name(f".trash-{path.name}")
    shutil.rmtree(trash, ignore_errors=True)
    os.rename(path, trash)
    _fsync_dir(path.parent)
    shutil.rmtree(trash, ignore_errors=True)


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
    remove_leftovers(run_dir)
    tmp = root / f".tmp-step_{step}"
    final = root / f"step_{step}"
    try:
        tmp.mkdir()
        _write_checkpoint(tmp, step, model=model, tokenizer=tokenizer, state=state, weights=weights)
        if final.exists():
            _discard(final)
        os.rename(tmp, final)
        _fsync_dir(root)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, Exception) and is_disk_full(err):
            raise DiskFullError(f"checkpoint {final}") from err
        raise
    complete, broken = scan_checkpoints(run_dir)
    for _, old in complete[:-keep_last]:
        _discard(old)
    for _, old, _problem in broken:  # half-deleted by an older version's in-place prune
        _discard(old)
    return final


def _write_checkpoint(
    tmp: Path,
    step: int,
    *,
    model: torch.nn.Module,
    tokenizer: Any,
    state: dict[str, Any],
    weights: dict[str, torch.Tensor] | None = None,
) -> None:
    extra = {} if weights is None else {"state_dict": weights}
    model.save_pretrained(str(tmp), safe_serialization=True, **extra)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp))
    # A file object (not a path): on a full disk torch then fails with the OSError as context, which
    # tells "disk full" from other failures.
    with open(tmp / STATE_FILE, "wb") as fh:
        torch.save({**state, "step": step, "rng": rng_state()}, fh)
    readable = {"step": step, **{k: v for k, v in state.items() if k in ("cursor", "consecutive_nonfinite")}}
    (tmp / "trainer_state.json").write_text(json.dumps(readable, indent=1, default=str))
    _fsync_tree(tmp)


def load_state(ckpt_dir: str | Path) -> dict[str, Any]:
    """The `trainer_state.pt` of a checkpoint (CPU tensors)."""
    return torch.load(Path(ckpt_dir) / STATE_FILE, map_location="cpu", weights_only=False)
