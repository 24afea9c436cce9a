"""The verifier worker process: runs math-verify on (gold, prediction) pairs sent over a pipe.

Runs as `python -m rlentropy.rewards._worker` (a plain subprocess: nothing of the parent, not even
its `__main__`, is re-imported), started by `rlentropy.rewards.pool.VerifierPool`, which kills it
when a call overruns its hard time limit. Kept free of torch imports so that a (re)start is cheap.
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
)


def worker_main(float_rounding: int) -> None:
    """Loop over JSON lines on stdin: `[job_id, gold, pred]` -> `[job_id, ok, error_text]` on stdout.

    The first line written is `["ready", null, null]`; an empty line or end of input stops it.
    """
    import json
    import logging
    import sys

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
    # Only the protocol goes to the real stdout; stray prints from libraries go to stderr.
    out = sys.stdout
    sys.stdout = sys.stderr

    def send(obj: Any) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    send(["ready", None, None])
    for line in sys.stdin:
        if not line.strip():
            return
        job_id, gold, pred = json.loads(line)
        try:
            send([job_id, verify_pair(gold, pred), None])
        except Exception as exc:  # noqa: BLE001 - any parse failure is "not verified"
            send([job_id, False, f"{type(exc).__name__}: {str(exc)[:200]}"])


if __name__ == "__main__":
    import sys as _sys

    worker_main(int(_sys.argv[1]) if len(_sys.argv) > 1 else 6)
