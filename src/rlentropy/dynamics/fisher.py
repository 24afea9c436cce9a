"""The empirical Fisher / neural-tangent kernel between sampled sequences.

With g(t) = ∇_θ log π(t) (the gradient of a whole response's log-probability) and an optional
diagonal metric P, the kernel is K(t, t') = g(t)ᵀ P g(t'). A policy-gradient step moves sequence t's
log-probability by δ log π(t) ≈ η Σ_j K(t, t_j) w_j A_j, so K·A is the "influence" of the batch's
advantages on each sequence. If K were the identity this would be Cui et al.'s covariance rule.

Adam metric. Adam's step is Δθ = −η m̂ / (√v̂ + ε); its preconditioner is P = 1 / (√v̂ + ε), applied
**once**: K = g · P · g'. The seed repository divided both gradients by (√v + ε), which yields the
metric P² = 1/(√v + ε)² instead; this module never does that (`fisher_kernel` takes P and uses it
once, and `adam_metric` returns P itself, not its square root).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from rlentropy.dynamics.logit_check import correlation

__all__ = ["fisher_kernel", "adam_metric", "kernel_summary", "kernel_influence"]


def fisher_kernel(
    grads: torch.Tensor, *, metric: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """K = G · diag(P) · Gᵀ from per-sequence gradients (float64).

    Args:
        grads: [n, D] flattened per-sequence gradients g(t_i) = ∇_θ log π(t_i).
        metric: optional [D] positive diagonal metric P (e.g. `adam_metric`); None = identity.

    Returns:
        kernel: [n, n] symmetric positive semi-definite float64 matrix.
        metrics: `trace`, `diag_mean`, `offdiag_mean`.
    """
    if grads.dim() != 2:
        raise ValueError(f"grads must be [n, D], got {tuple(grads.shape)}")
    g = grads.detach().to(torch.float64)  # [n, D]
    if metric is not None:
        if metric.shape != (g.shape[1],):
            raise ValueError(f"metric must be [{g.shape[1]}], got {tuple(metric.shape)}")
        if (metric < 0).any():
            raise ValueError("metric must be non-negative")
        k = (g * metric.detach().to(torch.float64)) @ g.T  # [n, n]
    else:
        k = g @ g.T  # [n, n]
    k = 0.5 * (k + k.T)  # [n, n] exact symmetry despite rounding
    n = k.shape[0]
    off = k.sum() - k.diagonal().sum()
    return k, {
        "trace": k.diagonal().sum(),
        "diag_mean": k.diagonal().mean() if n else torch.zeros((), dtype=torch.float64),
        "offdiag_mean": off / (n * (n - 1)) if n > 1 else torch.zeros((), dtype=torch.float64),
    }


def adam_metric(exp_avg_sq: Iterable[torch.Tensor], *, step: int, beta2: float, eps: float) -> torch.Tensor:
    """Adam's diagonal preconditioner P = 1 / (√v̂ + ε), v̂ = v / (1 − β2^step), flattened.

    Args:
        exp_avg_sq: Adam's second-moment tensors v, in the same parameter order as the gradients.
        step: the optimizer's step count (>= 1) for bias correction.
        beta2: Adam's β2 in [0, 1).
        eps: Adam's ε (> 0).

    Returns:
        [D] float64 metric, to pass as `fisher_kernel(..., metric=P)` (used once, not squared).
    """
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    if not 0.0 <= beta2 < 1.0:
        raise ValueError(f"beta2 must lie in [0, 1), got {beta2}")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    flat = torch.cat([v.detach().reshape(-1).to(torch.float64) for v in exp_avg_sq])  # [D]
    v_hat = flat / (1.0 - beta2**step)  # [D]
    return 1.0 / (v_hat.sqrt() + eps)  # [D]


def kernel_summary(
    kernel: torch.Tensor, group_ids: torch.Tensor, advantages: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Block structure, spectrum and advantage influence of a sequence kernel.

    Args:
        kernel: [n, n] symmetric PSD kernel.
        group_ids: [n] prompt id of each sequence.
        advantages: [n] per-sequence advantage.

    Returns:
        eigvals: [n] eigenvalues in descending order.
        metrics: `same_prompt_mean` mean K over distinct pairs sharing a prompt (nan if none),
            `cross_prompt_mean` mean K over pairs from different prompts (nan if none),
            `diag_mean`, `eff_rank` exp(entropy of λ / Σλ) over positive eigenvalues,
            `top_eig_frac` λ_max / Σλ, and `kernel_influence`'s metrics.
    """
    n = kernel.shape[0]
    if kernel.shape != (n, n):
        raise ValueError(f"kernel must be square, got {tuple(kernel.shape)}")
    if group_ids.shape != (n,) or advantages.shape != (n,):
        raise ValueError(
            f"group_ids and advantages must be [{n}], got {tuple(group_ids.shape)}, {tuple(advantages.shape)}"
        )
    k = kernel.to(torch.float64)  # [n, n]
    same = group_ids.unsqueeze(0) == group_ids.unsqueeze(1)  # [n, n]
    eye = torch.eye(n, dtype=torch.bool, device=k.device)  # [n, n]
    nan = torch.full((), float("nan"), dtype=torch.float64)
    same_off = same & ~eye  # [n, n]
    cross = ~same  # [n, n]
    eig = torch.linalg.eigvalsh(k).flip(0)  # [n] descending
    pos = eig.clamp_min(0.0)  # [n]
    total = pos.sum()
    if total > 0:
        pr = pos / total  # [n]
        ent = -(torch.where(pr > 0, pr * pr.clamp_min(1e-300).log(), torch.zeros_like(pr))).sum()
        eff_rank, top_frac = ent.exp(), pos[0] / total
    else:
        eff_rank, top_frac = torch.zeros((), dtype=torch.float64), nan
    infl, infl_metrics = kernel_influence(k, advantages)  # [n]
    metrics = {
        "same_prompt_mean": k[same_off].mean() if same_off.any() else nan,
        "cross_prompt_mean": k[cross].mean() if cross.any() else nan,
        "diag_mean": k.diagonal().mean() if n else nan,
        "eff_rank": eff_rank,
        "top_eig_frac": top_frac,
        **infl_metrics,
    }
    return eig, metrics


def kernel_influence(kernel: torch.Tensor, advantages: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Kernel-weighted influence I = K · A: how the batch's advantages move each sequence's log π.

    Args:
        kernel: [n, n]; advantages: [n] per-sequence advantage.

    Returns:
        influence: [n] float64.
        metrics: `influence_adv_corr` correlation of K·A with A (nan when undefined),
            `influence_abs_mean` mean |K·A|.
    """
    n = kernel.shape[0]
    if kernel.shape != (n, n) or advantages.shape != (n,):
        raise ValueError(
            f"kernel must be [n, n] and advantages [n], got {tuple(kernel.shape)}, {tuple(advantages.shape)}"
        )
    a = advantages.to(torch.float64)  # [n]
    infl = kernel.to(torch.float64) @ a  # [n]
    nan = torch.full((), float("nan"), dtype=torch.float64)
    return infl, {
        "influence_adv_corr": correlation(infl, a) if n > 1 else nan,
        "influence_abs_mean": infl.abs().mean() if n else nan,
    }
