"""The covariance view of entropy dynamics (Cui et al., arXiv 2505.22617).

Within a batch, entropy falls when confident tokens get positive advantages: the drift is driven by
Cov(log p, A) over the batch's valid tokens, and the per-token centred products
(log p − mean log p)(A − mean A) are what Clip-Cov / KL-Cov select on. Across training, Cui et al.
fit the validation reward to the entropy with R = −a · exp(H) + b.
"""

from __future__ import annotations

import torch

__all__ = ["DEFAULT_QUANTILES", "logp_advantage_covariance", "fit_entropy_performance"]

DEFAULT_QUANTILES: tuple[float, ...] = (0.01, 0.1, 0.5, 0.9, 0.99)


def logp_advantage_covariance(
    logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    quantiles: tuple[float, ...] = DEFAULT_QUANTILES,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Batch covariance of log p and A, and the distribution of the per-token centred products.

    Args:
        logp: [B, T] log-prob of the sampled tokens.
        advantages: [B, T] per-token advantages.
        mask: [B, T] 1 for valid tokens.
        quantiles: levels in [0, 1] at which to report the per-token covariance distribution.

    Returns:
        cov_tok: [B, T] per-token centred product (0 on masked positions); its masked mean is the
            (population) covariance.
        metrics: `cov` Σ M·cov_tok / Σ M, `cov_pos_frac` fraction of valid tokens with cov_tok > 0,
            `cov_q{level}` quantiles (e.g. `cov_q0.5`), `corr` the Pearson correlation.
    """
    if not (logp.shape == advantages.shape == mask.shape):
        raise ValueError(
            f"logp, advantages and mask must share a shape, got {tuple(logp.shape)}, "
            f"{tuple(advantages.shape)}, {tuple(mask.shape)}"
        )
    for q in quantiles:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantiles must lie in [0, 1], got {q}")
    m = mask.to(logp.dtype)  # [B, T]
    n = m.sum().clamp_min(1.0)  # []
    a = advantages.to(logp.dtype)  # [B, T]
    lp_c = (logp - (logp * m).sum() / n) * m  # [B, T]
    a_c = (a - (a * m).sum() / n) * m  # [B, T]
    cov_tok = lp_c * a_c  # [B, T]
    valid = cov_tok[mask > 0]  # [N]
    metrics = {"cov": cov_tok.sum() / n}
    metrics["cov_pos_frac"] = (valid > 0).to(logp.dtype).sum() / n
    den = (lp_c.pow(2).sum() * a_c.pow(2).sum()).sqrt()
    metrics["corr"] = torch.where(den > 0, cov_tok.sum() / den.clamp_min(1e-30), torch.full_like(den, float("nan")))
    if valid.numel():
        qs = torch.quantile(valid.to(torch.float64), torch.tensor(quantiles, dtype=torch.float64, device=valid.device))
    else:
        qs = torch.full((len(quantiles),), float("nan"), dtype=torch.float64)
    for level, value in zip(quantiles, qs):
        metrics[f"cov_q{level:g}"] = value.to(logp.dtype)
    return cov_tok, metrics


def fit_entropy_performance(
    entropy: torch.Tensor, reward: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Least-squares fit R = −a · exp(H) + b across steps (Cui et al.).

    Args:
        entropy: [K] token-mean policy entropy at K steps.
        reward: [K] performance (e.g. mean reward or validation accuracy) at the same steps.

    Returns:
        fitted: [K] the fitted R values.
        metrics: `a`, `b`, `r2` (coefficient of determination; nan when R is constant), `points` K.
            Computed in float64.

    Raises:
        ValueError: fewer than 2 points, mismatched shapes, or non-finite inputs.
    """
    if entropy.dim() != 1 or entropy.shape != reward.shape:
        raise ValueError(
            f"entropy and reward must be 1-D of equal length, got {tuple(entropy.shape)}, {tuple(reward.shape)}"
        )
    if entropy.numel() < 2:
        raise ValueError(f"entropy needs at least 2 points for a fit, got {entropy.numel()}")
    h = entropy.to(torch.float64)  # [K]
    r = reward.to(torch.float64)  # [K]
    if not (torch.isfinite(h).all() and torch.isfinite(r).all()):
        raise ValueError("entropy and reward must be finite")
    x = torch.exp(h)  # [K]
    design = torch.stack([-x, torch.ones_like(x)], dim=1)  # [K, 2]
    sol = torch.linalg.lstsq(design, r.unsqueeze(1), driver="gelsd").solution.squeeze(1)  # [2]
    fitted = design @ sol  # [K]
    ss_res = (r - fitted).pow(2).sum()
    ss_tot = (r - r.mean()).pow(2).sum()
    r2 = torch.where(ss_tot > 0, 1.0 - ss_res / ss_tot.clamp_min(1e-300), torch.full_like(ss_tot, float("nan")))
    return fitted, {"a": sol[0], "b": sol[1], "r2": r2, "points": torch.tensor(float(h.numel()), dtype=torch.float64)}
