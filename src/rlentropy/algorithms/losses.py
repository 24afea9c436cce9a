"""Policy losses: one signature, one registry.

    fn(logp, old_logp, advantages, mask, **params) -> (loss_mat [B, T], metrics)

* `logp` [B, T]: log-prob of each sampled token under the current policy (with grad).
* `old_logp` [B, T]: the same under the policy that produced the batch (no grad).
* `advantages`: [B] per response or [B, T] per token.
* `mask` [B, T]: loss mask (response mask after any control), bool or 0/1.

The loss matrix is per token, 0 on masked entries; the caller reduces it with
`aggregate_loss(loss_mat, mask, spec.agg_mode or its own mode, ...)`. GSPO requires
seq-mean-token-mean (`get_policy_loss_spec("gspo").agg_mode`). Metrics are 0-d float32 tensors,
fractions taken over the valid tokens of the tensors given, unprefixed (callers namespace them).

Names: ppo (clip-higher, dual clip), gspo, cispo, ce_gppo, clip_cov, kl_cov, and the losses TRL / verl
ship: sapo, gmpo, dppo_tv, dppo_kl, gpg, dro, luspo, vespo. Defaults and sources are in
`docs/algorithms.md` and in each `PolicyLossSpec`. A loss with a required aggregation (gspo, sapo, gmpo,
luspo, vespo) declares it as `agg_mode`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from rlentropy.algorithms._util import (
    as_bool,
    check_fraction,
    check_nonneg,
    check_positive,
    check_real,
    check_same_shape,
    check_tensor,
    count,
    descending_rank,
    float_dtype,
    floor_count,
    masked_mean,
    token_advantages,
)
from rlentropy.algorithms.registry import PolicyLossSpec, Registry

PolicyLossFn = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]
SelectFn = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]

# Log-ratios are clamped to ±20 before exp (verl does the same): exp(20) ≈ 4.9e8 keeps fp32 finite.
LOG_RATIO_CLAMP = 20.0


POLICY_LOSSES: Registry[PolicyLossSpec] = Registry("policy loss", PolicyLossSpec)
_LOSS_INPUTS = ("logp", "old_logp", "advantages", "mask")


def _prepare(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.dtype]:
    """Validate shapes; return (log_ratio [B, T], advantages [B, T], mask bool [B, T], compute dtype)."""
    check_tensor("logp", logp, ndim=2)
    check_same_shape("logp", logp, old_logp=old_logp, mask=mask)
    dtype = float_dtype(logp, old_logp)
    m = as_bool(mask)  # [B, T]
    adv = token_advantages(advantages, mask).to(dtype)  # [B, T]
    log_ratio = logp.to(dtype) - old_logp.to(dtype)  # [B, T]
    return log_ratio, adv, m, dtype


def _frac(cond: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Fraction of valid tokens where `cond` holds. [] float32."""
    return (count(cond & m) / count(m).clamp_min(1)).to(torch.float32)


def _check_eps(eps_low: float, eps_high: float) -> tuple[float, float]:
    eps_low = check_nonneg("eps_low", eps_low)
    if eps_low > 1.0:
        raise ValueError(f"eps_low must be in [0, 1] (the ratio's lower bound is 1 - eps_low), got {eps_low}")
    return eps_low, check_nonneg("eps_high", eps_high)


def _check_clip_c(clip_ratio_c: float | None) -> float | None:
    if clip_ratio_c is None:
        return None
    c = check_real("clip_ratio_c", clip_ratio_c)
    if c <= 1.0:
        raise ValueError(f"clip_ratio_c must be > 1 (dual-clip bound), or None to disable, got {clip_ratio_c}")
    return c


def _masked(loss: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """0 on masked entries (also kills inf / NaN computed on padding). [B, T]."""
    return torch.where(m, loss, 0.0)


def _row_mean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Mean of `x` over the valid tokens of each row; 0 on a row without one. [B]."""
    return torch.where(m, x, 0.0).sum(-1) / m.sum(-1).clamp_min(1).to(x.dtype)


def _sequence_ratio(lp: torch.Tensor, log_ratio: torch.Tensor, m: torch.Tensor, *, max_log: float) -> torch.Tensor:
    """Per-token copy of the sequence (geometric-mean) ratio, for GSPO-style losses.

    `log s_bt = sg(mean_t M·log r) + lp_t − sg(lp_t)`, clamped at `max_log`: the value is the row's ratio
    `s_b`, the gradient of token t is `s_b ∇lp_t`. Summed over a row's tokens, its gradient is the
    gradient of `n_b · s_b` through the mean log-ratio. [B, T].
    """
    seq_log_ratio = _row_mean(log_ratio, m)  # [B]
    return torch.exp((lp - lp.detach() + seq_log_ratio.detach()[:, None]).clamp(max=max_log))  # [B, T]


def _base_metrics(log_ratio: torch.Tensor, ratio: torch.Tensor, m: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        # k1 estimate of KL(old || new) (verl `ppo_kl`).
        "approx_kl": masked_mean(-log_ratio.detach(), m).to(torch.float32),
        "ratio_mean": masked_mean(ratio.detach(), m).to(torch.float32),
    }


@POLICY_LOSSES.register(
    "ppo",
    inputs=_LOSS_INPUTS,
    also_in=("TRL", "verl", "Trinity-RFT"),
    paper="PPO arXiv 1707.06347; dual clip arXiv 1912.09729; clip-higher (eps_high 0.28) DAPO arXiv 2503.14476",
    summary="clipped surrogate with clip-higher (eps_low / eps_high) and dual clip c",
)
def ppo(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    clip_ratio_c: float | None = 3.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate with asymmetric clip (clip-higher) and dual clip.

    `r = exp(logp − old_logp)`; `L = max(−A·r, −A·clip(r, 1 − eps_low, 1 + eps_high))`; for A < 0
    additionally `L = min(L, −A·c)` (dual clip, Ye et al. arXiv 1912.09729). DAPO's clip-higher is
    `eps_high=0.28` (arXiv 2503.14476).

    Args:
        logp, old_logp: [B, T]; advantages: [B] or [B, T]; mask: [B, T].
        eps_low: lower clip, in [0, 1]. eps_high: upper clip, ≥ 0.
        clip_ratio_c: dual-clip bound c > 1, or None to disable.

    Returns:
        (loss_mat [B, T], metrics: clip_frac (L2 > L1), clip_frac_low (ratio below 1 − eps_low with
        A < 0), clip_frac_high (ratio above 1 + eps_high with A > 0), clip_frac_dual, approx_kl, ratio_mean).
    """
    eps_low, eps_high = _check_eps(eps_low, eps_high)
    c = _check_clip_c(clip_ratio_c)
    log_ratio, adv, m, _ = _prepare(logp, old_logp, advantages, mask)
    ratio = torch.exp(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))  # [B, T]
    loss1 = -adv * ratio  # [B, T]
    loss2 = -adv * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)  # [B, T]
    clipped = torch.maximum(loss1, loss2)  # [B, T]
    is_clipped = loss2 > loss1  # [B, T]
    if c is not None:
        loss3 = -adv * c  # [B, T]
        is_dual = (adv < 0) & (clipped > loss3)  # [B, T]
        loss = torch.where(adv < 0, torch.minimum(clipped, loss3), clipped)  # [B, T]
    else:
        is_dual = torch.zeros_like(m)
        loss = clipped
    metrics = {
        "clip_frac": _frac(is_clipped, m),
        "clip_frac_low": _frac(is_clipped & (adv < 0), m),
        "clip_frac_high": _frac(is_clipped & (adv > 0), m),
        "clip_frac_dual": _frac(is_dual, m),
        **_base_metrics(log_ratio, ratio, m),
    }
    return _masked(loss, m), metrics


