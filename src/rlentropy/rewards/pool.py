"""A pool of verifier processes with a hard, out-of-process time limit on every call.

A pathological answer (a `\\frac` tower, `9^{9^{9^9}}`, a sympy simplification that never ends)
can hang or crash the process that parses it; signal-based timeouts do not interrupt C code. So
math-verify runs in worker processes, and the parent waits on them with a deadline: a worker that
overruns its call's limit is killed (SIGKILL) and replaced, and that call scores 0. A worker that
dies (segfault, out of memory) is replaced the same way.

    pool = VerifierPool(num_workers=2, timeout_s=1.0)
    pool.verify_many([("1/2", "0.5"), ("3", "4")])   # -> [True, False]
    pool.close()

**Workers are forked from a zygote.** Importing math-verify and warming sympy up takes 1-2.3 s (more
under load); a worker killed in a storm of pathological answers must not leave the pool without a
warm worker for that long. So the pool starts one fork server, the zygote (`python -m
rlentropy.rewards._worker ROUNDING --zygote FD`, a plain subprocess: no fork of the caller, which
may hold torch threads, and no re-import of its `__main__`). It imports math-verify and runs the
warm-up once, then forks a ready worker in milliseconds whenever the pool asks: the pool creates
the worker's two pipes and passes one end of each over a Unix socket (SCM_RIGHTS); the child serves
JSON lines on them and announces itself with its pid. The pool kills a worker by pid (through a
pidfd on Linux, so that a recycled pid is never hit), sees a dead one as end of file on its pipe,
and the zygote's children are reaped by the kernel. The zygote imports only math-verify and sympy
and runs no thread, so forking it is safe. If it dies (or hangs, or a fork fails) the pool restarts
it and meanwhile starts plain workers (`python -m rlentropy.rewards._worker`, JSON lines over
stdin / stdout, each warming up on its own); after 3 failures in a row, or where there is no
`os.fork`, or with `zygote=False`, plain workers only.

Storms of pathological answers are bounded four ways:

* **Pre-screen** (`rlentropy.rewards.screen`): a prediction that cannot be a final answer (too
  long, too deeply nested, an exponent tower, a factorial or power with more than 100,000 digits)
  scores 0 in the calling process; no worker sees it.
* **Deadline from submission**: a call's limit starts when it takes one of the `num_workers` slots
  (at once for a single call; for a batch, when an earlier call of the batch frees a slot), not
  when a worker is ready for it. Waiting for a warm worker counts against the call.
* **Warm spares**: the pool runs `num_workers + spares` processes (default: one spare per worker)
  and at most `num_workers` calls at a time, so a killed worker's successor is already warm; its
  own replacement is forked at once.
* **Grace for the pool's own delays** (`grace_s`, default 0.25 s): a call still waiting for a worker
  at its deadline while a forked replacement is on its way waits up to `grace_s` more for it, and
  a call that gets its worker late runs for at least `grace_s`; no call outlives `timeout_s +
  grace_s` from submission. A call that finds no warm worker even then scores 0
  (`PoolStats.starved`) instead of waiting for a restart - with forked replacements, rare; with
  plain ones (zygote down) no grace is given, as such a restart takes seconds.

The start-up of the pool (`start()`, or the first call that needs a worker) waits until the zygote
and every worker are warm; that wait counts against no call.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import socket
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
        starved: calls that reached their deadline (plus `grace_s` when a forked replacement was
            on its way) before any warm worker was free (scored 0 without running).
        crashes: workers that died on their own (or whose pipe broke).
        errors: calls on which math-verify raised (scored 0).
        restarts: worker processes started to replace killed or dead ones.
        zygote_restarts: times the zygote died, hung or failed and was restarted (or given up).
        last_restart_s: seconds from the start of each of the last 100 replacement workers to
            its ready signal.
        last_errors: the last 20 messages (errors, timeouts, crashes, screen rejections).
    """

    calls: int = 0
    screened: int = 0
    timeouts: int = 0
    starved: int = 0
    crashes: int = 0
    errors: int = 0
    restarts: int = 0
    zygote_restarts: int = 0
    last_restart_s: list[float] = field(default_factory=list)
    last_errors: list[str] = field(default_factory=list)


def _worker_env() -> dict[str, str]:
    # The worker imports rlentropy from the same place as this process, installed or not.
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _worker_cmd(float_rounding: int) -> list[str]:
    return [sys.executable, "-m", "rlentropy.rewards._worker", str(float_rounding)]


def _kill_and_reap(proc: subprocess.Popen) -> None:
    """SIGKILL a child process and wait for it (5 s at most); one already gone is no error."""
    try:
        proc.kill()
    except OSError:
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


