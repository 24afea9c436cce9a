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

Names: ppo (clip-higher, dual clip), gspo, cispo, ce_gppo, clip_cov, kl_cov. Defaults and sources are
in `docs/algorithms.md` and in each `PolicyLossSpec`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rlentropy.algorithms._util import (
    as_bool,
    check_fraction,
    check_nonneg,
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
    mf = m.to(dtype)  # [B, T]
    lr_masked = torch.where(m, log_ratio, 0.0)  # [B, T]
    seq_log_ratio = lr_masked.sum(-1) / mf.sum(-1).clamp_min(1)  # [B]
    lp = logp.to(dtype)  # [B, T]
    log_s = (lp - lp.detach() + seq_log_ratio.detach()[:, None]).clamp(max=10.0)  # [B, T]
    s = torch.exp(log_s)  # [B, T]
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


def get_policy_loss(name: str) -> PolicyLossFn:
    """The policy loss registered under `name` (ppo, gspo, cispo, ce_gppo, clip_cov, kl_cov).

    Raises:
        UnknownNameError: (a ValueError) listing the valid names.
    """
    return POLICY_LOSSES.get(name).fn


def get_policy_loss_spec(name: str) -> PolicyLossSpec:
    """Metadata of the policy loss `name`: defaults, required aggregation, selection function."""
    return POLICY_LOSSES.get(name)
