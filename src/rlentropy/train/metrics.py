"""The per-step metrics of the batch (reward, advantages, entropy, S, lengths), on gathered tensors.

Pure: tensors in, a dict of 0-d tensors out; `to_floats` turns the whole dict into Python floats with
one host transfer. Definitions: docs/training.md (metrics glossary).
"""

from __future__ import annotations

import torch


def batch_metrics(
    *,
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    entropy: torch.Tensor,
    logp: torch.Tensor,
    s: torch.Tensor,
    s_bar: torch.Tensor,
    lengths: torch.Tensor,
    truncated: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Metrics of the whole batch (every process's rows).

    Args:
        rewards: [B] scalar rewards. group_ids: [B] prompt ids.
        advantages: [B] per response, or [B, T] per token (then summarised over the valid tokens).
        mask: [B, T] response mask. entropy, logp, s, s_bar: [B, T] old-policy statistics.
        lengths: [B] response lengths. truncated: [B] 1.0 when the response hit the length cap.

    Returns:
        reward/*, adv/*, entropy/*, response/* as 0-d tensors.
    """
    n_valid = mask.sum().clamp_min(1)  # []
    solved = torch.zeros(int(group_ids.max()) + 1).scatter_reduce(
        0, group_ids, (rewards >= 1.0).float(), reduce="amax"
    )  # [P]
    if advantages.dim() == 2:
        adv = advantages[mask.to(advantages.device) > 0]  # [N] valid tokens
    else:
        adv = advantages  # [B]
    return {
        "reward/mean": rewards.mean(),
        "reward/std": rewards.std(correction=0),
        "reward/pass_rate": (rewards >= 1.0).float().mean(),
        "reward/group_pass_rate": solved.mean(),
        "adv/mean": adv.mean(),
        "adv/std": adv.std(correction=0),
        "entropy/mean": (entropy * mask).sum() / n_valid,
        "entropy/surprisal": (-logp * mask).sum() / n_valid,
        "entropy/s_mean": (s * mask).sum() / n_valid,
        "entropy/s_bar_mean": (s_bar * mask).sum() / n_valid,
        "response/length_mean": lengths.mean(),
        "response/length_max": lengths.max(),
        "response/truncated_frac": truncated.mean(),
    }


def removal_metrics(mask: torch.Tensor, loss_mask: torch.Tensor, advantages: torch.Tensor) -> dict[str, torch.Tensor]:
    """`control/frac_removed_active`: removed tokens with A ≠ 0, as a fraction of the valid tokens.

    Args:
        mask: [B, T] response mask. loss_mask: [B, T] after the controls. advantages: [B, T].
    """
    valid = mask > 0  # [B, T]
    removed_active = valid & (loss_mask <= 0) & (advantages != 0)  # [B, T]
    return {"control/frac_removed_active": removed_active.sum() / valid.sum().clamp_min(1)}


def to_floats(metrics: dict[str, torch.Tensor | float | int]) -> dict[str, float]:
    """Every value as a Python float, with one device-to-host transfer for all tensors."""
    keys = [k for k, v in metrics.items() if isinstance(v, torch.Tensor)]
    out = {k: float(v) for k, v in metrics.items() if not isinstance(v, torch.Tensor)}
    if keys:
        values = torch.stack([metrics[k].detach().reshape(()).to("cpu", torch.float64) for k in keys]).tolist()
        out.update(zip(keys, values))
    return out
