"""The `algorithm:` section turned into registry entries: what the step runs, and nothing by name.

`MethodSet.from_config(cfg.algorithm)` resolves the advantage estimator, the policy loss, the
controls (the configured ones, then the entropy bonus when it is on) and the controller from their
registries, with their parameters checked against each method's signature. The trainer asks it
what to compute (`reads_old_stats`), calls it at each stage (`advantages`, `old_stage`,
`current_stage`, `policy_loss`) and once per step after the update (`after_step`). A new method
registered in `rlentropy.algorithms` runs here with no edit.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch

from rlentropy.algorithms import ADVANTAGES, CONTROLLERS, POLICY_LOSSES, TOKEN_STATS_FIELDS
from rlentropy.algorithms.dispatch import (
    Active,
    ControlOutcome,
    check_values,
    configure_controls,
    drivable_parameters,
    dummy_inputs,
    run_controls,
)
from rlentropy.algorithms.registry import AdvantageSpec, ControllerSpec, PolicyLossSpec
from rlentropy.errors import ConfigError


def _config_error(where: str, err: Exception) -> ConfigError:
    msg = str(err)
    return ConfigError(msg if msg.startswith(where) else f"{where}: {msg}")


@dataclass
class MethodSet:
    """Everything the `algorithm:` section selects, resolved.

    Attributes:
        advantage / advantage_params: the estimator and its resolved parameters.
        loss / loss_params: the policy loss and its resolved parameters; `agg_mode` the aggregation used.
        controls: the active controls in order (the entropy bonus last).
        batch_select: run the loss's token selection once per step over the whole batch.
        controller / controller_spec: the adaptive controller (or None) and the index in `controls` of
            the control whose `controller_spec.drives` parameter it sets every step.
    """

    advantage: AdvantageSpec
    advantage_params: dict[str, Any]
    loss: PolicyLossSpec
    loss_params: dict[str, Any]
    agg_mode: str
    controls: list[Active] = field(default_factory=list)
    batch_select: bool = False
    controller: Any = None
    controller_spec: ControllerSpec | None = None
    driven: int | None = None

    # ------------------------------------------------------------------ building
    @classmethod
    def from_config(cls, a: Any) -> MethodSet:
        """Resolve an `AlgorithmConfig` (names and parameters were validated with it)."""
        adv = ADVANTAGES.get(a.advantage)
        loss = POLICY_LOSSES.get(a.loss)
        try:
            controls = configure_controls(
                a.controls(), a.control_params, stage=a.control_stage, where="algorithm.control_params"
            )
        except ValueError as err:
            raise _config_error("algorithm.control_params", err) from None
        if a.entropy_bonus > 0 or (
            a.controller != "none" and CONTROLLERS.get(a.controller).controls == ("entropy_bonus",)
        ):
            if "entropy_bonus" not in a.controls():
                controls += configure_controls("entropy_bonus", {"coef": float(a.entropy_bonus)})
        out = cls(
            advantage=adv,
            advantage_params=adv.resolve(a.advantage_params, where="algorithm.advantage_params"),
            loss=loss,
            loss_params=loss.resolve(a.loss_params, where="algorithm.loss_params"),
            agg_mode=loss.agg_mode or a.aggregation,
            controls=controls,
            batch_select=loss.select is not None and a.cov_selection == "batch",
        )
        if a.controller != "none":
            out._attach_controller(CONTROLLERS.get(a.controller), dict(a.controller_params))
        return out

    def _attach_controller(self, spec: ControllerSpec, params: dict[str, Any]) -> None:
        idx = next(i for i, c in enumerate(self.controls) if c.name in spec.controls)
        if spec.init_param and spec.init_param not in params:
            params[spec.init_param] = self.controls[idx].params[spec.drives]
        try:
            self.controller = spec.fn(**spec.resolve(params, where="algorithm.controller_params"))
        except (TypeError, ValueError) as err:
            raise _config_error("algorithm.controller_params", err) from None
        self.controller_spec, self.driven = spec, idx

    # ------------------------------------------------------------------ what the step needs
    def step_controls(self) -> list[Active]:
        """The controls with this step's controller value set on the driven parameter."""
        if self.controller is None or self.driven is None or self.controller_spec is None:
            return self.controls
        out = list(self.controls)
        out[self.driven] = out[self.driven].with_params(**{self.controller_spec.drives: float(self.controller.value)})
        return out

    def reads_old_stats(self) -> tuple[str, ...]:
        """TokenStats fields something reads before the loss (the advantage, an old-stage control, a
        whole-batch selection). Empty: the old-policy statistics may come from the update forward."""
        fields = set(self.advantage.reads_stats())
        for c in self.controls:
            if c.stage == "old":
                fields |= set(c.spec.reads_stats())
        if self.batch_select:
            fields.add("logp")
        return tuple(f for f in TOKEN_STATS_FIELDS if f in fields)

    def has_stage(self, stage: str) -> bool:
        return any(c.stage == stage and c.enabled() for c in self.step_controls())

    # ------------------------------------------------------------------ running
    def advantages(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The estimator on the whole batch: ([B] or [B, T] advantages, metrics)."""
        return self.advantage.call(inputs, self.advantage_params)

    def old_stage(self, inputs: dict[str, Any]) -> ControlOutcome:
        """Old-stage controls on the whole (gathered) batch."""
        return run_controls(self.step_controls(), "old", inputs)

    def current_stage(self, inputs: dict[str, Any]) -> ControlOutcome:
        """Current-stage controls on one micro-batch (mask / advantage edits and loss terms)."""
        return run_controls(self.step_controls(), "current", inputs)

    def select(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss's token selection over the whole batch (`batch_select`)."""
        assert self.loss.select is not None
        wanted = set(inspect.signature(self.loss.select).parameters)
        params = {k: v for k, v in self.loss_params.items() if k in wanted}
        avail = {k: inputs[k] for k in ("logp", "advantages", "mask", "generator") if k in wanted and k in inputs}
        return self.loss.select(**avail, **params)

    def policy_loss(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The per-token policy loss of one micro-batch: ([b, T] loss matrix, metrics)."""
        return self.loss.call(inputs, self.loss_params)

    def after_step(self, entropy: float) -> dict[str, float]:
        """Feed the step's entropy to the controller; its metrics (for the next step's value)."""
        if self.controller is None:
            return {}
        self.controller.update(entropy)
        return self.controller.metrics()

    def logged_parameters(self) -> dict[str, float]:
        """`control/<param>` of each parameter a controller can drive (μ of Clip_B / Clip_V), this step's value."""
        out = {}
        for c in self.step_controls():
            for p in drivable_parameters(c.name):
                if c.name != "entropy_bonus" and isinstance(c.params.get(p), (int, float)):
                    out[f"control/{p}"] = float(c.params[p])
        return out

    # ------------------------------------------------------------------ checks and state
    def validate(self, group_size: int = 2) -> None:
        """Call every configured method once on a tiny batch (one group of `group_size`) so bad parameter
        values fail before any work."""
        try:
            check_values(self.advantage, self.advantage_params, "algorithm.advantage_params", group=group_size)
            check_values(self.loss, self.loss_params, "algorithm.loss_params", group=group_size)
            for c in self.step_controls():
                check_values(c.spec, c.params, "algorithm.control_params", group=group_size)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if self.batch_select:
            try:
                self.select(dummy_inputs(group_size))
            except (TypeError, ValueError) as err:
                raise _config_error("algorithm.loss_params", err) from None

    def state_dict(self) -> dict[str, Any]:
        return {"controller": self.controller.state_dict() if self.controller is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.controller is not None and state.get("controller") is not None:
            self.controller.load_state_dict(state["controller"])
