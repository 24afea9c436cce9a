"""Math tasks on real datasets: GSM8K, MATH-500, AIME 2024/2025, AMC 2023, DAPO-Math-17k, any file.

Registered task names (`data.task` / `data.eval_task`):

| task                | train split                          | eval split                     | default template |
|---------------------|--------------------------------------|--------------------------------|------------------|
| gsm8k               | GSM8K train (7,473)                  | GSM8K test (1,319)             | chat / plain     |
| math500             | – (evaluation set)                   | MATH-500 (500)                 | chat / plain     |
| aime24, aime25      | –                                    | 30 problems each               | chat / plain     |
| amc23               | –                                    | 40 problems                    | chat / plain     |
| dapo                | DAPO-Math-17k minus the 500 held out (and minus repeats of their texts) | the 500 held out | dapo |
| dapo-validation-500 | –                                    | the 500 held out               | dapo             |
| math-suite          | –                                    | dapo-validation-500 + AIME24 + AIME25 + AMC23 (the Clip_B/V eval) | dapo |
| file                | `data.path` (jsonl / parquet)        | `data.params.eval_path`, or `eval_size` rows held out | chat / plain |

"chat / plain": the tokenizer's chat template when it has one, else the plain template (set
`data.template` to choose). Every example carries `meta["dataset"]` (per-dataset metrics for
the suite). `data.params` (all optional):

    source: local | hf               bundled files (default) or Hugging Face `datasets` (network)
    verify_timeout_s: 1.5            hard limit per symbolic answer comparison (out of process)
    require_format: null             reward = R1 format × correctness (null: true for r1 only)
    pass_rate_file: null             JSONL of {"id", "pass_rate"} (or "correct"/"samples"); train
    pass_rate_low: 0.0625            prompts with rate <= low or >= high are dropped
    pass_rate_high: 0.9375
    validation_size: 500             DAPO held-out size (chosen by data.seed)
    question_field / answer_field / id_field / answer_format / eval_path / eval_size   (file task)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rlentropy.data import loaders
from rlentropy.data.tasks import DataConfig, Example, register_task
from rlentropy.data.templates import TEMPLATES, Template, get_template
from rlentropy.errors import ConfigError, DataError
from rlentropy.rewards.math import DEFAULT_TIMEOUT_S, MathScorer


class MathParams(BaseModel):
    """`data.params` of the math tasks (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["local", "hf"] = "local"
    verify_timeout_s: float = Field(default=DEFAULT_TIMEOUT_S, gt=0)
    require_format: bool | None = None
    pass_rate_file: str | None = None
    pass_rate_low: float = Field(default=loaders.PASS_RATE_LOW, ge=0, le=1)
    pass_rate_high: float = Field(default=loaders.PASS_RATE_HIGH, ge=0, le=1)
    validation_size: int = Field(default=500, ge=1)
    # file task
    question_field: str = "question"
    answer_field: str = "answer"
    id_field: str | None = None
    answer_format: Literal["raw", "int", "gsm8k", "boxed"] = "raw"
    eval_path: str | None = None
    eval_size: int | None = Field(default=None, ge=0)


_FILE_ONLY = ("question_field", "answer_field", "id_field", "answer_format", "eval_path", "eval_size")


def _params(cfg: DataConfig, task: str) -> MathParams:
    try:
        p = MathParams.model_validate(cfg.params)
    except ValidationError as err:
        e = err.errors()[0]
        key = ".".join(str(x) for x in e["loc"])
        if e["type"] == "extra_forbidden":
            raise ConfigError(
                f"data.params.{key}: unknown key for task {task!r}; allowed: {', '.join(MathParams.model_fields)}"
            ) from None
        raise ConfigError(f"data.params.{key}: {e['msg'].lower()} (got {e.get('input')!r})") from None
    if task != "file":
        for k in _FILE_ONLY:
            if k in cfg.params:
                raise ConfigError(f"data.params.{k}: only the 'file' task takes it (task is {task!r})")
    if p.pass_rate_low >= p.pass_rate_high:
        raise ConfigError("data.params.pass_rate_low: must be < data.params.pass_rate_high")
    return p


def _tag(examples: list[Example], dataset: str) -> list[Example]:
    return [Example(e.id, e.question, e.answer, {**e.meta, "dataset": dataset}) for e in examples]


class MathTask:
    """A math dataset task: examples, a template, and a math-verify scorer.

    Loads lazily (on the first `train_examples()` / `eval_examples()`), then caches.
    """

    def __init__(
        self,
        name: str,
        cfg: DataConfig,
        params: MathParams,
        *,
        train_fn: Callable[[], list[Example]] | None,
        eval_fn: Callable[[], list[Example]],
        default_template: str | None,
        load_reports: list[loaders.LoadReport] | None = None,
    ) -> None:
        self.name = name
        self.load_reports = load_reports if load_reports is not None else []  # rows read / skipped per file
        self.cfg = cfg
        self.params = params
        self._train_fn = train_fn
        self._eval_fn = eval_fn
        self._train: list[Example] | None = None
        self._eval: list[Example] | None = None
        self.filter_counts: dict[str, int] = {}
        tname = cfg.template or default_template
        if tname is not None:
            self.template: Template | None = get_template(tname)
            stops = list(self.template.stop_strings)
        else:  # chat when the tokenizer has a chat template, plain otherwise
            self.template = None
            stops = list(TEMPLATES["plain"].stop_strings)
        self.stop_strings: list[str] = stops
        style_tpl = self.template or TEMPLATES["chat"]
        require = params.require_format
        self.scorer = MathScorer(
            style=style_tpl.answer_style,
            require_r1_format=style_tpl.require_format if require is None else require,
            format_prefix=style_tpl.completion_prefix or "<think>",
            timeout_s=params.verify_timeout_s,
        )

    def _template_for(self, tokenizer: Any) -> Template:
        if self.template is not None:
            return self.template
        has_chat = tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))
        return TEMPLATES["chat" if has_chat else "plain"]

    def train_examples(self) -> list[Example]:
        if self._train_fn is None:
            raise ConfigError(
                f"data.task: {self.name!r} is an evaluation set without a training split; use it as data.eval_task"
            )
        if self._train is None:
            ex = self._train_fn()
            if self.params.pass_rate_file:
                rates = loaders.load_pass_rates(self.params.pass_rate_file)
                ex, self.filter_counts = loaders.filter_by_pass_rate(
                    ex, rates, low=self.params.pass_rate_low, high=self.params.pass_rate_high
                )
            if self.cfg.max_train is not None:
                ex = ex[: self.cfg.max_train]
            self._train = ex
        return list(self._train)

    def eval_examples(self) -> list[Example]:
        if self._eval is None:
            ex = self._eval_fn()
            if self.cfg.max_eval is not None:
                ex = ex[: self.cfg.max_eval]
            self._eval = ex
        return list(self._eval)

    def render_prompt(self, example: Example, tokenizer: Any) -> str:
        return self._template_for(tokenizer).render(example.question, tokenizer)

    def score(self, completions: Sequence[str], examples: Sequence[Example]) -> list[float]:
        if len(completions) != len(examples):
            raise ValueError(f"examples: expected {len(completions)} examples, got {len(examples)}")
        return self.scorer.score(list(completions), [e.answer for e in examples])


