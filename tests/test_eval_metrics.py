"""pass@k, avg@n and maj@k: brute-force enumeration, hand-worked cases, properties."""

from __future__ import annotations

import itertools
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlentropy.evaluate.metrics import (
    ks_up_to,
    maj_at_k_mean,
    majority_vote_score,
    pass_at_k_mean,
    sample_metrics,
)


def brute_pass_at_k(flags: list[int], k: int) -> Fraction:
    """Fraction of the k-subsets of the samples that contain a correct one (exact)."""
    subsets = list(itertools.combinations(range(len(flags)), k))
    hit = sum(1 for sub in subsets if any(flags[i] for i in sub))
    return Fraction(hit, len(subsets))


@pytest.mark.parametrize("n", range(1, 8))
def test_pass_at_k_matches_subset_enumeration(n):
    for c in range(n + 1):
        # the position of the correct samples does not matter; put them in the middle
        flags = [0] * ((n - c) // 2) + [1] * c + [0] * (n - c - (n - c) // 2)
        for k in range(1, n + 1):
            expected = float(brute_pass_at_k(flags, k))
            got = pass_at_k_mean([c], n, k)
            assert got == pytest.approx(expected, rel=0, abs=1e-15), (n, c, k)


def test_pass_at_k_mean_over_prompts_hand_case():
    # n = 4. Prompt A: c = 1 -> pass@2 = 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5.
    # Prompt B: c = 0 -> 0. Prompt C: c = 3 -> 1 - C(1,2)/C(4,2) = 1 - 0 = 1.
    # Mean = (0.5 + 0 + 1) / 3 = 0.5.
    assert pass_at_k_mean([1, 0, 3], 4, 2) == pytest.approx(0.5, abs=1e-15)
    # pass@1 = c / n averaged: (1/4 + 0 + 3/4) / 3 = 1/3.
    assert pass_at_k_mean([1, 0, 3], 4, 1) == pytest.approx(1 / 3, abs=1e-15)


def test_pass_at_k_bad_input():
    with pytest.raises(ValueError, match="k must be"):
        pass_at_k_mean([1], 4, 5)
    with pytest.raises(ValueError, match="correct_counts"):
        pass_at_k_mean([5], 4, 1)
    with pytest.raises(ValueError, match="correct_counts"):
        pass_at_k_mean([], 4, 1)


def test_ks_up_to():
    assert ks_up_to(1) == [1]
    assert ks_up_to(8) == [1, 2, 4, 8]
    assert ks_up_to(12) == [1, 2, 4, 8, 12]
    assert ks_up_to(32) == [1, 2, 4, 8, 16, 32]
    with pytest.raises(ValueError, match="n must be"):
        ks_up_to(0)


def test_majority_vote_hand_cases():
    # "5" has 2 votes, "7" one -> winner "5", which is correct.
    assert majority_vote_score(["5", "7", "5"], [1, 0, 1]) == 1.0
    # the wrong answer wins 2:1 although a correct sample exists.
    assert majority_vote_score(["7", "5", "7"], [0, 1, 0]) == 0.0
    # None does not vote: "5" (1 vote) beats nobody -> correct.
    assert majority_vote_score([None, None, "5"], [0, 0, 1]) == 1.0
    # nobody voted -> 0.
    assert majority_vote_score([None, None], [0, 0]) == 0.0
    # tie 1:1 between a correct and a wrong answer -> expected score of a random tie-break = 0.5.
    assert majority_vote_score(["5", "7"], [1, 0]) == 0.5
    # three-way tie with one correct -> 1/3.
    assert majority_vote_score(["a", "b", "c"], [0, 1, 0]) == pytest.approx(1 / 3, abs=1e-15)
    with pytest.raises(ValueError, match="differ in length"):
        majority_vote_score(["a"], [1, 0])


def test_maj_at_k_blocks_hand_case():
    # one prompt, n = 4, answers in sampling order: 5 7 7 5 with 5 correct.
    # maj@1: blocks [5] [7] [7] [5] -> 1 0 0 1 -> 0.5
    # maj@2: blocks [5 7] (tie -> 0.5) and [7 5] (tie -> 0.5) -> 0.5
    # maj@4: one block, 2:2 tie -> 0.5
    answers = [["5", "7", "7", "5"]]
    correct = [[1, 0, 0, 1]]
    assert maj_at_k_mean(answers, correct, 1) == 0.5
    assert maj_at_k_mean(answers, correct, 2) == 0.5
    assert maj_at_k_mean(answers, correct, 4) == 0.5
    # second prompt: 3 3 3 4 with 4 correct -> maj@4 = 0 ; maj@2 blocks [3 3]=0, [3 4]=0.5 -> 0.25
    answers2 = [["3", "3", "3", "4"]]
    correct2 = [[0, 0, 0, 1]]
    assert maj_at_k_mean(answers2, correct2, 4) == 0.0
    assert maj_at_k_mean(answers2, correct2, 2) == 0.25
    # both prompts together: maj@2 = (0.5 + 0.25) / 2 = 0.375
    assert maj_at_k_mean(answers + answers2, correct + correct2, 2) == 0.375
    # n = 5, k = 2: 2 blocks, the 5th sample is left out: [x y] (tie 0.5) [x x] (1) -> 0.75
    assert maj_at_k_mean([["x", "y", "x", "x", "y"]], [[1, 0, 1, 1, 0]], 2) == 0.75


def test_sample_metrics_keys_and_values():
    # 2 prompts, n = 4.
    answers = [["1", "1", "2", None], ["9", "8", "8", "8"]]
    correct = [[1, 1, 0, 0], [1, 0, 0, 0]]
    m = sample_metrics(answers, correct)
    assert set(m) == {"pass@1", "pass@2", "pass@4", "avg@4", "maj@1", "maj@2", "maj@4"}
    # avg@4 = (2/4 + 1/4) / 2 = 0.375 = pass@1
    assert m["avg@4"] == pytest.approx(0.375, abs=1e-15)
    assert m["pass@1"] == pytest.approx(0.375, abs=1e-15)
    # pass@2: prompt 1 c=2: 1 - C(2,2)/C(4,2) = 5/6; prompt 2 c=1: 1 - 3/6 = 1/2 -> (5/6 + 1/2)/2 = 2/3
    assert m["pass@2"] == pytest.approx(2 / 3, abs=1e-15)
    assert m["pass@4"] == 1.0
    # maj@4: prompt 1 "1" wins (2 votes) -> 1; prompt 2 "8" wins -> 0 -> 0.5
    assert m["maj@4"] == 0.5
    # maj@1: per-sample correctness, None scores 0: (1+1+0+0)/4=0.5, (1+0+0+0)/4=0.25 -> 0.375
    assert m["maj@1"] == 0.375
    with pytest.raises(ValueError, match="same number"):
        sample_metrics([["a"], ["a", "b"]], [[1], [1, 0]])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.booleans()), min_size=6, max_size=6),
        min_size=1,
        max_size=4,
    )
)
def test_properties(rows):
    answers = [[a for a, _ in row] for row in rows]
    correct = [[1.0 if c else 0.0 for _, c in row] for row in rows]
    m = sample_metrics(answers, correct)
    # maj@1 is per-sample correctness when every sample has an answer
    assert m["maj@1"] == pytest.approx(m["avg@6"], abs=1e-12)
    # pass@k is non-decreasing in k and bounded by [avg, 1]
    ks = ks_up_to(6)
    vals = [m[f"pass@{k}"] for k in ks]
    assert all(b >= a - 1e-12 for a, b in zip(vals, vals[1:]))
    assert vals[0] == pytest.approx(m["avg@6"], abs=1e-12)
    # pass@n is the fraction of prompts with at least one correct sample
    frac_any = sum(1 for row in correct if any(row)) / len(correct)
    assert m["pass@6"] == pytest.approx(frac_any, abs=1e-12)
    # every maj@k is at most pass@n (a vote cannot find a correct answer nobody gave)
    for k in ks:
        assert 0.0 <= m[f"maj@{k}"] <= m["pass@6"] + 1e-12
