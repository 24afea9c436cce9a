"""Per-token first-order entropy pressure (Theorem 3.3) and its quadrant decomposition.

For a response position whose sampled token k has discriminator S = p_k (H + log p_k) and
policy-weighted baseline s_bar = E_{i~p}[S_i], a policy-gradient step that moves that position's
logits by δz = α A (e_k − p) changes its entropy by

    ΔH_tok = α · A · xD + O(α²),   xD := s_bar − S,   α = lr · w · r · active

where w is the token's weight in the aggregated loss (token-mean: 1 / N_tok), r the importance
ratio (1 on the first update of a fresh batch) and `active` 0 for tokens dropped from the loss.
It is an *entropy-pressure* signal: parameters are shared across positions and Adam rescales the
step, so the real logit change is not α A (e_k − p). The step-level probe (`rlentropy.dynamics.step`)
measures the real thing.

Quadrants (sign of A × S above / below s_bar), first-order direction of the entropy change:

    pos_high: A > 0, S > s_bar  → ΔH < 0     pos_low: A > 0, S ≤ s_bar → ΔH ≥ 0
    neg_high: A < 0, S > s_bar  → ΔH > 0     neg_low: A < 0, S ≤ s_bar → ΔH ≤ 0
"""

from __future__ import annotations

import torch

__all__ = ["QUADRANTS", "THEOREM_SIGN", "token_pressure", "quadrant_ids", "quadrant_decomposition"]

QUADRANTS: tuple[str, ...] = ("pos_high", "pos_low", "neg_high", "neg_low")
"""Quadrant names in id order (id 0..3); id 4 marks zero-advantage or masked tokens."""

THEOREM_SIGN: dict[str, int] = {"pos_high": -1, "pos_low": +1, "neg_high": +1, "neg_low": -1}
"""First-order sign of ΔH (Theorem 3.2/3.3) for an update that trains only on one quadrant."""


def _check_same_shape(ref: torch.Tensor, **tensors: torch.Tensor) -> None:
    for name, t in tensors.items():
        if t.shape != ref.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(ref.shape)}")


def token_pressure(
    s: torch.Tensor,
    s_bar: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    token_weights: torch.Tensor,
    lr: float,
    ratio: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """First-order per-token entropy change ΔH_tok = lr · w · r · M · A · (s_bar − S).

    Args:
        s: [B, T] discriminator of the sampled token, S = p_k (H + log p_k) (old policy).
        s_bar: [B, T] policy-weighted baseline E_{i~p}[S_i] (old policy).
        advantages: [B, T] per-token advantages (a per-response advantage broadcast over T).
        mask: [B, T] 1 for tokens that take part in the loss (after controls), 0 otherwise.
        token_weights: [B, T] each token's weight in the aggregated loss over the whole step
            (token-mean: M / Σ M).
        lr: learning rate of the step (>= 0).
        ratio: optional [B, T] importance ratio r; None means r = 1 (first update on fresh data).

    Returns:
        dh_tok: [B, T] predicted first-order entropy change per token (0 where mask is 0).
        metrics: 0-dim tensors
            `dH_sum` Σ ΔH_tok (the step's predicted change if every position's logits moved alone),
            `dH_mean` Σ ΔH_tok / Σ M, `lrfree` Σ M·A·xD / Σ M (the lr- and weight-free pressure),
            `xD_mean` Σ M·xD / Σ M, `tokens` Σ M.
    """
    _check_same_shape(s, s_bar=s_bar, advantages=advantages, mask=mask, token_weights=token_weights)
    if ratio is not None:
        _check_same_shape(s, ratio=ratio)
    if lr < 0:
        raise ValueError(f"lr must be >= 0, got {lr}")
    m = mask.to(s.dtype)  # [B, T]
    xd = (s_bar - s) * m  # [B, T]
    r = torch.ones_like(s) if ratio is None else ratio.to(s.dtype)  # [B, T]
    dh_tok = lr * token_weights.to(s.dtype) * r * advantages.to(s.dtype) * xd  # [B, T]
    n = m.sum().clamp_min(1.0)  # []
    metrics = {
        "dH_sum": dh_tok.sum(),
        "dH_mean": dh_tok.sum() / n,
        "lrfree": (advantages.to(s.dtype) * xd).sum() / n,
        "xD_mean": xd.sum() / n,
        "tokens": m.sum(),
    }
    return dh_tok, metrics


def quadrant_ids(s: torch.Tensor, s_bar: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Quadrant id per token: 0 pos_high, 1 pos_low, 2 neg_high, 3 neg_low, 4 zero-advantage / masked.

    "high" means S > s_bar strictly; S == s_bar counts as "low" (its first-order contribution is 0).

    Args:
        s, s_bar, advantages, mask: [B, T].

    Returns:
        [B, T] int64 ids.
    """
    _check_same_shape(s, s_bar=s_bar, advantages=advantages, mask=mask)
    high = s > s_bar  # [B, T]
    pos = advantages > 0  # [B, T]
    neg = advantages < 0  # [B, T]
    ids = torch.full(s.shape, 4, dtype=torch.long, device=s.device)  # [B, T]
    ids[pos & high] = 0
    ids[pos & ~high] = 1
    ids[neg & high] = 2
    ids[neg & ~high] = 3
    ids[mask <= 0] = 4
    return ids


def quadrant_decomposition(
    dh_tok: torch.Tensor,
    s: torch.Tensor,
    s_bar: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Split the per-token contributions by quadrant (A sign × S above / below s_bar).

    The four quadrant sums add up to Σ ΔH_tok exactly (zero-advantage and masked tokens contribute 0).

    Args:
        dh_tok: [B, T] per-token contributions (e.g. from `token_pressure`).
        s, s_bar, advantages, mask: [B, T].

    Returns:
        ids: [B, T] quadrant ids (see `quadrant_ids`).
        metrics: for each quadrant q in QUADRANTS, `q/count` (tokens) and `q/dH` (summed contribution),
            plus `zero/count` (valid tokens with A == 0).
    """
    _check_same_shape(s, dh_tok=dh_tok)
    ids = quadrant_ids(s, s_bar, advantages, mask)  # [B, T]
    metrics: dict[str, torch.Tensor] = {}
    for q, name in enumerate(QUADRANTS):
        sel = ids == q  # [B, T]
        metrics[f"{name}/count"] = sel.sum().to(dh_tok.dtype)
        metrics[f"{name}/dH"] = torch.where(sel, dh_tok, torch.zeros_like(dh_tok)).sum()
    metrics["zero/count"] = ((ids == 4) & (mask > 0)).sum().to(dh_tok.dtype)
    return ids, metrics
