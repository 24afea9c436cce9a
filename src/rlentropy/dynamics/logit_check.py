"""Logit-space check of the first-order entropy formula on real logit changes.

For one position with logits z (before the step) and z + δz (after), first order in δz:

    H(z + δz) − H(z) ≈ −Σ_j S_j δz_j = −Cov_{j~p}(log p_j, δz_j),   S_j = p_j (H + log p_j)

This holds however δz was produced, so comparing it with the measured per-position ΔH checks the
theory independently of the optimizer. Logits are rebuilt from the last hidden states and the LM
head weight chunk by chunk over positions, so at most `[chunk, V]` values exist at a time.
"""

from __future__ import annotations

import torch

__all__ = ["entropy_and_s", "logit_space_check", "correlation"]


def entropy_and_s(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy and the full discriminator vector of a batch of logit rows.

    Args:
        z: [N, V] logits (already divided by the temperature).

    Returns:
        h: [N] entropy; s: [N, V] with S_j = p_j (H + log p_j).
    """
    logp = torch.log_softmax(z, dim=-1)  # [N, V]
    p = logp.exp()  # [N, V]
    h = -(p * logp).sum(-1)  # [N]
    s = p * (h.unsqueeze(-1) + logp)  # [N, V]
    return h, s


def logit_space_check(
    hidden_before: torch.Tensor,
    weight_before: torch.Tensor,
    hidden_after: torch.Tensor,
    weight_after: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk: int = 128,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-position predicted (−Σ S δz) and measured (H_after − H_before) entropy changes.

    Args:
        hidden_before, hidden_after: [N, d] last hidden states at the probe positions.
        weight_before, weight_after: [V, d] LM head weight before / after the step.
        temperature: logits are (h · Wᵀ) / temperature.
        chunk: positions per chunk (bounds memory to a few [chunk, V] tensors in `dtype`).
        dtype: compute dtype (float64 by default: per-position changes are small differences).

    Returns:
        out: [2, N] rows (predicted, measured).
        metrics: `corr` Pearson correlation of the two over positions, `rel_err`
            |pred − meas|₂ / |meas|₂, `pred_mean`, `meas_mean` (token means), `positions` N.
    """
    if hidden_before.shape != hidden_after.shape or hidden_before.dim() != 2:
        raise ValueError(
            f"hidden_before / hidden_after must be the same [N, d] shape, got {tuple(hidden_before.shape)} "
            f"and {tuple(hidden_after.shape)}"
        )
    if weight_before.shape != weight_after.shape or weight_before.shape[-1] != hidden_before.shape[-1]:
        raise ValueError(
            f"weight_before / weight_after must be [V, {hidden_before.shape[-1]}], got "
            f"{tuple(weight_before.shape)} and {tuple(weight_after.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    n = hidden_before.shape[0]
    wb = weight_before.detach().to(dtype)  # [V, d]
    wa = weight_after.detach().to(dtype)  # [V, d]
    pred = torch.empty(n, dtype=dtype, device=hidden_before.device)  # [N]
    meas = torch.empty(n, dtype=dtype, device=hidden_before.device)  # [N]
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        zb = hidden_before[lo:hi].detach().to(dtype) @ wb.T / temperature  # [c, V]
        za = hidden_after[lo:hi].detach().to(dtype) @ wa.T / temperature  # [c, V]
        h_b, s_b = entropy_and_s(zb)  # [c], [c, V]
        h_a = -(torch.softmax(za, -1) * torch.log_softmax(za, -1)).sum(-1)  # [c]
        pred[lo:hi] = -(s_b * (za - zb)).sum(-1)  # [c]
        meas[lo:hi] = h_a - h_b  # [c]
    out = torch.stack([pred, meas])  # [2, N]
    diff_norm = (pred - meas).norm()
    meas_norm = meas.norm()
    metrics = {
        "corr": correlation(pred, meas),
        "rel_err": torch.where(
            meas_norm > 0, diff_norm / meas_norm.clamp_min(1e-300), torch.full_like(meas_norm, float("nan"))
        ),
        "pred_mean": pred.mean() if n else torch.zeros((), dtype=dtype),
        "meas_mean": meas.mean() if n else torch.zeros((), dtype=dtype),
        "positions": torch.tensor(float(n), dtype=dtype),
    }
    return out, metrics


def correlation(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of two 1-D tensors (nan when fewer than 2 points or a constant input).

    Args:
        x, y: [N].

    Returns:
        0-dim tensor in x's dtype.
    """
    if x.shape != y.shape or x.dim() != 1:
        raise ValueError(f"x and y must be 1-D of equal length, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.numel() < 2:
        return torch.full((), float("nan"), dtype=x.dtype)
    xc = x - x.mean()  # [N]
    yc = y.to(x.dtype) - y.to(x.dtype).mean()  # [N]
    den = xc.norm() * yc.norm()
    return torch.where(den > 0, (xc * yc).sum() / den.clamp_min(1e-300), torch.full_like(den, float("nan")))
