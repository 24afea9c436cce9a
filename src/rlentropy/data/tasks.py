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

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rlentropy.errors import ConfigError
from rlentropy.rewards.registry import RewardSpec, get_reward, same_definition


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
        reward: a reward registered with `rlentropy.rewards.register_reward` (built in: exact_match; yours
            through the config's `plugins:`) that scores the completions instead of the task's own
            scorer, in training and evaluation; null = the task's scorer.
        reward_params: keyword parameters of that reward (checked against its signature).
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
    reward: str | None = None
    reward_params: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("reward")
    @classmethod
    def _reward_name(cls, v: str | None) -> str | None:
        if v is not None:
            get_reward(v)  # ValueError: "'x' is not allowed; allowed: ..."
        return v

    @model_validator(mode="after")
    def _reward_params(self) -> DataConfig:
        if self.reward is None:
            if self.reward_params:
                raise ValueError("data.reward_params: set data.reward (the reward they parameterise)")
        else:
            get_reward(self.reward).check_params(self.reward_params)
        return self


TaskFactory = Callable[[DataConfig], Task]
_TASKS: dict[str, TaskFactory] = {}


def register_task(name: str) -> Callable[[TaskFactory], TaskFactory]:
    """Decorator: register a task factory under `name` (a duplicate name is an error)."""

    def deco(factory: TaskFactory) -> TaskFactory:
        if name in _TASKS and not same_definition(_TASKS[name], factory):
            raise ValueError(f"task {name!r} is already registered")
        _TASKS[name] = factory  # the same definition imported again (a plugin imported twice) replaces it
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
    task = _TASKS[name](cfg)
    if cfg.reward is not None:
        return WithReward(task, get_reward(cfg.reward), dict(cfg.reward_params))
    return task


class WithReward:
    """`task` scored by a registered reward (`data.reward`) instead of its own `score`; every other
    attribute (examples, template, stop strings, answer extraction for maj@k) is the task's."""

    def __init__(self, task: Task, reward: RewardSpec, params: dict[str, Any]) -> None:
        self._task = task
        self.reward = reward
        self.reward_params = params
        self.synthetic = getattr(task, "synthetic", type(task).__module__.startswith("rlentropy.data.synthetic"))

    def score(self, completions: Sequence[str], examples: Sequence[Example]) -> list[float]:
        if len(completions) != len(examples):
            raise ValueError(f"examples: expected {len(completions)} examples, got {len(examples)}")
        return self.reward.score(completions, examples, self.reward_params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._task, name)
