"""Entropy controls: edits of the loss mask (Clip_B, Clip_V, 80/20 high-entropy tokens, quadrants) and the
entropy bonus term.

Mask controls return `(new_mask, metrics)`: `new_mask` has the dtype of `mask` and is a subset of it;
a dropped token leaves the loss entirely (numerator and token-mean denominator), which is NOT the
same as setting its advantage to 0. Advantages are never modified. Metrics are 0-d float32 tensors:
`frac_dropped`, `frac_dropped_pos_adv`, `frac_dropped_neg_adv` (fractions of the valid tokens overall,
with A > 0, with A < 0), `tokens_dropped`, plus control-specific statistics. Keys are unprefixed.

Inputs are plain tensors; with a `rlentropy.tokenstats.TokenStats` `st` of the old policy:
`clip_b_mask(st.s, adv, mask)`, `clip_v_mask(st.s, st.s_bar, adv, mask)`.
The upstream code quirks of Clip_B / Clip_V (docs/algorithms.md, "Upstream quirks") are the defaults; each is a flag.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from rlentropy.algorithms._util import (
    as_bool,
    ceil_count,
    check_choice,
    check_fraction,
    check_positive,
    check_real,
    check_same_shape,
    check_tensor,
    count,
    descending_rank,
    drop_fractions,
    float_dtype,
    floor_count,
    like_mask,
    masked_mean,
    masked_population_std,
    token_advantages,
)
from rlentropy.algorithms.aggregation import aggregate_loss
from rlentropy.algorithms.registry import AGGREGATION_CONTEXT, ControlSpec, Registry

ControlFn = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]

CLIP_B_SIDES = ("neg_low", "both")
CLIP_V_SIDES = ("neg", "both")
QUADRANTS = ("pos_high", "pos_low", "neg_high", "neg_low")
QUADRANT_BASELINES = ("s_bar", "batch_mean", "zero")

# Below this std of the statistic, Clip_B / Clip_V drop nothing (upstream constant).
STD_FLOOR = 1e-12


CONTROLS: Registry[ControlSpec] = Registry("entropy control", ControlSpec)


def _prepare(s: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, **others: torch.Tensor | None):
    check_tensor("s", s, ndim=2)
    check_same_shape("s", s, mask=mask, **others)
    dtype = float_dtype(s, *[t for t in others.values() if t is not None])
    adv = token_advantages(advantages, mask)  # [B, T]
    return s.detach().to(dtype), adv.detach(), as_bool(mask), dtype


@CONTROLS.register(
    "clip_b",
    kind="mask",
    inputs=("s", "advantages", "mask"),
    stage="old",
    paper="Entropy dynamics (Clip_B), arXiv 2602.03392; Trinity-RFT clipb_advantage.py",
    summary="drop A<0 tokens whose S is far below the batch mean (μ std)",
    also_in=("Trinity-RFT",),
)
def clip_b_mask(
    s: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    mu: float = 2.5,
    sides: str = "neg_low",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clip_B: drop negative-advantage tokens whose S is far below the batch mean (arXiv 2602.03392).

    With `mS`, `sS` the mean and population std (divide by n) of S over every valid token of the batch
    given, a token with A < 0 is dropped when `S − mS < −mu·sS`: a penalised low-probability token,
    whose update would lower the entropy the most. A > 0 and A = 0 tokens are kept. If `sS < 1e-12`
    nothing is dropped. Call it once per step on the whole batch (upstream computes the statistics
    before mini-batch splitting).

    Args:
        s: [B, T] discriminator `S = p_k (H + log p_k)` of the sampled token (old policy).
        advantages: [B] or [B, T]. mask: [B, T].
        mu: threshold in std units, > 0 (Trinity default 2.5).
        sides: "neg_low" (upstream code) or "both" (also drop A > 0 tokens with `S − mS > mu·sS`, the
            symmetric variant the paper may describe; UNRESOLVED upstream).

    Returns:
        (new_mask [B, T] in mask's dtype, metrics: frac_dropped*, tokens_dropped, s_mean, s_std).
    """
    mu = check_positive("mu", mu)
    check_choice("sides", sides, CLIP_B_SIDES)
    s, adv, m, _ = _prepare(s, advantages, mask)
    mean, std = masked_population_std(s, m)  # [] each
    z = s - mean  # [B, T]
    drop = (adv < 0) & (z < -mu * std)  # [B, T]
    if sides == "both":
        drop = drop | ((adv > 0) & (z > mu * std))
    drop = drop & (std >= STD_FLOOR)  # [B, T]
    new_mask = like_mask(~drop, mask)  # [B, T]
    metrics = drop_fractions(mask, new_mask, adv)
    metrics.update({"s_mean": mean.to(torch.float32), "s_std": std.to(torch.float32)})
    return new_mask, metrics


