"""One registry per method family; one registered entry per method.

A method is a pure function registered next to its definition with a decorator that declares what it
reads and when it runs::

    @CONTROLS.register("clip_b", kind="mask", inputs=("s", "advantages", "mask"), stage="old",
                       paper="arXiv 2602.03392", summary="drop entropy-cutting A<0 tokens")
    def clip_b_mask(s, advantages, mask, *, mu=2.5, sides="neg_low"): ...

* `inputs` are the tensors (and runtime context) the caller hands over, by parameter name, from the
  vocabulary `INPUTS` below: any `TokenStats` field, advantages, the mask, rewards, group ids, old
  log-probs, the aggregation context, a generator.
* Every other keyword parameter is a user parameter. Its default is the one written in the function's
  signature — the single place an upstream default is written; `spec.defaults` is read from it.
* `stage` says when the method runs: "old" (once per step, on the old policy's statistics of the
  whole batch, before the update) or "current" (per micro-batch, on the statistics of the training
  forward). `stages` lists the stages it may be moved to by configuration; the first is the default.

The trainer, the TRL adapter, the verl adapter, the config validation, the docs table and
`rlentropy methods` all read these entries; nothing else lists method names or defaults. An unknown
name raises `UnknownNameError` (a `ValueError` and a `ConfigError`) listing the valid names; an unknown
parameter raises `ValueError` naming it and listing the allowed ones.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar, Generic, TypeVar

from rlentropy.errors import ConfigError
from rlentropy.tokenstats import STAT_FIELDS

TOKEN_STATS_FIELDS: tuple[str, ...] = STAT_FIELDS
"""The per-token statistics a method may read (`rlentropy.tokenstats.TokenStats` fields, [B, T])."""

AGGREGATION_CONTEXT: tuple[str, ...] = ("mode", "global_tokens", "global_seqs", "max_len")
"""Runtime keywords of the loss aggregation (`aggregate_loss`), supplied by the caller, never configured."""

INPUTS: dict[str, str] = {
    "logp": "[B, T] log p of the sampled token (stage old: old policy; current: training forward, with grad)",
    "entropy": "[B, T] entropy H of the next-token distribution (same policy as logp)",
    "s": "[B, T] S = p(H + log p), the entropy discriminator of the sampled token",
    "s_bar": "[B, T] E_p[S], the policy-weighted baseline of S",
    "sum_p2": "[B, T] sum_i p_i^2",
    "old_logp": "[B, T] log p under the policy that sampled the batch (losses, stage current)",
    "advantages": "[B, T] per-token advantages (0 on padding)",
    "mask": "[B, T] the loss mask so far (response mask after earlier controls)",
    "rewards": "[B] scalar reward of each response",
    "group_ids": "[B] integer prompt id of each response",
    "generator": "torch.Generator seeded per step (and micro-batch): the only randomness",
    "selected": "[B, T] bool, a whole-batch token selection computed once per step (clip_cov / kl_cov)",
    "mode": "the aggregation mode of the policy loss",
    "global_tokens": "valid tokens of the whole batch (aggregation denominator)",
    "global_seqs": "sequences with a valid token in the whole batch (aggregation denominator)",
    "max_len": "constant length of seq-mean-token-sum-norm",
}
STAGES: tuple[str, ...] = ("old", "current")
WHERE: tuple[str, ...] = ("TRL", "verl", "Trinity-RFT")


class UnknownNameError(ConfigError, ValueError):
    """A registry lookup with a name that is not registered. The message lists the valid names."""


@dataclass(frozen=True)
class MethodSpec:
    """A registered method (what every family shares).

    Attributes:
        name: registry name (the config value).
        fn: the function (or, for controllers, the class).
        inputs: names from `INPUTS` the caller supplies, by parameter name.
        stage: default stage ("old" or "current"); `stages`: every stage it may run at (default: `stage`).
        paper: where the method comes from (arXiv id and title / repository).
        summary: what it does, in one line (the docs table and `rlentropy methods`).
        changes: what it changes: "advantage", "loss", "mask", "coefficient" or "loss term".
        also_in: which of TRL, verl, Trinity-RFT also ship it.
        notes: where we chose a detail a paper leaves open, or differ from upstream.
    """

    family: ClassVar[str] = "method"
    name: str
    fn: Callable[..., Any]
    inputs: tuple[str, ...] = ()
    stage: str = "old"
    stages: tuple[str, ...] = ()
    paper: str = ""
    summary: str = ""
    changes: str = ""
    also_in: tuple[str, ...] = ()
    notes: str = ""

    def __post_init__(self) -> None:
        for name in self.inputs:
            if name not in INPUTS:
                raise ValueError(f"{self.family} {self.name!r}: unknown input {name!r}; known: {', '.join(INPUTS)}")
        if not self.stages:
            object.__setattr__(self, "stages", (self.stage,))
        for st in (self.stage, *self.stages):
            if st not in STAGES:
                raise ValueError(f"{self.family} {self.name!r}: stage must be one of {STAGES}, got {st!r}")
        for where in self.also_in:
            if where not in WHERE:
                raise ValueError(f"{self.family} {self.name!r}: also_in must name {WHERE}, got {where!r}")
        params = self._signature_params()
        missing = [name for name in self.inputs if name not in params]
        if missing:
            raise ValueError(f"{self.family} {self.name!r}: inputs {missing} are not parameters of {self.fn!r}")

    def _signature_params(self) -> dict[str, inspect.Parameter]:
        target = self.fn.__init__ if inspect.isclass(self.fn) else self.fn
        params = dict(inspect.signature(target).parameters)
        params.pop("self", None)
        return {k: p for k, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}

    @cached_property
    def defaults(self) -> dict[str, Any]:
        """User parameters with their defaults, read from the function's signature."""
        return {
            k: p.default
            for k, p in self._signature_params().items()
            if k not in self.inputs and p.default is not inspect.Parameter.empty
        }

    @cached_property
    def required(self) -> tuple[str, ...]:
        """User parameters without a default (they must be configured)."""
        return tuple(
            k
            for k, p in self._signature_params().items()
            if k not in self.inputs and p.default is inspect.Parameter.empty
        )

    @property
    def parameters(self) -> tuple[str, ...]:
        """Every user parameter (required first, then those with defaults)."""
        return self.required + tuple(self.defaults)

    def resolve(self, params: Mapping[str, Any] | None, *, where: str = "params") -> dict[str, Any]:
        """Defaults updated with `params`; an unknown key raises ValueError naming it and the allowed ones.

        Args:
            params: user parameters (from a config).
            where: how the caller names the parameter dict in messages (e.g. "algorithm.control_params").
        """
        given = dict(params or {})
        allowed = self.parameters
        for key in given:
            if key not in allowed:
                listed = ", ".join(allowed) if allowed else "(none)"
                raise ValueError(
                    f"{where}: unknown parameter {key!r} of {self.family} {self.name!r}; allowed: {listed}"
                )
        return {**self.defaults, **given}

    def call(self, available: Mapping[str, Any], params: Mapping[str, Any]) -> Any:
        """Call `fn` with its declared inputs taken from `available` (missing optional ones left out)."""
        kwargs = {k: available[k] for k in self.inputs if k in available and available[k] is not None}
        return self.fn(**kwargs, **params)

    def reads_stats(self) -> tuple[str, ...]:
        """The TokenStats fields this method reads."""
        return tuple(k for k in self.inputs if k in TOKEN_STATS_FIELDS)


