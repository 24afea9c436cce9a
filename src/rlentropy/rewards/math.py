"""Math correctness rewards: extract the final answer, compare it with the gold answer.

The comparison is math-verify's (`parse` + `verify`, symbolic equivalence), run in a
`VerifierPool` so that every call has a hard time limit enforced out of process. Two plain
decimal numbers ("18" vs "18.0", "1,000" vs "1000") are compared exactly in the calling process
without sympy: that is the common case for GSM8K / AIME / AMC / DAPO and costs microseconds.

    scorer = MathScorer(style="boxed")
    scorer.score(["... so \\boxed{18}", "\\boxed{17}"], ["18", "18"])   # -> [1.0, 0.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rlentropy.rewards.extract import (
    DEFAULT_MAX_ANSWER_CHARS,
    as_plain_number,
    extract_answer,
    r1_format_ok,
)
from rlentropy.rewards.pool import VerifierPool, default_pool

DEFAULT_TIMEOUT_S = 1.5


def verify_answers(
    golds: Sequence[str],
    preds: Sequence[str | None],
    *,
    pool: VerifierPool | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> list[bool]:
    """Is each extracted prediction equivalent to its gold answer?

    Args:
        golds: gold answer strings (LaTeX or plain).
        preds: extracted answers (None = nothing extracted → False).
        pool: the verifier pool (default: the shared `default_pool(timeout_s=...)`).
        timeout_s: hard limit per symbolic comparison when the shared pool is used.

    Predictions that are not plain numbers go to the pool, which pre-screens them
    (`rlentropy.rewards.screen`: length, nesting, exponent towers, huge powers and factorials)
    before math-verify sees them.
    """
    if len(golds) != len(preds):
        raise ValueError(f"preds: expected {len(golds)} predictions, got {len(preds)}")
    out = [False] * len(golds)
    slow: list[int] = []
    for i, (g, p) in enumerate(zip(golds, preds)):
        if p is None or not p.strip():
            continue
        gv, pv = as_plain_number(g), as_plain_number(p)
        if gv is not None and pv is not None:
            out[i] = gv == pv
        else:
            slow.append(i)
    if slow:
        pool = pool or default_pool(timeout_s=timeout_s)
        res = pool.verify_many([(golds[i], preds[i]) for i in slow])  # type: ignore[misc]
        for i, r in zip(slow, res):
            out[i] = r
    return out


@dataclass
class MathScorer:
    """Scores completions against gold answers.

    Attributes:
        style: answer extraction style (`rlentropy.rewards.extract.extract_answer`), e.g. "boxed",
            "r1", "dapo", "gsm8k", "auto" or a chain "boxed+gsm8k+dapo".
        require_r1_format: multiply correctness by the R1 format reward (the researcher seed's
            reward: tag_score × correctness).
        format_prefix: text of the format already written by the prompt (R1: "<think>").
        timeout_s: hard limit per symbolic comparison.
        max_answer_chars: longest extracted answer considered.
        pool: a specific `VerifierPool` (default: the shared one); its `screen` sets the
            pre-screen limits.
    """

    style: str = "auto"
    require_r1_format: bool = False
    format_prefix: str = "<think>"
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_answer_chars: int = DEFAULT_MAX_ANSWER_CHARS
    pool: VerifierPool | None = None

    def extract(self, completion: str) -> str | None:
        return extract_answer(completion, self.style, max_chars=self.max_answer_chars)

    def correct(self, completions: Sequence[str], golds: Sequence[str]) -> list[bool]:
        """Correctness of each completion (format not required)."""
        if len(completions) != len(golds):
            raise ValueError(f"golds: expected {len(completions)} gold answers, got {len(golds)}")
        preds = [self.extract(c) for c in completions]
        return verify_answers(golds, preds, pool=self.pool, timeout_s=self.timeout_s)

    def score(self, completions: Sequence[str], golds: Sequence[str]) -> list[float]:
        """One reward in {0.0, 1.0} per completion."""
        ok = self.correct(completions, golds)
        if self.require_r1_format:
            fmt = [r1_format_ok(c, prefix=self.format_prefix) for c in completions]
            ok = [a and b for a, b in zip(ok, fmt)]
        return [1.0 if x else 0.0 for x in ok]


def r1_format_reward(completions: Sequence[str], *, prefix: str = "<think>") -> list[float]:
    """1.0 for each completion with the R1 shape (`r1_format_ok`), else 0.0."""
    return [1.0 if r1_format_ok(c, prefix=prefix) else 0.0 for c in completions]


def math_reward(
    completions: Sequence[str],
    golds: Sequence[str],
    *,
    style: str = "auto",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    pool: VerifierPool | None = None,
) -> list[float]:
    """1.0 when the answer extracted from a completion (by `style`) equals its gold, else 0.0."""
    return MathScorer(style=style, timeout_s=timeout_s, pool=pool).score(completions, golds)
