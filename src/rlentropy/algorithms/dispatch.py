"""Run configured methods through the registries: the one dispatch every caller shares.

Our trainer, the TRL adapter and the verl adapter all turn a configuration into `Active` entries
(`configure_controls`) and run them with `run_controls(active, stage, inputs)`. Nothing here knows a
method by name: a control's `kind` says what its result replaces (the loss mask, the advantages) or
adds (a loss term), its `inputs` say what it reads from `inputs`, its `stage` when it runs.

Pure tensor code: no config objects, no I/O, no `.item()`; metrics stay 0-d tensors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rlentropy.algorithms.controllers import CONTROLLERS
from rlentropy.algorithms.controls import CONTROLS
from rlentropy.algorithms.registry import ControlSpec

__all__ = [
    "Active",
    "ControlOutcome",
    "configure_controls",
    "control_names",
    "drivable_parameters",
    "logged_metrics",
    "run_controls",
]


@dataclass(frozen=True)
class Active:
    """A configured control: its spec, its resolved parameters and the stage it runs at.

    Attributes:
        spec: the registry entry.
        params: defaults updated with the configured parameters.
        stage: "old" or "current" (one of `spec.stages`).
    """

    spec: ControlSpec
    params: dict[str, Any]
    stage: str

    @property
    def name(self) -> str:
        return self.spec.name

    def enabled(self) -> bool:
        """False when a parameter sits at the value that makes the control a no-op (`spec.off_when`)."""
        return not any(self.params.get(k) == v for k, v in self.spec.off_when.items())

    def with_params(self, **updates: Any) -> Active:
        """A copy with some parameters replaced (a controller's value for this step)."""
        return Active(self.spec, {**self.params, **updates}, self.stage)


def control_names() -> tuple[str, ...]:
    """Every configurable control name: "none" and the registered controls, in registration order."""
    return ("none", *CONTROLS.names())


def drivable_parameters(control: str) -> tuple[str, ...]:
    """The parameters of `control` that some registered controller can drive (logged every step)."""
    return tuple(dict.fromkeys(c.drives for c in CONTROLLERS.specs() if control in c.controls))


def configure_controls(
    names: str | Sequence[str],
    params: Mapping[str, Any] | None = None,
    *,
    stage: str | None = None,
    where: str = "control_params",
) -> list[Active]:
    """Resolve control names and parameters into `Active` entries.

    Args:
        names: one control name, "none", or a list of names (applied in order).
        params: the parameters of the single control, or (several controls) a mapping name → params.
        stage: force every control to this stage (must be one of each control's `stages`); None = defaults.
        where: how the caller names `params` in error messages.

    Raises:
        UnknownNameError / ValueError: unknown name, unknown parameter, or a stage the control cannot run at.
    """
    listed = [names] if isinstance(names, str) else list(names)
    listed = [n for n in listed if n != "none"]
    given = dict(params or {})
    if not listed and given:
        raise ValueError(f"{where}: {', '.join(map(str, given))} given, but no control is configured (control none)")
    if len(listed) > 1:
        unknown = [k for k in given if k not in listed]
        if unknown:
            raise ValueError(
                f"{where}: with several controls, give parameters per control name; {unknown[0]!r} "
                f"is not one of {', '.join(listed)}"
            )
    out = []
    for name in listed:
        spec = CONTROLS.get(name)
        own = given.get(name, {}) if len(listed) > 1 else given
        if not isinstance(own, Mapping):
            raise ValueError(f"{where}.{name}: must be a mapping of parameters, got {own!r}")
        resolved = spec.resolve(own, where=where if len(listed) == 1 else f"{where}.{name}")
        missing = [k for k in spec.required if k not in resolved]
        if missing:
            raise ValueError(f"{where}: control {name!r} needs {', '.join(missing)}")
        st = stage or spec.stage
        if st not in spec.stages:
            raise ValueError(f"control {name!r} runs at stage {' or '.join(spec.stages)}, not {st!r}")
        out.append(Active(spec, resolved, st))
    return out


@dataclass
class ControlOutcome:
    """What running the controls of one stage produced.

    Attributes:
        mask: [B, T] the loss mask after every mask control (the input mask when none ran).
        advantages: [B, T] the advantages after every advantage control.
        terms: loss terms to add to the loss (kind "loss_term"), each [] with grad.
        metrics: per control name, its metrics (0-d tensors, unprefixed).
    """

    mask: torch.Tensor
    advantages: torch.Tensor
    terms: list[torch.Tensor] = field(default_factory=list)
    metrics: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


def run_controls(active: Sequence[Active], stage: str, inputs: Mapping[str, Any]) -> ControlOutcome:
    """Run the enabled controls of `stage` in order; each sees the mask and advantages left by the previous.

    Args:
        active: configured controls (those of other stages are skipped).
        stage: "old" or "current".
        inputs: what the controls may read (`rlentropy.algorithms.registry.INPUTS`); must hold at least
            "mask" and "advantages" ([B, T]).

    Returns:
        `ControlOutcome`.
    """
    avail = dict(inputs)
    out = ControlOutcome(mask=avail["mask"], advantages=avail["advantages"])
    for a in active:
        if a.stage != stage or not a.enabled():
            continue
        result, metrics = a.spec.call(avail, a.params)
        kind = a.spec.kind
        if kind == "mask":
            avail["mask"] = out.mask = result.to(out.mask.dtype)  # [B, T]
        elif kind == "advantage":
            avail["advantages"] = out.advantages = result  # [B, T]
        else:
            out.terms.append(result)  # []
        out.metrics[a.name] = dict(metrics)
    return out


_DROP_NAMES = {
    "frac_dropped": "frac_removed",
    "frac_dropped_pos_adv": "frac_removed_pos",
    "frac_dropped_neg_adv": "frac_removed_neg",
    "tokens_dropped": "tokens_removed",
}


def logged_metrics(
    active: Sequence[Active], metrics: Mapping[str, Mapping[str, torch.Tensor]], prefix: str = "control/"
) -> dict[str, torch.Tensor]:
    """The controls' metrics under the names a trainer logs: `<prefix><key>` (drop fractions as
    `frac_removed*`), or the control's `log_as` name. Later controls overwrite shared keys."""
    specs = {a.name: a.spec for a in active}
    out: dict[str, torch.Tensor] = {}
    for name, values in metrics.items():
        log_as = specs[name].log_as if name in specs else {}
        for key, value in values.items():
            target = log_as.get(key, f"{prefix}{_DROP_NAMES.get(key, key)}")
            if target is not None:
                out[target] = value
    return out


def dummy_inputs(group: int = 2) -> dict[str, Any]:
    """A tiny batch — one prompt group of `group` responses × 3 tokens — with every input of `INPUTS`, to
    call methods once and surface bad parameters (use the run's group size: some parameters, like
    passk_training's k, are bounded by it)."""
    g = torch.Generator().manual_seed(0)
    b = max(2, int(group))
    logp = -torch.rand(b, 3, generator=g) - 0.1  # [b, 3]
    mask = torch.ones(b, 3)  # [b, 3]
    s = torch.rand(b, 3, generator=g)  # [b, 3]
    rewards = (torch.arange(b) % 2 == 0).float()  # [b] 1, 0, 1, ...
    return {
        "logp": logp,
        "entropy": s + 1,
        "s": s,
        "s_bar": s * 0.5,
        "sum_p2": s * 0.1,
        "mask": mask,
        "advantages": (2 * rewards - 1)[:, None] * mask,
        "rewards": rewards,
        "group_ids": torch.zeros(b, dtype=torch.long),
        "old_logp": logp.detach(),
        "generator": g,
        "mode": "token-mean",
        "global_tokens": None,
        "global_seqs": None,
        "max_len": None,
    }


def check_values(spec: Any, params: Mapping[str, Any], where: str, *, group: int = 2) -> None:
    """Call a method once on `dummy_inputs()` so a bad parameter value raises before any work.

    Raises:
        ValueError: `<where>: <the method's message>` (messages name the parameter).
    """
    try:
        with torch.no_grad():
            spec.call(dummy_inputs(group), params)
    except (TypeError, ValueError) as err:
        msg = str(err)
        raise ValueError(msg if msg.startswith(where) else f"{where}: {msg}") from None
