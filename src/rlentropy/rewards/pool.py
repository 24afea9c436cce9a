"""A pool of verifier processes with a hard, out-of-process time limit on every call.

A pathological answer (a `\\frac` tower, `9^{9^{9^9}}`, a sympy simplification that never ends)
can hang or crash the process that parses it; signal-based timeouts do not interrupt C code. So
math-verify runs in worker processes, and the parent waits on them with a deadline: a worker that
overruns its call's limit is killed (SIGKILL) and replaced, and that call scores 0. A worker that
dies (segfault, out of memory) is replaced the same way.

    pool = VerifierPool(num_workers=2, timeout_s=1.0)
    pool.verify_many([("1/2", "0.5"), ("3", "4")])   # -> [True, False]
    pool.close()

Workers are plain subprocesses (`python -m rlentropy.rewards._worker`, JSON lines over pipes): no
fork of a process holding torch threads, and no re-import of the caller's `__main__`. Each imports
math-verify once and announces itself ready; the deadline of a call starts when it is handed to a
ready worker.
"""

from __future__ import annotations

import atexit
import json
from multiprocessing.connection import wait as mp_wait
import os
from pathlib import Path
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Sequence

# A worker that has not finished importing math-verify within this many seconds is treated as
# broken.
_STARTUP_LIMIT_S = 120.0


@dataclass
class PoolStats:
    """Counters since the pool was created."""

    calls: int = 0
    timeouts: int = 0
    crashes: int = 0
    errors: int = 0
    restarts: int = 0
    last_errors: list[str] = field(default_factory=list)


def _worker_env() -> dict[str, str]:
    # The worker imports rlentropy from the same place as this process, installed or not.
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