# ---------------------------------------------------------------------------------------------
# Factories
# ---------------------------------------------------------------------------------------------
def _split_loader(
    dataset: str, split: str, cfg: DataConfig, p: MathParams, reports: list[loaders.LoadReport]
) -> Callable[[], list[Example]]:
    def load() -> list[Example]:
        ex = loaders.load_dataset_split(
            dataset, split, source=p.source, skip_bad_rows=cfg.skip_bad_rows, reports=reports
        )
        return _tag(ex, dataset)

    return load


def _dapo_split(
    cfg: DataConfig, p: MathParams, reports: list[loaders.LoadReport]
) -> tuple[list[Example], list[Example]]:
    ex = loaders.load_dataset_split(
        "dapo17k", "train", source=p.source, skip_bad_rows=cfg.skip_bad_rows, reports=reports
    )
    train, held = loaders.holdout_split(ex, p.validation_size, seed=cfg.seed)
    return _tag(train, "dapo"), _tag(held, "dapo-validation-500")


@register_task("gsm8k")
def _gsm8k(cfg: DataConfig) -> MathTask:
    p = _params(cfg, "gsm8k")
    reports: list[loaders.LoadReport] = []
    return MathTask(
        "gsm8k",
        cfg,
        p,
        train_fn=_split_loader("gsm8k", "train", cfg, p, reports),
        eval_fn=_split_loader("gsm8k", "test", cfg, p, reports),
        default_template=None,
        load_reports=reports,
    )


