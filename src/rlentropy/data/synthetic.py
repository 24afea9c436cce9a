"""Synthetic tasks with exact verifiers: `countdown` and `arithmetic`.

Both tasks are generated from a seed, have a fixed held-out eval split disjoint from the train split
(disjoint by problem key: the multiset of numbers plus the target for countdown, the operands and the
operator for arithmetic), and score completions with exact integer / rational arithmetic. A verifier
never raises: garbage, overflow-sized input or a division by zero scores 0.

    from rlentropy.data import DataConfig, build_task
    task = build_task(DataConfig(task="countdown"))
    ex = task.eval_examples()[0]           # Example(question="Make 22 from 3 5 7", ...)
    prompt = task.render_prompt(ex, tok)   # "Make 22 from 3 5 7:"
    task.score(["3*5+7"], [ex])            # [1.0]

Templates (`data.template`): "plain" (default; the prompt is the question and a colon for countdown,
the expression and "=" for arithmetic; stop string "\\n"), "chat" (an instruction rendered with
the tokenizer's chat template, answer inside <answer></answer>; stop string "</answer>") and, for
arithmetic only, "calc" (the chat template with the system message `CALC_SYSTEM`, the expression as
the user turn, and the assistant turn opened with the expression and "=", so that the response is the
number alone; stop string "\\n"). "calc" is what a small instruct model follows (SmolLM2-135M-Instruct
answers a 1-digit sum in a few tokens; docs/recipes.md has the calibration).
"""

from __future__ import annotations

import abc
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from rlentropy.data.tasks import DataConfig, Example, register_task
from rlentropy.errors import ConfigError

__all__ = [
    "CountdownTask",
    "ArithmeticTask",
    "countdown_value",
    "score_countdown",
    "score_arithmetic",
    "format_expression",
]

_STOP = {"plain": ["\n"], "chat": ["</answer>"], "calc": ["\n"]}
CALC_SYSTEM = "You are a calculator. Reply with only the result."
"""The system message of the arithmetic task's "calc" template."""
_MAX_ANSWER_CHARS = 200  # longer candidate answers are garbage by definition (score 0)
_MAX_DEPTH = 32  # parenthesis nesting the countdown parser accepts


# --------------------------------------------------------------------------------------------------
# parameter validation


@dataclass(frozen=True)
class _Param:
    default: Any
    kind: type
    check: Callable[[Any], bool]
    requirement: str


def _resolve_params(task: str, given: dict[str, Any], spec: dict[str, _Param]) -> dict[str, Any]:
    """Defaults overlaid with `given`; unknown keys and bad values raise ConfigError naming the key."""
    out = {k: p.default for k, p in spec.items()}
    for key, value in given.items():
        if key not in spec:
            raise ConfigError(
                f"data.params.{key}: unknown parameter for task {task!r}; allowed: {', '.join(sorted(spec))}"
            )
        p = spec[key]
        ok_type = isinstance(value, p.kind) and not (p.kind is int and isinstance(value, bool))
        if not ok_type or not p.check(value):
            raise ConfigError(f"data.params.{key}: must be {p.requirement}, got {value!r}")
        out[key] = value
    return out


def _check_common(cfg: DataConfig, task: str, templates: Sequence[str]) -> str:
    if cfg.path is not None:
        raise ConfigError(f"data.path: the synthetic task {task!r} is generated from data.seed and reads no file")
    template = cfg.template or "plain"
    if template not in templates:
        raise ConfigError(
            f"data.template: {template!r} is not available for task {task!r}; allowed: {', '.join(templates)}"
        )
    return template


def _chat(tokenizer: Any, text: str, *, system: str | None = None) -> str:
    if getattr(tokenizer, "chat_template", None) is None:
        raise ConfigError("data.template: 'chat' and 'calc' need a tokenizer with a chat template; use 'plain'")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _extract_answer(completion: str, stop_strings: Sequence[str]) -> str | None:
    """The answer text of a completion: the inside of the last <answer> tag when present, cut at the
    first stop string, stripped. None when it is too long to be an answer."""
    text = completion if isinstance(completion, str) else ""
    if "<answer>" in text:
        text = text.rsplit("<answer>", 1)[1].split("</answer>", 1)[0]
    for s in stop_strings:
        if s:
            text = text.split(s, 1)[0]
    text = text.strip()
    if len(text) > _MAX_ANSWER_CHARS:
        return None
    return text


