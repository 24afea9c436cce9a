"""Adaptive entropy controllers with explicit, checkpointable state.

Every controller follows one protocol: read `value` (the knob it drives: `coef`, `mu`, …) for this
step, call `update(entropy)` once per optimizer step with the step's measured mean token entropy (a
Python float: the trainer reads it when it logs), log `metrics()`, and save `state_dict()` in the
checkpoint. They are plain Python objects, not tensors, so they work identically in our trainer and in
the TRL / verl adapters. Each is registered in `CONTROLLERS` with the control parameter it drives.
"""

from __future__ import annotations

import math
from typing import Any

from rlentropy.algorithms._util import check_nonneg, check_positive, check_real
from rlentropy.algorithms.registry import ControllerSpec, Registry

CONTROLLERS: Registry[ControllerSpec] = Registry("controller", ControllerSpec)


@CONTROLLERS.register(
    "entropy_coef",
    drives="coef",
    controls=("entropy_bonus",),
    init_param="coef_init",
    paper="Skywork-OR1 arXiv 2505.22312; TRL use_adaptive_entropy",
    summary="moves the entropy-bonus coefficient by ±delta toward a target entropy",
    also_in=("TRL",),
)
class EntropyCoefController:
    """Adaptive entropy-bonus coefficient toward a target entropy (Skywork-OR1, arXiv 2505.22312; TRL
    `use_adaptive_entropy`).

    After each step with measured entropy H:
    `coef ← min(coef + delta, coef_max)` if `H ≤ target`, else `coef ← max(coef − delta, coef_min)`.
    With `gate=True` (Skywork-OR1 / TRL) the coefficient applied in a step is `coef` only when the
    previous step's entropy was ≤ target, else 0 (`applied_coef`); before the first update nothing is
    applied (TRL starts from "last entropy = +inf").

    Args:
        target: target mean token entropy in nats, > 0 (TRL default 0.2; set it near the entropy early
            in training, or it almost never engages).
        coef_init: initial coefficient (TRL: `entropy_coef`, default 0).
        delta: step of the coefficient, > 0 (default 0.005).
        coef_min, coef_max: clamp range, 0 ≤ min ≤ max (defaults 0 and 1).
        gate: apply the bonus only while the entropy is at or below the target.
    """

    def __init__(
        self,
        *,
        target: float = 0.2,
        coef_init: float = 0.0,
        delta: float = 0.005,
        coef_min: float = 0.0,
        coef_max: float = 1.0,
        gate: bool = True,
    ) -> None:
        self.target = check_positive("target", target)
        self.delta = check_positive("delta", delta)
        self.coef_min = check_nonneg("coef_min", coef_min)
        self.coef_max = check_real("coef_max", coef_max)
        if self.coef_max < self.coef_min:
            raise ValueError(f"coef_max must be >= coef_min, got {coef_max} < {coef_min}")
        c = check_real("coef_init", coef_init)
        if not self.coef_min <= c <= self.coef_max:
            raise ValueError(f"coef_init must be in [coef_min, coef_max] = [{coef_min}, {coef_max}], got {coef_init}")
        self.gate = bool(gate)
        self.coef = c
        self.last_entropy = math.inf
        self.steps = 0

    @property
    def applied_coef(self) -> float:
        """The coefficient to use in this step's loss."""
        if self.gate and not self.last_entropy <= self.target:
            return 0.0
        return self.coef

    @property
    def value(self) -> float:
        """The knob it drives for this step: the applied entropy-bonus coefficient."""
        return self.applied_coef

    def metrics(self) -> dict[str, float]:
        """What to log after `update`: the coefficient and the one the next step applies."""
        return {"controller/entropy_coef": float(self.coef), "controller/applied_coef": float(self.applied_coef)}

    def update(self, entropy: float) -> float:
        """Record this step's mean token entropy and move the coefficient; returns the new `coef`."""
        h = check_real("entropy", float(entropy))
        if h <= self.target:
            self.coef = min(self.coef + self.delta, self.coef_max)
        else:
            self.coef = max(self.coef - self.delta, self.coef_min)
        self.last_entropy = h
        self.steps += 1
        return self.coef

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (JSON-serialisable)."""
        return {
            "coef": self.coef,
            "last_entropy": self.last_entropy,
            "steps": self.steps,
            "config": {
                "target": self.target,
                "delta": self.delta,
                "coef_min": self.coef_min,
                "coef_max": self.coef_max,
                "gate": self.gate,
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()` output; the configuration must match this controller's."""
        _check_config(self, state, ("target", "delta", "coef_min", "coef_max", "gate"))
        self.coef = float(state["coef"])
        self.last_entropy = float(state["last_entropy"])
        self.steps = int(state["steps"])


