"""Statistics over seeds: confidence intervals of a mean and of paired differences.

A study runs each method with the same seeds; every summary figure (final entropy, pass@k, …) is one
number per (method, seed). Over the n seeds of a method we report the mean and a 95 % confidence
interval; against the baseline we report the paired difference (method − baseline on the same seed,
so the seed's shared randomness — prompts, initial rollouts — cancels) with its interval.

Two intervals, both exact about what they are:
* `t_interval`: mean ± t_{1−α/2, n−1} · s / √n (Student t, s the sample std with n − 1). Assumes the
  per-seed values are roughly normal; with n = 3 it is wide (t_{0.975, 2} = 4.30), honestly so. This
  is what the summaries report.
* `bootstrap_interval`: the percentile bootstrap of the mean (resampling seeds with replacement, a
  fixed generator). It makes no normality assumption but under-covers badly for n < 10 (with n = 3
  there are only 10 distinct resamples) — available for larger studies, reported only on request.

Pure functions of Python floats: no I/O, no global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _st

__all__ = ["Interval", "bootstrap_interval", "paired_difference", "t_interval"]


@dataclass(frozen=True)
class Interval:
    """A mean with its confidence interval.

    Attributes:
        mean: the sample mean. low, high: the interval (NaN when n < 2). n: number of values.
        method: "t" or "bootstrap". confidence: e.g. 0.95.
    """

    mean: float
    low: float
    high: float
    n: int
    method: str
    confidence: float

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of 0 (needs n ≥ 2)."""
        return math.isfinite(self.low) and math.isfinite(self.high) and (self.low > 0 or self.high < 0)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2 if math.isfinite(self.low) else math.nan

    def fmt(self, digits: int = 3) -> str:
        """`mean ± half-width` (or just the mean when there is one value)."""
        if not math.isfinite(self.mean):
            return "nan"
        if self.n < 2 or not math.isfinite(self.low):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}"

    def as_dict(self) -> dict[str, float | int | str]:
        return {
            "mean": self.mean,
            "low": self.low,
            "high": self.high,
            "n": self.n,
            "method": self.method,
            "confidence": self.confidence,
        }


def _clean(values: Sequence[float]) -> np.ndarray:
    x = np.asarray([float(v) for v in values], dtype=np.float64)
    return x[np.isfinite(x)]


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Student-t interval of the mean of `values` (NaNs dropped).

    Args:
        values: one value per seed.
        confidence: in (0, 1).

    Returns:
        `Interval(method="t")`; low = high = NaN when fewer than 2 finite values.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    x = _clean(values)
    n = int(x.size)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, "t", confidence)
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n, "t", confidence)
    half = float(_st.t.ppf(0.5 + confidence / 2, n - 1)) * float(x.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, "t", confidence)


def bootstrap_interval(
    values: Sequence[float], confidence: float = 0.95, *, resamples: int = 10_000, seed: int = 0
) -> Interval:
    """Percentile-bootstrap interval of the mean (resampling the values with replacement).

    Args:
        values: one value per seed. confidence: in (0, 1). resamples: bootstrap draws (≥ 100).
        seed: the generator's seed (the result is a pure function of the inputs).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 100:
        raise ValueError(f"resamples must be >= 100, got {resamples}")
    x = _clean(values)
    n = int(x.size)
    if n < 2:
        mean = float(x.mean()) if n else math.nan
        return Interval(mean, math.nan, math.nan, n, "bootstrap", confidence)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))  # [R, n]
    means = x[idx].mean(axis=1)  # [R]
    lo, hi = np.quantile(means, [0.5 - confidence / 2, 0.5 + confidence / 2])
    return Interval(float(x.mean()), float(lo), float(hi), n, "bootstrap", confidence)


def paired_difference(
    values: Mapping[int, float], baseline: Mapping[int, float], confidence: float = 0.95, method: str = "t"
) -> Interval:
    """Interval of the mean of `values[s] − baseline[s]` over the seeds s both have.

    Args:
        values, baseline: seed → value. confidence: in (0, 1). method: "t" or "bootstrap".
    """
    seeds = sorted(set(values) & set(baseline))
    diffs = [float(values[s]) - float(baseline[s]) for s in seeds]
    if method == "t":
        return t_interval(diffs, confidence)
    if method == "bootstrap":
        return bootstrap_interval(diffs, confidence)
    raise ValueError(f"method must be 't' or 'bootstrap', got {method!r}")
