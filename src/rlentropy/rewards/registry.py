"""Reward functions by name: `data.reward: <name>` scores a task's completions with one of them.

    from rlentropy.rewards import register_reward

    @register_reward("exact_match")
    def exact_match(completion: str, example, *, strip: bool = True) -> float: ...

    @register_reward("group_rank", batched=True)
    def group_rank(completions: list[str], examples: list, **params) -> list[float]: ...

A reward is called with the completion (the decoded response, stop string removed) and its
`rlentropy.data.Example` (`question`, `answer` — the gold, as the task normalised it —, `id`, `meta`),
plus the keyword parameters of `data.reward_params`, whose keys are checked against the function's
signature when the config is validated. `batched=True` functions take the lists of a whole call and
return one float per completion. A sample with reward >= 1 counts as correct (pass@k, the pass rates).
A config names user rewards after importing them through `plugins:` (`rlentropy.runs.plugins`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["REWARDS", "RewardSpec", "exact_match", "get_reward", "register_reward", "reward_names", "same_definition"]


def _defined_at(obj: Any) -> tuple[str | None, str | None]:
    code = getattr(obj, "__code__", None)
    if code is not None:
        return code.co_filename, getattr(obj, "__qualname__", None)
    try:
        return inspect.getfile(obj), getattr(obj, "__qualname__", None)
    except (TypeError, OSError):
        return None, None


def same_definition(a: Any, b: Any) -> bool:
    """True when `a` and `b` come from the same source definition (one file imported twice)."""
    where = _defined_at(a)
    return where[0] is not None and where == _defined_at(b)


@dataclass(frozen=True)
class RewardSpec:
    """A registered reward: its name, function, calling convention and one-line summary."""

    name: str
    fn: Callable[..., Any]
    batched: bool = False
    summary: str = ""

    @property
    def parameters(self) -> dict[str, Any]:
        """Keyword parameters (name → default, `inspect.Parameter.empty` when required) after the two
        positional ones."""
        params = list(inspect.signature(self.fn).parameters.values())[2:]
        return {
            p.name: p.default
            for p in params
            if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        }

    def check_params(self, params: dict[str, Any], where: str = "data.reward_params") -> None:
        """Raise ValueError naming `where` for an unknown or a missing required parameter."""
        allowed = self.parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(self.fn).parameters.values())
        for key in params:
            if key not in allowed and not takes_any:
                listed = ", ".join(allowed) if allowed else "(none)"
                raise ValueError(f"{where}: unknown parameter {key!r} of reward {self.name!r}; allowed: {listed}")
        missing = [k for k, d in allowed.items() if d is inspect.Parameter.empty and k not in params]
        if missing:
            raise ValueError(f"{where}: reward {self.name!r} needs {', '.join(missing)}")

    def score(self, completions: Sequence[str], examples: Sequence[Any], params: dict[str, Any]) -> list[float]:
        """One float per completion; a wrong count or a non-number is a ValueError naming the reward."""
        if self.batched:
            out = list(self.fn(list(completions), list(examples), **params))
        else:
            out = [self.fn(c, e, **params) for c, e in zip(completions, examples)]
        if len(out) != len(completions):
            raise ValueError(f"reward {self.name!r} returned {len(out)} values for {len(completions)} completions")
        values = []
        for v in out:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
                raise ValueError(f"reward {self.name!r} returned {v!r}; a reward is a finite number")
            values.append(float(v))
        return values


REWARDS: dict[str, RewardSpec] = {}


def register_reward(
    name: str, *, batched: bool = False, summary: str = ""
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register `fn(completion, example, **params) -> float` (or, with `batched=True`,
    `fn(completions, examples, **params) -> list[float]`) as the reward `name`.

    A taken name is a ValueError, unless it is the same definition imported again. Returns the
    function unchanged.
    """

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if len([p for p in inspect.signature(fn).parameters.values() if p.kind is not p.VAR_KEYWORD]) < 2:
            raise ValueError(f"reward {name!r}: the function takes (completion, example, **params)")
        old = REWARDS.get(name)
        if old is not None and not same_definition(old.fn, fn):
            raise ValueError(f"reward {name!r} is already registered")
        doc = (fn.__doc__ or "").strip().splitlines()
        REWARDS[name] = RewardSpec(name, fn, batched=batched, summary=summary or (doc[0] if doc else ""))
        return fn

    return deco


def reward_names() -> tuple[str, ...]:
    """Every registered reward name, in registration order."""
    return tuple(REWARDS)


def get_reward(name: str) -> RewardSpec:
    """The reward registered as `name` (ValueError listing the names otherwise)."""
    if name not in REWARDS:
        raise ValueError(f"{name!r} is not allowed; allowed: {', '.join(REWARDS) or '(none registered)'}")
    return REWARDS[name]


@register_reward("exact_match")
def exact_match(completion: str, example: Any, *, strip: bool = True, case_sensitive: bool = True) -> float:
    """1.0 when the completion equals the gold answer (whitespace stripped, case kept by default), else 0.0."""
    a, b = completion, str(example.answer)
    if strip:
        a, b = a.strip(), b.strip()
    if not case_sensitive:
        a, b = a.lower(), b.lower()
    return 1.0 if a == b else 0.0