# --------------------------------------------------------------------------------------------------
# countdown: arithmetic expressions, exact rational evaluation

_TOKEN = re.compile(r"\s*(?:(\d+)|([-+*/×÷()]))")
_OPS = {"+": "+", "-": "-", "*": "*", "/": "/", "×": "*", "÷": "/"}
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}


class _ParseError(Exception):
    pass


def _tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise _ParseError(f"unexpected character at {pos}")
        num, op = m.group(1), m.group(2)
        if num is not None:
            if len(num) > 1 and num[0] == "0":
                raise _ParseError("leading zero")
            tokens.append(num)
        else:
            tokens.append(_OPS.get(op, op))
        pos = m.end()
    return tokens


class _Parser:
    """expr := term (('+'|'-') term)* ; term := factor (('*'|'/') factor)* ; factor := INT | '(' expr ')'."""

    def __init__(self, tokens: list[str]):
        self.tokens = tokens
        self.i = 0
        self.numbers: list[int] = []

    def peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> str:
        tok = self.peek()
        if tok is None:
            raise _ParseError("unexpected end")
        self.i += 1
        return tok

    def expr(self, depth: int) -> Fraction:
        value = self.term(depth)
        while self.peek() in ("+", "-"):
            op = self.take()
            rhs = self.term(depth)
            value = value + rhs if op == "+" else value - rhs
        return value

    def term(self, depth: int) -> Fraction:
        value = self.factor(depth)
        while self.peek() in ("*", "/"):
            op = self.take()
            rhs = self.factor(depth)
            if op == "*":
                value = value * rhs
            else:
                if rhs == 0:
                    raise _ParseError("division by zero")
                value = value / rhs
        return value

    def factor(self, depth: int) -> Fraction:
        tok = self.take()
        if tok == "(":
            if depth >= _MAX_DEPTH:
                raise _ParseError("nesting too deep")
            value = self.expr(depth + 1)
            if self.take() != ")":
                raise _ParseError("expected )")
            return value
        if tok.isdigit():
            self.numbers.append(int(tok))
            return Fraction(int(tok))
        raise _ParseError(f"unexpected token {tok!r}")


def countdown_value(expression: str) -> tuple[Fraction, list[int]] | None:
    """Exact value of an arithmetic expression and the integer literals it uses, or None if invalid.

    Accepts non-negative integer literals (no leading zeros), + - * / (also × ÷), parentheses and
    spaces; no unary minus. Division is exact (rational); a division by zero makes it invalid.
    """
    if not isinstance(expression, str) or len(expression) > _MAX_ANSWER_CHARS:
        return None
    try:
        tokens = _tokenize(expression)
        if not tokens:
            return None
        parser = _Parser(tokens)
        value = parser.expr(0)
        if parser.peek() is not None:
            return None
        return value, parser.numbers
    except _ParseError:
        return None


def score_countdown(answer: str | None, numbers: Sequence[int], target: int) -> float:
    """1.0 when `answer` is an expression over a sub-multiset of `numbers` (each at most once) whose
    exact value is `target`, optionally followed by "= target"; else 0.0. Never raises."""
    if answer is None:
        return 0.0
    if "=" in answer:
        lhs, rhs = answer.split("=", 1)
        if rhs.strip() and rhs.strip() != str(target):
            return 0.0
        answer = lhs
    parsed = countdown_value(answer)
    if parsed is None:
        return 0.0
    value, used = parsed
    pool = list(numbers)
    for x in used:
        if x not in pool:
            return 0.0
        pool.remove(x)
    return 1.0 if value == target else 0.0


