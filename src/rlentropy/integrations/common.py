"""Framework-free pieces shared by the TRL and verl adapters.

Controls, losses and advantages run through `rlentropy.algorithms.dispatch` (the same dispatch as our
own trainer). What is shared here is the logging: `summary_sums` / `summary_metrics`, the TokenStats
metrics every adapter logs (entropy, surprisal, S, s_bar, quadrant counts, first-order entropy
pressure, fraction removed by the controls). The sums are additive, so a caller can all-reduce them
across processes (or accumulate them over micro-batches) before `summary_metrics` turns them into
ratios.

Definitions (M = response mask before controls, L = loss mask after controls):
    entropy      Σ M·H / Σ M                    surprisal    Σ M·(−log p) / Σ M
    S_mean       Σ M·S / Σ M                    s_bar_mean   Σ M·s_bar / Σ M
    pressure     Σ L·A·(s_bar − S) / Σ L        (lr- and weight-free first-order pressure; > 0 raises H)
    dH_pred      Σ lr·w·A·(s_bar − S) over L    (w = the token's weight in the aggregated loss)
    quadrant/q_frac   tokens of quadrant q / Σ L,   quadrant/q_dH   Σ of dH_pred over quadrant q
    control/frac_removed        (Σ M − Σ L) / Σ M, and the same among A > 0 (`_pos`) and A < 0 (`_neg`)
"""

from __future__ import annotations

import torch

from rlentropy.dynamics.pressure import QUADRANTS, quadrant_decomposition, token_pressure

__all__ = ["summary_metrics", "summary_sums"]

_SUM_KEYS: tuple[str, ...] = (
    (
        "tokens",
        "entropy",
        "surprisal",
        "s",
        "s_bar",
        "loss_tokens",
        "pressure",
        "dh",
        "removed",
        "tokens_pos",
        "removed_pos",
        "tokens_neg",
        "removed_neg",
    )
    + tuple(f"{q}/count" for q in QUADRANTS)
    + tuple(f"{q}/dH" for q in QUADRANTS)
)


def summary_sums(
    *,
    entropy: torch.Tensor,
    logp: torch.Tensor,
    s: torch.Tensor,
    s_bar: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    loss_mask: torch.Tensor,
    token_weights: torch.Tensor,
    lr: float,
) -> torch.Tensor:
    """Additive sums behind `summary_metrics`, as one float64 vector (all-reduce it with SUM).

    Args:
        entropy, logp, s, s_bar: [B, T] old-policy TokenStats fields.
        advantages: [B, T] per-token advantages.
        mask: [B, T] response mask before controls (M).
        loss_mask: [B, T] mask after controls (L).
        token_weights: [B, T] each token's weight in the aggregated loss of the step.
        lr: learning rate of the step.

    Returns:
        [len(_SUM_KEYS)] float64 vector of sums.
    """
    f = torch.float64
    m = mask.to(f)  # [B, T]
    lm = loss_mask.to(f)  # [B, T]
    a = advantages.to(f)  # [B, T]
    s64, sb64 = s.to(f), s_bar.to(f)  # [B, T]
    dh_tok, pm = token_pressure(s64, sb64, a, lm, token_weights=token_weights.to(f), lr=lr)  # [B, T]
    _, qm = quadrant_decomposition(dh_tok, s64, sb64, a, lm)
    removed = m - lm  # [B, T]
    vals = {
        "tokens": m.sum(),
        "entropy": (m * entropy.to(f)).sum(),
        "surprisal": -(m * logp.to(f)).sum(),
        "s": (m * s64).sum(),
        "s_bar": (m * sb64).sum(),
        "loss_tokens": lm.sum(),
        "pressure": pm["lrfree"] * pm["tokens"],
        "dh": pm["dH_sum"],
        "removed": removed.sum(),
        "tokens_pos": (m * (a > 0)).sum(),
        "removed_pos": (removed * (a > 0)).sum(),
        "tokens_neg": (m * (a < 0)).sum(),
        "removed_neg": (removed * (a < 0)).sum(),
    }
    vals.update({k: qm[k].to(f) for k in qm if k != "zero/count"})
    return torch.stack([vals[k] for k in _SUM_KEYS])  # [K]


def summary_metrics(sums: torch.Tensor, prefix: str = "rlentropy/") -> dict[str, float]:
    """Turn (all-reduced) `summary_sums` into named ratios (see the module docstring)."""
    v = dict(zip(_SUM_KEYS, sums.tolist()))

    def ratio(num: float, den: float) -> float:
        return num / den if den > 0 else 0.0

    out = {
        "entropy": ratio(v["entropy"], v["tokens"]),
        "surprisal": ratio(v["surprisal"], v["tokens"]),
        "S_mean": ratio(v["s"], v["tokens"]),
        "s_bar_mean": ratio(v["s_bar"], v["tokens"]),
        "pressure": ratio(v["pressure"], v["loss_tokens"]),
        "dH_pred": v["dh"],
        "control/frac_removed": ratio(v["removed"], v["tokens"]),
        "control/frac_removed_pos": ratio(v["removed_pos"], v["tokens_pos"]),
        "control/frac_removed_neg": ratio(v["removed_neg"], v["tokens_neg"]),
    }
    for q in QUADRANTS:
        out[f"quadrant/{q}_frac"] = ratio(v[f"{q}/count"], v["loss_tokens"])
        out[f"quadrant/{q}_dH"] = v[f"{q}/dH"]
    return {prefix + k: val for k, val in out.items()}
