"""Prompt lengths, checked before any work: a prompt longer than the model's context fails one line.

    limit = prompt_token_limit(cfg.data, context=2048, max_new_tokens=256)       # 1792
    kept, report = check_prompt_lengths(examples, task, tokenizer, limit=limit, policy="skip")

A row's question longer than `CHARS_PER_TOKEN_CAP` × limit characters is rejected before it is
rendered or tokenised (no tokenizer turns that into fewer tokens than the limit, and tokenising a
50 MB string takes minutes and gigabytes). Every other prompt is rendered with the task's template;
one whose UTF-8 length plus the tokenizer's special tokens fits the limit is accepted without
tokenising (a token covers at least one byte: true of byte-level BPE, SentencePiece, WordPiece and
character tokenizers), the rest are tokenised exactly as the rollout will (`tokenizer(prompt)`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rlentropy.data.tasks import DataConfig, Example
from rlentropy.errors import ConfigError, DataError

CHARS_PER_TOKEN_CAP = 64
"""A question longer than this many characters per allowed token is rejected without tokenising."""
_SLACK_TOKENS = 8
"""Tokens added to a prompt's byte length before it is trusted to fit without tokenising (a
SentencePiece prefix piece, a chat template's specials counted once more)."""


@dataclass
class LengthReport:
    """What `check_prompt_lengths` did: prompts checked, skipped as over-long (the first few named)."""

    split: str
    limit: int
    checked: int = 0
    skipped: int = 0
    examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "limit": self.limit,
            "checked": self.checked,
            "skipped": self.skipped,
            "first_skipped": self.examples,
        }


def prompt_token_limit(data: DataConfig, *, context: int | None, max_new_tokens: int) -> int | None:
    """`data.max_prompt_tokens`, else the model's context minus `max_new_tokens` (None: no limit known).

    Raises:
        ConfigError: the limit plus `max_new_tokens` does not fit the context.
    """
    if context is None:
        return data.max_prompt_tokens
    room = context - max_new_tokens
    if room < 1:
        raise ConfigError(
            f"rollout.max_new_tokens: {max_new_tokens} new tokens leave no room for a prompt in the model's "
            f"context of {context} tokens"
        )
    if data.max_prompt_tokens is None:
        return room
    if data.max_prompt_tokens > room:
        raise ConfigError(
            f"data.max_prompt_tokens: {data.max_prompt_tokens} + {max_new_tokens} new tokens exceed the model's "
            f"context of {context} tokens (at most {room})"
        )
    return data.max_prompt_tokens


def where(example: Example) -> str:
    """`file:line` of an example read from a file, else its id."""
    meta = example.meta or {}
    if meta.get("source") and meta.get("line") is not None:
        return f"{meta['source']}:{meta['line']}"
    return f"example {example.id!r}"


def _special_tokens(tokenizer: Any) -> int:
    try:
        return len(tokenizer("")["input_ids"])
    except Exception:  # noqa: BLE001 - a tokenizer that cannot encode "" adds none we can count
        return 0


def check_prompt_lengths(
    examples: Sequence[Example],
    task: Any,
    tokenizer: Any,
    *,
    limit: int | None,
    policy: str,
    split: str = "train",
) -> tuple[list[Example], LengthReport]:
    """The examples whose rendered prompt fits `limit` tokens, and what was dropped.

    Args:
        examples: the split's examples.
        task: renders a prompt (`task.render_prompt(example, tokenizer)`).
        tokenizer: the policy's tokenizer.
        limit: the longest prompt in tokens (None = no check).
        policy: "error" (raise on the first over-long prompt) or "skip" (drop and count).
        split: named in messages ("train", "eval").

    Raises:
        DataError: `policy` is "error" and a prompt is longer than `limit` (naming file:line).
    """
    report = LengthReport(split=split, limit=limit or 0)
    if limit is None:
        return list(examples), report
    specials = _special_tokens(tokenizer) + _SLACK_TOKENS
    kept: list[Example] = []
    for ex in examples:
        report.checked += 1
        if len(ex.question) > CHARS_PER_TOKEN_CAP * limit:
            what = f"{where(ex)}: the {split} question has {len(ex.question)} characters (not tokenised)"
        else:
            prompt = task.render_prompt(ex, tokenizer)
            if len(prompt.encode("utf-8")) + specials <= limit:
                kept.append(ex)
                continue
            n = len(tokenizer(prompt)["input_ids"])
            if n <= limit:
                kept.append(ex)
                continue
            what = f"{where(ex)}: the {split} prompt has {n} tokens"
        if policy != "skip":
            raise DataError(
                f"{what}, more than the {limit} allowed (data.max_prompt_tokens; default: the model's context "
                "less the new tokens); set data.over_long=skip to drop such rows"
            )
        report.skipped += 1
        if len(report.examples) < 5:
            report.examples.append(f"{what} > {limit}")
    return kept, report


class WithEvalExamples:
    """`task` with `eval_examples()` replaced by `examples` (those that passed the length check); every
    other attribute is the task's."""

    def __init__(self, task: Any, examples: Sequence[Example]) -> None:
        self._task = task
        self._examples = list(examples)
        self.synthetic = getattr(task, "synthetic", type(task).__module__.startswith("rlentropy.data.synthetic"))

    def eval_examples(self) -> list[Example]:
        return list(self._examples)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._task, name)
