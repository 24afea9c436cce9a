"""Verifiers: answer extraction, the R1 format check, math-verify under hard out-of-process limits."""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import replace
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    screen_answer,
    verify_answers,
)
from rlentropy.rewards.screen import DEFAULT_SCREEN, ScreenLimits


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
    comps = [
        " ok </think> <answer> 7 </answer>",
        " ok </think> x <answer> 7 </answer>",
        " </think> <answer> 8 </answer>",
    ]
    assert scorer.score(comps, ["7", "7", "7"]) == [1.0, 0.0, 0.0]


# Inputs caught before any parsing (linear-time extraction and its length limit, the pre-screen).
GUARDED = {
    "one_megabyte": r"\boxed{" + "9" * (1 << 20) + "}",
    "one_megabyte_of_tags": "<answer>" * (1 << 17) + "Answer:" * 1000,
    "deep_braces": r"\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}",
    "frac_tower": r"\boxed{" + r"\frac{" * 200 + "1" + "}{2}" * 200 + "}",
}
# Extracted answers the pre-screen rejects; each would hang sympy or its LaTeX parser for seconds
# (measured: 12 nested `{}` 2.6 s, `9^{9^9}` / `999999!` / `\binom{10^9}{10^8}` over 4 s).
SCREENED = {
    "power_tower": (r"9^{9^{9^{9}}}", "stacked exponents"),
    "bare_power_tower": (r"9^9^9^9", "stacked exponents"),
    "huge_power": (r"9^{9^9}", "power of about"),
    "python_power": (r"9**9**9", "power of about"),
    "negative_huge_power": (r"10^{-10^{7}}", "power of about"),
    "rational_power": (r"\left(\frac{3}{7}\right)^{3300000}", "power of about"),
    "factorial_tower": (r"((99999!)!)!", "factorial"),
    "huge_factorial": (r"999999!", "factorial"),
    "repeated_factorial": (r"9!!!", "factorial"),  # ((9!)!)! to latex2sympy
    "gamma": (r"\Gamma(10^9)", "Gamma"),
    "binomial": (r"\binom{10^9}{10^8}", "binomial"),
    "product_range": (r"\prod_{k=1}^{10^6} k", "terms"),
    "symbolic_power": (r"(x+1)^{9^9}", "exponent over"),
    "nested_braces": ("{" * 12 + "x" + "}" * 12, "nested 12 deep"),
    "nested_sin": (r"\sin(" * 12 + "x" + ")" * 12, "nested 12 deep"),
    "long_sum": ("+".join(["x^2"] * 200), "longer than 512"),
}
# Answers that pass the pre-screen (they look like polynomials) but that sympy takes far longer
# than any limit to compare with "1" (over 20 s each, measured): only the out-of-process kill stops
# them.
HANGING = {
    "poly_power_4vars": "(x+y+z+w)^{40}",
    "poly_power_5vars": "(a+b+c+d+e)^{20}-1",
}


def _boxed(answer: str) -> str:
    return "... so \\boxed{" + answer + "}"


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


def test_screen_rejects_adversarial_answers_with_a_reason():
    for name, (answer, why) in SCREENED.items():
        reason = screen_answer(answer)
        assert reason is not None and why in reason, (name, reason)


def test_screen_thresholds_are_exact():
    lim = DEFAULT_SCREEN
    assert (lim.max_chars, lim.max_nesting, lim.max_tower) == (512, 8, 2)
    assert (lim.max_digits, lim.max_exponent, lim.max_terms) == (100_000, 100_000, 10_000)
    cases = {
        "chars": ("1" * 512, "1" * 513),
        "nesting": ("(" * 8 + "x" + ")" * 8, "(" * 9 + "x" + ")" * 9),
        "tower": ("2^{2^{2}}", "2^{2^{2^{2}}}"),
        "power digits": ("2^{332192}", "2^{332200}"),  # 99,999.7 and 100,002 digits
        "factorial digits": ("25000!", "30000!"),  # 99,094 and 121,288 digits
        "symbolic exponent": ("x^{100000}", "x^{100001}"),
        "sum range": (r"\sum_{k=1}^{10000} k", r"\sum_{k=1}^{10001} k"),
    }
    for rule, (ok, bad) in cases.items():
        assert screen_answer(ok) is None, rule
        assert screen_answer(bad) is not None, rule
    assert screen_answer("5!!") is None  # (5!)! = 120!, 199 digits
    # Tighter limits are honoured.
    assert screen_answer("(((x)))", ScreenLimits(max_nesting=2)) is not None


