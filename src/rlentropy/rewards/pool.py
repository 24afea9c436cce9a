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
math-verify once, warms sympy up and announces itself ready.

Storms of pathological answers are bounded three ways:

* **Pre-screen** (`rlentropy.rewards.screen`): a prediction that cannot be a final answer (too
  long, too deeply nested, an exponent tower, a factorial or power with more than 100,000 digits)
  scores 0 in the calling process; no worker sees it.
* **Deadline from submission**: a call's limit starts when it takes one of the `num_workers` slots
  (at once for a single call; for a batch, when an earlier call of the batch frees a slot), not
  when a worker is ready for it. Waiting for a warm worker counts against the call: a call that
  finds none within its limit scores 0 (`PoolStats.starved`) instead of waiting for a restart.
* **Warm spares**: the pool runs `num_workers + spares` processes (default: one spare per worker)
  and at most `num_workers` calls at a time, so a killed worker's successor is already warm; its
  own replacement starts at once and warms up in the background while the calls go on.

The start-up of the pool (`start()`, or the first call that needs a worker) waits until every
process is warm; that wait counts against no call.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait as mp_wait
from pathlib import Path

from rlentropy.rewards.screen import DEFAULT_SCREEN, ScreenLimits, screen_answer

# A worker that has not finished importing math-verify within this many seconds is treated as
# broken.
_STARTUP_LIMIT_S = 120.0


@dataclass
class PoolStats:
    """Counters since the pool was created.

    Attributes:
        calls: (gold, prediction) pairs submitted.
        screened: predictions rejected by the pre-screen (scored 0, no worker involved).
        timeouts: calls whose worker overran the limit and was killed.
        starved: calls that reached their deadline before any warm worker was free (scored 0
            without running).
        crashes: workers that died on their own (or whose pipe broke).
        errors: calls on which math-verify raised (scored 0).
        restarts: worker processes started to replace killed or dead ones.
        last_errors: the last 20 messages (errors, timeouts, crashes, screen rejections).
    """

    calls: int = 0
    screened: int = 0
    timeouts: int = 0
    starved: int = 0
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
        self.job: _Job | None = None

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


@dataclass(eq=False)
class _Job:
    index: int  # position in the batch
    deadline: float  # time.monotonic() by which it must be answered
    worker: _Worker | None = None


