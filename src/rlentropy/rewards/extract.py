"""Answer extraction from model completions, and the R1 format check.

Every function here is pure string processing with a cost linear in the input and bounded output
(`max_chars`): a 1 MB completion, ten thousand nested braces or a run of unmatched tags are handled
in a single scan, never by a backtracking regular expression.

Styles (`extract_answer(text, style)`):
    "boxed"  the content of the LAST `\\boxed{...}` (or `\\fbox{...}`), nested braces matched;
             also the brace-less form `\\boxed 5`.
    "gsm8k"  the text after the LAST `####` up to the end of that line, thousands commas removed.
    "dapo"   the text after the LAST `Answer:` (case-insensitive, as in the DAPO verifier) up to
             the end of that line.
    "r1"     the content of the LAST `<answer> ... </answer>` pair; when it holds a `\\boxed{}`,
             that box's content.
    "auto"   r1, then boxed, then gsm8k, then dapo: the first that finds something.
"""

from __future__ import annotations

import re
from fractions import Fraction

DEFAULT_MAX_ANSWER_CHARS = 1000
STYLES = ("boxed", "gsm8k", "dapo", "r1", "auto")

_BOX_COMMANDS = ("\\boxed", "\\fbox")


def _strip_answer(ans: str) -> str:
    """Trim whitespace, one pair of surrounding `$...$` and a trailing full stop."""
    ans = ans.strip()
    if len(ans) >= 2 and ans.startswith("$") and ans.endswith("$") and not ans.startswith("$$"):
        ans = ans[1:-1].strip()
    elif ans.startswith("$$") and ans.endswith("$$") and len(ans) >= 4:
        ans = ans[2:-2].strip()
    if ans.endswith(".") and not ans.endswith(".."):
        ans = ans[:-1].rstrip()
    return ans


def _match_braces(text: str, open_idx: int, max_chars: int) -> str | None:
    """Content of the brace group opening at `text[open_idx] == "{"`, or None when it does not
    close within `max_chars` characters (too long, or unbalanced)."""
    depth = 0
    end_limit = min(len(text), open_idx + max_chars + 2)
    # Jump from brace to brace with str.find: the scan runs in C between braces.
    i = open_idx
    while i < end_limit:
        nxt_open = text.find("{", i, end_limit)
        nxt_close = text.find("}", i, end_limit)
        if nxt_close < 0:
            return None
        if 0 <= nxt_open < nxt_close:
            depth += 1
            i = nxt_open + 1
            continue
        depth -= 1
        if depth == 0:
            return text[open_idx + 1 : nxt_close]
        i = nxt_close + 1
    return None


def extract_boxed(text: str, *, max_chars: int = DEFAULT_MAX_ANSWER_CHARS) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` in `text` (nested braces matched).

    Returns None when there is no box, when the box does not close, or when its content is longer
    than `max_chars` characters.

        >>> extract_boxed(r"so \\boxed{\\frac{1}{2}}.")
        '\\\\frac{1}{2}'
    """
    best = -1
    cmd_len = 0
    for cmd in _BOX_COMMANDS:
        idx = text.rfind(cmd)
        # `\boxed` must not be a prefix of a longer command name (e.g. a made-up `\boxedx`).
        while idx >= 0:
            after = idx + len(cmd)
            if after >= len(text) or not text[after].isalpha():
                break
            idx = text.rfind(cmd, 0, idx)
        if idx > best:
            best, cmd_len = idx, len(cmd)
    if best < 0:
        return None
    i = best + cmd_len
    # Skip a few spaces between the command and its argument.
    j = i
    while j < len(text) and j - i < 8 and text[j] == " ":
        j += 1
    if j < len(text) and text[j] == "{":
        content = _match_braces(text, j, max_chars)
        return None if content is None else content.strip()
    if j > i:  # `\boxed 5`: the argument runs to the next space or `$`.
        k = j
        stop = min(len(text), j + max_chars + 1)
        while k < stop and text[k] not in " $\n":
            k += 1
        if k == j or k - j > max_chars:
            return None
        return text[j:k]
    return None


def _line_after(text: str, start: int, max_chars: int) -> str | None:
    end = text.find("\n", start, start + max_chars + 1)
    if end < 0:
        end = len(text)
        if end - start > max_chars:
            return None
    out = _strip_answer(text[start:end])
    return out or None


def extract_gsm8k(text: str, *, max_chars: int = DEFAULT_MAX_ANSWER_CHARS) -> str | None:
    """Text after the last `####` (GSM8K's gold format), commas removed, or None."""
    idx = text.rfind("####")
    if idx < 0:
        return None
    ans = _line_after(text, idx + 4, max_chars)
    return None if ans is None else ans.replace(",", "").strip() or None


