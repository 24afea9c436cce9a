"""Across-step summaries of the probes, for the demo summary and the HTML report.

Input is the list of metric records of a run (the rows of `metrics.jsonl`); only rows that carry both
the predicted and the measured step-level entropy change are used.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["PRED_KEY", "MEAS_KEY", "prediction_agreement", "entropy_performance_fit"]

PRED_KEY = "probe/step_pred_dH"
MEAS_KEY = "probe/step_meas_dH"


def prediction_agreement(
    records: Iterable[Mapping[str, Any]], *, pred_key: str = PRED_KEY, meas_key: str = MEAS_KEY
) -> dict[str, float]:
    """Correlation and sign agreement of predicted vs measured ΔH across probed steps.

    Args:
        records: metric rows (dicts); rows missing either key, or with non-finite values, are skipped.
        pred_key, meas_key: the keys holding the predicted and measured changes.

    Returns:
        `n` probed steps used, `corr` Pearson correlation (nan when n < 2 or a series is constant),
        `sign_agree` fraction of steps where the signs agree (nan when n == 0),
        `median_ratio` median of measured / predicted over steps with predicted != 0 (nan if none),
        `mean_pred`, `mean_meas`.
    """
    pairs: list[tuple[float, float]] = []
    for row in records:
        if pred_key not in row or meas_key not in row:
            continue
        try:
            p, m = float(row[pred_key]), float(row[meas_key])
        except (TypeError, ValueError):
            continue
        if math.isfinite(p) and math.isfinite(m):
            pairs.append((p, m))
    n = len(pairs)
    nan = float("nan")
    if n == 0:
        return {"n": 0.0, "corr": nan, "sign_agree": nan, "median_ratio": nan, "mean_pred": nan, "mean_meas": nan}
    ps = [p for p, _ in pairs]
    ms = [m for _, m in pairs]
    mp, mm = sum(ps) / n, sum(ms) / n
    corr = nan
    if n >= 2:
        sxy = sum((p - mp) * (m - mm) for p, m in pairs)
        sxx = sum((p - mp) ** 2 for p in ps)
        syy = sum((m - mm) ** 2 for m in ms)
        if sxx > 0 and syy > 0:
            corr = sxy / math.sqrt(sxx * syy)
    sign = sum(1.0 for p, m in pairs if (p > 0) == (m > 0) and (p < 0) == (m < 0)) / n
    ratios = sorted(m / p for p, m in pairs if p != 0)
    if ratios:
        mid = len(ratios) // 2
        med = ratios[mid] if len(ratios) % 2 else 0.5 * (ratios[mid - 1] + ratios[mid])
    else:
        med = nan
    return {"n": float(n), "corr": corr, "sign_agree": sign, "median_ratio": med, "mean_pred": mp, "mean_meas": mm}


def entropy_performance_fit(
    records: Iterable[Mapping[str, Any]], *, entropy_key: str = "entropy/mean", reward_key: str = "reward/mean"
) -> dict[str, float]:
    """Cui et al.'s fit R = −a·exp(H) + b over a run's metric rows.

    Args:
        records: metric rows; rows missing a key or with non-finite values are skipped.
        entropy_key, reward_key: the series to fit (e.g. an eval accuracy key instead of the reward).

    Returns:
        `a`, `b`, `r2`, `n` (points used); a, b, r2 are nan when fewer than 2 points remain.
    """
    import torch

    from rlentropy.dynamics.covariance import fit_entropy_performance

    hs, rs = [], []
    for row in records:
        try:
            h, r = float(row[entropy_key]), float(row[reward_key])
        except (KeyError, TypeError, ValueError):
            continue
        if math.isfinite(h) and math.isfinite(r):
            hs.append(h)
            rs.append(r)
    nan = float("nan")
    if len(hs) < 2:
        return {"a": nan, "b": nan, "r2": nan, "n": float(len(hs))}
    _, m = fit_entropy_performance(torch.tensor(hs, dtype=torch.float64), torch.tensor(rs, dtype=torch.float64))
    return {"a": float(m["a"]), "b": float(m["b"]), "r2": float(m["r2"]), "n": float(len(hs))}