def test_screen_passes_every_bundled_gold_in_every_template():
    # The full scoring of these golds is tests/test_data.py::test_every_gold_answer_verifies_in_every_template;
    # here only the pre-screen, on the answers exactly as each template's extraction returns them.
    from rlentropy.data import DataConfig, build_task, loaders
    from rlentropy.data.templates import TEMPLATES

    golds = {
        e.answer
        for name in ("gsm8k", "math500", "aime24", "aime25", "amc23")
        for e in build_task(DataConfig(task=name)).eval_examples()
    }
    golds |= {e.answer for e in build_task(DataConfig(task="gsm8k")).train_examples()}
    golds |= {e.answer for e in loaders.load_dataset_split("dapo17k", "train")}
    assert len(golds) > 2500
    for tname, tpl in TEMPLATES.items():
        extracted = {extract_answer(tpl.format_answer(g), tpl.answer_style) for g in golds}
        bad = {a: screen_answer(a) for a in extracted if a is not None and screen_answer(a)}
        assert not bad, (tname, list(bad.items())[:5])


def test_screened_answers_never_reach_a_worker():
    p = VerifierPool(1, timeout_s=1.5)
    try:
        pairs = [("1", answer) for answer, _ in SCREENED.values()]
        assert p.verify_many(pairs) == [False] * len(pairs)
        assert p.stats.screened == len(pairs) and p.stats.timeouts == 0
        assert p._workers == [] and p._zygote is None  # no process was even started
    finally:
        p.close()
    # With the pre-screen off they do go to the workers (the benchmark's baseline).
    assert VerifierPool(1, screen=None).screen is None


def _wait_warm(p: VerifierPool, n: int = 1, limit_s: float = 60.0) -> None:
    t0 = time.monotonic()
    while p.workers_ready() < n:
        assert time.monotonic() - t0 < limit_s, "no worker became ready"
        time.sleep(0.05)


def test_spare_worker_is_warm_and_takes_over_at_once():
    with VerifierPool(1, timeout_s=1.0) as p:  # one worker + one spare
        assert p.workers_ready() == 2  # start() waits until both are warm
        assert MathScorer(style="boxed", pool=p).score([_boxed(HANGING["poly_power_4vars"])], ["1"]) == [0.0]
        assert p.stats.timeouts == 1 and p.stats.restarts == 1
        # The spare is warm and answers (the killed worker's successor may still be on its way).
        assert p.workers_ready() >= 1
        assert p.verify_many([("x+1", "1+x")]) == [True]
        assert p.stats.starved == 0


def test_deadline_counts_from_submission_not_from_a_ready_worker():
    # Plain subprocesses (no zygote): a replacement needs >= 1 s of imports.
    with VerifierPool(1, timeout_s=0.4, spares=0, zygote=False) as p:
        assert not p.zygote_ready and not p._workers[0].forked
        assert p.verify_many([("1", HANGING["poly_power_5vars"])]) == [False]
        assert p.stats.timeouts == 1  # killed; the only process is now a cold replacement
        t0 = time.perf_counter()
        got = p.verify_many([("x+1", "1+x")])
        dt = time.perf_counter() - t0
        # No warm worker within the call's 0.4 s: it scores 0 at its deadline instead of waiting
        # for the restart (>= 1 s of imports; the old pool waited, then started the clock).
        assert got == [False] and p.stats.starved == 1 and p.stats.timeouts == 1
        assert dt < 1.0, f"{dt:.2f}s"
        _wait_warm(p)
        assert p.verify_many([("x+1", "1+x")]) == [True]  # the pool recovers


