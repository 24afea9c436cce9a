"""Small pieces of a run's state: seeds, the data cursor, the LR schedule, the Ctrl-C flag."""

from __future__ import annotations

import hashlib
import math
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


def derive_seed(seed: int, *parts: Any) -> int:
    """A 63-bit seed from the run seed and a tag path (stable across processes and resumes)."""
    h = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def make_lr_lambda(
    *, warmup_steps: int, total_steps: int, schedule: str, min_lr_ratio: float
) -> Callable[[int], float]:
    """LR multiplier at scheduler step s (s completed steps): linear warm-up, then constant/linear/cosine.

    After warm-up, frac = (s − warmup_steps) / (total_steps − warmup_steps) runs from 0 to 1 at
    s = total_steps; "linear" is 1 − (1 − min_lr_ratio)·frac and "cosine" min_lr_ratio +
    (1 − min_lr_ratio)·(1 + cos(π·frac))/2: both start at 1 and reach min_lr_ratio at train.steps.
    """

    def fn(s: int) -> float:
        if warmup_steps > 0 and s < warmup_steps:
            return (s + 1) / (warmup_steps + 1)
        if schedule == "constant":
            return 1.0
        span = max(1, total_steps - warmup_steps)
        frac = min(1.0, max(0.0, (s - warmup_steps) / span))
        if schedule == "linear":
            return 1.0 - (1.0 - min_lr_ratio) * frac
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac))

    return fn


@dataclass
class DataCursor:
    """Position in the shuffled training examples: epoch e uses permutation seeded by (seed, e)."""

    epoch: int = 0
    pos: int = 0

    def take(self, n_examples: int, k: int, seed: int) -> list[int]:
        """The next k example indices (wrapping into a new epoch with a new permutation)."""
        out: list[int] = []
        while len(out) < k:
            perm = torch.randperm(
                n_examples, generator=torch.Generator().manual_seed(derive_seed(seed, "data", self.epoch))
            )
            need = k - len(out)
            chunk = perm[self.pos : self.pos + need].tolist()
            out.extend(chunk)
            self.pos += len(chunk)
            if self.pos >= n_examples:
                self.epoch += 1
                self.pos = 0
        return out


def set_threads(setting: int | str, device: torch.device) -> tuple[int | None, int]:
    """Apply `train.threads` to torch's intra-op threads: (the setting before, or None when unchanged;
    the threads in use).

    "auto" is 1 on CPU (docs/training.md, "Threads": on the models a CPU trains, a second thread mostly
    waits, and next to another busy process it is many times slower) and torch's own default on a GPU.
    """
    before = torch.get_num_threads()
    if setting == "auto":
        if device.type != "cpu":
            return None, before
        setting = 1
    torch.set_num_threads(int(setting))
    return before, int(setting)


class StopFlag:
    """Set by the first Ctrl-C (SIGINT): the loop finishes the step, writes a checkpoint and stops."""

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, frame: Any) -> None:
            if self.requested:  # second Ctrl-C: stop now
                raise KeyboardInterrupt
            self.requested = True

        self._old = signal.signal(signal.SIGINT, handler)

    def uninstall(self) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None
