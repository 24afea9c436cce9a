"""Gradient noise scale within one step (McCandlish et al. 2018, "An Empirical Model of Large-Batch Training").

Each sample s (a response) has gradient g_s = g + ε_s with Cov(ε) = Σ. A micro-batch i whose samples carry
loss weights w_s has the normalised gradient ĝ_i = Σ_{s∈i} w_s g_s / w_i (w_i = Σ_{s∈i} w_s), with

    E|ĝ_i|² = |g|² + tr Σ / n_i,      n_i = (Σ_{s∈i} w_s)² / Σ_{s∈i} w_s²   (effective sample size)

and the whole step's Ĝ = Σ_i w_i ĝ_i / W obeys the same law with N = (Σ w_s)² / Σ w_s². With
a_i = w_i / W, Ā = Σ a_i |ĝ_i|² and u = Σ a_i / n_i, the unbiased estimators are

    tr Σ ≈ (Ā − |Ĝ|²) / (u − 1/N),     |g|² ≈ |Ĝ|² − tr Σ / N,     B_simple = tr Σ / |g|²

(equal micro-batches of b samples out of B reduce this to McCandlish's two-batch formulas). B_simple
is the batch size, in effective samples, at which gradient noise and signal are comparable; it
needs at least two micro-batches in the step. The ratio of two unbiased estimates is itself only
consistent, not unbiased, and it is noisy when |g|² is small; it can come out negative.
"""

from __future__ import annotations

import torch

__all__ = ["effective_sample_size", "noise_scale"]


def effective_sample_size(weights: torch.Tensor) -> torch.Tensor:
    """(Σ w)² / Σ w² of non-negative weights (0 when all weights are 0).

    Args:
        weights: [n] per-sample loss weights.

    Returns:
        0-dim float64 tensor.
    """
    if weights.dim() != 1:
        raise ValueError(f"weights must be 1-D, got {tuple(weights.shape)}")
    if (weights < 0).any():
        raise ValueError("weights must be non-negative")
    w = weights.to(torch.float64)  # [n]
    sq = (w * w).sum()
    return torch.where(sq > 0, w.sum().pow(2) / sq.clamp_min(1e-300), torch.zeros_like(sq))


def noise_scale(
    micro_sq_norms: torch.Tensor,
    micro_weights: torch.Tensor,
    micro_ess: torch.Tensor,
    *,
    total_sq_norm: torch.Tensor,
    total_ess: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Within-step unbiased estimates of tr Σ and |g|², and B_simple = tr Σ / |g|².

    Args:
        micro_sq_norms: [k] |ĝ_i|² of each micro-batch's *normalised* gradient (increment / w_i).
        micro_weights: [k] w_i, each micro-batch's total loss weight (> 0).
        micro_ess: [k] n_i, each micro-batch's effective sample size.
        total_sq_norm: 0-dim |Ĝ|², the whole step's normalised gradient (Σ increments / W).
        total_ess: 0-dim N, the whole step's effective sample size.

    Returns:
        b_simple: 0-dim float64 (nan when k < 2 or the system is degenerate).
        metrics: `trace_sigma`, `grad_sq` (|g|² estimate), `b_simple`, `ess` N,
            `micro_batches` k, `b_simple_over_ess` B_simple / N.
    """
    k = micro_sq_norms.numel()
    if micro_sq_norms.shape != (k,) or micro_weights.shape != (k,) or micro_ess.shape != (k,):
        raise ValueError(
            f"micro_sq_norms, micro_weights and micro_ess must be [k], got {tuple(micro_sq_norms.shape)}, "
            f"{tuple(micro_weights.shape)}, {tuple(micro_ess.shape)}"
        )
    if (micro_weights <= 0).any():
        raise ValueError("micro_weights must be > 0")
    if (micro_ess <= 0).any():
        raise ValueError("micro_ess must be > 0")
    nan = torch.full((), float("nan"), dtype=torch.float64)
    w = micro_weights.to(torch.float64)  # [k]
    a = w / w.sum()  # [k]
    big_n = total_ess.to(torch.float64)
    g_sq = total_sq_norm.to(torch.float64)
    avg = (a * micro_sq_norms.to(torch.float64)).sum()
    u = (a / micro_ess.to(torch.float64)).sum()
    denom = u - 1.0 / big_n
    ok = k >= 2 and bool(big_n > 0) and bool(denom > 1e-12 * u)
    tr = (avg - g_sq) / denom if ok else nan
    grad_sq = g_sq - tr / big_n if ok else nan
    b_simple = tr / grad_sq if ok else nan
    return b_simple, {
        "trace_sigma": tr,
        "grad_sq": grad_sq,
        "b_simple": b_simple,
        "ess": big_n,
        "micro_batches": torch.tensor(float(k), dtype=torch.float64),
        "b_simple_over_ess": b_simple / big_n if ok else nan,
    }
