"""The training configuration: typed sections, YAML loading, `a.b=c` overrides, one-line errors.

    cfg = load_config("configs/demo_countdown.yaml", ["train.steps=5", "algorithm.control=clip_b"])

Every section forbids unknown keys. A bad key or value raises `ConfigError` with one line naming the
key and what is allowed (the CLI prints it and exits 2). docs/training.md is the reference.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rlentropy.algorithms import ADVANTAGES, CONTROLLERS, POLICY_LOSSES
from rlentropy.algorithms.dispatch import configure_controls, control_names
from rlentropy.data.tasks import DataConfig
from rlentropy.errors import ConfigError
from rlentropy.models.loading import ModelConfig
from rlentropy.runs.plugins import load_plugins

AggregationMode = Literal[
    "token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"
]


RECOMMENDED_EVERY = 10
"""The probing frequency we recommend (and benchmark) when probes are switched on."""


class ProbesConfig(BaseModel):
    """`probes:` section of a training config.

    Attributes:
        every: probe every N-th step (steps with step % every == 0); 0 switches every probe off.
            10 is the recommended frequency (the one benchmarked in benchmarks/RESULTS.md).
        pressure: per-token first-order pressure ΔH_tok = lr·w·A·(s_bar − S) and its quadrants
            (nearly free: elementwise on the old-policy statistics).
        covariance: Cov(log p, A) over the batch and the per-token covariance quantiles (nearly free).
        step_probe: predicted ΔH = ∇H·Δθ on the probe batch with the real update Δθ, and the
            measured ΔH on the same fixed sequences after the step.
        logit_check: on the probe positions, −Σ S δz from the real logit change vs the measured
            per-position ΔH (needs `step_probe`'s forward passes; adds two hidden-state forwards).
        probe_batch: "independent" (a fresh held-out rollout batch from `sample_probe_batch`, so the
            prediction is not biased by the update being computed on the same samples) or "train".
        probe_prompts: prompts in the independent probe batch (the trainer's `sample_probe_batch`
            draws this many prompts, each with the run's samples per prompt).
        probe_max_sequences: cap on the probe batch's rows (the first rows are kept).
        probe_micro_batch: rows per forward/backward on the probe batch (bounds memory).
        logit_chunk: positions per chunk in the logit-space check (bounds memory to [chunk, V]).
        fisher_every: compute the sequence Fisher kernel on probed steps with step % fisher_every == 0
            (0 = off). Stores fisher_sequences × (trainable parameters) floats: meant for LoRA or
            small models.
        fisher_sequences: sequences (first rows of the training batch) in the Fisher kernel.
        fisher_metric: "identity" (K = g·g') or "adam" (K = g·P·g', P = 1/(√v̂ + ε) of this step,
            applied once). "adam" needs an Adam-family optimizer.
        gns: gradient noise scale B_simple from the micro-batch gradients of the step (needs >= 2
            micro-batches; keeps one extra copy of the gradients).
        save_arrays: write `dynamics/step_N.npz` with the per-token and per-position arrays.
    """

    model_config = ConfigDict(extra="forbid")

    every: int = Field(0, ge=0)
    pressure: bool = True
    covariance: bool = True
    step_probe: bool = True
    logit_check: bool = True
    probe_batch: Literal["independent", "train"] = "independent"
    probe_prompts: int = Field(4, ge=1)
    probe_max_sequences: int = Field(64, ge=1)
    probe_micro_batch: int = Field(16, ge=1)
    logit_chunk: int = Field(128, ge=1)
    fisher_every: int = Field(0, ge=0)
    fisher_sequences: int = Field(16, ge=2)
    fisher_metric: Literal["identity", "adam"] = "identity"
    gns: bool = True
    save_arrays: bool = True


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RolloutConfig(_Section):
    """`rollout:` how completions are sampled (`rlentropy.rollout.hf.HFGenerator`).

    Attributes:
        engine: "auto" (the lean loop for decoder-only models, HF generate for encoder-decoder ones),
            "lean" (our KV-cache decode loop: each prompt prefilled once, finished rows dropped) or
            "hf_generate" (`model.generate`; for a model whose cache the lean loop cannot reorder). Both
            sample the same distribution; their random streams differ. Evaluation uses it too. ("hf",
            the old name of "auto", is still read.)
        max_new_tokens: response length cap. temperature / top_p: sampling distribution (the same
            temperature scales the logits of every statistic and of the loss). batch_size: sequences per
            generate call (null = all at once). per_prompt_seeds: sample each prompt's group in its own
            generate call seeded by (train.seed, step, global prompt index), so the samples do not depend
            on how prompts are split over processes (slower; for multi-process parity checks).
    """

    engine: Literal["auto", "lean", "hf_generate"] = "auto"
    max_new_tokens: int = Field(default=64, ge=1)
    temperature: float = Field(default=1.0, gt=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    batch_size: int | None = Field(default=None, ge=1)
    per_prompt_seeds: bool = False

    @field_validator("engine", mode="before")
    @classmethod
    def _old_engine_name(cls, v: Any) -> Any:
        return "auto" if v == "hf" else v  # config.yaml of runs written before the key chose an engine


class KLConfig(_Section):
    """`algorithm.kl:` penalty toward a frozen reference policy (off when coef = 0).

    Attributes:
        coef: weight β of the penalty added to the loss (aggregated like the policy loss).
        estimator: "k1" = log π − log π_ref; "k3" = exp(log π_ref − log π) − (log π_ref − log π) − 1.
    """

    coef: float = Field(default=0.0, ge=0)
    estimator: Literal["k1", "k3"] = "k3"


def _one_of(value: str, names: tuple[str, ...]) -> str:
    if value not in names:
        raise ValueError(f"{value!r} is not allowed; allowed: {', '.join(names)}")
    return value


class AlgorithmConfig(_Section):
    """`algorithm:` advantage, policy loss, aggregation, entropy control(s), bonus, controller, KL.

    Every name is looked up in the registries of `rlentropy.algorithms` (`rlentropy methods` lists
    them); every `*_params` key is checked against the method's parameters, whose defaults are the
    upstream ones written in the method's signature.

    Attributes:
        advantage / advantage_params: advantage estimator and its keyword parameters.
        loss / loss_params: policy loss and its parameters (e.g. eps_low, eps_high, clip_ratio_c,
            clip_cov_ratio, kl_cov_ratio, ppo_kl_coef).
        cov_selection: for losses with a token selection (clip_cov, kl_cov), pick the controlled tokens
            once per step over the whole batch from the old-policy log-probs ("batch": independent of
            the micro-batch split and of the number of processes) or per micro-batch from the current
            log-probs ("micro_batch", as upstream verl).
        aggregation: how the per-token loss matrix becomes a scalar; max_len for seq-mean-token-sum-norm
            (default rollout.max_new_tokens).
        control / control_params: one entropy control (mask edit, advantage edit or loss term) and its
            parameters, or a list of controls applied in order with `control_params` keyed by name.
        control_stage: run the control(s) at this stage instead of each control's default ("old": once
            per step on the old policy's statistics of the whole batch; "current": per micro-batch on the
            training forward); only stages a control lists are allowed.
        entropy_bonus: coefficient c of −c·agg(H) (0 = off): the `entropy_bonus` control.
        controller / controller_params: adaptive controller that moves a parameter of the control it
            drives (entropy_coef → entropy_bonus's coef, clip_threshold → clip_b / clip_v's mu) toward
            a target entropy.
        kl: reference-model KL penalty.
    """

    advantage: str = "grpo"
    advantage_params: dict[str, Any] = Field(default_factory=dict)
    loss: str = "ppo"
    loss_params: dict[str, Any] = Field(default_factory=dict)
    cov_selection: Literal["batch", "micro_batch"] = "batch"
    aggregation: AggregationMode = "token-mean"
    max_len: int | None = Field(default=None, ge=1)
    control: str | list[str] = "none"
    control_params: dict[str, Any] = Field(default_factory=dict)
    control_stage: Literal["old", "current"] | None = None
    entropy_bonus: float = Field(default=0.0, ge=0)
    controller: str = "none"
    controller_params: dict[str, Any] = Field(default_factory=dict)
    kl: KLConfig = Field(default_factory=KLConfig)

    @field_validator("advantage")
    @classmethod
    def _advantage_name(cls, v: str) -> str:
        return _one_of(v, ADVANTAGES.names())

    @field_validator("loss")
    @classmethod
    def _loss_name(cls, v: str) -> str:
        return _one_of(v, POLICY_LOSSES.names())

    @field_validator("control")
    @classmethod
    def _control_names(cls, v: str | list[str]) -> str | list[str]:
        for name in [v] if isinstance(v, str) else v:
            _one_of(name, control_names())
        return v

    @field_validator("controller")
    @classmethod
    def _controller_name(cls, v: str) -> str:
        return _one_of(v, ("none", *CONTROLLERS.names()))

    def controls(self) -> list[str]:
        """The configured control names, in order ("none" → [])."""
        names = [self.control] if isinstance(self.control, str) else list(self.control)
        return [n for n in names if n != "none"]

    @model_validator(mode="after")
    def _params(self) -> AlgorithmConfig:
        for spec, params, where in (
            (ADVANTAGES.get(self.advantage), self.advantage_params, "algorithm.advantage_params"),
            (POLICY_LOSSES.get(self.loss), self.loss_params, "algorithm.loss_params"),
        ):
            spec.resolve(params, where=where)
            missing = [k for k in spec.required if k not in params]
            if missing:
                needs = ", ".join(missing)
                raise ValueError(f"{where}: {spec.family} {spec.name!r} needs {needs} (no upstream default)")
        configure_controls(
            self.controls(), self.control_params, stage=self.control_stage, where="algorithm.control_params"
        )
        if self.controller != "none":
            spec = CONTROLLERS.get(self.controller)
            spec.resolve(self.controller_params, where="algorithm.controller_params")
            driven = [n for n in self.controls() if n in spec.controls]
            if spec.controls == ("entropy_bonus",):
                if self.entropy_bonus == 0:
                    raise ValueError(
                        f"algorithm.controller: {self.controller!r} needs algorithm.entropy_bonus > 0 (its start value)"
                    )
            elif not driven:
                raise ValueError(
                    f"algorithm.controller: {self.controller!r} needs algorithm.control {' or '.join(spec.controls)}"
                )
            missing = [k for k in spec.required if k not in self.controller_params]
            if missing:
                raise ValueError(
                    f"algorithm.controller_params: controller {self.controller!r} needs {', '.join(missing)}"
                )
        return self


class OptimConfig(_Section):
    """`optim:` AdamW and the learning-rate schedule (stepped once per training step).

    Attributes:
        lr: peak learning rate. weight_decay, betas, eps: AdamW. warmup_steps: linear warm-up from 0.
        schedule: after warm-up, "constant", "linear" or "cosine", both from lr down to min_lr_ratio·lr at
            train.steps.
    """

    lr: float = Field(default=1e-6, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(default=1e-8, gt=0)
    warmup_steps: int = Field(default=0, ge=0)
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1)


class TrainConfig(_Section):
    """`train:` the budget and batch geometry.

    Attributes:
        steps: training steps (one rollout batch each). prompts_per_step × group_size sequences per step.
        mini_batches: optimizer updates per PPO epoch (groups are split by index modulo mini_batches).
        ppo_epochs: passes over the rollout batch. micro_batch_size: sequences per forward/backward
            (null = the whole mini-batch); the loss uses the global token count, so the update does not
            depend on it. grad_clip: max global grad norm (null = no clipping). seed: everything random.
        device: "auto" (GPU when present), "cpu" or "cuda". stats_batch_size: sequences per no-grad
            statistics forward (null = micro_batch_size or all).
        max_nonfinite: consecutive non-finite updates tolerated before stopping (TrainingError).
        threads: torch intra-op threads of each process: a number, or "auto" = 1 on CPU (measured: on
            small models a second thread mostly waits, and beside any other busy process a step took 17x
            longer; docs/training.md, "Threads") and torch's own default on a GPU. Logged in run_info.json.
        fuse_old_stats: when nothing reads the old-policy statistics before the loss (control "none",
            no whole-batch Clip-Cov / KL-Cov selection, no probe this step, no dropout), the rows of
            the first mini-batch take them from their own update forward (detached; the weights have
            not moved yet) and the separate no-grad forward runs on the other rows only (on none with
            one mini-batch); the loss and every metric are the same. false = always the separate forward.
        distributed: with several processes (`accelerate launch`), "ddp" (every process holds the whole
            model; gradients summed during backward) or "fsdp" (PyTorch FSDP2: parameters, gradients and
            optimizer states sharded per decoder layer; generation, statistics, evaluation and checkpoints
            gather whole parameters; no probes). One process ignores it.
        share_prompts: the loss forward and the old-policy statistics run each distinct prompt of a
            micro-batch through the model once (a KV cache expanded to its samples, gradients included)
            and only the response positions per sample: the same numbers up to float rounding, and much
            less work when prompts are long and responses short (docs/training.md, "Prompt sharing").
            Off by default; falls back to the plain forward for a model without a reorderable cache.
    """

    steps: int = Field(default=100, ge=1)
    prompts_per_step: int = Field(default=8, ge=1)
    group_size: int = Field(default=8, ge=1)
    mini_batches: int = Field(default=1, ge=1)
    ppo_epochs: int = Field(default=1, ge=1)
    micro_batch_size: int | None = Field(default=None, ge=1)
    stats_batch_size: int | None = Field(default=None, ge=1)
    grad_clip: float | None = Field(default=1.0, gt=0)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_nonfinite: int = Field(default=3, ge=1)
    threads: int | Literal["auto"] = "auto"
    fuse_old_stats: bool = True
    distributed: Literal["ddp", "fsdp"] = "ddp"
    share_prompts: bool = False

    @field_validator("threads", mode="before")
    @classmethod
    def _threads(cls, v: Any) -> Any:
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return v
        raise ValueError(f"must be an integer >= 1 or 'auto', got {v!r}")


class CheckpointConfig(_Section):
    """`checkpoint:` every K steps (0 = only at the end), keep the newest `keep_last`."""

    every: int = Field(default=0, ge=0)
    keep_last: int = Field(default=2, ge=1)
    save_final: bool = True


class LoggingConfig(_Section):
    """`logging:` sinks. metrics.jsonl is always written.

    Attributes:
        tensorboard: scalars under run_dir/tensorboard. wandb: also log to Weights & Biases (needs the
        package). rollouts_every: write rollouts/step_N.jsonl.gz every K steps (0 = never).
    """

    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "rlentropy"
    rollouts_every: int = Field(default=0, ge=0)


class EvalConfig(_Section):
    """`eval:` evaluation on the task's eval split (pass@k) during and after training.

    Attributes:
        every: evaluate every K steps (0 = never during training). at_end: evaluate the final policy.
        n: samples per prompt. max_prompts: first N eval prompts (null = all). temperature / top_p /
        max_new_tokens: sampling (null max_new_tokens = rollout.max_new_tokens).
    """

    every: int = Field(default=0, ge=0)
    at_end: bool = False
    n: int = Field(default=8, ge=1)
    max_prompts: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, gt=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_new_tokens: int | None = Field(default=None, ge=1)


class DemoConfig(_Section):
    """`demo:` read by `rlentropy demo` only; the trainer ignores it.

    Attributes:
        methods: method name → the `key=value` overrides that turn this config into that method's run
            (the method switch and its parameters), in the order the demo runs and reports them.
            Empty = the built-in switches of `rlentropy.studies.demo.METHODS` with library defaults.
        rule: how those parameters were chosen, in words (printed in the demo's summary.md).
    """

    methods: dict[str, list[str]] = Field(default_factory=dict)
    rule: str = ""


class StudyConfig(_Section):
    """`study:` read by `rlentropy study` (and `rlentropy demo --study long`); the trainer ignores it.

    Attributes:
        methods: method name → the `key=value` overrides that turn this config into that method's run,
            in the order the study runs and reports them (empty: `demo.methods`).
        seeds: seeds per method (0, 1, …; `--seeds` overrides).
        baseline: the method every paired difference is taken against.
        rule: how the method parameters were chosen, in words (printed in summary.md).
        title: the summary's and report's title.
        ema: EMA smoothing of the report's curves (0 = none; stated on the axis).
    """

    methods: dict[str, list[str]] = Field(default_factory=dict)
    seeds: int = Field(default=3, ge=1)
    baseline: str = "grpo"
    rule: str = ""
    title: str = ""
    ema: float = Field(default=0.0, ge=0, lt=1)


class RunConfig(_Section):
    """The whole training config (one YAML file). `run_dir` defaults to runs/<name>.

    `plugins`: Python files or module names imported before the rest of the config is validated, so
    that the tasks, rewards and methods they register can be named in it (`rlentropy.runs.plugins`).
    """

    name: str = "run"
    run_dir: str | None = None
    plugins: list[str] = Field(default_factory=list)
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    probes: ProbesConfig = Field(default_factory=ProbesConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    demo: DemoConfig = Field(default_factory=DemoConfig)
    study: StudyConfig = Field(default_factory=StudyConfig)

    @model_validator(mode="after")
    def _cross_checks(self) -> RunConfig:
        if self.train.distributed == "fsdp" and self.probes.every:
            raise ValueError(
                "probes.every: the probes need whole parameters on every process; use train.distributed=ddp"
            )
        if self.train.distributed == "fsdp" and self.model.load_in_4bit:
            raise ValueError("model.load_in_4bit: 4-bit base weights cannot be sharded; use train.distributed=ddp")
        if self.train.mini_batches > self.train.prompts_per_step:
            raise ValueError(
                "train.mini_batches: must be <= train.prompts_per_step (groups are split across mini-batches)"
            )
        return self

    def resolved_run_dir(self) -> Path:
        """`run_dir`, or runs/<name> when unset."""
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.name


# ---------------------------------------------------------------------------------------------------
# Errors: pydantic's multi-line reports → one line naming the key and what is allowed.


def _section_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    cur: Any = model
    for part in loc:
        if not (isinstance(cur, type) and issubclass(cur, BaseModel)):
            return None
        field = cur.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        cur = ann
        if get_origin(ann) is not None:  # Optional[Section] and the like
            subs = [a for a in get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)]
            cur = subs[0] if subs else None
    return cur if isinstance(cur, type) and issubclass(cur, BaseModel) else None


def _literal_values(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    parent = _section_at(model, loc[:-1]) if len(loc) > 1 else model
    if parent is None:
        return None
    field = parent.model_fields.get(str(loc[-1]))
    if field is None:
        return None
    ann = field.annotation
    if get_origin(ann) is Literal:
        return [str(v) for v in get_args(ann)]
    return None


def format_validation_error(err: ValidationError, root: type[BaseModel] = RunConfig, prefix: str = "") -> str:
    """One line for the first problem in `err`: `<key>: <what is wrong>; allowed: ...`."""
    e = err.errors()[0]
    loc = tuple(e["loc"])
    key = prefix + ".".join(str(p) for p in loc) if loc else (prefix.rstrip(".") or "config")
    kind = e["type"]
    given = e.get("input")
    if kind == "extra_forbidden":
        section = _section_at(root, loc[:-1]) if len(loc) > 1 else root
        allowed = ", ".join(section.model_fields) if section is not None else "?"
        return f"{key}: unknown key; allowed keys here: {allowed}"
    if kind == "literal_error":
        values = _literal_values(root, loc) or []
        return f"{key}: {given!r} is not allowed; allowed: {', '.join(values)}"
    if kind == "value_error":
        msg = str(e.get("msg", "")).removeprefix("Value error, ")
        return msg if ":" in msg.split(" ")[0] else f"{key}: {msg}"
    return f"{key}: {e['msg'].lower()} (got {given!r})"


# ---------------------------------------------------------------------------------------------------
# Loading.


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-5` as a float (YAML 1.2), not as the string YAML 1.1 makes of it."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    """`yaml.safe_load` with YAML 1.2 floats (`1e-5` is a number)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def parse_override(item: str) -> tuple[list[str], Any]:
    """`"a.b=c"` → (["a", "b"], yaml-parsed c). A value is a YAML scalar or flow collection."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key.sub=value")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not key.strip() or any(not p for p in parts):
        raise ConfigError(f"override {item!r}: empty key")
    try:
        value = yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {key}: cannot parse value {raw!r} as YAML") from err
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each `a.b=c` into the nested dict `data` (in place) and return it."""
    for item in overrides:
        parts, value = parse_override(item)
        cur = data
        for i, p in enumerate(parts[:-1]):
            nxt = cur.get(p)
            if nxt is None:
                nxt = cur[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {'.'.join(parts)}: {'.'.join(parts[: i + 1])} is not a section")
            cur = nxt
        cur[parts[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping top level is a ConfigError."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"config file {str(p)!r} is a directory, not a YAML file (e.g. configs/demo_countdown.yaml)")
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {str(p)!r}{where}: invalid YAML") from err
    if data is None or data == {}:
        raise ConfigError(
            f"config file {str(p)!r} is empty: it needs at least the sections model, data and train "
            "(see configs/demo_countdown.yaml)"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r}: the top level must be a mapping of sections")
    return data


def config_from_dict(data: dict[str, Any], *, base_dir: str | Path | None = None) -> RunConfig:
    """Validate a nested dict into a `RunConfig` (ConfigError with one line on failure).

    The `plugins:` entries are imported first (files looked up in the working directory, then in
    `base_dir`, the config file's directory) and recorded resolved, so the names they register
    validate and a run's config.yaml finds them again.
    """
    if isinstance(data, dict) and data.get("plugins") is not None:
        data = {**data, "plugins": load_plugins(data["plugins"], base_dir=base_dir)}
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """YAML file (or defaults when None) + overrides → validated `RunConfig`."""
    data = read_yaml(path) if path is not None else {}
    base_dir = Path(path).resolve().parent if path is not None else None
    return config_from_dict(apply_overrides(data, list(overrides or [])), base_dir=base_dir)


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML (every field, defaults included)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