def test_back_to_back_hanging_answers_each_end_at_the_limit():
    # One worker: before the spare and the deadline from submission, every call after a kill
    # waited for the replacement to import sympy (1-3 s) and then ran its full limit.
    timeout = 0.5
    with VerifierPool(1, timeout_s=timeout) as p:
        p.verify_many([("1", "1")])
        scorer = MathScorer(style="boxed", pool=p)
        walls = []
        for k in range(4):
            t0 = time.perf_counter()
            assert scorer.score([_boxed(HANGING[sorted(HANGING)[k % 2]])], ["1"]) == [0.0]
            walls.append(time.perf_counter() - t0)
        assert max(walls) < 1.2, [f"{w:.2f}" for w in walls]
        assert p.stats.timeouts + p.stats.starved == 4
        assert p.stats.restarts == p.stats.timeouts  # every killed worker was replaced
        _wait_warm(p)
        assert p.verify_many([("x+1", "1+x"), (r"\frac{1}{2}", "0.5")]) == [True, True]


def test_hanging_inputs_are_killed_within_2s_and_workers_replaced():
    with VerifierPool(2, timeout_s=1.5) as p:
        assert p.verify_many([("1", "1"), ("2", "2")]) == [True, True]  # both workers started, warm
        for k, name in enumerate(sorted(HANGING), 1):
            t0 = time.perf_counter()
            got = MathScorer(style="boxed", pool=p).score([_boxed(HANGING[name])], ["1"])
            dt = time.perf_counter() - t0
            assert got == [0.0]
            assert dt < 2.0, f"{name}: {dt:.2f}s"
            assert p.stats.timeouts == k and p.stats.restarts == k  # killed and replaced
        # The spare verifies at once (the replacements warm up in the background); no restart
        # is charged to these calls.
        assert p.verify_many([("x+1", "1+x"), ("3", "4")]) == [True, False]
        assert p.stats.timeouts == 2


def test_crashed_worker_is_replaced():
    p = VerifierPool(1, timeout_s=5.0).start()
    try:
        for w in p._workers:  # simulate a segfault / OOM kill between calls
            os.kill(w.pid, signal.SIGKILL)
        t0 = time.monotonic()
        while any(w.alive() for w in p._workers):  # (dead before the next call starts)
            assert time.monotonic() - t0 < 10
            time.sleep(0.01)
        assert p.verify_many([("3", "3"), ("x+1", "1+x")]) == [True, True]
        assert p.stats.crashes >= 1
    finally:
        p.close()


# Correct answers that take math-verify's symbolic path (no plain-number shortcut).
CORRECT = [
    (r"\frac{1}{2}", "0.5"),
    ("x+1", "1+x"),
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3, \pi/2)"),
    (r"2\sqrt{3}", r"\sqrt{12}"),
    ("[-2, 7)", "[-2,7)"),
    ("x^2+2x+1", "(x+1)^2"),
    (r"\frac{\sqrt{3}}{2}", r"\sin(\pi/3)"),
    (r"10^\circ", "10"),
]


@pytest.fixture(scope="module")
def storm_pool():
    # Shared by the storm tests below (one start-up); each checks differences of its counters.
    p = VerifierPool(2, timeout_s=0.5).start()  # 2 workers + 2 spares, forked from the zygote
    yield p
    p.close()


def test_killed_workers_successor_is_ready_within_half_a_second(storm_pool):
    # The successor is forked from the warm zygote; a plain subprocess needs 1-2.3 s of imports.
    p, s0 = storm_pool, replace(storm_pool.stats)
    for name in sorted(HANGING):
        assert p.verify_many([("1", HANGING[name])]) == [False]  # killed at 0.5 s
        t0 = time.monotonic()
        while p.workers_ready() < 4:
            assert time.monotonic() - t0 < 0.5, "no successor within 0.5 s"
            time.sleep(0.005)
    assert p.stats.timeouts - s0.timeouts == 2 and p.stats.restarts - s0.restarts == 2
    assert p.stats.starved == s0.starved
    assert all(w.forked for w in p._workers)