@dataclass
class _Node:
    op: str | None
    value: int
    left: _Node | None = None
    right: _Node | None = None


def format_expression(node: _Node) -> str:
    """Infix text of an expression tree with the fewest parentheses that keep its value."""
    if node.op is None:
        return str(node.value)
    assert node.left is not None and node.right is not None
    ls, rs = format_expression(node.left), format_expression(node.right)
    if node.left.op is not None and _PREC[node.left.op] < _PREC[node.op]:
        ls = f"({ls})"
    if node.right.op is not None and (
        _PREC[node.right.op] < _PREC[node.op] or (_PREC[node.right.op] == _PREC[node.op] and node.op in "-/")
    ):
        rs = f"({rs})"
    return f"{ls}{node.op}{rs}"


def _random_tree(rng: random.Random, leaves: list[int], ops: str) -> _Node | None:
    """A random binary expression over `leaves` (in order) whose every intermediate value is a
    non-negative integer; None when the drawn operators break that rule."""
    if len(leaves) == 1:
        return _Node(None, leaves[0])
    split = rng.randint(1, len(leaves) - 1)
    left = _random_tree(rng, leaves[:split], ops)
    right = _random_tree(rng, leaves[split:], ops)
    if left is None or right is None:
        return None
    op = rng.choice(ops)
    a, b = left.value, right.value
    if op == "+":
        v = a + b
    elif op == "-":
        v = a - b
    elif op == "*":
        v = a * b
    else:
        if b == 0 or a % b != 0:
            return None
        v = a // b
    if v < 0:
        return None
    return _Node(op, v, left, right)


_COUNTDOWN_PARAMS = {
    "min_numbers": _Param(3, int, lambda v: 2 <= v <= 6, "an integer in [2, 6]"),
    "max_numbers": _Param(4, int, lambda v: 2 <= v <= 6, "an integer in [2, 6]"),
    "max_number": _Param(12, int, lambda v: 2 <= v <= 1000, "an integer in [2, 1000]"),
    "max_target": _Param(60, int, lambda v: 1 <= v <= 100000, "an integer in [1, 100000]"),
    "ops": _Param(
        "+-*/",
        str,
        lambda v: len(v) > 0 and set(v) <= set("+-*/") and len(set(v)) == len(v),
        "a non-empty string of distinct characters from '+-*/'",
    ),
    "train_size": _Param(10000, int, lambda v: v >= 1, "a positive integer"),
    "eval_size": _Param(200, int, lambda v: v >= 1, "a positive integer"),
}


def _draw_distinct(
    rng: random.Random, draw: Callable[[random.Random], Example | None], size: int, taken: set, task: str, split: str
) -> list[Example]:
    """`size` examples with keys not in `taken` (adding theirs); ConfigError if the space runs out."""
    out: list[Example] = []
    tries, max_tries = 0, 200 * size + 10000
    while len(out) < size:
        tries += 1
        if tries > max_tries:
            raise ConfigError(
                f"data.params.{split}_size: could only draw {len(out)} distinct {task} problems of {size} "
                "asked for with these parameters; ask for fewer or widen the ranges"
            )
        ex = draw(rng)
        if ex is None:
            continue
        key = ex.meta["key"]
        if key in taken:
            continue
        taken.add(key)
        out.append(ex)
    return out


