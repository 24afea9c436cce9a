"""Verifiers: answer extraction, the R1 format check, math-verify under hard out-of-process limits."""

from __future__ import annotations

import time
from fractions import Fraction

import pytest
from hypothesis import given, settings, strategies as st

from rlentropy.rewards import (
    MathScorer,
    VerifierPool,
    as_plain_number,
    extract_answer,
    extract_boxed,
    extract_dapo,
    extract_gsm8k,
    extract_r1,
    r1_format_ok,
    r1_format_reward,
    verify_answers,
)


@pytest.fixture(scope="module")
def pool():
    p = VerifierPool(2, timeout_s=1.5).start()
    yield p
    p.close()


# --------------------------------------------------------------------------------------------- extraction
def test_boxed_nested_and_last():
    assert extract_boxed(r"first \boxed{1}, then \boxed{\frac{a}{b+{c}}}.") == r"\frac{a}{b+{c}}"
    assert extract_boxed(r"\fbox{7}") == "7"
    assert extract_boxed(r"the answer is \boxed 5$.") == "5"
    assert extract_boxed(r"\boxed{unclosed {x}") is None
    assert extract_boxed("no box here") is None
    assert extract_boxed(r"\boxed{" + "1" * 2000 + "}") is None  # longer than max_chars=1000
    assert extract_boxed(r"\boxed{" + "1" * 20 + "}", max_chars=10) is None


def test_other_styles():
    assert extract_gsm8k("so 3 + 4 = 7\n#### 1,234\n") == "1234"
    assert extract_gsm8k("#### 5\nmore\n#### 6.") == "6"
    assert extract_dapo("work\nAnswer: 42\n") == "42"
    assert extract_dapo("answer : $\\frac{1}{2}$") == r"\frac{1}{2}"
    assert extract_dapo("The answer is below.\nANSWER:7") == "7"
    assert extract_dapo("no colon answer here") is None
    assert extract_r1(" think </think> <answer> 18 </answer>") == "18"
    assert extract_r1("<answer>so \\boxed{3}</answer>") == "3"
    assert extract_r1("<answer> 18") is None
    assert extract_answer(" x </think> <answer>5</answer>", "auto") == "5"
    assert extract_answer("\\boxed{4}\n#### 5", "gsm8k+boxed") == "5"
    assert extract_answer("\\boxed{4}\n#### 5", "boxed+gsm8k") == "4"
    with pytest.raises(ValueError, match="style"):
        extract_answer("x", "nope")


def test_plain_numbers():
    assert as_plain_number("1,234") == Fraction(1234)
    assert as_plain_number("-3.50") == Fraction(-7, 2)
    assert as_plain_number("\\$5") == 5
    assert as_plain_number("18.") == 18
    for s in ("1/2", "x", "1e5", "12,34", "(1,2)"):
        assert as_plain_number(s) is None


def test_r1_format():
    good = " reason </think> <answer> 7 </answer>"
    assert r1_format_ok(good)
    assert r1_format_reward([good, good + " trailing"]) == [1.0, 0.0]
    assert not r1_format_ok(" a </think> b <answer> 7 </answer>")  # text between the blocks
    assert not r1_format_ok(" a </think> <answer>  </answer>")  # empty answer
    assert not r1_format_ok(" a </think> <answer> 7 </answer> <answer> 8 </answer>")
    assert not r1_format_ok(" a <answer> 7 </answer> </think>")  # wrong order
    assert r1_format_ok("<think> a </think><answer>7</answer>", prefix="")


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="{}\\boxed<>/answer#:\n 0123456789", max_size=300))
def test_extractors_never_raise_and_bound_output(text):
    for style in ("boxed", "gsm8k", "dapo", "r1"):
        out = extract_answer(text, style, max_chars=50)
        assert out is None or len(out) <= 52
    r1_format_ok(text)


# --------------------------------------------------------------------------------------------- verification
def test_verify_symbolic_and_numeric(pool):
    golds = ["0.5", r"\frac{1}{2}", r"\left( 3, \frac{\pi}{2} \right)", "18", "18", "x^2+1", "3"]
    preds = [r"\frac12", "0.5", r"(3, \pi/2)", "18.00", "1,8", "1+x^2", None]
    assert verify_answers(golds, preds, pool=pool) == [True, True, True, True, False, True, False]


