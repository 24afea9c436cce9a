"""The verifier worker process: runs math-verify on (gold, prediction) pairs sent over a pipe.

Started by `rlentropy.rewards.pool.VerifierPool`, which kills a worker when a call overruns its hard
time limit, in one of two ways:

* `python -m rlentropy.rewards._worker ROUNDING --zygote FD`: the fork server (`zygote_main`), a
  plain subprocess that imports math-verify and warms sympy up once, then forks a ready worker
  (`serve` on two pipes it is handed) in milliseconds for each request of the pool;
* `python -m rlentropy.rewards._worker ROUNDING`: one plain worker over stdin / stdout
  (`worker_main`), where there is no `os.fork` or while the fork server is down.

Either way nothing of the parent, not even its `__main__`, is re-imported, and nothing here imports
torch or starts a thread (the zygote must fork safely).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any


def _parse_configs() -> list[Any]:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    return [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]


def make_verify_fn(float_rounding: int = 6):
    """A function (gold, pred) -> bool comparing two answer strings with math-verify.

    Both strings are wrapped in `\\boxed{}` so that math-verify parses the whole answer (LaTeX
    first, then a plain expression). Gold parses are cached (a dataset's golds repeat across the
    samples of a group).
    """
    from math_verify import parse, verify

    configs = _parse_configs()

    def _parse(text: str) -> list[Any]:
        # parsing_timeout=None: math-verify's own SIGALRM timeout is off; the parent process owns
        # the hard time limit and kills this worker when it is exceeded.
        return parse("\\boxed{" + text + "}", extraction_config=configs, parsing_timeout=None)

    parse_gold = lru_cache(maxsize=4096)(lambda g: _parse(g))

    def verify_pair(gold: str, pred: str) -> bool:
        g = parse_gold(gold)
        if not g:
            return False
        p = _parse(pred)
        if not p:
            return False
        return bool(verify(g, p, float_rounding=float_rounding, timeout_seconds=None))

    return verify_pair


_WARMUP = (
    ("\\frac{1}{2}", "0.5"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)"),
    ("[-2, 7)", "[-2,7)"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
    ("x^2 + 1", "1 + x^2"),
    ("2\\sqrt{3}", "\\sqrt{12}"),
    ("\\text{(C)}", "C"),
    ("y = 2x + 1", "2x+1"),
    ("10^\\circ", "10"),
    # Equal but differently written: reaches sympy's full `simplify`, whose first call imports
    # sympy.physics.units (about 0.5 s) - not to be paid by the first real call after a restart.
    ("(x+1)^2", "x^2+2x+1"),
    # The first trigonometric simplification pulls in sympy's trig rewriting (about 0.2 s).
    ("\\frac{\\sqrt{3}}{2}", "\\sin(\\pi/3)"),
)


def _warm_verify_fn(float_rounding: int):
    """`make_verify_fn(float_rounding)` after the warm-up, with library logging silenced."""
    import logging

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    logging.getLogger("latex2sympy2_extended").setLevel(logging.CRITICAL)
    verify_pair = make_verify_fn(float_rounding)
    # Warm up: the first comparison of each kind pulls in lazily imported sympy modules and fills
    # caches (a first tuple comparison can take over a second); do it before reporting ready so
    # that no real call pays for it under its time limit.
    for gold, pred in _WARMUP:
        try:
            verify_pair(gold, pred)
        except Exception:  # noqa: BLE001
            pass
    return verify_pair


def serve(verify_pair, rfile: Any, wfile: Any) -> None:
    """Loop over JSON lines on `rfile`: `[job_id, gold, pred]` -> `[job_id, ok, error_text]` on `wfile`.

    The first line written is `["ready", pid, null]`; an empty line or end of input stops it.
    """
    import json
    import os

    def send(obj: Any) -> None:
        wfile.write(json.dumps(obj) + "\n")
        wfile.flush()

    send(["ready", os.getpid(), None])
    for line in rfile:
        if not line.strip():
            return
        job_id, gold, pred = json.loads(line)
        try:
            send([job_id, verify_pair(gold, pred), None])
        except Exception as exc:  # noqa: BLE001 - any parse failure is "not verified"
            send([job_id, False, f"{type(exc).__name__}: {str(exc)[:200]}"])


def worker_main(float_rounding: int) -> None:
    """A plain worker: warm up, then `serve` over stdin / stdout."""
    import sys

    verify_pair = _warm_verify_fn(float_rounding)
    # Only the protocol goes to the real stdout; stray prints from libraries go to stderr.
    out = sys.stdout
    sys.stdout = sys.stderr
    serve(verify_pair, sys.stdin, out)


def zygote_main(float_rounding: int, ctl_fd: int) -> None:
    """The fork server: warm up once, then fork a ready worker for each request on `ctl_fd`.

    `ctl_fd` is a Unix stream socket to the pool. The zygote writes `R` on it once warm. Each
    request is one byte with two file descriptors attached (SCM_RIGHTS): the read end of the
    worker's request pipe and the write end of its answer pipe. The zygote forks; the child closes
    the control socket and `serve`s on the two descriptors (it announces itself with its pid); the
    zygote closes its copies at once, so the pool sees end of file on the answer pipe when the
    child dies (or when the fork failed). Children are reaped by the kernel (SIGCHLD ignored). End
    of file on `ctl_fd` stops the zygote; its children live on until their own pipes close.

    The zygote imports only math-verify and sympy and runs no thread, so forking it is safe.
    """
    import os
    import signal
    import socket
    import sys
    import traceback

    ctl = socket.socket(fileno=ctl_fd)
    ctl.setblocking(True)
    verify_pair = _warm_verify_fn(float_rounding)
    sys.stdout = sys.stderr  # stray prints (in the zygote or its children) go to stderr
    threading = sys.modules.get("threading")
    if threading is not None and threading.active_count() > 1:
        # A thread (of some future library version) would not survive the fork: give up, and the
        # pool falls back to plain worker processes.
        print("rlentropy verifier zygote: threads running after the warm-up, not forking", file=sys.stderr)
        return
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # no zombies: the kernel reaps the children
    ctl.sendall(b"R")
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(ctl, 1, 2)
        except (OSError, KeyboardInterrupt):
            return
        if not msg:
            return  # the pool closed its end (or died)
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            continue
        try:
            pid = os.fork()
        except OSError:
            pid = -1  # the pool sees end of file on the answer pipe at once
        if pid == 0:  # the worker
            code = 0
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                ctl.close()
                rfile = os.fdopen(fds[0], "r", encoding="utf-8")
                wfile = os.fdopen(fds[1], "w", encoding="utf-8")
                serve(verify_pair, rfile, wfile)
            except BaseException:  # noqa: BLE001 - never return into the zygote's loop
                code = 1
                if not isinstance(sys.exc_info()[1], (BrokenPipeError, KeyboardInterrupt)):
                    traceback.print_exc()
            finally:
                os._exit(code)
        for fd in fds:
            os.close(fd)


if __name__ == "__main__":
    import sys as _sys

    _args = _sys.argv[1:]
    _rounding = int(_args[0]) if _args else 6
    if len(_args) >= 3 and _args[1] == "--zygote":
        zygote_main(_rounding, int(_args[2]))
    else:
        worker_main(_rounding)
