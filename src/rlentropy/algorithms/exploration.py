"""Entropy and exploration methods that no framework ships (issue #12), each ONE registered entry.

Advantage estimators (`ADVANTAGES`, `fn(rewards, group_ids, <declared inputs>, **params)`):

* `gtpo` / `grpo_s`: entropy-weighted token / sequence rewards (Tan et al., arXiv 2508.04349) [3P].
* `passk_training`: the closed-form Pass@k advantage (Chen et al., arXiv 2508.10751) [V].
* `psr` / `nsr` / `w_reinforce`: positive / negative sample reinforcement (Zhu et al., arXiv 2506.01347) [V].
* `unlikeliness`: rank penalty on likely correct proofs, then GRPO (He et al., arXiv 2506.02355) [V].

Entropy controls (`CONTROLS`):

* `entropy_advantage` (kind "advantage"): `A + min(α·H, |A|/κ)` (Cheng et al., arXiv 2506.14758) [ABS form,
  unverified defaults].
* `entropic` (kind "loss_term"): EntroPIC's reweighting term on high-probability tokens (Yang et al., arXiv
  2511.15248) [V], driven by the `entropic_pi` controller (`CONTROLLERS`).
* `entropy_polarity` (kind "advantage"): OUR form of polarity-aware reweighting, after the abstract of PAPO
  (arXiv 2605.11775) [ABS]; the same `entropic_pi` controller can drive it.

Policy loss (`POLICY_LOSSES`): `clip_low`, a PPO preset that clips more on the low side (Park et al., arXiv
2509.26114) [ABS: direction verified, values ours].

Evidence tags as in the design spec: [V] checked against the authors' code, [3P] a third-party
reimplementation, [ABS] abstract / summary only. Where a detail is unverified the entry's `notes` say so.
Everything follows the conventions of `rlentropy.algorithms`: plain tensors in, `(value, metrics)` out,
0-d float32 metrics, no `.item()` (one documented exception: `passk_training` reads the smallest group
size to validate k), no global RNG.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from rlentropy.algorithms._util import (
    as_bool,
    check_choice,
    check_nonneg,
    check_positive,
    check_real,
    check_same_shape,
    check_tensor,
    count,
    float_dtype,
    masked_mean,
    masked_population_std,
    token_advantages,
)
from rlentropy.algorithms.advantages import ADVANTAGES, _check_inputs, _reward_metrics, group_stats, grpo
from rlentropy.algorithms.aggregation import aggregation_weights
from rlentropy.algorithms.controllers import CONTROLLERS, _check_config
from rlentropy.algorithms.controls import CONTROLS
from rlentropy.algorithms.losses import POLICY_LOSSES, ppo
from rlentropy.algorithms.registry import AGGREGATION_CONTEXT

__all__ = [
    "GTPO_NORMALIZE",
    "EntroPICController",
    "clip_low",
    "entropic",
    "entropy_advantage",
    "entropy_polarity",
    "grpo_s",
    "gtpo",
    "nsr",
    "passk_training",
    "psr",
    "unlikeliness",
    "w_reinforce",
]

GTPO_NORMALIZE = ("separate", "joint")

# Log-ratios are clamped to ±20 before exp (as `losses.ppo` and verl): exp(20) ≈ 4.9e8 keeps fp32 finite.
_LOG_RATIO_CLAMP = 20.0


def _group_index(group_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(inverse [B] in 0..G-1, G) of integer group ids (G is torch.unique's output length, as `group_stats`)."""
    uniq, inverse = torch.unique(group_ids, return_inverse=True)  # [G], [B]
    return inverse, uniq.numel()


# ====================================================================================================
# B1. Entropy-based advantage shaping (arXiv 2506.14758).


