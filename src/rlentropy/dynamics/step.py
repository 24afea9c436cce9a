"""Step-level entropy-change prediction from the real optimizer update.

On a probe batch of fixed sequences, let H(θ) be the token-mean full-vocabulary entropy over the
response positions (teacher-forced: the sequences stay fixed, only the next-token distributions
move). With the measured update Δθ = θ_after − θ_before (whatever produced it: AdamW
preconditioning, momentum, weight decay, clipping),

    predicted ΔH = ∇_θ H(θ_before) · Δθ,        measured ΔH = H(θ_after) − H(θ_before)

and the difference is the second-order residual ½ Δθᵀ ∇²H Δθ + O(|Δθ|³).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["masked_token_mean", "param_delta_dot", "step_prediction"]


def masked_token_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ M·x / max(Σ M, 1) over all positions.

    Args:
        values: [B, T]; mask: [B, T] (1 = response token).

    Returns:
        0-dim tensor (differentiable in `values`).
    """
    if values.shape != mask.shape:
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {tuple(values.shape)}")
    m = mask.to(values.dtype)  # [B, T]
    return (values * m).sum() / m.sum().clamp_min(1.0)


def param_delta_dot(
    grads: Sequence[torch.Tensor | None],
    before: Sequence[torch.Tensor],
    after: Sequence[torch.Tensor],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Σ_α g_α (after_α − before_α) over parameter tensors, accumulated in float64.

    Args:
        grads: per-parameter gradients (None for parameters that H does not depend on).
        before, after: the parameter values before and after the step (same shapes as grads).

    Returns:
        dot: 0-dim float64 tensor g · Δθ.
        metrics: `grad_norm` |g|, `delta_norm` |Δθ|, `cosine` g·Δθ / (|g| |Δθ|) (0 when a norm is 0).
    """
    if not (len(grads) == len(before) == len(after)):
        raise ValueError(f"grads, before and after differ in length: {len(grads)}, {len(before)}, {len(after)}")
    dot = torch.zeros((), dtype=torch.float64)
    gsq = torch.zeros((), dtype=torch.float64)
    dsq = torch.zeros((), dtype=torch.float64)
    for g, b, a in zip(grads, before, after):
        if b.shape != a.shape:
            raise ValueError(f"before/after shapes differ: {tuple(b.shape)} vs {tuple(a.shape)}")
        d = a.detach().to(torch.float64) - b.detach().to(torch.float64)  # [*param]
        dsq = dsq + (d * d).sum().cpu()
        if g is None:
            continue
        g64 = g.detach().to(torch.float64)  # [*param]
        dot = dot + (g64 * d).sum().cpu()
        gsq = gsq + (g64 * g64).sum().cpu()
    denom = gsq.sqrt() * dsq.sqrt()
    cos = torch.where(denom > 0, dot / denom.clamp_min(1e-300), torch.zeros_like(dot))
    return dot, {"grad_norm": gsq.sqrt(), "delta_norm": dsq.sqrt(), "cosine": cos}


def step_prediction(predicted: torch.Tensor, measured: torch.Tensor) -> dict[str, torch.Tensor]:
    """Compare a predicted and a measured entropy change.

    Args:
        predicted, measured: 0-dim tensors.

    Returns:
        `pred_dH`, `meas_dH`, `ratio` measured / predicted (nan when predicted == 0),
        `residual` measured − predicted (the second-order remainder),
        `rel_err` |measured − predicted| / |measured| (nan when measured == 0),
        `sign_agree` 1.0 when both have the same sign, else 0.0.
    """
    p = predicted.detach().to(torch.float64)
    m = measured.detach().to(torch.float64)
    nan = torch.full((), float("nan"), dtype=torch.float64)
    return {
        "pred_dH": p,
        "meas_dH": m,
        "ratio": torch.where(p != 0, m / torch.where(p != 0, p, torch.ones_like(p)), nan),
        "residual": m - p,
        "rel_err": torch.where(m != 0, (m - p).abs() / torch.where(m != 0, m.abs(), torch.ones_like(m)), nan),
        "sign_agree": (torch.sign(p) == torch.sign(m)).to(torch.float64),
    }