def extract_dapo(text: str, *, max_chars: int = DEFAULT_MAX_ANSWER_CHARS) -> str | None:
    """Text after the last `Answer:` (any case, spaces allowed before the colon), or None.

    This is the DAPO recipe's format ("The last line of your response should be of the form
    Answer: $Answer").
    """
    low = text.lower()
    idx = low.rfind("answer")
    while idx >= 0:
        j = idx + 6
        k = j
        while k < len(text) and k - j < 8 and text[k] in " \t":
            k += 1
        if k < len(text) and text[k] == ":":
            return _line_after(text, k + 1, max_chars)
        idx = low.rfind("answer", 0, idx)
    return None


def extract_r1(text: str, *, max_chars: int = DEFAULT_MAX_ANSWER_CHARS) -> str | None:
    """Content of the last `<answer> ... </answer>`; a `\\boxed{}` inside it wins. None if absent."""
    close = text.rfind("</answer>")
    if close < 0:
        return None
    open_ = text.rfind("<answer>", 0, close)
    if open_ < 0:
        return None
    inner = text[open_ + len("<answer>") : close]
    if len(inner) > max_chars:
        return None
    boxed = extract_boxed(inner, max_chars=max_chars)
    if boxed is not None:
        return boxed
    out = _strip_answer(inner)
    return out or None


_EXTRACTORS = {
    "boxed": extract_boxed,
    "gsm8k": extract_gsm8k,
    "dapo": extract_dapo,
    "r1": extract_r1,
}


def extract_answer(text: str, style: str = "auto", *, max_chars: int = DEFAULT_MAX_ANSWER_CHARS) -> str | None:
    """The final answer written in `text`, by `style` (see the module docstring), or None.

    Args:
        text: a model completion (any length).
        style: "boxed", "gsm8k", "dapo", "r1", "auto", or a "+"-joined fallback chain such as
            "boxed+gsm8k+dapo" (the first style that finds an answer wins).
        max_chars: longest answer accepted; a longer one counts as no answer.
    """
    chain = ("r1", "boxed", "gsm8k", "dapo") if style == "auto" else tuple(style.split("+"))
    for name in chain:
        fn = _EXTRACTORS.get(name)
        if fn is None:
            raise ValueError(f"style: unknown answer style {name!r}; allowed: {', '.join(STYLES)}")
        ans = fn(text, max_chars=max_chars)
        if ans is not None:
            return ans
    return None


def r1_format_ok(completion: str, *, prefix: str = "<think>") -> bool:
    """True when `prefix + completion` has the R1 shape `<think> … </think> <answer> … </answer>`.

    Exactly one of each tag, in that order, only whitespace between `</think>` and `<answer>` and
    after `</answer>`, and a non-empty answer. `prefix` is the part of the format the prompt
    already wrote (the R1 template ends its prompt with "Response: <think>").
    Linear time (tag counts and finds, no regex backtracking).
    """
    text = prefix + completion
    tags = ("<think>", "</think>", "<answer>", "</answer>")
    if any(text.count(t) != 1 for t in tags):
        return False
    pos = [text.find(t) for t in tags]
    if not (pos[0] < pos[1] < pos[2] < pos[3]):
        return False
    if text[: pos[0]].strip():
        return False
    if text[pos[1] + len(tags[1]) : pos[2]].strip():
        return False
    if text[pos[3] + len(tags[3]) :].strip():
        return False
    return bool(text[pos[2] + len(tags[2]) : pos[3]].strip())


# Plain numbers: an optional sign, digits with optional thousands commas, an optional decimal part.
_NUMBER_RE = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+")


def as_plain_number(ans: str, *, max_chars: int = 40) -> Fraction | None:
    """The exact value of `ans` when it is a plain decimal number ("18", "-3.50", "1,234", "$5"),
    else None. Used as the fast path of the verifier: two plain numbers are compared exactly
    without sympy."""
    s = ans.strip()
    if len(s) > max_chars:
        return None
    if s.startswith("\\$"):
        s = s[2:].strip()
    elif s.startswith("$") and not s.endswith("$"):
        s = s[1:].strip()
    if s.endswith("."):
        s = s[:-1]
    if not _NUMBER_RE.fullmatch(s):
        return None
    return Fraction(s.replace(",", ""))