class _SyntheticTask(abc.ABC):
    """What countdown and arithmetic share: parameter checking, the two splits (eval drawn first from
    its own stream, so it depends only on data.seed and the task parameters, never on train_size),
    and scoring of the extracted answer. Subclasses set `name` and `_PARAMS` and define `_draw`,
    `render_prompt` and `_score_answer`."""

    name: str
    _PARAMS: dict[str, _Param]
    _TEMPLATES: tuple[str, ...] = ("plain", "chat")

    def __init__(self, cfg: DataConfig):
        self.template = _check_common(cfg, self.name, self._TEMPLATES)
        self.params = _resolve_params(self.name, cfg.params, self._PARAMS)
        self._check_params()
        self.stop_strings = list(_STOP[self.template])
        self.seed = cfg.seed
        taken: set = set()
        p = self.params
        self._eval = _draw_distinct(
            random.Random(f"{self.name}-eval-{self.seed}"), self._draw, p["eval_size"], taken, self.name, "eval"
        )
        self._train = _draw_distinct(
            random.Random(f"{self.name}-train-{self.seed}"), self._draw, p["train_size"], taken, self.name, "train"
        )
        if cfg.max_train is not None:
            self._train = self._train[: cfg.max_train]
        if cfg.max_eval is not None:
            self._eval = self._eval[: cfg.max_eval]

    def _check_params(self) -> None:
        """Cross-parameter checks (ConfigError naming data.params.<key>); none by default."""
        return None

    @abc.abstractmethod
    def _draw(self, rng: random.Random) -> Example | None:
        """One random problem, or None to reject the draw."""

    @abc.abstractmethod
    def _score_answer(self, answer: str | None, example: Example) -> float:
        """Reward of an extracted answer (None when nothing could be extracted)."""

    @abc.abstractmethod
    def render_prompt(self, example: Example, tokenizer: Any) -> str:
        """The prompt text for the task's template."""

    def train_examples(self) -> list[Example]:
        return list(self._train)

    def eval_examples(self) -> list[Example]:
        return list(self._eval)

    def score(self, completions: Sequence[str], examples: Sequence[Example]) -> list[float]:
        if len(completions) != len(examples):
            raise ValueError(f"completions: {len(completions)} completions for {len(examples)} examples")
        return [self._score_answer(_extract_answer(c, self.stop_strings), ex) for c, ex in zip(completions, examples)]


class CountdownTask(_SyntheticTask):
    """Countdown: reach `target` from 3–4 given numbers with + - * / and parentheses, each number at
    most once. Many expressions are valid; the gold `answer` is the one the generator drew.

    Params (data.params): min_numbers=3, max_numbers=4 (how many numbers), max_number=12 (numbers
    are drawn uniformly from 1..max_number), max_target=60 (targets in 1..max_target), ops="+-*/"
    (operators the generator uses; the verifier accepts all four), train_size=10000, eval_size=200.
    Every generated target is reachable with all the numbers and non-negative integer intermediates.
    """

    name = "countdown"
    _PARAMS = _COUNTDOWN_PARAMS

    def _check_params(self) -> None:
        if self.params["min_numbers"] > self.params["max_numbers"]:
            raise ConfigError(
                f"data.params.min_numbers: must be <= max_numbers ({self.params['max_numbers']}), "
                f"got {self.params['min_numbers']}"
            )

    def _draw(self, rng: random.Random) -> Example | None:
        p = self.params
        k = rng.randint(p["min_numbers"], p["max_numbers"])
        numbers = [rng.randint(1, p["max_number"]) for _ in range(k)]
        order = numbers[:]
        rng.shuffle(order)
        tree = _random_tree(rng, order, p["ops"])
        if tree is None or not 1 <= tree.value <= p["max_target"]:
            return None
        target = tree.value
        key = (tuple(sorted(numbers)), target)
        question = f"Make {target} from {' '.join(map(str, numbers))}"
        return Example(
            id=f"countdown-{target}-{'-'.join(map(str, numbers))}",
            question=question,
            answer=format_expression(tree),
            meta={"numbers": numbers, "target": target, "key": key},
        )

    def render_prompt(self, example: Example, tokenizer: Any) -> str:
        if self.template == "plain":
            return f"{example.question}:"
        nums = " ".join(map(str, example.meta["numbers"]))
        return _chat(
            tokenizer,
            f"Using the numbers {nums}, each at most once, and the operations + - * / with parentheses, "
            f"write an expression equal to {example.meta['target']}. "
            "Show your reasoning, then give only the expression inside <answer></answer>.",
        )

    def _score_answer(self, answer: str | None, example: Example) -> float:
        return score_countdown(answer, example.meta["numbers"], example.meta["target"])