def _eval_only(name: str, dataset: str) -> None:
    @register_task(name)
    def factory(cfg: DataConfig) -> MathTask:
        p = _params(cfg, name)
        reports: list[loaders.LoadReport] = []
        return MathTask(
            name,
            cfg,
            p,
            train_fn=None,
            eval_fn=_split_loader(dataset, "test", cfg, p, reports),
            default_template=None,
            load_reports=reports,
        )


for _name in ("math500", "aime24", "aime25", "amc23"):
    _eval_only(_name, _name)


@register_task("dapo")
def _dapo(cfg: DataConfig) -> MathTask:
    p = _params(cfg, "dapo")
    cache: dict[str, tuple[list[Example], list[Example]]] = {}
    reports: list[loaders.LoadReport] = []

    def split() -> tuple[list[Example], list[Example]]:
        if "s" not in cache:
            cache["s"] = _dapo_split(cfg, p, reports)
        return cache["s"]

    return MathTask(
        "dapo",
        cfg,
        p,
        train_fn=lambda: split()[0],
        eval_fn=lambda: split()[1],
        default_template="dapo",
        load_reports=reports,
    )


@register_task("dapo-validation-500")
def _dapo_val(cfg: DataConfig) -> MathTask:
    p = _params(cfg, "dapo-validation-500")
    reports: list[loaders.LoadReport] = []
    return MathTask(
        "dapo-validation-500",
        cfg,
        p,
        train_fn=None,
        eval_fn=lambda: _dapo_split(cfg, p, reports)[1],
        default_template="dapo",
        load_reports=reports,
    )


@register_task("math-suite")
def _suite(cfg: DataConfig) -> MathTask:
    p = _params(cfg, "math-suite")
    reports: list[loaders.LoadReport] = []

    def load() -> list[Example]:
        out = list(_dapo_split(cfg, p, reports)[1])
        for ds in ("aime24", "aime25", "amc23"):
            out += _split_loader(ds, "test", cfg, p, reports)()
        return out

    return MathTask("math-suite", cfg, p, train_fn=None, eval_fn=load, default_template="dapo", load_reports=reports)


@register_task("file")
def _file(cfg: DataConfig) -> MathTask:
    p = _params(cfg, "file")
    if not cfg.path:
        raise ConfigError("data.path: the 'file' task needs data.path (a .jsonl or .parquet file)")
    cache: dict[str, tuple[list[Example], list[Example]]] = {}
    held: dict[str, int] = {}  # the hold-out split: eval rows taken, usable rows read
    reports: list[loaders.LoadReport] = []

    def load(path: str) -> list[Example]:
        ex, report = loaders.load_file(
            path,
            question_field=p.question_field,
            answer_field=p.answer_field,
            id_field=p.id_field,
            answer_format=p.answer_format,
            id_prefix="",
            skip_bad_rows=cfg.skip_bad_rows,
        )
        reports.append(report)
        return _tag(ex, "file")

    def split() -> tuple[list[Example], list[Example]]:
        if "s" not in cache:
            ex = load(str(cfg.path))
            if p.eval_path:
                cache["s"] = (ex, load(p.eval_path))
            else:
                n = p.eval_size if p.eval_size is not None else min(500, len(ex) // 10)
                cache["s"] = (ex, []) if n == 0 else loaders.holdout_split(ex, n, seed=cfg.seed)
                held.update(n=n, rows=len(ex))
        return cache["s"]

    def train_fn() -> list[Example]:
        train = split()[0]
        if not train and held:
            raise DataError(
                f"{cfg.path}: no training examples left: {held['n']} of its {held['rows']} usable rows are held out for "
                "evaluation (data.params.eval_size) and every other row repeats a held-out question (a row "
                "whose question equals a held-out one never trains); set data.params.eval_path to a "
                "separate eval file, or a smaller data.params.eval_size"
            )
        return train

    def eval_fn() -> list[Example]:
        ev = split()[1]
        if not ev:
            raise ConfigError(
                "data.params.eval_size: the 'file' task has no eval examples "
                "(set data.params.eval_path or eval_size > 0)"
            )
        return ev

    return MathTask("file", cfg, p, train_fn=train_fn, eval_fn=eval_fn, default_template=None, load_reports=reports)
