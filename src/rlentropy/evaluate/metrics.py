"""Pure evaluation metrics over n samples per prompt: pass@k, avg@n, maj@k.

Everything here is plain Python over lists (no model, no I/O), so the estimators can be checked
exactly against brute-force enumeration.

Definitions (per prompt with n samples, c of them correct; averaged over prompts):

* ``pass@k`` — the unbiased estimator of Chen et al. (2021), ``1 - C(n-c, k) / C(n, k)``: the
  probability that a uniformly random k-subset of the n samples contains a correct one.
* ``avg@n`` — the mean correctness of all n samples (= pass@1).
* ``maj@k`` — majority vote over normalised extracted answers. The n samples are cut, in sampling
  order, into ``n // k`` disjoint blocks of k (samples are i.i.d., so each block is a fair draw of k);
  in each block the most frequent answer wins, and the block scores the correctness of the winner.
  Samples with no extracted answer (``None``) do not vote; a block where nobody votes scores 0. A tie
  between m answers scores the mean correctness of the tied answers (the expected score of a random
  tie-break), which keeps the metric deterministic.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence

from rlentropy.algorithms import pass_at_k


def ks_up_to(n: int) -> list[int]:
    """The k values reported for n samples: 1, 2, 4, … (powers of two ≤ n), plus n itself.

    Args:
        n: samples per prompt, ≥ 1.

    Returns:
        Increasing list of k, e.g. ``ks_up_to(12) == [1, 2, 4, 8, 12]``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    ks = []
    k = 1
    while k <= n:
        ks.append(k)
        k *= 2
    if ks[-1] != n:
        ks.append(n)
    return ks


def pass_at_k_mean(correct_counts: Sequence[int], n: int, k: int) -> float:
    """Mean over prompts of the unbiased pass@k estimator.

    Args:
        correct_counts: c per prompt (number of correct samples out of n).
        n: samples per prompt.
        k: subset size, 1 ≤ k ≤ n.

    Returns:
        The mean of ``1 - C(n - c, k) / C(n, k)`` over prompts.
    """
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n={n}], got {k}")
    if len(correct_counts) == 0:
        raise ValueError("correct_counts must not be empty")
    for c in correct_counts:
        if not 0 <= c <= n:
            raise ValueError(f"correct_counts entries must be in [0, n={n}], got {c}")
    return sum(float(pass_at_k(n, int(c), k)) for c in correct_counts) / len(correct_counts)


def majority_vote_score(answers: Sequence[Hashable | None], correct: Sequence[float]) -> float:
    """Score of a majority vote over one block of samples.

    Args:
        answers: normalised extracted answer per sample (``None`` = no answer, does not vote).
        correct: correctness per sample in [0, 1] (same length).

    Returns:
        The correctness of the most voted answer (mean correctness of its voters); with a tie, the
        mean over the tied answers; 0.0 when no sample voted.
    """
    if len(answers) != len(correct):
        raise ValueError(f"answers and correct differ in length: {len(answers)} vs {len(correct)}")
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return 0.0
    top = max(votes.values())
    winners = [a for a, v in votes.items() if v == top]
    scores = []
    for w in winners:
        vals = [float(c) for a, c in zip(answers, correct) if a == w]
        scores.append(sum(vals) / len(vals))
    return sum(scores) / len(scores)


def maj_at_k_mean(answers: Sequence[Sequence[Hashable | None]], correct: Sequence[Sequence[float]], k: int) -> float:
    """Mean over prompts of maj@k (disjoint blocks of k in sampling order, see the module doc).

    Args:
        answers: per prompt, the n normalised answers (``None`` = no answer).
        correct: per prompt, the n correctness values.
        k: block size, 1 ≤ k ≤ n.

    Returns:
        Mean over prompts of the mean block score.
    """
    if len(answers) == 0:
        raise ValueError("answers must not be empty")
    if len(answers) != len(correct):
        raise ValueError(f"answers and correct differ in length: {len(answers)} vs {len(correct)}")
    total = 0.0
    for a_row, c_row in zip(answers, correct):
        n = len(a_row)
        if not 1 <= k <= n:
            raise ValueError(f"k must be in [1, n={n}], got {k}")
        blocks = n // k
        s = sum(majority_vote_score(a_row[b * k : (b + 1) * k], c_row[b * k : (b + 1) * k]) for b in range(blocks))
        total += s / blocks
    return total / len(answers)


def sample_metrics(
    answers: Sequence[Sequence[Hashable | None]], correct: Sequence[Sequence[float]]
) -> dict[str, float]:
    """pass@k, avg@n and maj@k for every k in ``ks_up_to(n)``.

    Args:
        answers: per prompt, n normalised answers (``None`` = no answer).
        correct: per prompt, n correctness values in [0, 1]; a sample counts as correct for pass@k
            and avg@n when its value is ≥ 0.5 (the evaluator passes 0/1).

    Returns:
        ``{"pass@1": …, "pass@2": …, "avg@n": …, "maj@1": …, …}`` (keys use the actual n).
    """
    if len(correct) == 0:
        raise ValueError("correct must not be empty")
    n = len(correct[0])
    if n == 0 or any(len(row) != n for row in correct):
        raise ValueError("every prompt must have the same number n >= 1 of samples")
    counts = [sum(1 for v in row if float(v) >= 0.5) for row in correct]
    out: dict[str, float] = {}
    for k in ks_up_to(n):
        out[f"pass@{k}"] = pass_at_k_mean(counts, n, k)
    out[f"avg@{n}"] = sum(c / n for c in counts) / len(counts)
    for k in ks_up_to(n):
        out[f"maj@{k}"] = maj_at_k_mean(answers, correct, k)
    return out