class VerifierPool:
    """Worker processes running math-verify, each call under a hard time limit.

    Args:
        num_workers: calls run at once (default: min(4, CPU count)).
        timeout_s: hard limit per (gold, prediction) call, in seconds, counted from the moment the
            call takes a slot (see the module docstring); on expiry the worker is killed and the
            call returns False.
        float_rounding: decimal places math-verify rounds floats to before comparing.
        spares: warm processes kept beyond `num_workers`, ready to take over from killed ones
            (default: `num_workers`, so that a storm killing every running call at once still
            finds a warm successor for each; a worker costs about 65 MB).
        screen: pre-screen limits applied to every prediction (not to golds); None turns the
            pre-screen off.
    """

    def __init__(
        self,
        num_workers: int | None = None,
        *,
        timeout_s: float = 1.5,
        float_rounding: int = 6,
        spares: int | None = None,
        screen: ScreenLimits | None = DEFAULT_SCREEN,
    ) -> None:
        if num_workers is None:
            num_workers = max(1, min(4, os.cpu_count() or 1))
        if num_workers < 1:
            raise ValueError(f"num_workers: must be >= 1, got {num_workers}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s: must be > 0, got {timeout_s}")
        if spares is None:
            spares = num_workers
        if spares < 0:
            raise ValueError(f"spares: must be >= 0, got {spares}")
        self.num_workers = int(num_workers)
        self.spares = int(spares)
        self.timeout_s = float(timeout_s)
        self.float_rounding = int(float_rounding)
        self.screen = screen
        self.stats = PoolStats()
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        self._started = False
        self._startup_failures = 0
        atexit.register(self.close)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> VerifierPool:
        """Start the workers now and wait until all of them are warm (otherwise the first call
        that needs a worker does)."""
        with self._lock:
            self._ensure_started()
        return self

    def workers_ready(self) -> int:
        """How many worker processes are warm and idle now (reads pending ready signals without
        waiting)."""
        with self._lock:
            if self._closed:
                return 0
            self._poll(0.0)
            return sum(1 for w in self._workers if w.ready and w.job is None)

    def _spawn(self) -> None:
        self._workers.append(_Worker(self.float_rounding))

    def _ensure_started(self) -> None:
        if self._closed:
            raise RuntimeError("VerifierPool is closed")
        while len(self._workers) < self.num_workers + self.spares:
            self._spawn()
        if self._started:
            return
        while not all(w.ready for w in self._workers):
            not_ready = [w for w in self._workers if not w.ready]
            wait_s = max(0.0, min(w.started_at for w in not_ready) + _STARTUP_LIMIT_S - time.monotonic())
            self._poll(wait_s)
            self._check_startup_limit()
        self._started = True

    def _replace(self, w: _Worker) -> None:
        """Kill `w` and start its successor, which warms up in the background."""
        w.kill()
        self._workers.remove(w)
        self.stats.restarts += 1
        self._spawn()

    def close(self) -> None:
        """Stop every worker (idempotent; also runs at interpreter exit)."""
        if self._closed:
            return
        self._closed = True
        for w in self._workers:
            w.kill()  # stateless: nothing to flush
        self._workers = []

    def __enter__(self) -> VerifierPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- events ----------------------------------------------------------------------------------
    def _poll(self, wait_s: float) -> list[tuple[_Job, bool, str | None]]:
        """Wait up to `wait_s` for answers and ready signals; returns the finished jobs as (job,
        result, error raised in the worker).

        A worker that died is replaced and its job, if any, is returned as (job, False, None); a
        worker that dies before it ever became ready counts towards the start-up failure limit.
        """
        conns = [w.out for w in self._workers if w.job is not None or not w.ready]
        if not conns:
            time.sleep(min(wait_s, 0.05))  # nothing to wait on (not reached in normal operation)
            return []
        by_conn = {id(w.out): w for w in self._workers}
        done: list[tuple[_Job, bool, str | None]] = []
        for c in mp_wait(conns, timeout=wait_s):
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
                        ) from None
                # The worker died: its job (if any) scores 0.
                if w.job is not None:
                    self._note_error(f"worker crashed on job {w.job.index}")
                    done.append((w.job, False, None))
                    w.job = None
                self.stats.crashes += 1
                self._replace(w)
                continue
            if tag == "ready":
                w.ready = True
                self._startup_failures = 0
            elif w.job is not None and tag == w.job.index:
                done.append((w.job, bool(ok), err))
                w.job = None
        return done

    def _check_startup_limit(self) -> None:
        now = time.monotonic()
        for w in self._workers:
            if not w.ready and now - w.started_at > _STARTUP_LIMIT_S:
                raise RuntimeError(
                    f"verifier worker did not start within {_STARTUP_LIMIT_S:g}s (is math-verify installed?)"
                )

    def _idle_worker(self) -> _Worker | None:
        """A warm worker with no job (one found dead meanwhile is replaced), or None."""
        for w in [w for w in self._workers if w.ready and w.job is None]:
            if w.proc.poll() is None:
                return w
            self.stats.crashes += 1  # died while idle
            self._note_error("worker died while idle")
            self._replace(w)
        return None

    def _note_error(self, msg: str) -> None:
        self.stats.last_errors.append(msg)
        del self.stats.last_errors[:-20]

    # -- work ------------------------------------------------------------------------------------
    def verify_many(self, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        """math-verify each (gold, prediction) pair; False on mismatch, parse failure, pre-screen
        rejection or timeout."""
        n = len(pairs)
        results: list[bool] = [False] * n
        if n == 0:
            return results
        with self._lock:
            if self._closed:
                raise RuntimeError("VerifierPool is closed")
            self.stats.calls += n
            queue: deque[int] = deque()
            for i, (_gold, pred) in enumerate(pairs):
                reason = screen_answer(pred, self.screen) if self.screen is not None else None
                if reason is None:
                    queue.append(i)
                else:
                    self.stats.screened += 1
                    self._note_error(f"screened out job {i}: {reason}")
            if not queue:
                return results
            self._ensure_started()
            active: list[_Job] = []
            while queue or active:
                # Admit calls into free slots: each call's clock starts here.
                now = time.monotonic()
                while queue and len(active) < self.num_workers:
                    active.append(_Job(queue.popleft(), now + self.timeout_s))
                # Hand waiting calls to warm idle workers.
                for job in active:
                    while job.worker is None:
                        w = self._idle_worker()
                        if w is None:
                            break
                        gold, pred = pairs[job.index]
                        try:
                            w.send([job.index, gold, pred])
                        except (OSError, ValueError):
                            self.stats.crashes += 1
                            self._replace(w)
                            continue
                        job.worker, w.job = w, job
                # Wait for an answer, a ready signal, or the nearest deadline.
                wait_s = max(0.0, min(j.deadline for j in active) - time.monotonic())
                for job, ok, err in self._poll(wait_s):
                    active.remove(job)
                    results[job.index] = ok
                    if err is not None:
                        self.stats.errors += 1
                        self._note_error(err)
                # Enforce deadlines.
                now = time.monotonic()
                for job in [j for j in active if now >= j.deadline]:
                    active.remove(job)
                    if job.worker is not None:
                        self.stats.timeouts += 1
                        self._note_error(f"timeout after {self.timeout_s:g}s on job {job.index}")
                        job.worker.job = None
                        self._replace(job.worker)
                    else:
                        self.stats.starved += 1
                        self._note_error(f"no warm worker within {self.timeout_s:g}s for job {job.index}")
                self._check_startup_limit()
        return results


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
        if (
            p is None
            or p._closed
            or p.timeout_s != timeout_s
            or (want_workers is not None and p.num_workers != want_workers)
        ):
            if p is not None:
                p.close()
            _DEFAULT_POOL = VerifierPool(num_workers, timeout_s=timeout_s)
        return _DEFAULT_POOL
