"""The task contract between data, rewards and the trainer.

A *task* owns three things: the train and eval examples, how an example becomes a prompt string
(the template), and how completions are scored (the verifier). The trainer and the evaluator only
ever talk to a `Task`; synthetic tasks (`rlentropy.data.synthetic`) and math datasets
(`rlentropy.data.math`) register factories here under their names.

    cfg = DataConfig(task="countdown")
    task = build_task(cfg)
    prompt = task.render_prompt(task.train_examples()[0], tokenizer)
    rewards = task.score(["... completion ..."], [example])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from rlentropy.errors import ConfigError


@dataclass(frozen=True)
class Example:
    """One prompt with its gold answer. `question` is the raw problem text, before any template."""

    id: str
    question: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Task(Protocol):
    """What the trainer and the evaluator need from a task."""

    name: str
    stop_strings: list[str]

    def train_examples(self) -> list[Example]:
        """Training examples, in a fixed order (the trainer shuffles with its own generator)."""

    def eval_examples(self) -> list[Example]:
        """Held-out examples, disjoint from the training ones."""

    def render_prompt(self, example: Example, tokenizer: Any) -> str:
        """The full prompt text given to the policy (template applied)."""

    def score(self, completions: Sequence[str], examples: Sequence[Example]) -> list[float]:
        """One reward per completion (1.0 correct, 0.0 wrong unless the task documents otherwise)."""


class DataConfig(BaseModel):
    """`data:` section of a training config. Task-specific options go under `params`.

    Attributes:
        task: registry name (`rlentropy.data.available_tasks()` lists them), e.g. "countdown".
        eval_task: task for evaluation when it differs (e.g. train on "dapo", evaluate on "aime24").
        path: a dataset file for file-based tasks ("jsonl" / "parquet").
        template: prompt template name ("plain", "r1", "dapo", "chat"); None = the task's default.
        max_train / max_eval: keep the first N examples (after the task's own fixed-seed shuffle).
        seed: seed of the task's generator (synthetic tasks) or split (held-out sets).
        skip_bad_rows: count and skip malformed rows instead of failing on the first one (the count
            is printed and written to the run directory's run_info.json).
        max_prompt_tokens: the longest rendered prompt (template applied) in tokens; null = what the
            model's context leaves after `rollout.max_new_tokens` (`eval.max_new_tokens` for evaluation).
            Checked before any work, by `rlentropy.data.lengths.check_prompt_lengths`.
        over_long: what a longer prompt does: "error" (one line naming file:line) or "skip" (dropped;
            the count is printed and written to run_info.json).
        params: task-specific options, validated by the task factory (errors name data.params.<key>).
    """

    model_config = ConfigDict(extra="forbid")

    task: str = "countdown"
    eval_task: str | None = None
    path: str | None = None
    template: str | None = None
    max_train: int | None = Field(default=None, ge=1)
    max_eval: int | None = Field(default=None, ge=1)
    seed: int = 0
    skip_bad_rows: bool = False
    max_prompt_tokens: int | None = Field(default=None, ge=1)
    over_long: Literal["error", "skip"] = "error"
    params: dict[str, Any] = Field(default_factory=dict)


TaskFactory = Callable[[DataConfig], Task]
_TASKS: dict[str, TaskFactory] = {}


def register_task(name: str) -> Callable[[TaskFactory], TaskFactory]:
    """Decorator: register a task factory under `name` (a duplicate name is an error)."""

    def deco(factory: TaskFactory) -> TaskFactory:
        if name in _TASKS:
            raise ValueError(f"task {name!r} is already registered")
        _TASKS[name] = factory
        return factory

    return deco


def _load_builtin_tasks() -> None:
    # Importing the modules registers their tasks. Kept lazy so that `rlentropy.data` stays light.
    import importlib

    for mod in ("rlentropy.data.synthetic", "rlentropy.data.math"):
        importlib.import_module(mod)


def available_tasks() -> list[str]:
    """Sorted names of every registered task."""
    _load_builtin_tasks()
    return sorted(_TASKS)


def build_task(cfg: DataConfig, *, for_eval: bool = False) -> Task:
    """Build the task named by `cfg.task` (or `cfg.eval_task` when `for_eval` and it is set)."""
    _load_builtin_tasks()
    name = cfg.eval_task if (for_eval and cfg.eval_task) else cfg.task
    key = "data.eval_task" if (for_eval and cfg.eval_task) else "data.task"
    if name not in _TASKS:
        raise ConfigError(f"{key}: unknown task {name!r}; allowed: {', '.join(sorted(_TASKS))}")
    return _TASKS[name](cfg)
