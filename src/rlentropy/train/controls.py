"""Glue between the config's `algorithm:` section and the pure controls of `rlentropy.algorithms`.

`apply_control` runs the configured mask edit (Clip_B, Clip_V, 80/20 high-entropy tokens, quadrant
masks) once per step on the old-policy statistics of the whole batch, and returns the new loss mask
with `control/*` metrics. `ControlState` holds what adaptive controllers move between steps (the
entropy-bonus coefficient, the Clip_B / Clip_V threshold μ) and is checkpointed with the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rlentropy.algorithms import (
    ClipThresholdController,
    EntropyCoefController,
    clip_b_mask,
    clip_v_mask,
    get_policy_loss_spec,
    high_entropy_mask,
    quadrant_mask,
)
from rlentropy.errors import ConfigError

_CONTROL_DEFAULT_MU = {"clip_b": 2.5, "clip_v": 8.5}


@dataclass
class ControlState:
    """Per-run mutable control settings.

    Attributes:
        control: the configured control name. params: its keyword parameters (mu overridden by `mu`).
        mu: the current Clip_B / Clip_V threshold (moved by the clip_threshold controller).
        entropy_coef: the entropy-bonus coefficient applied this step (moved by entropy_coef).
    """

    control: str
    params: dict[str, Any]
    mu: float | None
    entropy_coef: float
    controller: str = "none"

    @classmethod
    def from_config(cls, a: Any) -> "ControlState":
        params = dict(a.control_params)
        mu = None
        if a.control in _CONTROL_DEFAULT_MU:
            mu = float(params.pop("mu", _CONTROL_DEFAULT_MU[a.control]))
            if a.controller == "clip_threshold" and "mu_init" in a.controller_params:
                mu = float(a.controller_params["mu_init"])
        return cls(control=a.control, params=params, mu=mu, entropy_coef=float(a.entropy_bonus), controller=a.controller)

    def state_dict(self) -> dict[str, Any]:
        return {"mu": self.mu, "entropy_coef": self.entropy_coef}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "mu" in state:
            self.mu = state["mu"]
        if "entropy_coef" in state:
            self.entropy_coef = float(state["entropy_coef"])

    def step_controller(self, controller: Any, entropy: float) -> dict[str, float]:
        """Feed this step's entropy to the controller; update mu / the coefficient for the next step."""
        if isinstance(controller, ClipThresholdController):
            self.mu = float(controller.update(entropy))
            return {"controller/mu": self.mu}
        if isinstance(controller, EntropyCoefController):
            controller.update(entropy)
            self.entropy_coef = float(controller.applied_coef)
            return {"controller/entropy_coef": float(controller.coef), "controller/applied_coef": self.entropy_coef}
        return {}


def build_controller(a: Any) -> Any:
    """The configured adaptive controller (or None). Bad parameters → ConfigError naming them."""
    try:
        if a.controller == "entropy_coef":
            params = {"coef_init": a.entropy_bonus, **a.controller_params}
            return EntropyCoefController(**params)
        if a.controller == "clip_threshold":
            params = dict(a.controller_params)
            params.setdefault("mu_init", float(a.control_params.get("mu", _CONTROL_DEFAULT_MU[a.control])))
            return ClipThresholdController(**params)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"algorithm.controller_params: {err}") from None
    return None


def loss_spec_aggregation(loss: str, aggregation: str) -> str:
    """The aggregation actually used: the loss's required mode (GSPO) or the configured one."""
    spec = get_policy_loss_spec(loss)
    return spec.agg_mode or aggregation


def _summarise(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    names = {
        "frac_dropped": "control/frac_removed",
        "frac_dropped_pos_adv": "control/frac_removed_pos",
        "frac_dropped_neg_adv": "control/frac_removed_neg",
        "tokens_dropped": "control/tokens_removed",
    }
    out = {}
    for k, v in metrics.items():
        out[names.get(k, f"control/{k}")] = float(v)
    return out


def apply_control(
    state: ControlState,
    *,
    s: torch.Tensor,
    s_bar: torch.Tensor,
    entropy: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss mask after the configured control, and its metrics.

    Args:
        state: the control settings of this step.
        s, s_bar, entropy: [B, T] old-policy statistics of the whole batch.
        advantages: [B, T] token advantages (0 on padding). mask: [B, T] response mask.

    Returns:
        (loss_mask [B, T] float32, metrics with control/frac_removed, _pos, _neg, and
        control/frac_removed_active: removed tokens with A ≠ 0 as a fraction of all valid tokens).
    """
    name = state.control
    p = dict(state.params)
    try:
        if name == "none":
            return mask, {"control/frac_removed": 0.0, "control/frac_removed_pos": 0.0, "control/frac_removed_neg": 0.0,
                          "control/frac_removed_active": 0.0}
        if name == "clip_b":
            new, m = clip_b_mask(s, advantages, mask, mu=state.mu, **p)
        elif name == "clip_v":
            new, m = clip_v_mask(s, s_bar, advantages, mask, mu=state.mu, **p)
        elif name == "high_entropy":
            new, m = high_entropy_mask(entropy, mask, advantages=advantages, **p)
        elif name == "quadrant":
            new, m = quadrant_mask(s, s_bar, advantages, mask, **p)
        else:  # the config's Literal makes this unreachable
            raise ConfigError(f"algorithm.control: unknown control {name!r}")
    except (TypeError, ValueError) as err:
        raise ConfigError(f"algorithm.control_params: {err}") from None
    out = _summarise(m)
    # removed tokens whose advantage is non-zero (the ones whose policy-gradient term changed), over all valid tokens
    valid = mask > 0  # [B, T]
    removed_active = valid & (new <= 0) & (advantages != 0)  # [B, T]
    out["control/frac_removed_active"] = float(removed_active.sum() / valid.sum().clamp_min(1))
    if state.mu is not None:
        out["control/mu"] = float(state.mu)
    return new.to(torch.float32), out