def test_scorer_batch_of_64_is_fast(pool):
    # 64 completions, half symbolic (pool), half plain numbers (fast path); 3 of every 4 correct.
    golds, comps, want = [], [], []
    for i in range(16):
        golds += [str(i), str(i), rf"\frac{{{i}}}{{{i + 1}}}", rf"\frac{{{i}}}{{{i + 1}}}"]
        comps += [
            rf"... \boxed{{{i}}}",
            rf"... \boxed{{{i + 1}}}",
            rf"... \boxed{{\dfrac{{{i}}}{{{i + 1}}}}}",
            rf"... \boxed{{{i}/{i + 1}}}",
        ]
        want += [1.0, 0.0, 1.0, 1.0]
    scorer = MathScorer(style="boxed", pool=pool)
    t0 = time.perf_counter()
    got = scorer.score(comps, golds)
    dt = time.perf_counter() - t0
    assert got == want
    assert dt < 3.0, f"64 completions took {dt:.2f}s"


def test_r1_reward_needs_format_and_correctness(pool):
    scorer = MathScorer(style="r1", require_r1_format=True, pool=pool)
    comps = [" ok </think> <answer> 7 </answer>", " ok </think> x <answer> 7 </answer>", " </think> <answer> 8 </answer>"]
    assert scorer.score(comps, ["7", "7", "7"]) == [1.0, 0.0, 0.0]


# Inputs caught before any parsing (answer length / brace-depth guards, linear-time extraction).
GUARDED = {
    "one_megabyte": r"\boxed{" + "9" * (1 << 20) + "}",
    "one_megabyte_of_tags": "<answer>" * (1 << 17) + "Answer:" * 1000,
    "deep_braces": r"\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}",
    "frac_tower": r"\boxed{" + r"\frac{" * 200 + "1" + "}{2}" * 200 + "}",
}
# Inputs that reach sympy and hang it in C code: only the out-of-process kill stops them.
HANGING = {
    "power_tower": r"\boxed{9^{9^{9^{9}}}}",
    "factorial_tower": r"\boxed{((99999!)!)!}",
}


@pytest.mark.parametrize("name", sorted(GUARDED))
def test_guarded_adversarial_inputs_return_zero_fast(pool, name):
    text = GUARDED[name]
    for style in ("auto", "boxed", "r1", "dapo", "gsm8k"):
        t0 = time.perf_counter()
        got = MathScorer(style=style, pool=pool).score([text], ["1"])
        dt = time.perf_counter() - t0
        assert got == [0.0]
        assert dt < 2.0, f"{name}/{style}: {dt:.2f}s"
    assert pool.stats.timeouts == 0  # none of them needed a kill


def test_hanging_inputs_are_killed_within_2s_and_workers_replaced():
    with VerifierPool(2, timeout_s=1.5) as p:
        assert p.verify_many([("1", "1"), ("2", "2")]) == [True, True]  # both workers started, warm
        for k, name in enumerate(sorted(HANGING), 1):
            t0 = time.perf_counter()
            got = MathScorer(style="boxed", pool=p).score([HANGING[name]], ["1"])
            dt = time.perf_counter() - t0
            assert got == [0.0]
            assert dt < 2.0, f"{name}: {dt:.2f}s"
            assert p.stats.timeouts == k and p.stats.restarts == k  # killed and replaced
        # The replacements verify normally (waiting for them to start is not counted as a timeout).
        assert p.verify_many([("x+1", "1+x"), ("3", "4")]) == [True, False]
        assert p.stats.timeouts == 2


def test_crashed_worker_is_replaced():
    p = VerifierPool(1, timeout_s=5.0).start()
    try:
        p._workers[0].proc.kill()  # simulate a segfault / OOM kill between calls
        assert p.verify_many([("3", "3"), ("x+1", "1+x")]) == [True, True]
        assert p.stats.crashes >= 1
    finally:
        p.close()


def test_pool_bad_arguments():
    with pytest.raises(ValueError, match="num_workers"):
        VerifierPool(0)
    with pytest.raises(ValueError, match="timeout_s"):
        VerifierPool(1, timeout_s=0)
    with pytest.raises(ValueError, match="preds"):
        verify_answers(["1"], [])