class _Worker:
    """One worker process as the pool sees it: a pipe to send jobs on, a pipe to read answers from.

    Either a plain subprocess (`plain`) or a child forked by the zygote (`forked`). A forked worker
    is not this process's child: it is killed by pid (through a pidfd where the OS has one, so that
    a recycled pid is never hit) and its death shows as end of file on its answer pipe.
    """

    def __init__(self, inp, out, *, proc: subprocess.Popen | None = None, zygote: _Zygote | None = None) -> None:
        self.inp = inp  # text file: job lines to the worker
        self.out = out  # text file: answer lines from it (what `mp_wait` selects on)
        self.proc = proc
        self.zygote = zygote  # the zygote that forked it (None: a plain subprocess)
        self.forked = zygote is not None
        self.replacement = False  # started to replace a killed or dead worker
        self.pid: int | None = None if proc is None else proc.pid  # a forked one says it when ready
        self._pidfd: int | None = None
        self.started_at = time.monotonic()
        self.ready = False
        self.job: _Job | None = None

    @classmethod
    def plain(cls, float_rounding: int) -> _Worker:
        proc = subprocess.Popen(
            _worker_cmd(float_rounding),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=_worker_env(),
            text=True,
            encoding="utf-8",
            bufsize=1,
        )
        return cls(proc.stdin, proc.stdout, proc=proc)

    @classmethod
    def fork(cls, zygote: _Zygote) -> _Worker:
        """Ask the zygote for a worker (raises OSError when the zygote cannot be reached)."""
        job_r, job_w = os.pipe()
        ans_r, ans_w = os.pipe()
        try:
            socket.send_fds(zygote.sock, [b"F"], [job_r, ans_w], _SEND_FLAGS)
        except BaseException:
            for fd in (job_w, ans_r):
                os.close(fd)
            raise
        finally:
            os.close(job_r)  # the zygote and its child hold their own copies now
            os.close(ans_w)
        inp = open(job_w, "w", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed in kill()
        out = open(ans_r, encoding="utf-8")  # noqa: SIM115
        return cls(inp, out, zygote=zygote)

    def on_ready(self, pid: object) -> None:
        self.ready = True
        if self.forked and isinstance(pid, int) and pid > 0 and self.pid is None:
            self.pid = pid
            if hasattr(os, "pidfd_open"):
                try:
                    self._pidfd = os.pidfd_open(pid)
                except OSError:  # already gone (its pipe will say so), or no pidfd here
                    self._pidfd = None

    def send(self, obj: object) -> None:
        self.inp.write(json.dumps(obj) + "\n")
        self.inp.flush()

    def recv(self) -> list:
        line = self.out.readline()
        if not line:
            raise EOFError("verifier worker exited")
        return json.loads(line)

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        if self._pidfd is not None:  # a pidfd turns readable when its process exits
            p = select.poll()
            p.register(self._pidfd, select.POLLIN)
            return not p.poll(0)
        if self.pid is not None:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except OSError:
                pass
        return True

    def kill(self) -> None:
        if self.proc is not None:
            _kill_and_reap(self.proc)
        elif self._pidfd is not None:
            try:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            except OSError:
                pass  # already dead
            os.close(self._pidfd)
            self._pidfd = None
        elif self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except OSError:
                pass
        # A forked worker not yet ready has no known pid: closing its pipes ends it (end of file).
        for f in (self.inp, self.out):
            try:
                f.close()
            except OSError:
                pass


# Where os.fork and fd passing exist, workers are forked from a warm zygote.
_CAN_FORK = hasattr(os, "fork") and hasattr(socket, "send_fds") and hasattr(socket, "AF_UNIX")
_SEND_FLAGS = getattr(socket, "MSG_NOSIGNAL", 0)
# A forked worker that has not announced itself within this many seconds means a stuck zygote.
_FORK_LIMIT_S = 10.0
# The zygote is given up (plain subprocesses only) after this many failures in a row.
_ZYGOTE_MAX_FAILURES = 3


class _Zygote:
    """The fork server process (`rlentropy.rewards._worker.zygote_main`) and the pool's end of its
    control socket."""

    def __init__(self, float_rounding: int) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.proc = subprocess.Popen(
                [*_worker_cmd(float_rounding), "--zygote", str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=_worker_env(),
                pass_fds=(theirs.fileno(),),
            )
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        mine.settimeout(2.0)  # a zygote that stops reading must not block the pool for long
        self.sock = mine
        self.started_at = time.monotonic()
        self.ready = False

    def on_readable(self) -> bool:
        """Read what the zygote wrote; False when it has died (end of file)."""
        try:
            data = self.sock.recv(64)
        except (BlockingIOError, TimeoutError):
            return True
        except OSError:
            return False
        if not data:
            return False
        if b"R" in data:
            self.ready = True
        return True

    def kill(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
        _kill_and_reap(self.proc)


@dataclass(eq=False)
class _Job:
    index: int  # position in the batch
    deadline: float  # time.monotonic() by which it must be answered (extended at most to `limit`)
    limit: float  # submission + timeout_s + grace_s: never extended past this
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
            finds a warm successor for each). A plain worker costs about 60 MB; forked ones share
            most of it with the zygote (zygote + 4 fresh workers: 64 MB proportional set size,
            against 225 MB for 4 plain ones).
        screen: pre-screen limits applied to every prediction (not to golds); None turns the
            pre-screen off.
        zygote: fork workers from a warm fork server (milliseconds per restart) where the OS has
            `os.fork`; False: plain subprocesses only (1-2 s of imports per restart).
        grace_s: how much a call may outlive `timeout_s` when the pool, not the answer, held it
            up: a call still waiting at its deadline for a forked replacement waits up to `grace_s`
            more, and a call that gets its worker late runs for at least `grace_s` (never past
            `timeout_s + grace_s` from submission).
    """

    def __init__(
        self,
        num_workers: int | None = None,
        *,
        timeout_s: float = 1.5,
        float_rounding: int = 6,
        spares: int | None = None,
        screen: ScreenLimits | None = DEFAULT_SCREEN,
        zygote: bool = True,
        grace_s: float = 0.25,
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
        if not grace_s >= 0:
            raise ValueError(f"grace_s: must be >= 0, got {grace_s}")
        self.num_workers = int(num_workers)
        self.spares = int(spares)
        self.timeout_s = float(timeout_s)
        self.grace_s = float(grace_s)
        self.float_rounding = int(float_rounding)
        self.screen = screen
        self.stats = PoolStats()
        self._workers: list[_Worker] = []
        self._zygote: _Zygote | None = None
        self._use_zygote = bool(zygote) and _CAN_FORK
        self._zygote_failures = 0
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

    @property
    def zygote_ready(self) -> bool:
        """Whether new workers are forked from a warm zygote now (False: plain subprocesses)."""
        return self._zygote is not None and self._zygote.ready

    def _spawn(self, replacement: bool = False) -> None:
        z = self._zygote
        w = None
        if z is not None and z.ready:
            try:
                w = _Worker.fork(z)
            except OSError as exc:
                self._zygote_failed(f"zygote unreachable ({type(exc).__name__}: {exc})")
        if w is None:
            w = _Worker.plain(self.float_rounding)
        w.replacement = replacement
        self._workers.append(w)

    def _start_zygote(self) -> None:
        if not self._use_zygote or self._zygote is not None or self._closed:
            return
        try:
            self._zygote = _Zygote(self.float_rounding)
        except OSError as exc:
            self._note_error(f"cannot start the zygote ({exc}); plain worker processes only")
            self._use_zygote = False

    def _zygote_failed(self, why: str) -> None:
        """The zygote died, hung or failed a fork: kill it and start another (plain workers
        meanwhile), or give it up after `_ZYGOTE_MAX_FAILURES` failures in a row."""
        z, self._zygote = self._zygote, None
        if z is not None:
            z.kill()
        self._zygote_failures += 1
        self.stats.zygote_restarts += 1
        if self._zygote_failures >= _ZYGOTE_MAX_FAILURES:
            self._use_zygote = False
            self._note_error(f"{why}; {self._zygote_failures} failures in a row: plain worker processes only")
            return
        self._note_error(f"{why}; restarting it")
        self._start_zygote()

    def _ensure_started(self) -> None:
        if self._closed:
            raise RuntimeError("VerifierPool is closed")
        if not self._started:
            # One warm-up in the zygote, then every worker forked from it in milliseconds (a
            # zygote that fails to start falls back to plain workers).
            self._start_zygote()
            while self._zygote is not None and not self._zygote.ready:
                self._poll(max(0.0, self._zygote.started_at + _STARTUP_LIMIT_S - time.monotonic()))
                self._check_startup_limit()
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
        """Kill `w` and start its successor (forked: ready in milliseconds; plain: warms up in
        the background)."""
        w.kill()
        self._workers.remove(w)
        self.stats.restarts += 1
        self._spawn(replacement=True)

    def close(self) -> None:
        """Stop every worker and the zygote (idempotent; also runs at interpreter exit)."""
        if self._closed:
            return
        self._closed = True
        for w in self._workers:
            w.kill()  # stateless: nothing to flush
        self._workers = []
        if self._zygote is not None:
            self._zygote.kill()
            self._zygote = None

    def __enter__(self) -> VerifierPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- events ----------------------------------------------------------------------------------
    def _poll(self, wait_s: float) -> list[tuple[_Job, bool, str | None]]:
        """Wait up to `wait_s` for answers, ready signals and zygote events; returns the finished
        jobs as (job, result, error raised in the worker).

        A worker that died is replaced and its job, if any, is returned as (job, False, None); a
        plain worker that dies before it ever became ready counts towards the start-up failure
        limit, a forked one towards the zygote's.
        """
        z = self._zygote
        conns: list = [w.out for w in self._workers if w.job is not None or not w.ready]
        if z is not None:
            conns.append(z.sock)
        if not conns:
            time.sleep(min(wait_s, 0.05))  # nothing to wait on (not reached in normal operation)
            return []
        by_conn = {id(w.out): w for w in self._workers}
        done: list[tuple[_Job, bool, str | None]] = []
        for c in mp_wait(conns, timeout=wait_s):
            if z is not None and c is z.sock:
                if z is self._zygote and not z.on_readable():
                    self._zygote_failed("zygote died" if z.ready else "zygote died during start-up")
                continue
            w = by_conn.get(id(c))
            if w is None or w not in self._workers:
                continue
            try:
                tag, ok, err = w.recv()
            except (EOFError, OSError, ValueError):
                if not w.ready:
                    if w.forked:
                        if w.zygote is self._zygote:  # (not when its zygote is already gone)
                            self._zygote_failed("forked worker died before it was ready")
                    else:
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
                w.on_ready(ok)
                if w.forked:
                    self._zygote_failures = 0
                else:
                    self._startup_failures = 0
                if w.replacement:
                    self.stats.last_restart_s.append(time.monotonic() - w.started_at)
                    del self.stats.last_restart_s[:-100]
            elif w.job is not None and tag == w.job.index:
                done.append((w.job, bool(ok), err))
                w.job = None
        return done

    def _check_startup_limit(self) -> None:
        now = time.monotonic()
        z = self._zygote
        if z is not None and not z.ready and now - z.started_at > _STARTUP_LIMIT_S:
            self._zygote_failed(f"zygote not warm within {_STARTUP_LIMIT_S:g}s")
        for w in list(self._workers):
            if w.ready or w not in self._workers:
                continue
            if w.forked and now - w.started_at > _FORK_LIMIT_S:
                # The zygote accepted the request but no worker came: treat it as stuck.
                if w.zygote is self._zygote:
                    self._zygote_failed(f"no forked worker within {_FORK_LIMIT_S:g}s")
                self.stats.crashes += 1
                self._replace(w)
            elif not w.forked and now - w.started_at > _STARTUP_LIMIT_S:
                raise RuntimeError(
                    f"verifier worker did not start within {_STARTUP_LIMIT_S:g}s (is math-verify installed?)"
                )

    def _idle_worker(self) -> _Worker | None:
        """A warm worker with no job (one found dead meanwhile is replaced), or None."""
        for w in [w for w in self._workers if w.ready and w.job is None]:
            if w.alive():
                return w
            self.stats.crashes += 1  # died while idle
            self._note_error("worker died while idle")
            self._replace(w)
        return None

    def _fork_pending(self) -> bool:
        """Whether a worker forked from the zygote is on its way (ready within milliseconds)."""
        return any(w.forked and not w.ready for w in self._workers)

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
                    active.append(_Job(queue.popleft(), now + self.timeout_s, now + self.timeout_s + self.grace_s))
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
                        # A call that got its worker late still runs for grace_s (within its limit).
                        job.deadline = max(job.deadline, min(time.monotonic() + self.grace_s, job.limit))
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
                    if job.worker is None and job.deadline < job.limit and self._fork_pending():
                        job.deadline = job.limit  # a forked replacement is imminent: wait for it
                        continue
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

    `RLENTROPY_VERIFY_WORKERS` overrides the default worker count; `RLENTROPY_VERIFY_ZYGOTE=0`
    starts plain worker processes only (no fork server).
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
            zygote = os.environ.get("RLENTROPY_VERIFY_ZYGOTE", "1").strip().lower() not in ("0", "false", "no", "off")
            _DEFAULT_POOL = VerifierPool(num_workers, timeout_s=timeout_s, zygote=zygote)
        return _DEFAULT_POOL
