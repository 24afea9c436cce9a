"""Pre-screen of predicted answers: reject, before sympy sees it, what cannot be a final answer.

math-verify hands an answer to latex2sympy and sympy, which evaluate integer arithmetic eagerly and
exactly: `9^{9^9}` asks for a 370-million-digit integer, `(99!)!` for a factorial of a 156-digit
number, and a dozen nested brace groups make the LaTeX parser itself run for seconds. The pool's
hard time limit stops such calls, but each one costs a full limit and a worker restart. This module
rejects them in microseconds, in the calling process, with fixed thresholds (`ScreenLimits`) that
no gold answer of the bundled datasets comes near (GSM8K, MATH-500, AIME 24/25, AMC 23,
DAPO-Math-17k: at most 60 characters, 2 nested brackets, 1 exponent level, 23-digit numbers).

    screen_answer("9^{9^{9^9}}")        # -> 'more than 2 stacked exponents'
    screen_answer(r"\\frac{1+\\sqrt5}{2}")  # -> None (passes)

The numeric checks bound the size of the exact numbers sympy would build: each literal, power,
factorial, binomial or Gamma made only of numbers gets an upper bound of log10 max(|numerator|,
|denominator|), combined through + - * / and groups. Letters make a value symbolic (no bound);
unknown LaTeX commands are symbolic atoms whose arguments are still scanned. It is a cheap filter,
not a parser of LaTeX: an answer it passes can still be slow for sympy (`(x+y+z+w)^{40}` is), and
the pool's time limit remains the backstop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True)
class ScreenLimits:
    """Thresholds of the pre-screen; a predicted answer over any of them scores 0 unparsed.

    Attributes:
        max_chars: longest answer (characters). Gold answers: at most 60.
        max_nesting: deepest nesting of `(`, `[` and `{` together (`\\left(` counts as `(`).
            Gold answers: at most 2. Parsing cost grows steeply with depth: 12 nested `{}` took
            2.6 s in latex2sympy, 12 nested `\\sin(` over 4 s; depth 8 stays under 1 s.
        max_tower: most exponents stacked on each other (`a^{b^{c}}` has 2). Gold answers: 1.
        max_digits: largest exact number (decimal digits of numerator or denominator) that a
            numeric power, factorial, binomial or Gamma may produce. 2^{2024} has 610 digits; sympy
            builds a 100,000-digit integer in milliseconds but compares two differently written
            ones slowly, and 999999! (5.5 M digits) or (3/7)^{3300000} not within 4 s.
        max_exponent: largest numeric exponent of a symbolic base (`x^{100000}` passes,
            `(x+1)^{9^9}` does not: its expansion has hundreds of millions of terms).
        max_terms: largest numeric upper limit of a `\\sum` / `\\prod` (`\\prod_{k=1}^{10^6} k` is
            10^6!).
    """

    max_chars: int = 512
    max_nesting: int = 8
    max_tower: int = 2
    max_digits: int = 100_000
    max_exponent: int = 100_000
    max_terms: int = 10_000


DEFAULT_SCREEN = ScreenLimits()

_OPENERS = "([{"
_CLOSERS = ")]}"


def nesting_depth(text: str) -> int:
    """Deepest nesting of `(`, `[` and `{` together in `text`.

    Any closer closes the innermost open group (intervals such as `[0, 1)` mix kinds); unmatched
    closers are ignored.
    """
    depth = best = 0
    for ch in text:
        if ch in _OPENERS:
            depth += 1
            best = max(best, depth)
        elif ch in _CLOSERS and depth:
            depth -= 1
    return best


class _Reject(Exception):
    pass


class _Val(NamedTuple):
    """Upper bound of log10 max(|numerator|, |denominator|) of a numeric value (None: symbolic),
    and whether the value is an integer."""

    h: float | None
    is_int: bool = False


_SYMBOLIC = _Val(None)

# Commands by role. Anything else is a symbolic atom (`\pi`, `\infty`, `\text`, `\begin`, ...).
_SKIP = {
    "\\left",
    "\\right",
    "\\big",
    "\\Big",
    "\\bigg",
    "\\Bigg",
    "\\bigl",
    "\\bigr",
    "\\Bigl",
    "\\Bigr",
    "\\biggl",
    "\\biggr",
    "\\Biggl",
    "\\Biggr",
    "\\middle",
    "\\displaystyle",
    "\\textstyle",
    "\\,",
    "\\!",
    "\\;",
    "\\:",
    "\\ ",
    "\\quad",
    "\\qquad",
    "\\limits",
}
_MUL = {"*", "/", "\\cdot", "\\times", "\\div", "\\ast"}
_ADD = {"+", "-", "\\pm", "\\mp"}
_FRAC = {"\\frac", "\\dfrac", "\\tfrac", "\\cfrac"}
_BINOM = {"\\binom", "\\dbinom", "\\tbinom"}
_RANGE = {"\\sum", "\\prod"}
# Take `_` and `^` arguments as limits, not subscripts or powers.
_LIMITS = _RANGE | {
    "\\int",
    "\\iint",
    "\\iiint",
    "\\oint",
    "\\lim",
    "\\limsup",
    "\\liminf",
    "\\max",
    "\\min",
    "\\sup",
    "\\inf",
    "\\bigcup",
    "\\bigcap",
    "\\coprod",
}
_LOG10_2 = math.log10(2)


def _tokens(text: str) -> list[str]:
    """Numbers (digits with an optional decimal point), commands (`\\name` or `\\` + one char),
    and single characters; whitespace dropped, `**` read as `^`."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace() or ch == "~":
            i += 1
        elif ch.isdigit() or (ch == "." and i + 1 < n and text[i + 1].isdigit()):
            j = i + 1
            seen_point = ch == "."
            while j < n and (text[j].isdigit() or (text[j] == "." and not seen_point)):
                seen_point = seen_point or text[j] == "."
                j += 1
            out.append(text[i:j])
            i = j
        elif ch == "\\":
            j = i + 1
            while j < n and text[j].isalpha():
                j += 1
            if j == i + 1:  # `\` + one non-letter character: `\{`, `\,`, `\!`, `\\`
                j = min(n, i + 2)
            out.append(text[i:j])
            i = j
        elif ch == "*" and text.startswith("**", i):
            out.append("^")
            i += 2
        else:
            out.append(ch)
            i += 1
    return out


