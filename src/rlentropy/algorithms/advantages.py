"""Outcome-reward advantage estimators (one scalar per response) and the unbiased pass@k estimator.

Every estimator has the signature

    fn(rewards [B], group_ids [B], **params) -> (advantages [B], metrics)

where `group_ids[b]` names the prompt response b was sampled for (responses of one prompt form a
group). Broadcast the result over tokens with the response mask to get `[B, T]` advantages; every
loss and control here also accepts the `[B]` form directly. Look estimators up with
`get_advantage(name)`; names: grpo, dr_grpo, rloo, reinforce_pp, gpg, grpo_passk.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from math import comb, inf

import torch

from rlentropy.algorithms._util import check_choice, check_nonneg, check_tensor, float_dtype
from rlentropy.algorithms.registry import AdvantageSpec, Registry

AdvantageFn = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]

GRPO_SCALES = ("group", "batch", "none")
REINFORCE_PP_BASELINES = ("group", "none")
PASSK_SCALES = ("group", "none")


ADVANTAGES: Registry[AdvantageSpec] = Registry("advantage estimator", AdvantageSpec)


def _check_inputs(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    check_tensor("rewards", rewards, ndim=1)
    check_tensor("group_ids", group_ids, ndim=1)
    if group_ids.shape != rewards.shape:
        raise ValueError(
            f"group_ids must have the shape of rewards {tuple(rewards.shape)}, got {tuple(group_ids.shape)}"
        )
    if group_ids.is_floating_point() or group_ids.is_complex():
        raise ValueError(f"group_ids must be an integer tensor, got {group_ids.dtype}")
    return rewards.to(float_dtype(rewards))  # [B]


def group_stats(rewards: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-response group mean, unbiased group std and group size (vectorised, no host sync).

    A group with a single member gets mean 0 and std 1 (the convention of verl and Trinity), so its
    GRPO advantage is `R / (1 + eps)`.

    Args:
        rewards: [B] float.
        group_ids: [B] integer group id of each response.

    Returns:
        (mean [B], std [B], size [B]) of each response's group, in the dtype of `rewards`.
    """
    uniq, inverse = torch.unique(group_ids, return_inverse=True)  # [G], [B] in 0..G-1
    n_groups = uniq.numel()
    size = torch.zeros(n_groups, dtype=rewards.dtype, device=rewards.device).index_add_(
        0, inverse, torch.ones_like(rewards)
    )  # [G]
    total = torch.zeros_like(size).index_add_(0, inverse, rewards)  # [G]
    mean_g = total / size  # [G]
    sq = torch.zeros_like(size).index_add_(0, inverse, (rewards - mean_g[inverse]) ** 2)  # [G]
    std_g = (sq / (size - 1).clamp_min(1)).sqrt()  # [G] unbiased
    single = size == 1  # [G]
    mean_g = torch.where(single, torch.zeros_like(mean_g), mean_g)
    std_g = torch.where(single, torch.ones_like(std_g), std_g)
    return mean_g[inverse], std_g[inverse], size[inverse]  # [B] each


def _reward_metrics(rewards: torch.Tensor, adv: torch.Tensor, std: torch.Tensor, size: torch.Tensor) -> dict:
    """Shared metrics: reward mean, advantage mean / population std, fraction of zero-variance groups."""
    zero_var = ((std == 0) & (size > 1)).to(torch.float32)  # [B]
    return {
        "reward_mean": rewards.mean().to(torch.float32),
        "adv_mean": adv.mean().to(torch.float32),
        "adv_std": adv.std(correction=0).to(torch.float32) if adv.numel() else adv.sum().to(torch.float32),
        # Fraction of responses whose group has all-equal rewards (their advantage is 0).
        "frac_zero_std": zero_var.mean() if zero_var.numel() else zero_var.sum(),
    }