@CONTROLLERS.register(
    "clip_threshold",
    drives="mu",
    controls=("clip_b", "clip_v"),
    init_param="mu_init",
    paper="ours (rlentropy)",
    summary="moves the Clip_B / Clip_V threshold μ multiplicatively toward a target entropy",
)
class ClipThresholdController:
    """Our controller: moves the Clip_B / Clip_V threshold μ to hold the batch entropy near a target.

    A lower μ drops more negative-advantage, low-S tokens (the updates that lower the entropy most),
    so the entropy rises; a higher μ drops fewer. After each step with measured entropy H (optionally
    smoothed, `Ĥ ← ema·Ĥ + (1 − ema)·H`):

        e  = clip((target − Ĥ) / target, −1, 1)          # relative entropy deficit
        μ ← clamp(μ · exp(−gain · e), mu_min, mu_max)     # multiplicative, so μ stays > 0

    Within `tolerance` (|e| ≤ tolerance) μ is left unchanged. Below the target, μ shrinks; above, it grows.

    Args:
        target: target mean token entropy in nats, > 0.
        mu_init: initial μ, > 0 (Clip_B default 2.5; use 8.5 for Clip_V).
        gain: log-step per unit relative error, > 0 (default 0.1: at most ×e^±0.1 ≈ ±10 % per step).
        mu_min, mu_max: clamp range, 0 < min ≤ max (defaults 0.5 and 20).
        tolerance: relative dead band, ≥ 0 (default 0.05).
        ema: smoothing of the measured entropy in [0, 1) (default 0: no smoothing).
    """

    def __init__(
        self,
        *,
        target: float,
        mu_init: float = 2.5,
        gain: float = 0.1,
        mu_min: float = 0.5,
        mu_max: float = 20.0,
        tolerance: float = 0.05,
        ema: float = 0.0,
    ) -> None:
        self.target = check_positive("target", target)
        self.gain = check_positive("gain", gain)
        self.mu_min = check_positive("mu_min", mu_min)
        self.mu_max = check_positive("mu_max", mu_max)
        if self.mu_max < self.mu_min:
            raise ValueError(f"mu_max must be >= mu_min, got {mu_max} < {mu_min}")
        mu = check_positive("mu_init", mu_init)
        if not self.mu_min <= mu <= self.mu_max:
            raise ValueError(f"mu_init must be in [mu_min, mu_max] = [{mu_min}, {mu_max}], got {mu_init}")
        self.tolerance = check_nonneg("tolerance", tolerance)
        self.ema = check_nonneg("ema", ema)
        if self.ema >= 1.0:
            raise ValueError(f"ema must be in [0, 1), got {ema}")
        self.mu = mu
        self.smoothed: float | None = None
        self.steps = 0

    @property
    def value(self) -> float:
        """The knob it drives for this step: μ."""
        return self.mu

    def metrics(self) -> dict[str, float]:
        """What to log after `update`: the μ of the next step."""
        return {"controller/mu": float(self.mu)}

    def update(self, entropy: float) -> float:
        """Record this step's mean token entropy and move μ; returns the new μ."""
        h = check_real("entropy", float(entropy))
        self.smoothed = h if self.smoothed is None else self.ema * self.smoothed + (1.0 - self.ema) * h
        err = max(-1.0, min(1.0, (self.target - self.smoothed) / self.target))
        if abs(err) > self.tolerance:
            self.mu = min(self.mu_max, max(self.mu_min, self.mu * math.exp(-self.gain * err)))
        self.steps += 1
        return self.mu

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (JSON-serialisable)."""
        return {
            "mu": self.mu,
            "smoothed": self.smoothed,
            "steps": self.steps,
            "config": {
                "target": self.target,
                "gain": self.gain,
                "mu_min": self.mu_min,
                "mu_max": self.mu_max,
                "tolerance": self.tolerance,
                "ema": self.ema,
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()` output; the configuration must match this controller's."""
        _check_config(self, state, ("target", "gain", "mu_min", "mu_max", "tolerance", "ema"))
        self.mu = float(state["mu"])
        self.smoothed = None if state["smoothed"] is None else float(state["smoothed"])
        self.steps = int(state["steps"])


def _check_config(obj: object, state: dict[str, Any], keys: tuple[str, ...]) -> None:
    """A saved state belongs to a controller with the same configuration, else ValueError naming the key."""
    if not isinstance(state, dict) or "config" not in state:
        raise ValueError("state must be the dict returned by state_dict()")
    for key in keys:
        saved = state["config"].get(key)
        if saved != getattr(obj, key):
            raise ValueError(f"state was saved with {key}={saved!r}, this controller has {key}={getattr(obj, key)!r}")