@CONTROLS.register(
    "clip_v",
    kind="mask",
    inputs=("s", "s_bar", "advantages", "mask"),
    stage="old",
    paper="Entropy dynamics (Clip_V), arXiv 2602.03392; Trinity-RFT clipv_advantage.py",
    summary="drop A≤0 tokens with a large E_p[S] − S (μ std, capped at max_frac)",
)
def clip_v_mask(
    s: torch.Tensor,
    s_bar: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    mu: float = 8.5,
    max_frac: float = 1e-4,
    clip_zero_adv: bool = True,
    sides: str = "neg",
    center: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clip_V: drop non-positive-advantage tokens with a large `xD = E_p[S] − S` (arXiv 2602.03392).

    By Theorem 3.3 a token's first-order entropy change is `α·A·xD`; a penalised (A < 0) token with a
    large positive xD lowers the entropy the most. With `sD` the population std of xD over the valid
    tokens, a token fails when `xD > mu·sD` (raw xD, not centred: upstream quirk 1, flag `center`).
    Tokens with A ≤ 0 that fail are dropped (A = 0 too: quirk 2, flag `clip_zero_adv`). If the dropped
    fraction exceeds `max_frac` and more than `cap = max(floor(max_frac·n), 1)` negative-advantage
    tokens fail, only the `cap` of them with the largest xD are dropped (quirk 3: the cap limits
    negative-advantage drops only; failing A = 0 tokens stay dropped). If `sD < 1e-12` nothing is dropped.

    Args:
        s: [B, T] S of the sampled token. s_bar: [B, T] `E_{i~p}[S_i]` (Trinity's "nec").
        advantages: [B] or [B, T]. mask: [B, T].
        mu: > 0 (Trinity default 8.5). max_frac: cap fraction in (0, 1] (default 1e-4; 1 disables it).
        clip_zero_adv: also drop failing A = 0 tokens (upstream behaviour).
        sides: "neg" (upstream) or "both": also drop A > 0 tokens with `xD < −mu·sD`, under their own
            cap of the same size (the most negative xD kept dropped).
        center: threshold `xD − mean(xD)` instead of raw xD.

    Returns:
        (new_mask [B, T] in mask's dtype, metrics: frac_dropped*, tokens_dropped, xd_mean, xd_std,
        cap_active (1 when the cap was applied)).
    """
    mu = check_positive("mu", mu)
    max_frac = check_fraction("max_frac", max_frac)
    check_choice("sides", sides, CLIP_V_SIDES)
    s, adv, m, dtype = _prepare(s, advantages, mask, s_bar=s_bar)
    xd = s_bar.detach().to(dtype) - s  # [B, T]
    mean, std = masked_population_std(xd, m)  # [] each
    x = xd - mean if center else xd  # [B, T] the thresholded statistic
    fails_neg = m & (x > mu * std)  # [B, T]
    neg = fails_neg & (adv < 0)  # [B, T] candidates of the cap
    zero = fails_neg & (adv == 0) if clip_zero_adv else torch.zeros_like(m)  # [B, T]
    pos = m & (adv > 0) & (x < -mu * std) if sides == "both" else torch.zeros_like(m)  # [B, T]

    n = count(m).clamp_min(1)  # [] float64
    frac = count(neg | zero | pos) / n  # []
    cap = floor_count(max_frac, n).clamp_min(1)  # []
    over = frac > max_frac  # []
    cap_neg = over & (count(neg) > cap)  # []
    neg = torch.where(cap_neg, neg & (descending_rank(xd, neg) < cap), neg)  # [B, T]
    cap_pos = over & (count(pos) > cap)  # []
    pos = torch.where(cap_pos, pos & (descending_rank(-xd, pos) < cap), pos)  # [B, T]

    drop = (neg | zero | pos) & (std >= STD_FLOOR)  # [B, T]
    new_mask = like_mask(~drop, mask)  # [B, T]
    metrics = drop_fractions(mask, new_mask, adv)
    metrics.update(
        {
            "xd_mean": mean.to(torch.float32),
            "xd_std": std.to(torch.float32),
            "cap_active": (cap_neg | cap_pos).to(torch.float32),
        }
    )
    return new_mask, metrics


@CONTROLS.register(
    "high_entropy",
    kind="mask",
    inputs=("entropy", "mask", "advantages"),
    stage="current",
    stages=("current", "old"),
    paper="Beyond the 80/20 rule, arXiv 2506.01939",
    summary="train only on the top-ρ entropy tokens",
    also_in=("TRL",),
    notes="stage current (default, as TRL): per micro-batch on the training forward, dropped tokens keep "
    "their place in the step's denominators; stage old: once per step on the whole batch's old entropy.",
)
def high_entropy_mask(
    entropy: torch.Tensor,
    mask: torch.Tensor,
    *,
    rho: float = 0.2,
    advantages: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """80/20 forking tokens: keep only the top-ρ fraction of valid tokens by entropy (arXiv 2506.01939).

    `K = max(1, ceil(ρ·n))` with n the valid tokens given (upstream selects per micro-batch, on the
    entropy of the training forward); ties keep row-major order. Unselected tokens leave the mask,
    so the token-mean denominator becomes K.

    Args:
        entropy: [B, T] per-position entropy (detached inside).
        mask: [B, T].
        rho: fraction kept, in (0, 1] (default 0.2).
        advantages: [B] or [B, T], optional: only for the per-sign drop fractions.

    Returns:
        (new_mask [B, T] in mask's dtype, metrics: frac_dropped*, tokens_dropped, tokens_selected,
        entropy_threshold (lowest selected entropy; 0 when nothing is selected)).
    """
    rho = check_fraction("rho", rho)
    check_tensor("entropy", entropy, ndim=2)
    check_same_shape("entropy", entropy, mask=mask)
    m = as_bool(mask)  # [B, T]
    h = entropy.detach()  # [B, T]
    k = ceil_count(rho, count(m)).clamp_min(1)  # [] float64
    selected = m & (descending_rank(h, m) < k)  # [B, T]
    new_mask = like_mask(selected, mask)  # [B, T]
    adv = token_advantages(advantages, mask) if advantages is not None else None
    metrics = drop_fractions(mask, new_mask, adv)
    masked_h = torch.where(selected, h, torch.full_like(h, float("inf")))  # [B, T]
    threshold = torch.where(selected.any(), masked_h.min(), torch.zeros((), dtype=h.dtype, device=h.device))
    metrics.update(
        {"tokens_selected": count(selected).to(torch.float32), "entropy_threshold": threshold.to(torch.float32)}
    )
    return new_mask, metrics


@CONTROLS.register(
    "entropy_bonus",
    kind="loss_term",
    inputs=("entropy", "mask", *AGGREGATION_CONTEXT),
    stage="current",
    off_when={"coef": 0.0},
    log_as={"entropy": "loss/entropy_term", "entropy_coef": None},
    paper="entropy regularisation (verl entropy_coeff, Trinity entropy_coef)",
    summary="add −coef·agg(H) to the loss (gradient through the current entropy)",
    also_in=("TRL", "verl", "Trinity-RFT"),
)
def entropy_bonus(
    entropy: torch.Tensor,
    mask: torch.Tensor,
    *,
    coef: float,
    mode: str = "token-mean",
    global_tokens: torch.Tensor | float | int | None = None,
    global_seqs: torch.Tensor | float | int | None = None,
    max_len: int | None = None,
    require_grad: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Entropy regularisation term `−coef · agg(H, mask)`, to ADD to the policy loss.

    Its gradient flows through `entropy`, which must come from the current forward with grad (a bonus
    on a detached entropy does nothing: the trap of TRL PRs #5595/#5596). With `require_grad=True` a
    detached entropy raises ValueError while autograd is enabled and `coef != 0`.
    verl and Trinity aggregate it with the policy loss's mode; TRL always uses the token mean.

    Args:
        entropy: [B, T] per-position entropy of the current policy (with grad).
        mask: [B, T].
        coef: the coefficient c (verl / Trinity default 0; typical sweep 1e-4 … 5e-3).
        mode, global_tokens, global_seqs, max_len: aggregation, see `aggregate_loss`.
        require_grad: check that `entropy` carries a gradient.

    Returns:
        (term [] with grad, metrics: entropy (the aggregated H, detached), entropy_coef).
    """
    c = check_real("coef", coef)
    check_tensor("entropy", entropy, ndim=2)
    if require_grad and c != 0.0 and torch.is_grad_enabled() and not entropy.requires_grad:
        raise ValueError(
            "entropy does not require grad: the entropy bonus would have no gradient; compute the entropy "
            "in the training forward with grad (or pass require_grad=False)"
        )
    h = aggregate_loss(entropy, mask, mode, global_tokens=global_tokens, global_seqs=global_seqs, max_len=max_len)  # []
    term = -c * h  # []
    return term, {
        "entropy": h.detach().to(torch.float32),
        "entropy_coef": torch.tensor(c, dtype=torch.float32, device=h.device),
    }


@CONTROLS.register(
    "quadrant",
    kind="mask",
    inputs=("s", "s_bar", "advantages", "mask"),
    stage="old",
    paper="Theorems 3.2/3.3 of arXiv 2602.03392",
    summary="keep chosen quadrants of (A sign) × (S vs E_p[S]); a Theorem 3.2 check",
)
def quadrant_mask(
    s: torch.Tensor,
    s_bar: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    keep: Iterable[str],
    baseline: str = "s_bar",
    keep_zero_adv: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Keep only the tokens of chosen quadrants of (advantage sign) × (S above / below its baseline).

    Quadrants: `pos_*` A > 0, `neg_*` A < 0; `*_high` S > baseline, `*_low` S ≤ baseline. Baselines:
    "s_bar" (per-position `E_p[S]`, Theorem 3.3), "batch_mean" (masked mean of S, as Clip_B) or
    "zero" (S vs 0, Theorem 3.2). The first-order entropy change of each quadrant (Theorem 3.3):
    pos_high ↓, pos_low ↑, neg_high ↑, neg_low ↓; so `keep=("pos_high",)` lowers the entropy and
    `keep=("pos_low",)` raises it (the paper's check).

    Args:
        s: [B, T] S of the sampled token. s_bar: [B, T] or None (only needed for baseline "s_bar").
        advantages: [B] or [B, T]. mask: [B, T].
        keep: the quadrants to keep (non-empty subset of QUADRANTS).
        baseline: "s_bar", "batch_mean" or "zero".
        keep_zero_adv: keep A = 0 tokens (they belong to no quadrant; they carry no gradient but count
            in the token-mean denominator).

    Returns:
        (new_mask [B, T] in mask's dtype, metrics: frac_dropped*, tokens_dropped, and frac_<quadrant>
        (share of the valid tokens in each quadrant)).
    """
    if isinstance(keep, str):
        keep = (keep,)
    keep = tuple(keep)
    if not keep:
        raise ValueError(f"keep must name at least one quadrant of {', '.join(QUADRANTS)}")
    for q in keep:
        check_choice("keep", q, QUADRANTS)
    check_choice("baseline", baseline, QUADRANT_BASELINES)
    if baseline == "s_bar" and s_bar is None:
        raise ValueError("s_bar is required when baseline='s_bar'")
    s, adv, m, dtype = _prepare(s, advantages, mask, s_bar=s_bar if baseline == "s_bar" else None)
    if baseline == "s_bar":
        base = s_bar.detach().to(dtype)  # [B, T]
    elif baseline == "batch_mean":
        base = masked_mean(s, m)  # []
    else:
        base = torch.zeros((), dtype=dtype, device=s.device)  # []
    high = s > base  # [B, T]
    quadrant = {
        "pos_high": (adv > 0) & high,
        "pos_low": (adv > 0) & ~high,
        "neg_high": (adv < 0) & high,
        "neg_low": (adv < 0) & ~high,
    }
    kept = torch.zeros_like(m)
    for q in keep:
        kept = kept | quadrant[q]
    if keep_zero_adv:
        kept = kept | (adv == 0)
    new_mask = like_mask(kept, mask)  # [B, T]
    metrics = drop_fractions(mask, new_mask, adv)
    n = count(m).clamp_min(1)
    for q, sel in quadrant.items():
        metrics[f"frac_{q}"] = (count(sel & m) / n).to(torch.float32)
    return new_mask, metrics


def get_control(name: str) -> ControlFn:
    """The entropy control registered under `name` (clip_b, clip_v, high_entropy, entropy_bonus, quadrant).

    Raises:
        UnknownNameError: (a ValueError) listing the valid names.
    """
    return CONTROLS.get(name).fn


def get_control_spec(name: str) -> ControlSpec:
    """Metadata of the control `name`: kind, inputs, stage, defaults."""
    return CONTROLS.get(name)