def _number(tok: str) -> _Val:
    """A literal: `12.50` is 1250 / 100, so its bound is the larger of log10(1250) and 2."""
    digits = tok.replace(".", "").lstrip("0")
    h = math.log10(int(digits)) if digits else 0.0
    point = tok.find(".")
    if point >= 0:
        h = max(h, float(len(tok) - point - 1))
    return _Val(h, point < 0)


class _Scanner:
    """Recursive descent over the tokens; raises `_Reject` at the first limit exceeded.

    Recursion depth is bounded by `max_nesting` (groups) and `max_tower` (exponents), both checked
    before they can grow.
    """

    def __init__(self, text: str, limits: ScreenLimits) -> None:
        self.toks = _tokens(text)
        self.pos = 0
        self.lim = limits

    def peek(self) -> str | None:
        return self.toks[self.pos] if self.pos < len(self.toks) else None

    def run(self) -> None:
        while self.pos < len(self.toks):
            self.seq(level=0)
            if self.peek() is not None:  # a stray closer at top level
                self.pos += 1

    # -- sequences: sums of products -------------------------------------------------------------
    def seq(self, level: int) -> _Val:
        terms: list[_Val] = []
        cur_h, cur_int, cur_num, cur_any = 0.0, True, True, False
        numeric = True
        while True:
            tok = self.peek()
            if tok is None or tok in _CLOSERS:
                break
            if tok in _SKIP or tok == "'":
                self.pos += 1
            elif tok in _ADD:
                if cur_any:
                    terms.append(_Val(cur_h, cur_int) if cur_num else _SYMBOLIC)
                cur_h, cur_int, cur_num, cur_any = 0.0, True, True, False
                self.pos += 1
            elif tok in _MUL:
                if tok in ("/", "\\div"):
                    cur_int = False
                self.pos += 1
            elif len(tok) == 1 and not tok.isalnum() and tok not in _OPENERS and tok not in "^_!.":
                numeric = False  # a separator or relation: `,`, `=`, `<`, `&`, `|`, ...
                self.pos += 1
            elif tok in ("^", "_", "!"):  # an operator with no operand: skip it
                self.pos += 1
            else:
                v = self.atom(level)
                cur_any = True
                if v.h is None:
                    cur_num = False
                else:
                    cur_h += v.h
                    cur_int = cur_int and v.is_int
        if cur_any:
            terms.append(_Val(cur_h, cur_int) if cur_num else _SYMBOLIC)
        if not numeric or not terms or any(t.h is None for t in terms):
            return _SYMBOLIC
        hs = [t.h for t in terms]  # type: ignore[misc]
        extra = math.log10(len(terms)) if len(terms) > 1 else 0.0
        if all(t.is_int for t in terms):  # |a + b| <= 2 max(|a|, |b|)
            return _Val(max(hs) + extra, True)
        return _Val(sum(hs) + extra + _LOG10_2 * (len(terms) - 1), False)  # (ad + bc) / bd

    # -- atoms: a primary and its postfix operators ------------------------------------------------
    def atom(self, level: int) -> _Val:
        v = self.primary(level)
        while True:
            tok = self.peek()
            if tok == "^":
                self.pos += 1
                v = self.power(v, self.exponent(level + 1))
            elif tok == "!":
                self.pos += 1
                if self.peek() == "=":  # `!=`
                    return _SYMBOLIC
                v = self.factorial(v, "a factorial")  # `n!!` is (n!)! to latex2sympy
            elif tok == "_":
                self.pos += 1
                self.arg(level)
                v = _SYMBOLIC
            elif tok == "'":
                self.pos += 1
            else:
                return v

    def exponent(self, level: int) -> _Val:
        """The argument of `^` at exponent depth `level`; `a^b^c` is read as `a^(b^c)`."""
        if level > self.lim.max_tower:
            raise _Reject(f"more than {self.lim.max_tower} stacked exponents")
        e = self.arg(level, whole_number=True)
        while self.peek() == "!":
            self.pos += 1
            e = self.factorial(e, "a factorial")
        if self.peek() == "^":
            self.pos += 1
            e = self.power(e, self.exponent(level + 1))
        return e

    def arg(self, level: int, whole_number: bool = False) -> _Val:
        """One argument of a command, `^` or `_`: a group, or a single token (`\\frac12` reads
        `1` then `2`; after `^` the whole number is taken, the larger reading)."""
        tok = self.peek()
        if tok is None:
            return _SYMBOLIC
        if tok[0].isdigit() or tok[0] == ".":
            if whole_number or len(tok) == 1:
                self.pos += 1
                return _number(tok)
            self.toks[self.pos] = tok[1:]
            return _number(tok[0])
        return self.primary(level)

    def primary(self, level: int) -> _Val:
        tok = self.peek()
        if tok is None:
            return _SYMBOLIC
        if tok in _OPENERS:
            self.pos += 1
            v = self.seq(level)
            if self.peek() in _CLOSERS:
                self.pos += 1
            return v
        if tok in _CLOSERS:
            return _SYMBOLIC  # the caller's group ends here
        self.pos += 1
        if tok[0].isdigit() or tok[0] == ".":
            return _number(tok)
        if not tok.startswith("\\"):
            return _SYMBOLIC  # a letter or another character
        if tok in _FRAC:
            a, b = self.arg(level), self.arg(level)
            return _SYMBOLIC if a.h is None or b.h is None else _Val(a.h + b.h, False)
        if tok == "\\sqrt":
            if self.peek() == "[":
                self.primary(level)
            a = self.arg(level)
            return _SYMBOLIC if a.h is None else _Val(a.h, False)
        if tok in _BINOM:
            n, k = self.arg(level), self.arg(level)
            return self.binomial(n, k)
        if tok == "\\Gamma":
            if self.peek() in _OPENERS:
                return self.factorial(self.primary(level), "a Gamma value")
            return _SYMBOLIC
        if tok in _LIMITS:
            self.limits(tok, level)
        return _SYMBOLIC

    def limits(self, cmd: str, level: int) -> None:
        """The `_{...}` and `^{...}` of a `\\sum`, `\\int`, ... (either order)."""
        for _ in range(2):
            tok = self.peek()
            if tok == "_":
                self.pos += 1
                self.arg(level)
            elif tok == "^":
                self.pos += 1
                upper = self.arg(level, whole_number=True)
                if cmd in _RANGE and upper.h is not None and upper.h > math.log10(self.lim.max_terms):
                    raise _Reject(f"a sum or product over more than {self.lim.max_terms} terms")
            else:
                return

    # -- size bounds ---------------------------------------------------------------------------------
    def power(self, base: _Val, exp: _Val) -> _Val:
        if exp.h is None:
            return _SYMBOLIC
        if base.h is None:
            if exp.h > math.log10(self.lim.max_exponent):
                raise _Reject(f"an exponent over {self.lim.max_exponent}")
            return _SYMBOLIC
        if base.h == 0.0:  # 0, 1 (and 0.1, 1.0: one-digit numerators and denominators)
            return _Val(0.0, base.is_int and exp.is_int)
        h = base.h * 10.0 ** min(exp.h, 300.0)
        if h > self.lim.max_digits:
            raise _Reject(f"a power of about {h:.3g} digits (over {self.lim.max_digits})")
        return _Val(h, base.is_int and exp.is_int)

    def factorial(self, n: _Val, what: str) -> _Val:
        if n.h is None:
            return _SYMBOLIC
        # log10(n!) <= n log10(n); bound n by 10**h.
        if n.h > 9.0:
            raise _Reject(f"{what} of a number over 10^9")
        nmax = 10.0**n.h
        digits = math.lgamma(nmax + 1.0) / math.log(10.0)
        if digits > self.lim.max_digits:
            raise _Reject(f"{what} of about {digits:.3g} digits (over {self.lim.max_digits})")
        return _Val(digits, True)

    def binomial(self, n: _Val, k: _Val) -> _Val:
        if n.h is None:
            return _SYMBOLIC
        digits = _LOG10_2 * 10.0 ** min(n.h, 300.0)  # C(n, k) <= 2^n
        if k.h is not None:
            digits = min(digits, n.h * 10.0 ** min(k.h, 300.0))  # C(n, k) <= n^k
        if digits > self.lim.max_digits:
            raise _Reject(f"a binomial of about {digits:.3g} digits (over {self.lim.max_digits})")
        return _Val(digits, True)


def screen_answer(answer: str, limits: ScreenLimits = DEFAULT_SCREEN) -> str | None:
    """Why `answer` cannot be a final answer, or None when it passes the pre-screen.

    Linear in `len(answer)` up to `limits.max_chars`, which is checked first.

    Args:
        answer: an extracted predicted answer (LaTeX or plain).
        limits: the thresholds (`ScreenLimits`).

    Returns:
        A short reason ("longer than 512 characters", "more than 2 stacked exponents", ...) or None.
    """
    if len(answer) > limits.max_chars:
        return f"longer than {limits.max_chars} characters"
    depth = nesting_depth(answer)
    if depth > limits.max_nesting:
        return f"brackets nested {depth} deep (over {limits.max_nesting})"
    try:
        _Scanner(answer, limits).run()
    except _Reject as exc:
        return str(exc)
    except RecursionError:  # not reachable within the limits above; refuse rather than crash
        return "too deeply structured to screen"
    return None