# --------------------------------------------------------------------------------------------------
# arithmetic: a op b with multi-digit operands

_ARITH_PARAMS = {
    "digits": _Param(3, int, lambda v: 1 <= v <= 18, "an integer in [1, 18]"),
    "ops": _Param(
        "+-*",
        str,
        lambda v: len(v) > 0 and set(v) <= set("+-*") and len(set(v)) == len(v),
        "a non-empty string of distinct characters from '+-*'",
    ),
    "min_operand": _Param(None, int, lambda v: 0 <= v < 10**18, "an integer in [0, 10^18)"),
    "max_operand": _Param(None, int, lambda v: 0 <= v < 10**18, "an integer in [0, 10^18)"),
    "train_size": _Param(10000, int, lambda v: v >= 1, "a positive integer"),
    "eval_size": _Param(200, int, lambda v: v >= 1, "a positive integer"),
}
_INT = re.compile(r"-?\d+")


def score_arithmetic(answer: str | None, target: int) -> float:
    """1.0 when `answer` is exactly the decimal integer `target` (optional minus sign, no other
    characters, no leading zeros except "0"); else 0.0. Never raises."""
    if answer is None or not _INT.fullmatch(answer):
        return 0.0
    digits = answer.lstrip("-")
    if len(digits) > 1 and digits[0] == "0":
        return 0.0
    return 1.0 if int(answer) == target else 0.0


class ArithmeticTask(_SyntheticTask):
    """Multi-digit arithmetic: `a op b` with `digits`-digit operands and op in `ops`; the answer is
    the exact integer result (negative for some subtractions).

    Params (data.params): digits=3, ops="+-*", min_operand / max_operand (null: the `digits`-digit
    range; set both to draw operands uniformly from min_operand..max_operand instead, e.g. 1..9),
    train_size=10000, eval_size=200. Templates: plain, chat, calc (module docstring).
    """

    name = "arithmetic"
    _PARAMS = _ARITH_PARAMS
    _TEMPLATES = ("plain", "chat", "calc")

    def _check_params(self) -> None:
        lo, hi = self.params["min_operand"], self.params["max_operand"]
        if (lo is None) != (hi is None):
            missing = "max_operand" if hi is None else "min_operand"
            raise ConfigError(f"data.params.{missing}: set min_operand and max_operand together (or neither)")
        if lo is not None and lo > hi:
            raise ConfigError(f"data.params.min_operand: must be <= max_operand ({hi}), got {lo}")

    def operand_range(self) -> tuple[int, int]:
        """The inclusive range both operands are drawn from."""
        if self.params["min_operand"] is not None:
            return self.params["min_operand"], self.params["max_operand"]
        d = self.params["digits"]
        return (0 if d == 1 else 10 ** (d - 1)), 10**d - 1

    def _draw(self, rng: random.Random) -> Example:
        lo, hi = self.operand_range()
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        op = rng.choice(self.params["ops"])
        result = a + b if op == "+" else a - b if op == "-" else a * b
        return Example(
            id=f"arithmetic-{a}{op}{b}",
            question=f"{a}{op}{b}",
            answer=str(result),
            meta={"a": a, "b": b, "op": op, "target": result, "key": (a, op, b)},
        )

    def render_prompt(self, example: Example, tokenizer: Any) -> str:
        if self.template == "plain":
            return f"{example.question}="
        if self.template == "calc":
            return _chat(tokenizer, example.question, system=CALC_SYSTEM) + f"{example.question}="
        return _chat(
            tokenizer,
            f"Compute {example.question}. Give only the resulting integer inside <answer></answer>.",
        )

    def _score_answer(self, answer: str | None, example: Example) -> float:
        return score_arithmetic(answer, example.meta["target"])


@register_task("countdown")
def _countdown(cfg: DataConfig) -> CountdownTask:
    return CountdownTask(cfg)


@register_task("arithmetic")
def _arithmetic(cfg: DataConfig) -> ArithmeticTask:
    return ArithmeticTask(cfg)
