"""Per-token KL estimators between the policy and a frozen reference (or the old policy).

Pure math: tensors in, `(tensor, metrics)` out. With d = log π_ref − log π evaluated at tokens sampled
from π (Schulman, "Approximating KL divergence", 2020):

    k1 = −d                     unbiased for KL(π‖π_ref), high variance, can be negative
    k3 = exp(d) − d − 1         unbiased, always ≥ 0, low variance (the GRPO paper's choice)
"""

from __future__ import annotations

import torch

KL_ESTIMATORS = ("k1", "k3")


def kl_estimate(
    logp: torch.Tensor, ref_logp: torch.Tensor, *, estimator: str = "k3"
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token KL estimate of π (giving `logp`) from π_ref (giving `ref_logp`) at the sampled tokens.

    Args:
        logp: [B, T] log π of the sampled tokens (differentiable).
        ref_logp: [B, T] log π_ref of the same tokens (no gradient needed).
        estimator: "k1" or "k3".

    Returns:
        (kl [B, T], {}) — aggregate it with the loss mask like the policy loss.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"estimator: must be one of {', '.join(KL_ESTIMATORS)}, got {estimator!r}")
    if logp.shape != ref_logp.shape:
        raise ValueError(f"ref_logp: shape {tuple(ref_logp.shape)} differs from logp {tuple(logp.shape)}")
    d = ref_logp.detach().to(logp.dtype) - logp  # [B, T]
    if estimator == "k1":
        return -d, {}
    d = d.clamp(-20.0, 20.0)  # [B, T] keeps exp finite for wildly off-policy tokens
    return torch.expm1(d) - d, {}  # [B, T]