@POLICY_LOSSES.register(
    "gspo",
    inputs=_LOSS_INPUTS,
    agg_mode="seq-mean-token-mean",
    default_agg_mode="seq-mean-token-mean",
    paper="GSPO arXiv 2507.18071",
    summary="clip on the sequence-level (geometric-mean) ratio",
    also_in=("TRL", "verl", "Trinity-RFT"),
)
def gspo(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 3e-4,
    eps_high: float = 4e-4,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GSPO: clipped surrogate on the sequence-level ratio (Zheng et al., arXiv 2507.18071).

    `log s_b = mean_t M·(logp − old_logp)`; per token `log s_bt = sg(log s_b) + logp_t − sg(logp_t)`
    (clamped at 10 before exp, as verl), so the value is `s_b` and the gradient of token t is
    `s_b ∇logp_t`. `L = max(−A·s_bt, −A·clip(s_bt, 1 − eps_low, 1 + eps_high))`. Must be aggregated with
    seq-mean-token-mean (`PolicyLossSpec.agg_mode`).

    Args:
        logp, old_logp: [B, T]; advantages: [B] or [B, T]; mask: [B, T].
        eps_low: in [0, 1]. eps_high: ≥ 0. Defaults from verl's GSPO example (3e-4 / 4e-4).

    Returns:
        (loss_mat [B, T], metrics: clip_frac, clip_frac_low, clip_frac_high, approx_kl, ratio_mean
        (token-weighted mean of s_b)).
    """
    eps_low, eps_high = _check_eps(eps_low, eps_high)
    log_ratio, adv, m, dtype = _prepare(logp, old_logp, advantages, mask)
    s = _sequence_ratio(logp.to(dtype), log_ratio, m, max_log=10.0)  # [B, T]
    loss1 = -adv * s  # [B, T]
    loss2 = -adv * s.clamp(1.0 - eps_low, 1.0 + eps_high)  # [B, T]
    loss = torch.maximum(loss1, loss2)  # [B, T]
    is_clipped = loss2 > loss1  # [B, T]
    metrics = {
        "clip_frac": _frac(is_clipped, m),
        "clip_frac_low": _frac(is_clipped & (adv < 0), m),
        "clip_frac_high": _frac(is_clipped & (adv > 0), m),
        **_base_metrics(log_ratio, s, m),
    }
    return _masked(loss, m), metrics


@POLICY_LOSSES.register(
    "cispo",
    inputs=_LOSS_INPUTS,
    paper="MiniMax-M1 arXiv 2506.13585",
    summary="REINFORCE with a clipped stop-gradient IS weight",
    also_in=("TRL", "verl", "Trinity-RFT"),
)
def cispo(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 1.0,
    eps_high: float = 4.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CISPO: REINFORCE with a clipped, stop-gradient importance weight (MiniMax-M1, arXiv 2506.13585).

    `L = −sg(clip(r, 1 − eps_low, 1 + eps_high)) · A · logp`. No token loses its gradient; the weight
    is bounded. Defaults: no lower bound (eps_low = 1, as the paper) and an upper bound r ≤ 5
    (eps_high = 4; ScaleRL's ε_max = 5, also TRL's recommendation).

    Args:
        logp, old_logp: [B, T]; advantages: [B] or [B, T]; mask: [B, T].
        eps_low: in [0, 1]. eps_high: ≥ 0.

    Returns:
        (loss_mat [B, T], metrics: clip_frac (weight clipped), clip_frac_low, clip_frac_high, approx_kl,
        ratio_mean).
    """
    eps_low, eps_high = _check_eps(eps_low, eps_high)
    log_ratio, adv, m, dtype = _prepare(logp, old_logp, advantages, mask)
    ratio = torch.exp(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)).detach()  # [B, T]
    weight = ratio.clamp(1.0 - eps_low, 1.0 + eps_high)  # [B, T] no grad
    loss = -weight * adv * logp.to(dtype)  # [B, T]
    low = ratio < 1.0 - eps_low  # [B, T]
    high = ratio > 1.0 + eps_high  # [B, T]
    metrics = {
        "clip_frac": _frac(low | high, m),
        "clip_frac_low": _frac(low, m),
        "clip_frac_high": _frac(high, m),
        **_base_metrics(log_ratio, ratio, m),
    }
    return _masked(loss, m), metrics