def test_correct_answers_right_after_a_storm_all_score_1(storm_pool):
    # 12 hanging answers through 2 slots: every 0.5 s both running workers are killed. Plain
    # replacements (1-2.3 s each, more under load) fell behind, and calls found no warm worker
    # before their deadline ("starved", scored 0), correct ones submitted right after included.
    p, s0 = storm_pool, replace(storm_pool.stats)
    storm = [("1", HANGING[name]) for name in sorted(HANGING)] * 6
    assert p.verify_many(storm) == [False] * len(storm)
    got = p.verify_many(CORRECT)
    assert got == [True] * len(CORRECT), f"{sum(got)}/{len(CORRECT)} scored 1 right after the storm; {p.stats}"
    assert p.stats.starved == s0.starved  # every call of the storm ran on a worker...
    assert p.stats.timeouts - s0.timeouts == len(storm)  # ...and was killed at its limit


def test_pool_survives_the_zygote_dying(storm_pool):
    p, s0 = storm_pool, replace(storm_pool.stats)
    zygote = p._zygote
    assert p.zygote_ready and all(w.forked for w in p._workers)
    os.kill(zygote.proc.pid, signal.SIGKILL)
    zygote.proc.wait()
    # The forked workers live on without it.
    assert p.verify_many([("x+1", "1+x"), ("3", "4")]) == [True, False]
    assert p.stats.zygote_restarts - s0.zygote_restarts == 1 and p._zygote is not zygote
    # A kill now starts a plain successor while the new zygote warms up.
    assert p.verify_many([("1", HANGING["poly_power_4vars"])]) == [False]
    assert not p._workers[-1].forked
    assert p.verify_many(CORRECT) == [True] * len(CORRECT)
    t0 = time.monotonic()
    while not p.zygote_ready:
        p.workers_ready()  # reads the zygote's ready signal
        assert time.monotonic() - t0 < 60, "the zygote did not come back"
        time.sleep(0.02)
    # Forked again.
    assert p.verify_many([("1", HANGING["poly_power_5vars"])]) == [False]
    assert p._workers[-1].forked
    assert p.verify_many(CORRECT) == [True] * len(CORRECT)
    assert p.stats.zygote_restarts - s0.zygote_restarts == 1 and p.stats.starved == s0.starved


def test_call_waits_within_its_grace_for_an_imminent_forked_successor():
    # The zygote stalls (SIGSTOP) as the only worker is killed, so the successor comes after the
    # next call's deadline (0.3 s) but within its grace: that call waits and runs (without the
    # grace it would score 0, starved).
    with VerifierPool(1, timeout_s=0.3, spares=0, grace_s=1.0) as p:
        zpid = p._zygote.proc.pid
        os.kill(zpid, signal.SIGSTOP)
        timer = threading.Timer(0.5, os.kill, (zpid, signal.SIGCONT))
        try:
            assert p.verify_many([("1", HANGING["poly_power_4vars"])]) == [False]  # fork request queued
            timer.start()
            t0 = time.perf_counter()
            got = p.verify_many([("x+1", "1+x")])
            dt = time.perf_counter() - t0
        finally:
            timer.cancel()
            os.kill(zpid, signal.SIGCONT)
        assert got == [True] and p.stats.starved == 0, p.stats
        assert 0.4 < dt < 1.5, f"{dt:.2f}s"  # served once the zygote resumed, before 0.3 + 1.0 s


def test_pool_bad_arguments():
    with pytest.raises(ValueError, match="num_workers"):
        VerifierPool(0)
    with pytest.raises(ValueError, match="timeout_s"):
        VerifierPool(1, timeout_s=0)
    with pytest.raises(ValueError, match="spares"):
        VerifierPool(1, spares=-1)
    with pytest.raises(ValueError, match="grace_s"):
        VerifierPool(1, grace_s=-0.1)
    with pytest.raises(ValueError, match="preds"):
        verify_answers(["1"], [])