S = TypeVar("S", bound=MethodSpec)


def defined_at(obj: Any) -> tuple[str | None, str | None]:
    """(source file, qualified name) of a function or class."""
    code = getattr(obj, "__code__", None)
    if code is not None:
        return code.co_filename, getattr(obj, "__qualname__", None)
    try:
        return inspect.getfile(obj), getattr(obj, "__qualname__", None)
    except (TypeError, OSError):
        return None, None


def same_definition(a: Any, b: Any) -> bool:
    """True when `a` and `b` come from the same source definition (one file imported twice)."""
    where = defined_at(a)
    return where[0] is not None and where == defined_at(b)


class Registry(Generic[S]):
    """A name → spec map for one family of methods, in registration order.

    Args:
        family: what the entries are, used in error messages (e.g. "policy loss").
        spec_cls: the spec class `register` builds.
    """

    def __init__(self, family: str, spec_cls: type[S] = MethodSpec) -> None:  # type: ignore[assignment]
        self.family = family
        self.spec_cls = spec_cls
        self._entries: dict[str, S] = {}

    def add(self, name: str, entry: S) -> S:
        """Register `entry` under `name`; registering a taken name raises ValueError, unless the new entry
        is the same definition imported again (the same file and qualified name: a plugin imported both
        by a config's `plugins:` and by the user's own `import`), which replaces it."""
        old = self._entries.get(name)
        if old is not None and old is not entry and not same_definition(old.fn, entry.fn):
            raise ValueError(f"{self.family} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def register(self, name: str, **fields: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: register the decorated function (or class) as `spec_cls(name, fn, **fields)`.

        Returns the function unchanged, so it stays importable and callable as a plain function.
        """

        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.add(name, self.spec_cls(name=name, fn=fn, **fields))
            return fn

        return decorator

    def remove(self, name: str) -> None:
        """Unregister `name` (tests register temporary methods and take them out again)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> S:
        """The entry registered under `name`.

        Raises:
            UnknownNameError: `name` is not registered; the message lists the valid names.
        """
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            valid = ", ".join(sorted(self._entries))
            raise UnknownNameError(f"unknown {self.family} {name!r}; valid names: {valid}") from None

    def names(self) -> tuple[str, ...]:
        """All registered names, in registration order."""
        return tuple(self._entries)

    def specs(self) -> tuple[S, ...]:
        """All entries, in registration order."""
        return tuple(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True)
class AdvantageSpec(MethodSpec):
    """An advantage estimator: `fn(rewards [B], group_ids [B], <declared inputs>, **params)` →
    `(advantages [B] or [B, T], metrics)`. Runs at stage "old" (once per step, whole batch)."""

    family: ClassVar[str] = "advantage estimator"
    changes: str = "advantage"


@dataclass(frozen=True)
class PolicyLossSpec(MethodSpec):
    """A policy loss: `fn(logp, old_logp, advantages, mask, **params)` → `(loss_mat [B, T], metrics)`.

    Attributes:
        agg_mode: the aggregation the method requires (GSPO: seq-mean-token-mean), or None when the
            trainer's `aggregation` applies.
        default_agg_mode: the aggregation its reference recipes use.
        select: for clip_cov / kl_cov, the token-selection function, so a caller can select once over
            the whole batch and pass `selected=` slices to each micro-batch (global selection).
        needs_generator: the loss draws random numbers (pass `generator=` or `selected=`).
    """

    family: ClassVar[str] = "policy loss"
    stage: str = "current"
    changes: str = "loss"
    agg_mode: str | None = None
    default_agg_mode: str = "token-mean"
    select: Callable[..., Any] | None = None
    needs_generator: bool = False


CONTROL_KINDS: tuple[str, ...] = ("mask", "advantage", "loss_term")


@dataclass(frozen=True)
class ControlSpec(MethodSpec):
    """An entropy control.

    Kinds: "mask" returns `(new_mask [B, T], metrics)` (a subset of the mask: dropped tokens leave the
    loss); "advantage" returns `(new_advantages [B, T], metrics)`; "loss_term" returns `(term [], metrics)`
    to ADD to the loss (computed on the current policy, with grad).

    Attributes:
        kind: one of `CONTROL_KINDS`.
        off_when: parameter values at which the control is a no-op and is skipped (entropy bonus with
            coef 0), so it costs nothing and logs nothing.
        log_as: metric key → the name a trainer logs it under (None: not logged); other keys are
            logged as `control/<key>`.
    """

    family: ClassVar[str] = "entropy control"
    kind: str = "mask"
    off_when: dict[str, Any] = field(default_factory=dict)
    log_as: dict[str, str | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kind not in CONTROL_KINDS:
            raise ValueError(f"entropy control {self.name!r}: kind must be one of {CONTROL_KINDS}, got {self.kind!r}")
        if not self.changes:
            object.__setattr__(self, "changes", {"mask": "mask", "advantage": "advantage"}.get(self.kind, "loss term"))


@dataclass(frozen=True)
class ControllerSpec(MethodSpec):
    """An adaptive controller: a class with `value` (the knob for this step), `update(entropy)` once per
    step, `metrics()` and `state_dict()` / `load_state_dict()`.

    Attributes:
        drives: the parameter of a control it sets every step (e.g. "mu", "coef").
        controls: the controls it can drive (the run's configured control must be one of them).
        init_param: its constructor parameter that starts from the driven control's configured value.
    """

    family: ClassVar[str] = "controller"
    changes: str = "coefficient"
    drives: str = ""
    controls: tuple[str, ...] = ()
    init_param: str = ""