@POLICY_LOSSES.register(
    "ce_gppo",
    inputs=_LOSS_INPUTS,
    paper="CE-GPPO arXiv 2509.20712",
    summary="gradient-preserving clip: clipped tokens keep a bounded gradient (β1, β2)",
)
def ce_gppo(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    beta1: float = 0.75,
    beta2: float = 1.0,
    clip_ratio_c: float | None = 10.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CE-GPPO: gradient-preserving clip (Kwai-Klear, arXiv 2509.20712).

    Tokens PPO would clip keep a bounded gradient through `r / sg(r)` (value 1, gradient ∇logp):
    A < 0 with r < 1 − eps_low: `L = −β1 (1 − eps_low) · r/sg(r) · A`;
    A > 0 with r > 1 + eps_high: `L = −β2 (1 + eps_high) · r/sg(r) · A`; otherwise `L = −r·A`;
    then for A < 0 the dual clip `L = min(L, −A·c)`. β1 scales the entropy-decreasing signal (negative
    advantage, low probability), β2 the entropy-increasing one.

    Args:
        logp, old_logp: [B, T]; advantages: [B] or [B, T]; mask: [B, T].
        eps_low: in [0, 1]. eps_high: ≥ 0. beta1, beta2: ≥ 0 (defaults: the 7B recipe 0.75 / 1.0).
        clip_ratio_c: dual-clip bound > 1 (recipe: 10), or None.

    Returns:
        (loss_mat [B, T], metrics: clip_frac_low, clip_frac_high (tokens on the gradient-preserving
        branches), clip_frac_dual, approx_kl, ratio_mean).
    """
    eps_low, eps_high = _check_eps(eps_low, eps_high)
    beta1 = check_nonneg("beta1", beta1)
    beta2 = check_nonneg("beta2", beta2)
    c = _check_clip_c(clip_ratio_c)
    log_ratio, adv, m, _ = _prepare(logp, old_logp, advantages, mask)
    ratio = torch.exp(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))  # [B, T]
    unit = ratio / ratio.detach()  # [B, T] value 1, gradient ∂ log r
    low = (ratio < 1.0 - eps_low) & (adv < 0)  # [B, T]
    high = (ratio > 1.0 + eps_high) & (adv > 0)  # [B, T]
    loss = torch.where(
        low,
        -beta1 * (1.0 - eps_low) * unit * adv,
        torch.where(high, -beta2 * (1.0 + eps_high) * unit * adv, -ratio * adv),
    )  # [B, T]
    if c is not None:
        loss3 = -adv * c  # [B, T]
        is_dual = (adv < 0) & (loss > loss3)  # [B, T]
        loss = torch.where(adv < 0, torch.minimum(loss, loss3), loss)  # [B, T]
    else:
        is_dual = torch.zeros_like(m)
    metrics = {
        "clip_frac_low": _frac(low, m),
        "clip_frac_high": _frac(high, m),
        "clip_frac_dual": _frac(is_dual, m),
        **_base_metrics(log_ratio, ratio, m),
    }
    return _masked(loss, m), metrics


def _token_cov(logp: torch.Tensor, adv: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Per-token centred product `(A − mean_M A)·(logp − mean_M logp)`, detached. [B, T]."""
    lp = logp.detach()
    a = adv.detach()
    return (a - masked_mean(a, m)) * (lp - masked_mean(lp, m))  # [B, T]


def clip_cov_select(
    logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_cov_ratio: float = 2e-4,
    clip_cov_lb: float = 1.0,
    clip_cov_ub: float = 5.0,
    generator: torch.Generator,
    exclude: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clip-Cov token selection: a uniformly random subset of the tokens whose covariance lies in a band.

    `cov_t = (A_t − mean A)·(logp_t − mean logp)` over the valid tokens given; candidates are valid,
    not excluded, with `lb < cov_t < ub`; `min(max(floor(ratio·N), 1), |candidates|)` of them are drawn
    uniformly (random keys from `generator`, no host sync). Call it on a whole batch (with the old
    log-probs) and pass slices as `clip_cov(..., selected=...)` to select globally rather than per
    micro-batch.

    Args:
        logp: [B, T] log-probs (detached inside). advantages: [B] or [B, T]. mask: [B, T].
        clip_cov_ratio: fraction of valid tokens to detach, in (0, 1].
        clip_cov_lb, clip_cov_ub: the covariance band, lb < ub.
        generator: the only source of randomness (required).
        exclude: [B, T] bool, tokens that may not be chosen (the loss passes its PPO-clipped tokens).

    Returns:
        (selected [B, T] bool, metrics: tokens_selected, candidates).
    """
    ratio = check_fraction("clip_cov_ratio", clip_cov_ratio)
    lb = check_real("clip_cov_lb", clip_cov_lb)
    ub = check_real("clip_cov_ub", clip_cov_ub)
    if not lb < ub:
        raise ValueError(f"clip_cov_lb must be < clip_cov_ub, got {lb} and {ub}")
    if not isinstance(generator, torch.Generator):
        raise ValueError("generator must be a torch.Generator (Clip-Cov draws its subset from it)")
    check_tensor("logp", logp, ndim=2)
    check_same_shape("logp", logp, mask=mask, exclude=exclude)
    m = as_bool(mask)  # [B, T]
    adv = token_advantages(advantages, mask).to(float_dtype(logp))  # [B, T]
    cov = _token_cov(logp.to(adv.dtype), adv, m)  # [B, T]
    cand = m & (cov > lb) & (cov < ub)  # [B, T]
    if exclude is not None:
        cand = cand & ~as_bool(exclude)
    n_clip = floor_count(ratio, count(m)).clamp_min(1)  # [] float64
    keys = torch.rand(logp.shape, generator=generator, device=generator.device).to(logp.device)  # [B, T]
    selected = cand & (descending_rank(keys, cand) < n_clip)  # [B, T]
    return selected, {
        "tokens_selected": count(selected).to(torch.float32),
        "candidates": count(cand).to(torch.float32),
    }


@POLICY_LOSSES.register(
    "clip_cov",
    inputs=(*_LOSS_INPUTS, "generator", "selected"),
    select=clip_cov_select,
    needs_generator=True,
    paper="Cui et al. arXiv 2505.22617",
    summary="detach a random fraction of high-Cov(log p, A) tokens",
    also_in=("verl",),
)
def clip_cov(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 1.0,
    eps_high: float = 1.0,
    clip_cov_ratio: float = 2e-4,
    clip_cov_lb: float = 1.0,
    clip_cov_ub: float = 5.0,
    generator: torch.Generator | None = None,
    selected: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clip-Cov: detach a small random subset of high-covariance tokens (Cui et al., arXiv 2505.22617).

    PPO surrogate `max(−A·r, −A·clip(r, 1 − eps_low, 1 + eps_high))` (no dual clip), multiplied by 0
    on the selected tokens. The mask is untouched: selected tokens stay in the token-mean denominator.
    Selection (`clip_cov_select`) is per call (per micro-batch, like upstream) unless `selected` is given.
    Defaults are the recipe's (eps 1 / 1, i.e. ratio clamp [0, 2]; ratio 2e-4; band (1, 5)).

    Args:
        logp, old_logp: [B, T]; advantages: [B] or [B, T]; mask: [B, T].
        eps_low: in [0, 1]. eps_high: ≥ 0. clip_cov_ratio, clip_cov_lb, clip_cov_ub: see `clip_cov_select`.
        generator: required unless `selected` is given.
        selected: [B, T] bool, a precomputed selection (global selection over the whole batch).

    Returns:
        (loss_mat [B, T], metrics: clip_frac (PPO clip), tokens_selected, frac_selected (verl's
        pg_clipfrac), candidates (only when selecting here), approx_kl, ratio_mean).
    """
    eps_low, eps_high = _check_eps(eps_low, eps_high)
    log_ratio, adv, m, _ = _prepare(logp, old_logp, advantages, mask)
    ratio = torch.exp(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))  # [B, T]
    loss1 = -adv * ratio  # [B, T]
    loss2 = -adv * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)  # [B, T]
    is_clipped = (loss2 > loss1) & m  # [B, T]
    metrics: dict[str, torch.Tensor] = {}
    if selected is None:
        if generator is None:
            raise ValueError("clip_cov needs generator= (a torch.Generator) or a precomputed selected= mask")
        selected, metrics = clip_cov_select(
            logp,
            adv,
            mask,
            clip_cov_ratio=clip_cov_ratio,
            clip_cov_lb=clip_cov_lb,
            clip_cov_ub=clip_cov_ub,
            generator=generator,
            exclude=is_clipped,
        )
    else:
        check_same_shape("logp", logp, selected=selected)
        selected = as_bool(selected) & m
        metrics["tokens_selected"] = count(selected).to(torch.float32)
    loss = torch.where(selected, 0.0, torch.maximum(loss1, loss2))  # [B, T]
    metrics.update(
        {
            "clip_frac": _frac(is_clipped, m),
            "frac_selected": _frac(selected, m),
            **_base_metrics(log_ratio, ratio, m),
        }
    )
    return _masked(loss, m), metrics