class _Worker:
    def __init__(self, float_rounding: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rlentropy.rewards._worker", str(float_rounding)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=_worker_env(),
            text=True,
            encoding="utf-8",
            bufsize=1,
        )
        self.started_at = time.monotonic()
        self.ready = False
        self.job: int | None = None
        self.deadline = 0.0

    @property
    def out(self):  # the object `multiprocessing.connection.wait` selects on
        return self.proc.stdout

    def send(self, obj: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def recv(self) -> list:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise EOFError("verifier worker exited")
        return json.loads(line)

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass


class VerifierPool:
    """Worker processes running math-verify, each call under a hard time limit.

    Args:
        num_workers: processes (default: min(4, CPU count)).
        timeout_s: hard limit per (gold, prediction) call, in seconds; on expiry the worker is
            killed and the call returns False.
        float_rounding: decimal places math-verify rounds floats to before comparing.
    """

    def __init__(
        self, num_workers: int | None = None, *, timeout_s: float = 1.5, float_rounding: int = 6
    ) -> None:
        if num_workers is None:
            num_workers = max(1, min(4, os.cpu_count() or 1))
        if num_workers < 1:
            raise ValueError(f"num_workers: must be >= 1, got {num_workers}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s: must be > 0, got {timeout_s}")
        self.num_workers = int(num_workers)
        self.timeout_s = float(timeout_s)
        self.float_rounding = int(float_rounding)
        self.stats = PoolStats()
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        self._startup_failures = 0
        atexit.register(self.close)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> "VerifierPool":
        """Start the workers now (otherwise the first call starts them)."""
        with self._lock:
            self._ensure_workers()
        return self

    def _ensure_workers(self) -> None:
        if self._closed:
            raise RuntimeError("VerifierPool is closed")
        while len(self._workers) < self.num_workers:
            self._workers.append(_Worker(self.float_rounding))

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self._workers.remove(w)
        self.stats.restarts += 1
        self._workers.append(_Worker(self.float_rounding))

    def close(self) -> None:
        """Stop every worker (idempotent; also runs at interpreter exit)."""
        if self._closed:
            return
        self._closed = True
        for w in self._workers:
            w.kill()  # stateless: nothing to flush
        self._workers = []

    def __enter__(self) -> "VerifierPool":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- work ------------------------------------------------------------------------------------
    def verify_many(self, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        """math-verify each (gold, prediction) pair; False on mismatch, parse failure or timeout."""
        n = len(pairs)
        results: list[bool] = [False] * n
        if n == 0:
            return results
        with self._lock:
            self._ensure_workers()
            self.stats.calls += n
            pending = list(range(n - 1, -1, -1))  # a stack: pop() hands out jobs in order
            outstanding = 0
            while pending or outstanding:
                now = time.monotonic()
                # Hand jobs to idle ready workers.
                for w in list(self._workers):
                    if pending and w.ready and w.job is None:
                        job = pending.pop()
                        gold, pred = pairs[job]
                        try:
                            w.send([job, gold, pred])
                        except (OSError, ValueError):
                            pending.append(job)
                            self.stats.crashes += 1
                            self._replace(w)
                            continue
                        w.job, w.deadline = job, now + self.timeout_s
                        outstanding += 1
                # Wait for an answer, a ready signal, or the nearest deadline.
                deadlines = [w.deadline for w in self._workers if w.job is not None]
                deadlines += [w.started_at + _STARTUP_LIMIT_S for w in self._workers if not w.ready]
                wait_s = max(0.0, min(deadlines) - time.monotonic()) if deadlines else 0.05
                conns = [w.out for w in self._workers if w.job is not None or not w.ready]
                ready_conns = mp_wait(conns, timeout=wait_s) if conns else []
                by_conn = {id(w.out): w for w in self._workers}
                for c in ready_conns:
                    w = by_conn.get(id(c))
                    if w is None:
                        continue
                    try:
                        tag, ok, err = w.recv()
                    except (EOFError, OSError, ValueError):
                        if not w.ready:
                            self._startup_failures += 1
                            if self._startup_failures >= 3:
                                raise RuntimeError(
                                    "verifier workers exit during start-up "
                                    f"(`{sys.executable} -m rlentropy.rewards._worker` fails; "
                                    "is math-verify installed?)"
                                )
                        # The worker died: its job (if any) scores 0.
                        if w.job is not None:
                            outstanding -= 1
                            self._note_error(f"worker crashed on job {w.job}")
                        self.stats.crashes += 1
                        self._replace(w)
                        continue
                    if tag == "ready":
                        w.ready = True
                        self._startup_failures = 0
                        continue
                    if tag == w.job:
                        results[tag] = bool(ok)
                        if err is not None:
                            self.stats.errors += 1
                            self._note_error(err)
                        w.job = None
                        outstanding -= 1
                # Enforce deadlines.
                now = time.monotonic()
                for w in list(self._workers):
                    if w.job is not None and now >= w.deadline:
                        self.stats.timeouts += 1
                        self._note_error(f"timeout after {self.timeout_s:g}s on job {w.job}")
                        outstanding -= 1
                        w.job = None
                        self._replace(w)
                    elif not w.ready and now - w.started_at > _STARTUP_LIMIT_S:
                        raise RuntimeError(
                            f"verifier worker did not start within {_STARTUP_LIMIT_S:g}s "
                            "(is math-verify installed?)"
                        )
        return results

    def _note_error(self, msg: str) -> None:
        self.stats.last_errors.append(msg)
        del self.stats.last_errors[:-20]


_DEFAULT_POOL: VerifierPool | None = None
_DEFAULT_LOCK = threading.Lock()


def default_pool(*, timeout_s: float = 1.5, num_workers: int | None = None) -> VerifierPool:
    """The process-wide shared pool, created on first use (re-created when the settings change).

    `RLENTROPY_VERIFY_WORKERS` overrides the default worker count.
    """
    global _DEFAULT_POOL
    if num_workers is None and os.environ.get("RLENTROPY_VERIFY_WORKERS"):
        num_workers = int(os.environ["RLENTROPY_VERIFY_WORKERS"])
    with _DEFAULT_LOCK:
        p = _DEFAULT_POOL
        want_workers = num_workers or (p.num_workers if p else None)
        if p is None or p._closed or p.timeout_s != timeout_s or (
            want_workers is not None and p.num_workers != want_workers
        ):
            if p is not None:
                p.close()
            _DEFAULT_POOL = VerifierPool(num_workers, timeout_s=timeout_s)
        return _DEFAULT_POOL
