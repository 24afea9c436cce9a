"""Synthetic tasks: exact verifiers, parameter validation, disjoint and deterministic splits."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _helpers import ChatMLTokenizer
from rlentropy.data.synthetic import (
    ArithmeticTask,
    CountdownTask,
    countdown_value,
    score_arithmetic,
    score_countdown,
)
from rlentropy.data.tasks import DataConfig, Example
from rlentropy.errors import ConfigError

SMALL = {"train_size": 300, "eval_size": 50}


@pytest.fixture(scope="module")
def countdown() -> CountdownTask:
    return CountdownTask(DataConfig(task="countdown", params={"train_size": 2000}))


def _ex(numbers: list[int], target: int) -> Example:
    return Example(
        id="x",
        question=f"Make {target} from {' '.join(map(str, numbers))}",
        answer="",
        meta={"numbers": numbers, "target": target, "key": (tuple(sorted(numbers)), target)},
    )


# ---------------------------------------------------------------------------------------------- countdown


def test_countdown_hand_worked_scores():
    task = CountdownTask(DataConfig(task="countdown", params=SMALL))
    ex = _ex([3, 5, 7], 22)
    completions = [
        "3*5+7",  # 15 + 7 = 22
        "7+5*3",  # precedence: 7 + 15 = 22
        "(7+5)*3-14",  # 14 is not given -> 0
        "3*5+7=22",  # "= target" suffix accepted
        "3*5+7 = 21",  # wrong stated result -> 0
        "3*5+7\nrubbish",  # cut at the stop string "\n"
        "7*3+5",  # 21 + 5 = 26 -> 0
        "3*7+3-2",  # 3 used twice (and 2 not given) -> 0
        "(3+5)*7/(5-3)",  # 5 and 3 used twice -> 0
        "7*(5-3)+3",  # 3 twice -> 0
        "",  # nothing -> 0
        "3 × 5 + 7",  # unicode operators and spaces
        "<answer>3*5+7</answer>",
        "-3+25",  # unary minus is not allowed -> 0
        "05*3+7",  # leading zero -> 0
    ]
    assert task.score(completions, [ex] * len(completions)) == [
        1.0,
        1.0,
        0.0,
        1.0,
        0.0,
        1.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        1.0,
        1.0,
        0.0,
        0.0,
    ]


def test_countdown_exact_rational_evaluation():
    # 8/(3-8/3) = 8/(1/3) = 24: needs exact fractions (float would give 23.99999...)
    assert score_countdown("8/(3-8/3)", [3, 3, 8, 8], 24) == 1.0
    assert countdown_value("8/(3-8/3)") == (Fraction(24), [8, 3, 8, 3])
    # a subset of the numbers is allowed ("each number at most once")
    assert score_countdown("4*6", [4, 6, 9], 24) == 1.0
    # division by zero is invalid, not an exception
    assert score_countdown("4/(6-6)", [4, 6, 6], 0) == 0.0
    assert countdown_value("4/(6-6)") is None
    assert countdown_value("((((1))))") == (Fraction(1), [1])
    assert countdown_value("(" * 40 + "1" + ")" * 40) is None  # nesting beyond the limit


_TASK_CACHE: list[CountdownTask] = []


def _garbage_task() -> CountdownTask:
    if not _TASK_CACHE:
        _TASK_CACHE.append(CountdownTask(DataConfig(task="countdown", params=SMALL)))
    return _TASK_CACHE[0]


_ALPHABET = st.sampled_from(list("0123456789+-*/()=<>answer \n×÷.x"))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=60), st.text(_ALPHABET, max_size=40)))
def test_countdown_verifier_never_raises_on_garbage(text):
    r = _garbage_task().score([text], [_ex([3, 5, 7], 22)])
    assert r in ([0.0], [1.0])


def test_countdown_generated_answers_are_valid(countdown):
    exs = countdown.train_examples()[:500] + countdown.eval_examples()
    assert countdown.score([e.answer for e in exs], exs) == [1.0] * len(exs)
    for e in exs:
        assert 3 <= len(e.meta["numbers"]) <= 4
        assert all(1 <= x <= 12 for x in e.meta["numbers"])
        assert 1 <= e.meta["target"] <= 60
        assert countdown.render_prompt(e, None) == f"{e.question}:"


@settings(max_examples=60, deadline=None)
@given(idx=st.integers(0, 199), extra=st.integers(1, 12), delta=st.integers(1, 5))
def test_countdown_reused_numbers_and_wrong_targets_score_zero(countdown, idx, extra, delta):
    ex = countdown.eval_examples()[idx]
    answer = ex.answer
    # a wrong target: the gold expression no longer reaches it
    wrong = Example(ex.id, ex.question, ex.answer, {**ex.meta, "target": ex.meta["target"] + delta})
    assert countdown.score([answer], [wrong]) == [0.0]
    # using a number more often than it is given: append "*x/x" with x one of the numbers
    x = ex.meta["numbers"][0]
    reused = f"({answer})*{x}/{x}"
    assert countdown.score([reused], [ex]) == [0.0]
    # a number that is not in the list (value-preserving "+extra-extra")
    if extra not in ex.meta["numbers"]:
        assert countdown.score([f"{answer}+{extra}-{extra}"], [ex]) == [0.0]


def test_countdown_splits_disjoint_and_deterministic():
    a = CountdownTask(DataConfig(task="countdown", params={"train_size": 3000}))
    b = CountdownTask(DataConfig(task="countdown", params={"train_size": 1000}))
    keys = lambda xs: {e.meta["key"] for e in xs}  # noqa: E731
    assert len(a.eval_examples()) == 200 and len(a.train_examples()) == 3000
    assert keys(a.train_examples()).isdisjoint(keys(a.eval_examples()))
    assert len(keys(a.train_examples())) == 3000  # distinct problems
    # eval split does not depend on train_size; the train split is prefix-stable
    assert a.eval_examples() == b.eval_examples()
    assert a.train_examples()[:1000] == b.train_examples()
    # another seed gives other problems
    c = CountdownTask(DataConfig(task="countdown", seed=1, params={"train_size": 1000}))
    assert c.eval_examples() != a.eval_examples()
    # max_train / max_eval keep the first N
    d = CountdownTask(DataConfig(task="countdown", max_train=10, max_eval=5, params={"train_size": 1000}))
    assert d.train_examples() == b.train_examples()[:10] and d.eval_examples() == b.eval_examples()[:5]


@pytest.mark.parametrize(
    "params, key",
    [
        ({"bogus": 1}, "data.params.bogus"),
        ({"max_number": "12"}, "data.params.max_number"),
        ({"max_numbers": 9}, "data.params.max_numbers"),
        ({"min_numbers": True}, "data.params.min_numbers"),
        ({"min_numbers": 4, "max_numbers": 3}, "data.params.min_numbers"),
        ({"ops": "+^"}, "data.params.ops"),
        ({"train_size": 0}, "data.params.train_size"),
        (
            {"max_target": 2, "max_number": 2, "min_numbers": 2, "max_numbers": 2, "eval_size": 20},
            "data.params.eval_size",
        ),
    ],
)
def test_countdown_bad_params_name_the_key(params, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        CountdownTask(DataConfig(task="countdown", params=params))


def test_bad_template_and_path():
    with pytest.raises(ConfigError, match=r"data\.template"):
        CountdownTask(DataConfig(task="countdown", template="r1", params=SMALL))
    with pytest.raises(ConfigError, match=r"data\.path"):
        ArithmeticTask(DataConfig(task="arithmetic", path="x.jsonl", params=SMALL))


def test_chat_template_uses_the_tokenizer():
    class Tok:
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return f"<user>{messages[0]['content']}<assistant>"

    task = CountdownTask(DataConfig(task="countdown", template="chat", params=SMALL))
    ex = task.eval_examples()[0]
    prompt = task.render_prompt(ex, Tok())
    assert prompt.startswith("<user>Using the numbers") and prompt.endswith("<assistant>")
    assert task.stop_strings == ["</answer>"]
    # the stop string is removed from completions by the generator; the tag content is scored
    assert task.score([f"thinking...\n<answer>{ex.answer}"], [ex]) == [1.0]
    with pytest.raises(ConfigError, match=r"data\.template"):
        task.render_prompt(ex, object())


# ---------------------------------------------------------------------------------------------- arithmetic


def test_arithmetic_hand_worked_and_splits():
    task = ArithmeticTask(DataConfig(task="arithmetic", params={"train_size": 2000}))
    ex = Example("a", "123+456", "579", {"target": 579})
    assert task.score(["579", "579\n+1", " 579 ", "578", "0579", "57 9", "abc", ""], [ex] * 8) == [
        1.0,
        1.0,
        1.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
    ]
    neg = Example("b", "100-250", "-150", {"target": -150})
    assert task.score(["-150", "150", "--150"], [neg] * 3) == [1.0, 0.0, 0.0]
    assert score_arithmetic("0", 0) == 1.0 and score_arithmetic("-0", 0) == 1.0
    exs = task.train_examples() + task.eval_examples()
    assert task.score([e.answer for e in exs], exs) == [1.0] * len(exs)
    for e in exs[:50]:
        a, b, op = e.meta["a"], e.meta["b"], e.meta["op"]
        assert 100 <= a <= 999 and 100 <= b <= 999 and op in "+-*"
        assert task.render_prompt(e, None) == f"{a}{op}{b}="
    tr = {e.meta["key"] for e in task.train_examples()}
    ev = {e.meta["key"] for e in task.eval_examples()}
    assert tr.isdisjoint(ev) and len(ev) == 200
    again = ArithmeticTask(DataConfig(task="arithmetic", params={"train_size": 2000}))
    assert again.train_examples() == task.train_examples()
    with pytest.raises(ConfigError, match=r"data\.params\.digits"):
        ArithmeticTask(DataConfig(task="arithmetic", params={"digits": 0}))


def test_arithmetic_operand_range_and_calc_template():
    from rlentropy.data.synthetic import CALC_SYSTEM

    params = {"ops": "+", "min_operand": 1, "max_operand": 20, "train_size": 150, "eval_size": 200}
    task = ArithmeticTask(DataConfig(task="arithmetic", template="calc", params=params))
    assert task.stop_strings == ["\n"] and task.operand_range() == (1, 20)
    exs = task.train_examples() + task.eval_examples()
    # 20 x 20 = 400 (a, b) pairs: 350 drawn, all distinct and in range.
    assert len({e.meta["key"] for e in exs}) == 350
    assert all(1 <= e.meta["a"] <= 20 and 1 <= e.meta["b"] <= 20 and e.meta["op"] == "+" for e in exs)
    ex = Example("c", "12+7", "19", {"a": 12, "b": 7, "op": "+", "target": 19})
    assert task.render_prompt(ex, ChatMLTokenizer()) == (
        f"<|im_start|>system\n{CALC_SYSTEM}<|im_end|>\n<|im_start|>user\n12+7<|im_end|>\n<|im_start|>assistant\n12+7="
    )
    # The response is the number alone, cut at the first newline; anything else around it scores 0.
    got = task.score(["19", "19\n12+8=20", " 19", "19.", "19 apples", "019", "20", "1 9", ""], [ex] * 9)
    assert got == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    with pytest.raises(ConfigError, match=r"data\.params\.max_operand: set min_operand and max_operand together"):
        ArithmeticTask(DataConfig(task="arithmetic", params={"min_operand": 1}))
    with pytest.raises(ConfigError, match=r"data\.params\.min_operand: must be <= max_operand \(3\), got 5"):
        ArithmeticTask(DataConfig(task="arithmetic", params={"min_operand": 5, "max_operand": 3}))
    with pytest.raises(ConfigError, match=r"data\.params\.eval_size: could only draw"):
        ArithmeticTask(DataConfig(task="arithmetic", params={**params, "max_operand": 9}))
    with pytest.raises(ConfigError, match=r"data\.template: 'calc' is not available for task 'countdown'"):
        CountdownTask(DataConfig(task="countdown", template="calc", params=SMALL))
    # The digits range stays the default.
    assert ArithmeticTask(DataConfig(task="arithmetic", params={"digits": 2})).operand_range() == (10, 99)


@settings(max_examples=100, deadline=None)
@given(a=st.integers(0, 10**6), b=st.integers(0, 10**6), op=st.sampled_from("+-*"))
def test_arithmetic_verifier_property(a, b, op):
    result = a + b if op == "+" else a - b if op == "-" else a * b
    assert score_arithmetic(str(result), result) == 1.0
    assert score_arithmetic(str(result + 1), result) == 0.0


def test_registered_and_built_through_the_registry():
    from rlentropy.data.tasks import _TASKS

    assert "countdown" in _TASKS and "arithmetic" in _TASKS
    assert isinstance(_TASKS["countdown"](DataConfig(task="countdown", params=SMALL)), CountdownTask)
    with pytest.raises(ValueError, match="completions"):
        CountdownTask(DataConfig(task="countdown", params=SMALL)).score(["1"], [])