def kl_cov_select(
    logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *, kl_cov_ratio: float = 2e-4
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """KL-Cov token selection: the top `max(1, floor(ratio·N))` valid tokens by covariance.

    Deterministic (ties keep row-major order). `kl_cov_ratio` is a fraction, never a percent: PRIME's
    `k_percent=0.2` is `kl_cov_ratio=0.002` here.

    Args:
        logp: [B, T] (detached inside). advantages: [B] or [B, T]. mask: [B, T].
        kl_cov_ratio: in (0, 1].

    Returns:
        (selected [B, T] bool, metrics: tokens_selected).
    """
    ratio = check_fraction("kl_cov_ratio", kl_cov_ratio)
    check_tensor("logp", logp, ndim=2)
    check_same_shape("logp", logp, mask=mask)
    m = as_bool(mask)  # [B, T]
    adv = token_advantages(advantages, mask).to(float_dtype(logp))  # [B, T]
    cov = _token_cov(logp.to(adv.dtype), adv, m)  # [B, T]
    k = floor_count(ratio, count(m)).clamp_min(1)  # [] float64
    selected = m & (descending_rank(cov, m) < k)  # [B, T]
    return selected, {"tokens_selected": count(selected).to(torch.float32)}


@POLICY_LOSSES.register(
    "kl_cov",
    inputs=(*_LOSS_INPUTS, "selected"),
    select=kl_cov_select,
    paper="Cui et al. arXiv 2505.22617",
    summary="|log r| penalty on the top-Cov(log p, A) tokens",
    also_in=("verl",),
)
def kl_cov(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    kl_cov_ratio: float = 2e-4,
    ppo_kl_coef: float = 1.0,
    selected: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """KL-Cov: `β·|logp − old_logp|` on the top-covariance tokens (Cui et al., arXiv 2505.22617).

    `L = −A·r` everywhere (no PPO clipping at all), plus `ppo_kl_coef·|logp − old_logp|` on the
    selected tokens. On a strictly on-policy step the penalty and its gradient are 0.
    Defaults: ratio 2e-4 (verl's default and the 32B recipe; the 7B recipe uses 2e-3), β = 1 (all recipes).

    Args:
        logp, old_logp: [B, T]; advantages: [B] or [B, T]; mask: [B, T].
        kl_cov_ratio: a fraction in (0, 1]. ppo_kl_coef: ≥ 0.
        selected: [B, T] bool, a precomputed selection (global selection over the whole batch).

    Returns:
        (loss_mat [B, T], metrics: tokens_selected, frac_selected, abs_log_ratio_mean, approx_kl, ratio_mean).
    """
    beta = check_nonneg("ppo_kl_coef", ppo_kl_coef)
    log_ratio, adv, m, _ = _prepare(logp, old_logp, advantages, mask)
    if selected is None:
        selected, metrics = kl_cov_select(logp, adv, mask, kl_cov_ratio=kl_cov_ratio)
    else:
        check_fraction("kl_cov_ratio", kl_cov_ratio)
        check_same_shape("logp", logp, selected=selected)
        selected = as_bool(selected) & m
        metrics = {"tokens_selected": count(selected).to(torch.float32)}
    ratio = torch.exp(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))  # [B, T]
    penalty = torch.where(selected, beta * log_ratio.abs(), 0.0)  # [B, T]
    loss = -adv * ratio + penalty  # [B, T]
    metrics.update(
        {
            "frac_selected": _frac(selected, m),
            "abs_log_ratio_mean": masked_mean(log_ratio.detach().abs(), m).to(torch.float32),
            **_base_metrics(log_ratio, ratio, m),
        }
    )
    return _masked(loss, m), metrics


# ----------------------------------------------------------------------------------------------------
# Losses TRL 1.16 and verl 0.9.1 ship (issue #12): SAPO, GMPO, DPPO-TV / -KL, GPG, DRO, LUSPO, VESPO.


@POLICY_LOSSES.register(
    "sapo",
    inputs=_LOSS_INPUTS,
    agg_mode="seq-mean-token-mean",
    default_agg_mode="seq-mean-token-mean",
    paper="SAPO arXiv 2511.20347",
    summary="soft sigmoid gate of the ratio instead of the clip (temperatures τ+ / τ−)",
    also_in=("TRL", "verl"),
    notes=(
        "Aggregation seq-mean-token-mean is declared because both upstreams fix it: verl's "
        "compute_policy_loss_sapo hard-codes it (ignores loss_agg_mode), TRL's loss_type='sapo' reduces like "
        "'grpo' (per-row token mean, then the mean over rows). Differences on a fully masked row: TRL counts it "
        "in the row mean, verl and aggregate_loss do not (pass global_seqs = B for TRL's). verl adds 1e-8 to each "
        "row's token count, which vanishes in float32 for the bool mask verl passes. The log-ratio is clamped to "
        "±20 before exp (verl; TRL does not clamp). A = 0 takes τ− (both upstreams: A > 0 → τ+)."
    ),
)
def sapo(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    tau_pos: float = 1.0,
    tau_neg: float = 1.05,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SAPO: a smooth temperature-controlled gate replaces the hard clip (Qwen, arXiv 2511.20347).

    `r = exp(logp − old_logp)`; `g_τ(r) = σ(τ(r − 1)) · 4/τ` with `τ = tau_pos` where A > 0, else
    `tau_neg`; `L = −g_τ(r) · A`, the gradient flowing through r. `∂g/∂r = 4σ(1 − σ) = sech²(τ(r − 1)/2)`
    is 1 at r = 1 (the on-policy gradient is PPO's) and decays smoothly off-policy instead of dropping to
    0. The value at r = 1 is 2/τ, not 1, so loss values carry an offset. Must be aggregated with
    seq-mean-token-mean (`PolicyLossSpec.agg_mode`). Defaults: τ+ = 1.0, τ− = 1.05 (the paper's
    Qwen3-30B-A3B values; verl ActorConfig and TRL GRPOConfig).

    Args:
        logp, old_logp: [B, T]; advantages: [B] or [B, T]; mask: [B, T].
        tau_pos: gate temperature of tokens with A > 0, > 0. tau_neg: of tokens with A ≤ 0, > 0.

    Returns:
        (loss_mat [B, T], metrics: gate_grad_mean (mean of sech²(τ(r − 1)/2), the gradient weight relative
        to PPO's unclipped one), approx_kl, ratio_mean).
    """
    tau_pos = check_positive("tau_pos", tau_pos)
    tau_neg = check_positive("tau_neg", tau_neg)
    log_ratio, adv, m, _ = _prepare(logp, old_logp, advantages, mask)
    ratio = torch.exp(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))  # [B, T]
    tau = torch.where(adv > 0, adv.new_tensor(tau_pos), adv.new_tensor(tau_neg))  # [B, T]
    sig = torch.sigmoid(tau * (ratio - 1.0))  # [B, T]
    loss = -sig * (4.0 / tau) * adv  # [B, T]
    sig_d = sig.detach()
    metrics = {
        "gate_grad_mean": masked_mean(4.0 * sig_d * (1.0 - sig_d), m).to(torch.float32),
        **_base_metrics(log_ratio, ratio, m),
    }
    return _masked(loss, m), metrics


@POLICY_LOSSES.register(
    "gmpo",
    inputs=_LOSS_INPUTS,
    agg_mode="seq-mean-token-sum",
    default_agg_mode="seq-mean-token-sum",
    paper="GMPO arXiv 2507.20673",
    summary="geometric mean of sign-aware log-clipped token ratios, one term per sequence",
    also_in=("verl",),
    notes=(
        "verl's loss_mode 'geo_mean'. verl returns mean_i L_i (torch.mean over the rows, ignoring loss_agg_mode "
        "and the global batch info); here each valid token of row i carries L_i / n_i and seq-mean-token-sum "
        "(declared) sums it back to L_i and divides by the rows with a valid token — verl's value whenever no "
        "row is fully masked (verl counts an empty row, whose L_i is 0, in its mean), and micro-batch invariant "
        "with global_seqs. verl adds 1e-8 to n_i inside the row means, which vanishes in float32 for the bool "
        "mask verl passes. "
        "Defaults are verl's clip_ratio_low / _high (0.2, i.e. r in (e^-0.2, e^0.2)); the authors' recipe "
        "(callsys/GMPO scripts/qwen2.5-math-7b-gmpo.sh, CLIPRANGE=0.4) uses 0.4. "
        "Only sequence-level advantages match the paper (a token with A = 0 drops out of the ratio)."
    ),
)
def gmpo(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GMPO: maximise the geometric mean of the token ratios of a sequence (Y. Zhao et al., arXiv 2507.20673).

    Per token `d = logp − old_logp` (not clamped) is clipped in log space on the side the advantage
    pushes: `d̃ = min(d, eps_high)` where A > 0, `max(d, −eps_low)` where A < 0, 0 where A = 0.
    Per row `ρ_i = exp(mean_t M·d̃)`, `Â_i = mean_t M·A`, `L_i = −Â_i · ρ_i`. The loss matrix holds
    `L_i / n_i` on each of the row's n_i valid tokens, so seq-mean-token-sum (`PolicyLossSpec.agg_mode`)
    gives `mean_i L_i`, verl's `geo_mean` value; its gradient is `−Â_i ρ_i mean_t M·∇d̃_t`.

    Args:
        logp, old_logp: [B, T]; advantages: [B] or [B, T] (sequence-level, as verl supports); mask: [B, T].
        eps_low, eps_high: log-space clip bounds, ≥ 0 (verl's clip_ratio_low / clip_ratio_high, default 0.2;
            the authors' recipe uses 0.4: `eps_low=eps_high=0.4`).

    Returns:
        (loss_mat [B, T], metrics: clip_frac (tokens whose d̃ ≠ d), clip_frac_low (A < 0), clip_frac_high
        (A > 0), approx_kl, ratio_mean (token-weighted mean of ρ_i)).
    """
    eps_low = check_nonneg("eps_low", eps_low)
    eps_high = check_nonneg("eps_high", eps_high)
    log_ratio, adv, m, dtype = _prepare(logp, old_logp, advantages, mask)
    d_clip = torch.where(
        adv > 0, log_ratio.clamp(max=eps_high), torch.where(adv < 0, log_ratio.clamp(min=-eps_low), 0.0)
    )  # [B, T]
    rho = torch.exp(_row_mean(d_clip, m))  # [B]
    seq_adv = _row_mean(adv, m)  # [B]
    n = m.sum(-1).clamp_min(1).to(dtype)  # [B]
    loss = (-seq_adv * rho / n)[:, None].expand(m.shape)  # [B, T]
    high = (adv > 0) & (log_ratio > eps_high)  # [B, T]
    low = (adv < 0) & (log_ratio < -eps_low)  # [B, T]
    metrics = {
        "clip_frac": _frac(high | low, m),
        "clip_frac_low": _frac(low, m),
        "clip_frac_high": _frac(high, m),
        **_base_metrics(log_ratio, rho[:, None].expand(m.shape), m),
    }
    return _masked(loss, m), metrics


def _dppo(
    divergence: str,
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float,
    eps_high: float,
    clip_ratio_c: float | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPPO-Binary with the TV or binary-KL trust region (the two registered entries share this)."""
    eps_low = check_nonneg("eps_low", eps_low)
    eps_high = check_nonneg("eps_high", eps_high)
    c = None if clip_ratio_c is None else check_positive("clip_ratio_c", clip_ratio_c)
    log_ratio, adv, m, dtype = _prepare(logp, old_logp, advantages, mask)
    ratio = torch.exp(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)).detach()  # [B, T]
    weight = ratio if c is None else ratio.clamp(max=c)  # [B, T] no grad
    lp = logp.to(dtype)  # [B, T]
    lp_d = lp.detach()
    olp = old_logp.to(dtype)  # [B, T]
    p, q = torch.exp(lp_d), torch.exp(olp)  # [B, T]
    if divergence == "tv":
        valid_pos = (p - q) <= eps_high  # [B, T]
        valid_neg = (p - q) >= -eps_low  # [B, T]
    else:
        kl = q * (olp - lp_d) + (1 - q) * torch.log((1.0 - q + 1e-8) / (1.0 - p + 1e-8))  # [B, T]
        valid_pos = (kl <= eps_high) | (p <= q)  # [B, T]
        valid_neg = (kl <= eps_low) | (p >= q)  # [B, T]
    valid = torch.where(adv > 0, valid_pos, valid_neg)  # [B, T] bool
    loss = torch.where(valid, -adv * weight * lp, 0.0)  # [B, T]
    truncated = valid & (ratio > c) if c is not None else torch.zeros_like(m)  # [B, T]
    metrics = {
        "clip_frac": _frac(~valid, m),
        "clip_frac_low": _frac(~valid & (adv <= 0), m),
        "clip_frac_high": _frac(~valid & (adv > 0), m),
        "trunc_frac": _frac(truncated, m),
        **_base_metrics(log_ratio, ratio, m),
    }
    return _masked(loss, m), metrics


_DPPO_NOTES = (
    "verl 0.9.1's DPPO is the authors' '_recompute' variant (trust region against the recomputed old "
    "log-probs; the authors' sail-sg/Stable-RL default masks against the rollout engine's log-probs, equal "
    "in verl's bypass mode). δ reuses verl's clip_ratio_low / _high (0.2) — set it; the paper's values were "
    "not verified. clip_ratio_c default 3: verl's code falls back to 20 but ActorConfig always defines "
    "clip_ratio_c = 3.0, so verl runs C = 3; the code comment (paper §5.4) recommends a large C and the "
    "authors' repository uses 10."
)


@POLICY_LOSSES.register(
    "dppo_tv",
    inputs=_LOSS_INPUTS,
    paper="DPPO arXiv 2602.04879",
    summary="REINFORCE with truncated IS, masked outside a probability-difference (TV) trust region",
    also_in=("verl",),
    notes=_DPPO_NOTES,
)
def dppo_tv(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    clip_ratio_c: float | None = 3.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPPO-Binary-TV: truncated-IS policy gradient inside a TV trust region (arXiv 2602.04879).

    `w = sg(min(r, C))`, `p = e^logp`, `q = e^old_logp`; a token is valid when the update does not
    push its probability past the trust region in the direction A asks for: A > 0 needs
    `p − q ≤ δ_high`, A ≤ 0 needs `p − q ≥ −δ_low` (detached). `L = −A · w · logp · valid`, so the
    gradient is `−A w ∇logp` on valid tokens and 0 elsewhere.

    Args:
        logp, old_logp: [B, T]; advantages: [B] or [B, T]; mask: [B, T].
        eps_low, eps_high: δ_low, δ_high ≥ 0, thresholds on p − q (verl's clip_ratio_low / _high, default 0.2).
        clip_ratio_c: truncation C > 0 of the IS weight, or None (no truncation). Default 3 (see notes).

    Returns:
        (loss_mat [B, T], metrics: clip_frac (tokens outside the trust region, verl's pg_clipfrac),
        clip_frac_low (A ≤ 0), clip_frac_high (A > 0), trunc_frac (valid tokens with r > C), approx_kl,
        ratio_mean).
    """
    return _dppo("tv", logp, old_logp, advantages, mask, eps_low, eps_high, clip_ratio_c)


@POLICY_LOSSES.register(
    "dppo_kl",
    inputs=_LOSS_INPUTS,
    paper="DPPO arXiv 2602.04879",
    summary="REINFORCE with truncated IS, masked outside a binary-KL trust region",
    also_in=("verl",),
    notes=_DPPO_NOTES,
)
def dppo_kl(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    clip_ratio_c: float | None = 3.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPPO-Binary-KL: truncated-IS policy gradient inside a binary-KL trust region (arXiv 2602.04879).

    `w = sg(min(r, C))`, `p = e^logp`, `q = e^old_logp`,
    `kl = q(log q − log p) + (1 − q) log((1 − q + 1e-8) / (1 − p + 1e-8))` (the KL of the Bernoulli
    "this token or not"). Valid (detached): A > 0 needs `kl ≤ δ_high` or `p ≤ q`; A ≤ 0 needs
    `kl ≤ δ_low` or `p ≥ q`. `L = −A · w · logp · valid`.

    Args:
        logp, old_logp: [B, T]; advantages: [B] or [B, T]; mask: [B, T].
        eps_low, eps_high: δ_low, δ_high ≥ 0, thresholds on the binary KL (verl's clip_ratio_low / _high).
        clip_ratio_c: truncation C > 0 of the IS weight, or None (no truncation). Default 3 (see notes).

    Returns:
        (loss_mat [B, T], metrics: as `dppo_tv`).
    """
    return _dppo("kl", logp, old_logp, advantages, mask, eps_low, eps_high, clip_ratio_c)


@POLICY_LOSSES.register(
    "gpg",
    inputs=_LOSS_INPUTS,
    paper="GPG arXiv 2504.02546",
    summary="plain policy gradient −A·log p (no ratio, no clip); pair with the gpg estimator",
    also_in=("verl",),
    notes=(
        "No importance ratio: unbiased only on-policy (one update per batch); with several epochs or "
        "mini-batches it is a biased REINFORCE, as in verl."
    ),
)
def gpg_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GPG loss: the plain policy gradient `L = −A · logp` (Chu et al., arXiv 2504.02546; verl `gpg`).

    `old_logp` only feeds the metrics. Aggregated with the trainer's mode (verl: loss_agg_mode).

    Args:
        logp, old_logp: [B, T]; advantages: [B] or [B, T]; mask: [B, T].

    Returns:
        (loss_mat [B, T], metrics: approx_kl, ratio_mean).
    """
    log_ratio, adv, m, dtype = _prepare(logp, old_logp, advantages, mask)
    loss = -adv * logp.to(dtype)  # [B, T]
    ratio = torch.exp(log_ratio.detach().clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))  # [B, T]
    return _masked(loss, m), _base_metrics(log_ratio, ratio, m)


@POLICY_LOSSES.register(
    "dro",
    inputs=_LOSS_INPUTS,
    paper="DRO Richemond et al. arXiv 2405.19107; Kimi k1.5 arXiv 2501.12599",
    summary="REINFORCE with a quadratic log-ratio penalty ½β(log r)²",
    also_in=("verl",),
    notes=(
        "dro_beta has no default, as in verl (policy_loss.dro_beta must be set, > 0); Tinker's DRO example "
        "uses 0.05. The log-ratio is not clamped (verl)."
    ),
)
def dro(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    dro_beta: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DRO loss: `L = −(logp · A − ½ β (logp − old_logp)²)` (Richemond et al., arXiv 2405.19107).

    The gradient is `−(A − β (logp − old_logp)) ∇logp`: plain REINFORCE on-policy, pulled back to the old
    policy off-policy. The penalty acts on every valid token, A = 0 included.

    Args:
        logp, old_logp: [B, T]; advantages: [B] or [B, T]; mask: [B, T].
        dro_beta: β > 0, required (no upstream default; Tinker uses 0.05).

    Returns:
        (loss_mat [B, T], metrics: sq_log_ratio_mean (mean of (logp − old_logp)²), approx_kl, ratio_mean).
    """
    beta = check_positive("dro_beta", dro_beta)
    log_ratio, adv, m, dtype = _prepare(logp, old_logp, advantages, mask)
    loss = -(logp.to(dtype) * adv - 0.5 * beta * log_ratio.square())  # [B, T]
    ratio = torch.exp(log_ratio.detach().clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))  # [B, T]
    metrics = {
        "sq_log_ratio_mean": masked_mean(log_ratio.detach().square(), m).to(torch.float32),
        **_base_metrics(log_ratio, ratio, m),
    }
    return _masked(loss, m), metrics


@POLICY_LOSSES.register(
    "luspo",
    inputs=_LOSS_INPUTS,
    agg_mode="seq-mean-token-sum",
    default_agg_mode="seq-mean-token-sum",
    paper="LUSPO arXiv 2602.05261",
    summary="GSPO's sequence-ratio clip, summed over tokens (length-unbiased)",
    also_in=("TRL",),
    notes=(
        "TRL's loss_type='luspo' with importance_sampling_level='sequence' (TRL requires it): per row the "
        "clipped sequence-ratio term, times the row length (sum over tokens), then the mean over rows — "
        "seq-mean-token-sum, declared. TRL counts a fully masked row in that mean, aggregate_loss does not. "
        "Token-level LUSPO (TRL warns) is ppo with clip_ratio_c=None and seq-mean-token-sum. Defaults are TRL's "
        "epsilon 0.2 / epsilon_high = epsilon; GSPO's recipe uses 3e-4 / 4e-4. The sequence log-ratio is "
        "clamped at 20 before exp (TRL does not clamp); TRL's delta (INTELLECT-2 upper bound) is not offered."
    ),
)
def luspo(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """LUSPO: GSPO with each sequence's term scaled by its length (arXiv 2602.05261; TRL `luspo`).

    `s_b = exp(mean_t M·(logp − old_logp))`, carried per token as in `gspo` (value s_b, gradient
    `s_b ∇logp_t`); `L = max(−A·s_bt, −A·clip(s_bt, 1 − eps_low, 1 + eps_high))`. Aggregated with
    seq-mean-token-sum (`PolicyLossSpec.agg_mode`): the row's term times its length n_b, averaged over
    rows, so every token's gradient weighs the same whatever the length (GSPO's token mean
    down-weights the tokens of long sequences).

    Args:
        logp, old_logp: [B, T]; advantages: [B] or [B, T]; mask: [B, T].
        eps_low: in [0, 1]. eps_high: ≥ 0 (TRL's epsilon / epsilon_high, default 0.2).

    Returns:
        (loss_mat [B, T], metrics: clip_frac, clip_frac_low, clip_frac_high, approx_kl, ratio_mean
        (token-weighted mean of s_b)).
    """
    eps_low, eps_high = _check_eps(eps_low, eps_high)
    log_ratio, adv, m, dtype = _prepare(logp, old_logp, advantages, mask)
    s = _sequence_ratio(logp.to(dtype), log_ratio, m, max_log=LOG_RATIO_CLAMP)  # [B, T]
    loss1 = -adv * s  # [B, T]
    loss2 = -adv * s.clamp(1.0 - eps_low, 1.0 + eps_high)  # [B, T]
    loss = torch.maximum(loss1, loss2)  # [B, T]
    is_clipped = loss2 > loss1  # [B, T]
    metrics = {
        "clip_frac": _frac(is_clipped, m),
        "clip_frac_low": _frac(is_clipped & (adv < 0), m),
        "clip_frac_high": _frac(is_clipped & (adv > 0), m),
        **_base_metrics(log_ratio, s, m),
    }
    return _masked(loss, m), metrics


# VESPO's clamp of the sequence log-weight from below (TRL: log(1e-8) ≈ −18.42, as the authors' code).
_VESPO_LOG_W_MIN = math.log(1e-8)


def vespo_weights(
    log_ratio: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    k_pos: float = 2.0,
    lambda_pos: float = 3.0,
    k_neg: float = 3.0,
    lambda_neg: float = 2.0,
) -> torch.Tensor:
    """VESPO's gamma weights φ(w) of each sequence, broadcast over its tokens (detached).

    `log w = clamp(Σ_t M·clamp(log r_t, ±20), log 1e-8, 20)` (the sequence ratio: a sum, not a mean);
    `φ(w) = exp(λ + k log w − λ w) = e^λ w^k e^{−λw}`, normalised to φ(1) = 1 and peaking at w = k/λ;
    `(k, λ) = (k_pos, λ_pos)` where A ≥ 0, else `(k_neg, λ_neg)`; λ is floored at 1e-4 and a non-finite
    φ is 0 (TRL `GRPOTrainer.get_gamma_weights`).

    Args:
        log_ratio: [B, T] logp − old_logp. advantages: [B, T]. mask: [B, T] bool.
        k_pos, lambda_pos, k_neg, lambda_neg: see `vespo`.

    Returns:
        [B, T] φ of each token's row and advantage sign.
    """
    lr = log_ratio.detach().clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [B, T]
    log_w = torch.where(mask, lr, 0.0).sum(-1, keepdim=True).clamp(_VESPO_LOG_W_MIN, LOG_RATIO_CLAMP)  # [B, 1]
    nonneg = advantages >= 0  # [B, T]
    k = torch.where(nonneg, lr.new_tensor(k_pos), lr.new_tensor(k_neg))  # [B, T]
    lam = torch.where(nonneg, lr.new_tensor(lambda_pos), lr.new_tensor(lambda_neg)).clamp(min=1e-4)  # [B, T]
    log_phi = lam + k * log_w - lam * torch.exp(log_w)  # [B, T]
    return torch.exp(log_phi).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)  # [B, T]


@POLICY_LOSSES.register(
    "vespo",
    inputs=_LOSS_INPUTS,
    agg_mode="token-mean",
    default_agg_mode="token-mean",
    paper="VESPO arXiv 2602.10693",
    summary="REINFORCE weighted by a gamma function of the sequence IS ratio (soft, no clip)",
    also_in=("TRL",),
    notes=(
        "TRL's loss_type='vespo': token-mean over the active tokens of the accumulated batch ('dapo' "
        "reduction), declared. The sequence weight needs each whole sequence in one call (rows are never "
        "split). TRL folds the vLLM importance ratio into w; that input is not offered here."
    ),
)
def vespo(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    k_pos: float = 2.0,
    lambda_pos: float = 3.0,
    k_neg: float = 3.0,
    lambda_neg: float = 2.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """VESPO: REINFORCE with a smooth gamma weight of the sequence IS ratio (arXiv 2602.10693; TRL `vespo`).

    `w_i = Π_t r_t` over the row's valid tokens (see `vespo_weights` for the clamps),
    `φ(w) = e^λ w^k e^{−λw}` (φ(1) = 1, peak at w = k/λ, decaying on both sides instead of clipping),
    `L = −sg(φ(w_i)) · A · logp`. `(k, λ)` is `(k_pos, lambda_pos)` where A ≥ 0, else
    `(k_neg, lambda_neg)`. Aggregated with token-mean (`PolicyLossSpec.agg_mode`). Defaults: TRL's.

    Args:
        logp, old_logp: [B, T]; advantages: [B] or [B, T]; mask: [B, T].
        k_pos, k_neg: power exponents ≥ 0 (how fast small w is down-weighted).
        lambda_pos, lambda_neg: decay rates > 0 (how fast large w is down-weighted).

    Returns:
        (loss_mat [B, T], metrics: phi_mean (token-weighted mean of φ), approx_kl, ratio_mean).
    """
    k_pos = check_nonneg("k_pos", k_pos)
    k_neg = check_nonneg("k_neg", k_neg)
    lambda_pos = check_positive("lambda_pos", lambda_pos)
    lambda_neg = check_positive("lambda_neg", lambda_neg)
    log_ratio, adv, m, dtype = _prepare(logp, old_logp, advantages, mask)
    phi = vespo_weights(
        log_ratio, adv, m, k_pos=k_pos, lambda_pos=lambda_pos, k_neg=k_neg, lambda_neg=lambda_neg
    )  # [B, T] no grad
    loss = -phi * adv * logp.to(dtype)  # [B, T]
    ratio = torch.exp(log_ratio.detach().clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))  # [B, T]
    metrics = {"phi_mean": masked_mean(phi, m).to(torch.float32), **_base_metrics(log_ratio, ratio, m)}
    return _masked(loss, m), metrics


def get_policy_loss(name: str) -> PolicyLossFn:
    """The policy loss registered under `name` (see `POLICY_LOSSES.names()`).

    Raises:
        UnknownNameError: (a ValueError) listing the valid names.
    """
    return POLICY_LOSSES.get(name).fn


def get_policy_loss_spec(name: str) -> PolicyLossSpec:
    """Metadata of the policy loss `name`: defaults, required aggregation, selection function."""
    return POLICY_LOSSES.get(name)