@ADVANTAGES.register(
    "grpo",
    inputs=("rewards", "group_ids"),
    paper="DeepSeekMath, arXiv 2402.03300",
    summary="group-normalised reward (R − mean) / (std + eps); scale group | batch | none",
    also_in=("TRL", "verl", "Trinity-RFT"),
)
def grpo(
    rewards: torch.Tensor, group_ids: torch.Tensor, *, scale: str = "group", eps: float = 1e-6
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO advantage: `A_i = (R_i − mean_g) / (std_g + eps)` (DeepSeekMath, arXiv 2402.03300).

    Args:
        rewards: [B] scalar reward of each response.
        group_ids: [B] integer prompt id of each response.
        scale: "group" divides by the unbiased group std (GRPO), "batch" by the unbiased std of all B
            rewards (TRL `scale_rewards="batch"`), "none" does not divide (Dr.GRPO).
        eps: added to the std, ≥ 0.

    Returns:
        (advantages [B], metrics). A singleton group has mean 0 and std 1.
    """
    check_choice("scale", scale, GRPO_SCALES)
    eps = check_nonneg("eps", eps)
    r = _check_inputs(rewards, group_ids)  # [B]
    mean, std, size = group_stats(r, group_ids)  # [B] each
    centred = r - mean  # [B]
    if scale == "group":
        adv = centred / (std + eps)  # [B]
    elif scale == "batch":
        batch_std = r.std() if r.numel() > 1 else torch.ones((), dtype=r.dtype, device=r.device)  # []
        adv = centred / (batch_std + eps)  # [B]
    else:
        adv = centred  # [B]
    return adv, _reward_metrics(r, adv, std, size)


@ADVANTAGES.register(
    "dr_grpo",
    inputs=("rewards", "group_ids"),
    paper="Dr.GRPO, arXiv 2503.20783",
    summary="R − group mean, no std division",
    also_in=("TRL", "verl", "Trinity-RFT"),
)
def dr_grpo(rewards: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Dr.GRPO advantage: `A_i = R_i − mean_g`, no std division (Liu et al., arXiv 2503.20783).

    Args:
        rewards: [B]; group_ids: [B] integer.

    Returns:
        (advantages [B], metrics). A singleton group has mean 0, so its advantage is its reward.
    """
    return grpo(rewards, group_ids, scale="none", eps=0.0)


@ADVANTAGES.register(
    "rloo",
    inputs=("rewards", "group_ids"),
    paper="RLOO, arXiv 2402.14740",
    summary="leave-one-out baseline G/(G−1)·(R − mean)",
    also_in=("TRL", "verl", "Trinity-RFT"),
)
def rloo(rewards: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """RLOO advantage: `A_i = R_i − mean_{j≠i} R_j = G/(G−1) · (R_i − mean_g)` (Ahmadian et al., arXiv 2402.14740).

    Args:
        rewards: [B]; group_ids: [B] integer.

    Returns:
        (advantages [B], metrics). A singleton group has no leave-one-out baseline: `A = R`.
    """
    r = _check_inputs(rewards, group_ids)  # [B]
    mean, std, size = group_stats(r, group_ids)  # [B] each
    factor = size / (size - 1).clamp_min(1)  # [B] G/(G-1); singleton: 1/1 with mean 0
    adv = factor * (r - mean)  # [B]
    return adv, _reward_metrics(r, adv, std, size)


@ADVANTAGES.register(
    "reinforce_pp",
    inputs=("rewards", "group_ids"),
    paper="REINFORCE++, arXiv 2501.03262",
    summary="batch-whitened reward (optionally group-centred first)",
    also_in=("verl", "Trinity-RFT"),
)
def reinforce_pp(
    rewards: torch.Tensor, group_ids: torch.Tensor, *, baseline: str = "group", eps: float = 1e-6
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """REINFORCE++ advantage: batch-normalised (whitened) reward (Hu et al., arXiv 2501.03262).

    `baseline="group"` (REINFORCE++-baseline, the variant used with several samples per prompt)
    subtracts the group mean first; `"none"` whitens the raw rewards. Whitening:
    `A = (x − mean_B(x)) / (std_B(x) + eps)` with the unbiased std over the B responses (verl whitens
    over tokens, which weights long responses more; this estimator weights every response once).

    Args:
        rewards: [B]; group_ids: [B] integer.
        baseline: "group" or "none".
        eps: ≥ 0.

    Returns:
        (advantages [B], metrics).
    """
    check_choice("baseline", baseline, REINFORCE_PP_BASELINES)
    eps = check_nonneg("eps", eps)
    r = _check_inputs(rewards, group_ids)  # [B]
    mean, std, size = group_stats(r, group_ids)  # [B] each
    x = r - mean if baseline == "group" else r  # [B]
    if x.numel() > 1:
        adv = (x - x.mean()) / (x.std() + eps)  # [B]
    else:
        adv = x - x.mean()  # [B] a lone response has nothing to compare with
    return adv, _reward_metrics(r, adv, std, size)


@ADVANTAGES.register(
    "gpg",
    inputs=("rewards", "group_ids"),
    paper="GPG, arXiv 2504.02546",
    summary="α·(R − group mean), α = B / #responses with non-zero reward; no std",
    also_in=("verl",),
    notes=(
        "verl's compute_gpg_outcome_advantage: α = B / max(count_nonzero(R), 1) over the whole batch, "
        "no std division (f_norm = 1). The paper's α is recalled as B / (B − M), M the samples with zero "
        "gradient (responses of zero-variance groups) — not re-checked against the PDF; with binary rewards "
        "verl counts the correct responses instead. We follow verl (parity-tested). Pair with the gpg loss."
    ),
)
def gpg_advantage(rewards: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GPG advantage: `A_i = α (R_i − mean_g)`, `α = B / max(#{i: R_i ≠ 0}, 1)` (Chu et al., arXiv 2504.02546).

    α counts over every response given (call it on the whole batch of the step), as verl does. A
    singleton group has mean 0, so its advantage is `α R`.

    Args:
        rewards: [B]; group_ids: [B] integer.

    Returns:
        (advantages [B], metrics: the shared reward / advantage metrics and alpha).
    """
    r = _check_inputs(rewards, group_ids)  # [B]
    mean, std, size = group_stats(r, group_ids)  # [B] each
    nonzero = torch.count_nonzero(r).clamp_min(1).to(r.dtype)  # []
    alpha = r.numel() / nonzero  # []
    adv = alpha * (r - mean)  # [B]
    return adv, {**_reward_metrics(r, adv, std, size), "alpha": alpha.to(torch.float32)}


@ADVANTAGES.register(
    "grpo_passk",
    inputs=("rewards", "group_ids"),
    paper="Tang et al., arXiv 2503.19595 (pass@k = max over the group)",
    summary="only each group's best response is credited, with R_max − R_2nd (÷ group std)",
    also_in=("verl",),
    notes=(
        "verl's compute_grpo_passk_outcome_advantage (k = G, the leave-one-out estimator of the max). The "
        "division by the group std is verl's (norm_adv_by_std_in_grpo, mapped onto scale), not the paper's. "
        "A group of fewer than 2 responses raises ValueError, as verl (the check reads the group sizes on "
        "the host, once per step)."
    ),
)
def grpo_passk(
    rewards: torch.Tensor, group_ids: torch.Tensor, *, scale: str = "group", eps: float = 1e-6
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Pass@k (max-of-group) advantage: only the best of each group gets `R_max − R_2nd` (arXiv 2503.19595).

    With k = G, `f = max_i R_i` and the leave-one-out baseline `max_{j≠i} R_j`, `f − f_{−i}` is non-zero
    only for the arg-max: `R_max − R_2nd`; every other response gets 0, and a tie at the top gives 0 to
    all. `scale="group"` divides by the unbiased group std + eps (verl's default).

    Args:
        rewards: [B]; group_ids: [B] integer, every group with ≥ 2 responses.
        scale: "group" (divide by std_g + eps) or "none".
        eps: ≥ 0.

    Returns:
        (advantages [B], metrics: the shared ones and frac_groups_credited, the fraction of groups whose
        best response is credited).

    Raises:
        ValueError: a group has fewer than 2 responses.
    """
    check_choice("scale", scale, PASSK_SCALES)
    eps = check_nonneg("eps", eps)
    r = _check_inputs(rewards, group_ids)  # [B]
    mean, std, size = group_stats(r, group_ids)  # [B] each
    if bool((size < 2).any()):
        lone = group_ids[size < 2][0]
        raise ValueError(f"grpo_passk needs at least 2 responses per group; group id {int(lone)} has 1")
    uniq, inv = torch.unique(group_ids, return_inverse=True)  # [G], [B]
    top = torch.full((uniq.numel(),), -inf, dtype=r.dtype, device=r.device)  # [G]
    top = top.scatter_reduce(0, inv, r, reduce="amax")  # [G] R_max
    is_top = r == top[inv]  # [B]
    n_top = torch.zeros_like(top).index_add_(0, inv, is_top.to(r.dtype))  # [G]
    others = torch.where(is_top, -inf, r)  # [B]
    second = torch.full_like(top, -inf).scatter_reduce(0, inv, others, reduce="amax")  # [G]
    second = torch.where(n_top > 1, top, second)  # [G] a tie at the top: R_2nd = R_max
    credited = is_top & (n_top[inv] == 1)  # [B]
    gap = torch.where(credited, r - second[inv], 0.0)  # [B]
    adv = gap / (std + eps) if scale == "group" else gap  # [B]
    metrics = _reward_metrics(r, adv, std, size)
    metrics["frac_groups_credited"] = (credited.sum() / uniq.numel()).to(torch.float32)
    return adv, metrics


def get_advantage(name: str) -> AdvantageFn:
    """The advantage estimator registered under `name` (see `ADVANTAGES.names()`).

    Raises:
        UnknownNameError: (a ValueError) listing the valid names.
    """
    return ADVANTAGES.get(name).fn


def get_advantage_spec(name: str) -> AdvantageSpec:
    """Metadata (defaults, paper) of the advantage estimator `name`."""
    return ADVANTAGES.get(name)


def grpo_advantages(
    rewards: torch.Tensor, group_ids: torch.Tensor, *, scale: str = "group", eps: float = 1e-6
) -> torch.Tensor:
    """GRPO advantages without the metrics: `grpo(rewards, group_ids, scale=scale, eps=eps)[0]`. [B]."""
    return grpo(rewards, group_ids, scale=scale, eps=eps)[0]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimator `1 − C(n−c, k) / C(n, k)` (Chen et al., arXiv 2107.03374).

    Computed exactly with integer binomials and a rational ratio, so the result is the correctly
    rounded float of the exact value (no cancellation, no overflow, for any n).

    Args:
        n: samples drawn for the problem, ≥ 1.
        c: correct samples among them, 0 ≤ c ≤ n.
        k: the k of pass@k, 1 ≤ k ≤ n.

    Returns:
        The probability that at least one of k samples drawn without replacement from the n is correct.
    """
    for name, value in (("n", n), ("c", c), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an int, got {value!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 <= c <= n:
        raise ValueError(f"c must be in [0, n={n}], got {c}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n={n}], got {k}")
    if n - c < k:
        return 1.0
    return float(1 - Fraction(comb(n - c, k), comb(n, k)))