@CONTROLS.register(
    "entropy_advantage",
    kind="advantage",
    inputs=("entropy", "advantages", "mask"),
    stage="old",
    stages=("old", "current"),
    off_when={"alpha": 0.0},
    paper="Reasoning with Exploration: An Entropy Perspective (Cheng et al.), arXiv 2506.14758",
    summary="A + min(α·H, |A|/κ): a detached, capped entropy bonus on every token's advantage",
    notes="Formula [ABS]: ψ = min(α·H^detach, |A|/κ), α > 0, κ > 1 (paper text via summaries); no authors' code "
    "was found. Defaults α = 0.4, κ = 2 are UNVERIFIED (recalled, not checked against the paper). The paper "
    "writes H^detach of π_θ, which suggests the training forward's entropy (stage current); we default to the "
    "old policy's entropy (stage old, once per step), identical to it on the first update of fresh data.",
)
def entropy_advantage(
    entropy: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    alpha: float = 0.4,
    kappa: float = 2.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Entropy-based advantage shaping (Cheng et al., arXiv 2506.14758).

    `ψ_t = min(α·H_t, |A_t| / κ)` with the entropy detached (a shaping term, not an entropy gradient) and
    `A'_t = A_t + ψ_t`. Since `0 ≤ ψ ≤ |A|/κ < |A|` for κ > 1, the sign of A never flips and A = 0 stays 0
    (zero-variance groups stay silent); a penalised token (A < 0) is penalised less when its entropy is
    high. Tokens outside `mask` keep their advantage. A negative entropy (rounding) counts as 0.

    Args:
        entropy: [B, T] entropy H of the policy at each position (old policy at stage "old", the training
            forward at stage "current"; detached inside).
        advantages: [B] or [B, T]. mask: [B, T].
        alpha: α ≥ 0, the entropy scale (0 disables the control). Default 0.4 [unverified].
        kappa: κ > 1, the cap |A|/κ (the paper requires κ > 1). Default 2 [unverified].

    Returns:
        ([B, T] shaped advantages, metrics: psi_mean (mean ψ over the valid tokens), frac_capped (share of
        valid A ≠ 0 tokens whose ψ is the cap |A|/κ)).
    """
    alpha = check_nonneg("alpha", alpha)
    kappa = check_real("kappa", kappa)
    if kappa <= 1.0:
        raise ValueError(f"kappa must be > 1 (then |ψ| < |A| and A keeps its sign), got {kappa!r}")
    check_tensor("entropy", entropy, ndim=2)
    check_same_shape("entropy", entropy, mask=mask)
    dtype = float_dtype(entropy, advantages)
    m = as_bool(mask)  # [B, T]
    adv = token_advantages(advantages, mask).detach().to(dtype)  # [B, T]
    h = entropy.detach().to(dtype).clamp_min(0.0)  # [B, T]
    bonus = alpha * h  # [B, T]
    cap = adv.abs() / kappa  # [B, T]
    psi = torch.where(m, torch.minimum(bonus, cap), 0.0)  # [B, T]
    active = m & (adv != 0)  # [B, T]
    metrics = {
        "psi_mean": masked_mean(psi, m).to(torch.float32),
        "frac_capped": (count(active & (cap < bonus)) / count(active).clamp_min(1)).to(torch.float32),
    }
    return adv + psi, metrics


# ====================================================================================================
# B2. GTPO / GRPO-S (arXiv 2508.04349).


def _class_normalise(
    values: torch.Tensor,
    valid: torch.Tensor,
    positive: torch.Tensor,
    inverse: torch.Tensor,
    n_groups: int,
    normalize: str,
    eps: float,
) -> torch.Tensor:
    """(x − mean) / (population std + eps) per group (and per class O+ / O− with "separate").

    Args:
        values, valid, positive: [B, ...] shaped rewards, units that count, unit is in O+ (bool).
        inverse: [B] group index of each row. n_groups: G.

    Returns:
        [B, ...] normalised values, 0 on invalid units.
    """
    shape = values.shape
    rows = inverse.reshape((-1,) + (1,) * (values.dim() - 1)).expand(shape)  # [B, ...]
    bins = rows * 2 + positive.long() if normalize == "separate" else rows  # [B, ...]
    n_bins = 2 * n_groups if normalize == "separate" else n_groups
    v = torch.where(valid, values, 0.0).reshape(-1)  # [N]
    w = valid.to(values.dtype).reshape(-1)  # [N]
    b = bins.reshape(-1)  # [N]
    n = torch.zeros(n_bins, dtype=values.dtype, device=values.device).index_add_(0, b, w)  # [K]
    mean = torch.zeros_like(n).index_add_(0, b, v) / n.clamp_min(1)  # [K]
    dev = torch.where(valid.reshape(-1), v - mean[b], 0.0)  # [N]
    std = (torch.zeros_like(n).index_add_(0, b, dev * dev) / n.clamp_min(1)).sqrt()  # [K] population
    return (dev / (std[b] + eps)).reshape(shape)  # [B, ...]


def _gtpo_checks(alpha1: float, alpha2: float, normalize: str, eps: float) -> tuple[float, float, float]:
    check_choice("normalize", normalize, GTPO_NORMALIZE)
    return check_nonneg("alpha1", alpha1), check_nonneg("alpha2", alpha2), check_positive("eps", eps)


_GTPO_NOTES = (
    "Evidence [3P]: equations from the textpolicy reimplementation (teilomillet/textpolicy `compute_gtpo_shaped_"
    "rewards`, citing the paper's Eq. 3/5/6); the authors' code was not found; α1 = 1, α2 = 0.1 are that "
    "reimplementation's 'paper experimental values'. Ours where it is silent: O+ = {r > 0}; counts, entropy sums "
    "and the normalisation are per prompt group (the reimplementation treats the batch as one group); population "
    "std; one eps guards H = 0 and std = 0. normalize='separate' (the reimplementation's reading of Eq. 6) "
    "centres O+ and O− on their own means, which cancels α1 inside each class: the sign of an advantage is then "
    "set by the entropy term alone and a class with one member gets 0; normalize='joint' centres the whole group "
    "instead and keeps the correct/incorrect ordering — our default, since the separate reading never reinforces "
    "a lone correct answer of its group."
)


@ADVANTAGES.register(
    "gtpo",
    inputs=("rewards", "group_ids", "entropy", "mask"),
    paper="GTPO and GRPO-S (Tan et al.), arXiv 2508.04349",
    summary="entropy-weighted token rewards (H share in O+, 1/H share in O−), normalised per group",
    notes=_GTPO_NOTES,
)
def gtpo(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    entropy: torch.Tensor,
    mask: torch.Tensor,
    *,
    alpha1: float = 1.0,
    alpha2: float = 0.1,
    normalize: str = "joint",
    eps: float = 1e-6,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GTPO token-level advantages (Tan et al., arXiv 2508.04349).

    Within each prompt group, with O+ = {r > 0} (correct) and O− = the rest, `d_t` / `h_t` the number of
    O+ / O− responses with a valid token at position t, and H the old policy's entropy (detached):

        O+:  r̃_{i,t} = α1·r_i + α2 · H_{i,t} / max(Σ_{k∈O+} H_{k,t}, eps) · d_t
        O−:  r̃_{j,t} = −α1 − α2 · (1/(H_{j,t}+eps)) / Σ_{k∈O−} 1/(H_{k,t}+eps) · h_t

    so high-entropy tokens of correct responses earn more and confident (low-entropy) tokens of wrong
    responses are penalised more. With α1 + α2 = 1 the O+ rewards at a position sum to d_t (Proposition
    2.2). Then `Ã = (r̃ − mean) / (std + eps)` over the valid tokens of each (group, class) ("separate") or
    of each group ("joint"). Use it with a token-level clipped loss (PPO / DAPO).

    Args:
        rewards: [B] (binary assumed). group_ids: [B] integer.
        entropy: [B, T] entropy of the old policy. mask: [B, T] response mask.
        alpha1: weight of the outcome reward, ≥ 0 (1.0). alpha2: weight of the entropy term, ≥ 0 (0.1).
        normalize: "joint" (default: one mean and std per group, which keeps correct answers above wrong
            ones) or "separate" (per class, the third-party reimplementation's reading; see `notes`).
        eps: > 0, guards H = 0 and a zero std.

    Returns:
        ([B, T] advantages, 0 on invalid tokens; metrics: reward_mean, adv_mean, adv_std (valid tokens),
        frac_pos (share of responses in O+), frac_zero_std).
    """
    alpha1, alpha2, eps = _gtpo_checks(alpha1, alpha2, normalize, eps)
    r = _check_inputs(rewards, group_ids)  # [B]
    check_tensor("entropy", entropy, ndim=2)
    check_same_shape("entropy", entropy, mask=mask)
    if entropy.shape[0] != r.shape[0]:
        raise ValueError(f"entropy must have {r.shape[0]} rows (one per reward), got shape {tuple(entropy.shape)}")
    dtype = float_dtype(r, entropy)
    # Our trainer keeps rewards on the host and the gathered statistics on the device: work where the entropy is.
    r, group_ids = r.to(device=entropy.device, dtype=dtype), group_ids.to(entropy.device)  # [B] each
    valid = as_bool(mask).to(entropy.device)  # [B, T]
    h = torch.where(valid, entropy.detach().to(dtype).clamp_min(0.0), 0.0)  # [B, T]
    pos_row = r > 0  # [B]
    pos = valid & pos_row[:, None]  # [B, T]
    neg = valid & ~pos_row[:, None]  # [B, T]
    inverse, n_groups = _group_index(group_ids)  # [B], G

    def per_group(x: torch.Tensor) -> torch.Tensor:  # [B, T] → per-(group, position) sums gathered back
        sums = torch.zeros((n_groups, x.shape[1]), dtype=dtype, device=x.device).index_add_(0, inverse, x)
        return sums[inverse]  # [B, T]

    d = per_group(pos.to(dtype))  # [B, T] d_t of the row's group
    hc = per_group(neg.to(dtype))  # [B, T] h_t
    h_pos_sum = per_group(torch.where(pos, h, 0.0))  # [B, T]
    inv_h = torch.where(neg, 1.0 / (h + eps), 0.0)  # [B, T]
    inv_sum = per_group(inv_h)  # [B, T]
    shaped_pos = alpha1 * r[:, None] + alpha2 * h / h_pos_sum.clamp_min(eps) * d  # [B, T]
    shaped_neg = -alpha1 - alpha2 * inv_h / inv_sum.clamp_min(eps) * hc  # [B, T]
    shaped = torch.where(pos, shaped_pos, torch.where(neg, shaped_neg, 0.0))  # [B, T]
    adv = _class_normalise(shaped, valid, pos, inverse, n_groups, normalize, eps)  # [B, T]
    _, std, size = group_stats(r, group_ids)  # [B] each
    metrics = _reward_metrics(r, adv[:, 0], std, size)
    adv_mean, adv_std = masked_population_std(adv, valid)  # [] each, over the valid tokens
    metrics.update(adv_mean=adv_mean.to(torch.float32), adv_std=adv_std.to(torch.float32))
    metrics["frac_pos"] = pos_row.to(torch.float32).mean() if r.numel() else torch.zeros((), dtype=torch.float32)
    return adv, metrics


@ADVANTAGES.register(
    "grpo_s",
    inputs=("rewards", "group_ids", "entropy", "mask"),
    paper="GTPO and GRPO-S (Tan et al.), arXiv 2508.04349",
    summary="GTPO's weighting at the sequence level (mean entropy per response), normalised per group",
    notes=_GTPO_NOTES.replace("Evidence [3P]", "Evidence [3P] for GTPO; the sequence form is [ABS], by analogy")
    + " Responses with no valid token get advantage 0.",
)
def grpo_s(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    entropy: torch.Tensor,
    mask: torch.Tensor,
    *,
    alpha1: float = 1.0,
    alpha2: float = 0.1,
    normalize: str = "joint",
    eps: float = 1e-6,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO-S sequence-level advantages (Tan et al., arXiv 2508.04349).

    GTPO's rule with each response's mean token entropy `Ĥ_i` (old policy, over its valid tokens) and the
    class sizes n+ / n− of its group:

        O+:  r̃_i = α1·r_i + α2 · Ĥ_i / max(Σ_{k∈O+} Ĥ_k, eps) · n+
        O−:  r̃_j = −α1 − α2 · (1/(Ĥ_j+eps)) / Σ_{k∈O−} 1/(Ĥ_k+eps) · n−

    then `(r̃ − mean) / (population std + eps)` per (group, class) ("separate") or per group ("joint").

    Args:
        rewards: [B] (binary assumed). group_ids: [B]. entropy: [B, T] old policy. mask: [B, T].
        alpha1, alpha2, normalize, eps: as `gtpo`.

    Returns:
        ([B] advantages, metrics: reward_mean, adv_mean, adv_std, frac_pos, frac_zero_std).
    """
    alpha1, alpha2, eps = _gtpo_checks(alpha1, alpha2, normalize, eps)
    r = _check_inputs(rewards, group_ids)  # [B]
    check_tensor("entropy", entropy, ndim=2)
    check_same_shape("entropy", entropy, mask=mask)
    if entropy.shape[0] != r.shape[0]:
        raise ValueError(f"entropy must have {r.shape[0]} rows (one per reward), got shape {tuple(entropy.shape)}")
    dtype = float_dtype(r, entropy)
    r, group_ids = r.to(device=entropy.device, dtype=dtype), group_ids.to(entropy.device)  # [B] each
    m = as_bool(mask).to(entropy.device)  # [B, T]
    n_tok = m.sum(-1).to(dtype)  # [B]
    valid = n_tok > 0  # [B]
    h_seq = torch.where(m, entropy.detach().to(dtype).clamp_min(0.0), 0.0).sum(-1) / n_tok.clamp_min(1)  # [B]
    pos = valid & (r > 0)  # [B]
    neg = valid & ~(r > 0)  # [B]
    inverse, n_groups = _group_index(group_ids)  # [B], G

    def per_group(x: torch.Tensor) -> torch.Tensor:  # [B] → group sums gathered back
        return torch.zeros(n_groups, dtype=dtype, device=x.device).index_add_(0, inverse, x)[inverse]  # [B]

    n_pos, n_neg = per_group(pos.to(dtype)), per_group(neg.to(dtype))  # [B] each
    h_pos_sum = per_group(torch.where(pos, h_seq, 0.0))  # [B]
    inv_h = torch.where(neg, 1.0 / (h_seq + eps), 0.0)  # [B]
    inv_sum = per_group(inv_h)  # [B]
    shaped_pos = alpha1 * r + alpha2 * h_seq / h_pos_sum.clamp_min(eps) * n_pos  # [B]
    shaped_neg = -alpha1 - alpha2 * inv_h / inv_sum.clamp_min(eps) * n_neg  # [B]
    shaped = torch.where(pos, shaped_pos, torch.where(neg, shaped_neg, 0.0))  # [B]
    adv = _class_normalise(shaped, valid, pos, inverse, n_groups, normalize, eps)  # [B]
    _, std, size = group_stats(r, group_ids)  # [B] each
    metrics = _reward_metrics(r, adv, std, size)
    metrics["frac_pos"] = (r > 0).to(torch.float32).mean() if r.numel() else torch.zeros((), dtype=torch.float32)
    return adv, metrics


# ====================================================================================================
# B3. Pass@k Training, analytic advantage (arXiv 2508.10751).


@ADVANTAGES.register(
    "passk_training",
    inputs=("rewards", "group_ids"),
    paper="Pass@k Training (Chen et al.), arXiv 2508.10751; RUCAIBox/Passk_Training code/passk_adv.py",
    summary="closed-form advantage of the group's pass@k: every correct and wrong sample credited analytically",
    notes="Evidence [V]: RUCAIBox/Passk_Training `calc_adv` (closed form, eps 1e-6, rewards outside {0, 1} pass "
    "through unchanged). k has no upstream default (the paper sweeps it). k > group size makes upstream 0/0 "
    "(NaN); we raise ValueError instead, reading the smallest group size on the host (one sync per step).",
)
def passk_training(
    rewards: torch.Tensor, group_ids: torch.Tensor, *, k: int, eps: float = 1e-6
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Pass@k Training advantage, analytic form (Chen et al., arXiv 2508.10751).

    Binary rewards. For a group of N responses with N_neg wrong ones, the group's pass@k is
    `R̄ = 1 − C(N_neg, k) / C(N, k)` with `σ = sqrt(R̄ (1 − R̄))`, and

        correct (r = 1):  Â_pos = (1 − R̄) / (σ + eps)
        wrong   (r = 0):  Â_neg = (1 − R̄ − C(N_neg − 1, k − 1) / C(N − 1, k − 1)) / (σ + eps)

    (a wrong sample's advantage is the drop in pass@k conditioned on it being among the k). k = 1 is GRPO
    with the population std; k = N gives zero advantages; an all-wrong or all-correct group gives 0.
    Rewards other than 0 and 1 pass through unchanged (as upstream). Binomial ratios are computed as
    products of k (or k − 1) factors in float64 (exact zeros when N_neg < k, no overflow).

    Args:
        rewards: [B] in {0, 1}. group_ids: [B] integer.
        k: the k of pass@k, 1 ≤ k ≤ the smallest group size (else ValueError naming k).
        eps: added to σ, ≥ 0 (1e-6, as upstream).

    Returns:
        ([B] advantages, metrics: reward_mean, adv_mean, adv_std, frac_zero_std, passk_mean (mean R̄ over
        the responses)).
    """
    if isinstance(k, bool) or not isinstance(k, int):
        raise ValueError(f"k must be an int, got {k!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    eps = check_nonneg("eps", eps)
    r = _check_inputs(rewards, group_ids)  # [B]
    _, std, size = group_stats(r, group_ids)  # [B] each
    if r.numel():
        smallest = int(size.min())  # the one host read: k is validated against the data
        if k > smallest:
            raise ValueError(f"k must be <= the group size ({smallest}; pass@k of k > N samples is undefined), got {k}")
    inverse, n_groups = _group_index(group_ids)  # [B], G
    correct = (r == 1).to(torch.float64)  # [B]
    n = size.to(torch.float64)  # [B]
    c = torch.zeros(n_groups, dtype=torch.float64, device=r.device).index_add_(0, inverse, correct)[inverse]  # [B]
    ratio_all = torch.ones_like(n)  # [B] C(n − c, k) / C(n, k)
    for i in range(k):
        ratio_all = ratio_all * (n - c - i) / (n - i)
    ratio_neg = torch.ones_like(n)  # [B] C(n − c − 1, k − 1) / C(n − 1, k − 1)
    for i in range(k - 1):
        ratio_neg = ratio_neg * (n - c - 1 - i) / (n - 1 - i)
    ratio_neg = torch.where(c < n, ratio_neg, 0.0)  # no wrong sample: the term is never used
    rho = 1.0 - ratio_all  # [B] pass@k of the group
    sigma = (rho * (1.0 - rho)).clamp_min(0.0).sqrt()  # [B]
    a_pos = (1.0 - rho) / (sigma + eps)  # [B]
    a_neg = (1.0 - rho - ratio_neg) / (sigma + eps)  # [B]
    r64 = r.to(torch.float64)
    adv = torch.where(r64 == 1, a_pos, torch.where(r64 == 0, a_neg, r64)).to(r.dtype)  # [B]
    metrics = _reward_metrics(r, adv, std, size)
    metrics["passk_mean"] = rho.mean().to(torch.float32) if r.numel() else torch.zeros((), dtype=torch.float32)
    return adv, metrics


# ====================================================================================================
# B5. NSR / PSR / W-REINFORCE (arXiv 2506.01347).

_NSR_PAPER = "The Surprising Effectiveness of Negative Reinforcement (Zhu et al.), arXiv 2506.01347"
_NSR_NOTES = (
    "Evidence [V]: TianHongZXY/RLVR-Decomposed `compute_psr_nsr_outcome_advantage` (γ = 1, outcome reward, no "
    "baseline, no std). Their loss is PPO-clip with token-mean; use `ppo`."
)


def _no_baseline_metrics(r: torch.Tensor, adv: torch.Tensor, group_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    _, std, size = group_stats(r, group_ids)  # [B] each
    return _reward_metrics(r, adv, std, size)


@ADVANTAGES.register(
    "psr",
    inputs=("rewards", "group_ids"),
    paper=_NSR_PAPER,
    summary="positive sample reinforcement: A = r (only correct samples, no baseline)",
    notes=_NSR_NOTES,
)
def psr(rewards: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PSR: `A_i = r_i` — with rewards in {0, 1} only correct samples are reinforced (arXiv 2506.01347).

    No group baseline, no std: all-correct groups still get gradient.

    Args:
        rewards: [B]. group_ids: [B] integer (only for the metrics).

    Returns:
        ([B] advantages, metrics).
    """
    r = _check_inputs(rewards, group_ids)  # [B]
    adv = r.clone()  # [B]
    return adv, _no_baseline_metrics(r, adv, group_ids)


@ADVANTAGES.register(
    "nsr",
    inputs=("rewards", "group_ids"),
    paper=_NSR_PAPER,
    summary="negative sample reinforcement: A = r − 1 (only wrong samples are pushed down)",
    notes=_NSR_NOTES,
)
def nsr(rewards: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """NSR: `A_i = r_i − 1` — with rewards in {0, 1}, −1 on wrong samples, 0 on correct ones (arXiv 2506.01347).

    The paper's finding: training only on negative samples keeps the entropy up and improves pass@k.

    Args:
        rewards: [B]. group_ids: [B] integer (only for the metrics).

    Returns:
        ([B] advantages, metrics).
    """
    r = _check_inputs(rewards, group_ids)  # [B]
    adv = r - 1.0  # [B]
    return adv, _no_baseline_metrics(r, adv, group_ids)


@ADVANTAGES.register(
    "w_reinforce",
    inputs=("rewards", "group_ids"),
    paper=_NSR_PAPER,
    summary="weighted REINFORCE: A = λ·r on correct, r − 1 on wrong samples (λ = 0.1)",
    notes=_NSR_NOTES + " λ = 0.1 from `run_qwen2.5-math-7b_psr_nsr.sh` (the yaml default "
    "`positive_advantage_weight` is 1); our parameter is `lam`. As upstream, r = −1 counts as wrong (A = −2) and "
    "other rewards pass through unchanged.",
)
def w_reinforce(
    rewards: torch.Tensor, group_ids: torch.Tensor, *, lam: float = 0.1
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """W-REINFORCE: `L = λ·L_PSR + L_NSR` (Zhu et al., arXiv 2506.01347).

    `A = λ·r` for correct samples (r = 1), `A = r − 1` for wrong ones (r ∈ {0, −1}, as upstream), and the
    raw reward otherwise. No baseline, no std.

    Args:
        rewards: [B]. group_ids: [B] integer (only for the metrics).
        lam: λ ≥ 0, the weight of positive samples (upstream `positive_advantage_weight`; recipe 0.1).

    Returns:
        ([B] advantages, metrics).
    """
    lam = check_nonneg("lam", lam)
    r = _check_inputs(rewards, group_ids)  # [B]
    adv = torch.where(r == 1, lam * r, torch.where((r == 0) | (r == -1), r - 1.0, r))  # [B]
    return adv, _no_baseline_metrics(r, adv, group_ids)


# ====================================================================================================
# B6. Unlikeliness reward (arXiv 2506.02355).


def _rank_in_group(values: torch.Tensor, inverse: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Ascending rank of each value within its group (0 = smallest); ties keep index order. [B] long."""
    order = torch.argsort(values, stable=True)  # [B] by value
    order = order[torch.argsort(inverse[order], stable=True)]  # [B] by group, then value, then index
    sorted_groups = inverse[order]  # [B]
    pos = torch.arange(values.numel(), device=values.device)  # [B]
    sizes = torch.bincount(inverse, minlength=int(n_groups))  # [G]
    first = torch.cumsum(sizes, 0) - sizes  # [G] start of each group in the sorted order
    rank = torch.empty_like(pos)
    rank[order] = pos - first[sorted_groups]
    return rank  # [B]


@ADVANTAGES.register(
    "unlikeliness",
    inputs=("rewards", "group_ids", "logp", "mask"),
    paper="Rewarding the Unlikely (He, Fried, Welleck), arXiv 2506.02355; AndreHe02/rewarding-unlikely-release",
    summary="r·(1 − β·rank/G) with rank by the old policy's mean log-prob (likely → penalised), then GRPO",
    notes="Evidence [V]: RayLeanTrainer._compute_advantages (ranks over the whole group, 0 = least likely; "
    "β_rank = 0.25 from examples/lean/grpo.sh; GRPO eps 1e-6, unbiased std). Ours: ties rank in index order "
    "(upstream's argsort order is unspecified); β is limited to [0, 1] so rewards stay ≥ 0. The recipe's other "
    "parts (2 PPO epochs, dropping all-equal groups) are not part of the estimator.",
)
def unlikeliness(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta_rank: float = 0.25,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Unlikeliness reward (He, Fried, Welleck, arXiv 2506.02355), then GRPO.

    Per response, `ℓ_i = mean_t logp_{i,t}` over its valid tokens, the length-normalised log-likelihood of
    the OLD policy (the policy that sampled it). Within each group of size G, `rank_i` is the ascending rank
    of ℓ_i (0 = least likely), and `r'_i = r_i · (1 − β_rank · rank_i / G)`: a correct but likely answer is
    rewarded less than a correct unlikely one. Then `A = grpo(r')` (`(r' − mean) / (std + eps)`, unbiased
    std, singleton groups mean 0 std 1).

    Args:
        rewards: [B]. group_ids: [B] integer.
        logp: [B, T] log-prob of each sampled token under the old policy. mask: [B, T] response mask.
        beta_rank: β in [0, 1] (0.25, as the authors' recipe).
        eps: added to the std, ≥ 0.

    Returns:
        ([B] advantages, metrics: GRPO's (on r'), rank_penalty_mean (mean of 1 − r'/r over correct responses)).
    """
    beta = check_nonneg("beta_rank", beta_rank)
    if beta > 1.0:
        raise ValueError(f"beta_rank must be in [0, 1] (a reward factor 1 − β·rank/G ≥ 0), got {beta_rank!r}")
    r = _check_inputs(rewards, group_ids)  # [B]
    check_tensor("logp", logp, ndim=2)
    check_same_shape("logp", logp, mask=mask)
    if logp.shape[0] != r.shape[0]:
        raise ValueError(f"logp must have {r.shape[0]} rows (one per reward), got shape {tuple(logp.shape)}")
    dtype = float_dtype(r, logp)
    r, group_ids = r.to(device=logp.device, dtype=dtype), group_ids.to(logp.device)  # [B] each: where logp is
    m = as_bool(mask).to(logp.device)  # [B, T]
    ell = torch.where(m, logp.detach().to(dtype), 0.0).sum(-1) / m.sum(-1).clamp_min(1).to(dtype)  # [B]
    inverse, n_groups = _group_index(group_ids)  # [B], G
    rank = _rank_in_group(ell, inverse, n_groups).to(dtype)  # [B]
    _, _, size = group_stats(r, group_ids)  # [B] G of each response's group
    factor = 1.0 - beta * rank / size  # [B]
    shaped = r * factor  # [B]
    adv, metrics = grpo(shaped, group_ids, scale="group", eps=eps)
    good = r > 0  # [B]
    metrics["rank_penalty_mean"] = (torch.where(good, 1.0 - factor, 0.0).sum() / good.sum().clamp_min(1)).to(
        torch.float32
    )
    return adv, metrics


# ====================================================================================================
# B7. EntroPIC (arXiv 2511.15248): the loss term and its PI controller.


@CONTROLS.register(
    "entropic",
    kind="loss_term",
    inputs=("logp", "old_logp", "advantages", "mask", *AGGREGATION_CONTEXT),
    stage="current",
    off_when={"alpha": 0.0},
    log_as={"alpha": None},
    paper="EntroPIC (Yang et al.), arXiv 2511.15248; yk7333/EntroPIC core_algos.py",
    summary="add α·mean_M(−r·|A|) over high-probability tokens M: α > 0 sharpens, α < 0 flattens",
    notes="Evidence [V]: `compute_policy_loss_entropic` (unclipped ratio, M = mask ∧ p > 0.95 of the current "
    "policy, the policy loss's aggregation over M). Ours: with several micro-batches each micro-batch's M-mean is "
    "weighted by its share of the step's loss weight (upstream: its share of the sequences); α is fixed unless "
    "the `entropic_pi` controller drives it.",
)
def entropic(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    alpha: float = 0.0,
    high_prob_thresh: float = 0.95,
    mode: str = "token-mean",
    global_tokens: torch.Tensor | float | int | None = None,
    global_seqs: torch.Tensor | float | int | None = None,
    max_len: int | None = None,
    require_grad: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """EntroPIC's loss term (Yang et al., arXiv 2511.15248), to ADD to the policy loss.

    `term = α · agg_M(−r · |A|)` with `r = exp(logp − old_logp)` (unclipped, log-ratio clamped at ±20) over
    the high-probability tokens `M = mask ∧ (p > high_prob_thresh)` of the current policy. Its gradient pushes
    up log p of every token in M by `α·r·|A|` (per token of M): on top of the policy loss's `A·r`, positive-
    advantage high-probability tokens weigh about `1 + α` and negative ones `1 − α` (exactly so when M and the
    loss share one normaliser). α > 0 sharpens the policy (entropy falls), α < 0 flattens it (entropy rises);
    the `entropic_pi` controller sets α each step from the entropy error. Pair it with the `ppo` loss
    (upstream: dual-clip PPO).

    Aggregation: the policy loss's per-token weights restricted to M and renormalised over M, times this
    micro-batch's share of the step's loss weight. With token-mean on one micro-batch this is upstream's
    `α · Σ_M(−r|A|) / |M|`; an empty M gives 0.

    Args:
        logp: [B, T] log-prob of the sampled tokens, current policy (with grad).
        old_logp: [B, T] under the policy that sampled the batch. advantages: [B] or [B, T]. mask: [B, T].
        alpha: α in [−1, 1] (the controller's output; 0 disables the term).
        high_prob_thresh: probability threshold of M, in (0, 1) (0.95, as upstream).
        mode, global_tokens, global_seqs, max_len: the policy loss's aggregation (`aggregate_loss`).
        require_grad: raise if `logp` carries no gradient while autograd is on and α ≠ 0.

    Returns:
        (term [] with grad, metrics: entropic_term (detached), frac_high_prob (|M| / valid tokens), alpha).
    """
    a = check_real("alpha", alpha)
    if not -1.0 <= a <= 1.0:
        raise ValueError(f"alpha must be in [-1, 1] (weights 1 ± α stay >= 0), got {alpha!r}")
    thresh = check_real("high_prob_thresh", high_prob_thresh)
    if not 0.0 < thresh < 1.0:
        raise ValueError(f"high_prob_thresh must be in (0, 1), got {high_prob_thresh!r}")
    check_tensor("logp", logp, ndim=2)
    check_same_shape("logp", logp, old_logp=old_logp, mask=mask)
    if require_grad and a != 0.0 and torch.is_grad_enabled() and not logp.requires_grad:
        raise ValueError(
            "logp does not require grad: the EntroPIC term would have no gradient; pass the training forward's "
            "log-probs (or require_grad=False)"
        )
    dtype = float_dtype(logp, old_logp)
    m = as_bool(mask)  # [B, T]
    adv = token_advantages(advantages, mask).detach().to(dtype)  # [B, T]
    lp = logp.to(dtype)  # [B, T]
    log_ratio = (lp - old_logp.detach().to(dtype)).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)  # [B, T]
    ratio = torch.exp(log_ratio)  # [B, T]
    high = m & (lp.detach() > math.log(thresh))  # [B, T] M
    w = aggregation_weights(
        mask, mode, global_tokens=global_tokens, global_seqs=global_seqs, max_len=max_len, dtype=dtype
    )  # [B, T]
    w_high = torch.where(high, w, 0.0)  # [B, T]
    share = torch.where(m, w, 0.0).sum()  # [] this micro-batch's share of the loss weight
    norm = w_high.sum()  # []
    scale = torch.where(norm > 0, share / norm.clamp_min(torch.finfo(dtype).tiny), 0.0)  # []
    mean_high = torch.where(high, -ratio * adv.abs() * w_high, 0.0).sum() * scale  # []
    term = a * mean_high  # []
    metrics = {
        "entropic_term": term.detach().to(torch.float32),
        "frac_high_prob": (count(high) / count(m).clamp_min(1)).to(torch.float32),
        "alpha": torch.tensor(a, dtype=torch.float32, device=lp.device),
    }
    return term, metrics


@CONTROLLERS.register(
    "entropic_pi",
    drives="alpha",
    controls=("entropic", "entropy_polarity"),
    init_param="alpha_init",
    paper="EntroPIC (Yang et al.), arXiv 2511.15248; yk7333/EntroPIC dp_actor.py",
    summary="PI control of α toward a target entropy: α = clip(Kp·(H − H*) + Ki·I, −1, 1)",
    notes="Evidence [V] for the law and Kp = 1, Ki = 0.01 (run_entropic.sh uses H* = 0.1). Upstream updates per "
    "micro-batch with the current policy's entropy (I += (H − H*)·micro/mini); ours once per trainer step with "
    "the step's mean token entropy, so α lags one step and the first step runs with alpha_init. It also drives "
    "our `entropy_polarity` control (same sign convention: α > 0 lowers the entropy).",
)
class EntroPICController:
    """EntroPIC's proportional-integral controller of α (Yang et al., arXiv 2511.15248).

    After each step with measured mean token entropy H and error `e = H − H*`:

        α ← clip(Kp·e + Ki·I, −1, 1)     # with the integral BEFORE this step's error (as upstream)
        I ← I + e                        # never reset (no anti-windup, as upstream)

    H above the target gives α > 0, which sharpens the policy through the `entropic` term (or
    `entropy_polarity`) and lowers the entropy; H below gives α < 0.

    Per-step form (ours): upstream runs the law inside every micro-batch on the current policy's entropy
    (weighting the integral by micro/mini batch size, i.e. one unit per optimizer step); our trainer calls
    `update` once per step with the step's mean entropy, so `value` is the α for the NEXT step and the
    first step uses `alpha_init`.

    Args:
        target: target mean token entropy H* in nats, > 0 (upstream's recipe: 0.1; H* = 0 disables it there).
        kp: proportional gain Kp ≥ 0 (1.0). ki: integral gain Ki ≥ 0 (0.01).
        alpha_init: α before the first update, in [−1, 1] (the driven control's configured alpha).
    """

    def __init__(self, *, target: float, kp: float = 1.0, ki: float = 0.01, alpha_init: float = 0.0) -> None:
        self.target = check_positive("target", target)
        self.kp = check_nonneg("kp", kp)
        self.ki = check_nonneg("ki", ki)
        a = check_real("alpha_init", alpha_init)
        if not -1.0 <= a <= 1.0:
            raise ValueError(f"alpha_init must be in [-1, 1], got {alpha_init!r}")
        self.alpha = a
        self.integral = 0.0
        self.steps = 0

    @property
    def value(self) -> float:
        """The knob it drives for this step: α."""
        return self.alpha

    def metrics(self) -> dict[str, float]:
        """What to log after `update`: the α of the next step and the integral."""
        return {"controller/alpha": float(self.alpha), "controller/integral": float(self.integral)}

    def update(self, entropy: float) -> float:
        """Record this step's mean token entropy; returns the new α."""
        err = check_real("entropy", float(entropy)) - self.target
        self.alpha = max(-1.0, min(1.0, self.kp * err + self.ki * self.integral))
        self.integral += err
        self.steps += 1
        return self.alpha

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (JSON-serialisable)."""
        return {
            "alpha": self.alpha,
            "integral": self.integral,
            "steps": self.steps,
            "config": {"target": self.target, "kp": self.kp, "ki": self.ki},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()` output; the configuration must match this controller's."""
        _check_config(self, state, ("target", "kp", "ki"))
        self.alpha = float(state["alpha"])
        self.integral = float(state["integral"])
        self.steps = int(state["steps"])


# ====================================================================================================
# B8. Entropy polarity reweighting — OUR form (PAPO, arXiv 2605.11775, abstract only).


@CONTROLS.register(
    "entropy_polarity",
    kind="advantage",
    inputs=("s", "s_bar", "advantages", "mask"),
    stage="old",
    stages=("old", "current"),
    off_when={"alpha": 0.0},
    paper="ours (rlentropy), after PAPO / Entropy Polarity (Zhang et al.), arXiv 2605.11775 — abstract only",
    summary="A·(1 − α·polarity): reweight tokens by the sign of their first-order entropy change A·(E_p[S] − S)",
    notes="OURS. The paper's abstract says: a token's entropy polarity (the signed first-order entropy change of "
    "its update) splits into a sampled-token term and a state-wise correction; PAPO keeps both polarity branches "
    "and reweights advantages, steered by the entropy trajectory. No equations, weights or defaults are public. "
    "Our form: the exact softmax polarity sign(A·(s_bar − S)) (Theorem 3.3 of arXiv 2602.03392, "
    "`rlentropy.dynamics.pressure.token_pressure`), a single weight α with the `entropic_pi` sign convention, "
    "driven by that controller toward a target entropy. Not a reproduction of PAPO.",
)
def entropy_polarity(
    s: torch.Tensor,
    s_bar: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    alpha: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Entropy-polarity reweighting of the advantages — our form, after PAPO (arXiv 2605.11775, abstract only).

    For a softmax policy a token's update changes the entropy, to first order, by `ΔH ∝ A · (s_bar − S)`
    (`S = p(H + log p)` of the sampled token, `s_bar = E_p[S]`). Its polarity is `π = sign(A · (s_bar − S))`:
    +1 entropy-raising (a rewarded unlikely token, a penalised likely one), −1 entropy-lowering, 0 neutral.

        A' = A · (1 − α · π)

    α > 0 down-weights entropy-raising tokens by (1 − α) and up-weights entropy-lowering ones by (1 + α):
    the entropy falls; α < 0 does the opposite. |α| ≤ 1 never flips the sign of A (|α| = 1 switches one
    polarity off). The lr-free first-order
    entropy pressure `Σ_M A·(s_bar − S) / |M|` moves by exactly `−α · Σ_M |A·(s_bar − S)| / |M|`. Use a
    fixed α, or let the `entropic_pi` controller set it from the distance to a target entropy (same sign
    convention as EntroPIC's α).

    Args:
        s: [B, T] S of the sampled token (old policy at stage "old"). s_bar: [B, T] E_p[S].
        advantages: [B] or [B, T]. mask: [B, T].
        alpha: α in [−1, 1] (0 disables the control).

    Returns:
        ([B, T] advantages, metrics: frac_raise / frac_lower (shares of valid A ≠ 0 tokens with π = ±1),
        pressure_before / pressure_after (Σ_M A·(s_bar − S) / |M| with A and A')).
    """
    a = check_real("alpha", alpha)
    if not -1.0 <= a <= 1.0:
        raise ValueError(f"alpha must be in [-1, 1] (so A keeps its sign), got {alpha!r}")
    check_tensor("s", s, ndim=2)
    check_same_shape("s", s, s_bar=s_bar, mask=mask)
    dtype = float_dtype(s, s_bar, advantages)
    m = as_bool(mask)  # [B, T]
    adv = token_advantages(advantages, mask).detach().to(dtype)  # [B, T]
    xd = s_bar.detach().to(dtype) - s.detach().to(dtype)  # [B, T]
    polarity = torch.where(m, torch.sign(adv * xd), 0.0)  # [B, T]
    new_adv = adv * (1.0 - a * polarity)  # [B, T]
    active = m & (adv != 0)  # [B, T]
    n_active = count(active).clamp_min(1)
    metrics = {
        "frac_raise": (count(active & (polarity > 0)) / n_active).to(torch.float32),
        "frac_lower": (count(active & (polarity < 0)) / n_active).to(torch.float32),
        "pressure_before": masked_mean(adv * xd, m).to(torch.float32),
        "pressure_after": masked_mean(new_adv * xd, m).to(torch.float32),
    }
    return new_adv, metrics


# ====================================================================================================
# B10. Clip-low preset (arXiv 2509.26114).


@POLICY_LOSSES.register(
    "clip_low",
    inputs=("logp", "old_logp", "advantages", "mask"),
    paper="Clip-Low Increases Entropy and Clip-High Decreases Entropy (Park et al.), arXiv 2509.26114",
    summary="PPO preset clipping more on the low side (eps_low 0.1) and less on the high side (eps_high 0.28)",
    notes="Evidence [ABS]: the direction (clip-low raises, clip-high lowers the entropy; a more aggressive clip-low "
    "raises it) is the paper's abstract; its recommended values were not retrieved. Ours: eps_low = 0.1 (half of "
    "PPO's 0.2: more A < 0 tokens clipped) and eps_high = 0.28 (DAPO's clip-higher: fewer A > 0 tokens clipped); "
    "eps_low <= eps_high is enforced (otherwise use `ppo`).",
)
def clip_low(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 0.1,
    eps_high: float = 0.28,
    clip_ratio_c: float | None = 3.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clip-low preset of PPO: an entropy-raising asymmetric clip (Park et al., arXiv 2509.26114).

    Exactly `losses.ppo` with other defaults. Under rewards that carry no signal, clipping a negative-
    advantage token whose ratio fell below `1 − eps_low` (clip-low) biases the entropy up, clipping a
    positive-advantage token above `1 + eps_high` (clip-high) biases it down; with a symmetric ε = 0.2
    clip-high dominates and the entropy falls. A smaller eps_low clips more on the low side, a larger
    eps_high less on the high side: both raise the entropy.

    Args:
        logp, old_logp: [B, T]; advantages: [B] or [B, T]; mask: [B, T].
        eps_low: in [0, 1] (0.1, ours). eps_high: ≥ eps_low (0.28, ours: DAPO's value).
        clip_ratio_c: dual-clip bound c > 1, or None (3.0, as `ppo`).

    Returns:
        `ppo`'s (loss_mat [B, T], metrics).
    """
    lo = check_nonneg("eps_low", eps_low)
    hi = check_nonneg("eps_high", eps_high)
    if lo > hi:
        raise ValueError(
            f"eps_low must be <= eps_high for the clip-low preset (more clipping below than above), got "
            f"eps_low={eps_low!r} > eps_high={eps_high!r}; use the ppo loss for other settings"
        )
    return ppo(logp, old_logp, advantages, mask, eps_low=lo, eps_high=hi, clip_ratio_c=clip_ratio_c)
