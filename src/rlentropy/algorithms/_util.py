"""Shared helpers for the algorithm math: argument checks, broadcasting, sync-free ranking and counts.

Nothing here reads a tensor's value on the host (no `.item()`, no data-dependent Python branches), so
every function can run inside a CUDA graph or a compiled region. Argument checks only look at Python
scalars and shapes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from numbers import Real

import torch

# Tolerance of the rounding in `floor_count` / `ceil_count`: `frac * n` computed in float64 can land a
# few ulps below or above an integer that the exact product equals (0.2 * 15 = 3.0000000000000004).
_COUNT_TOL = 1e-9


def check_real(name: str, value: object) -> float:
    """`value` as a finite float, else ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_positive(name: str, value: object) -> float:
    """`value` > 0, else ValueError naming `name`."""
    v = check_real(name, value)
    if v <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return v


def check_nonneg(name: str, value: object) -> float:
    """`value` ≥ 0, else ValueError naming `name`."""
    v = check_real(name, value)
    if v < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return v


def check_fraction(name: str, value: object) -> float:
    """`value` in (0, 1] (a fraction, never a percent), else ValueError naming `name`."""
    v = check_real(name, value)
    if not 0.0 < v <= 1.0:
        raise ValueError(f"{name} must be a fraction in (0, 1] (not a percent), got {value!r}")
    return v


def check_choice(name: str, value: object, choices: Iterable[str]) -> str:
    """`value` is one of `choices`, else ValueError naming `name` and listing the choices."""
    options = tuple(choices)
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {', '.join(options)}; got {value!r}")
    return value


def check_tensor(name: str, value: object, *, ndim: int | None = None) -> torch.Tensor:
    """`value` is a tensor (with `ndim` dimensions when given), else ValueError naming `name`."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if ndim is not None and value.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(value.shape)}")
    return value


def check_same_shape(reference_name: str, reference: torch.Tensor, **others: torch.Tensor | None) -> None:
    """Every tensor in `others` has the shape of `reference`, else ValueError naming it."""
    for name, tensor in others.items():
        if tensor is None:
            continue
        check_tensor(name, tensor)
        if tensor.shape != reference.shape:
            raise ValueError(
                f"{name} must have the shape of {reference_name} {tuple(reference.shape)}, got {tuple(tensor.shape)}"
            )


def float_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype math on these tensors runs in: the widest floating dtype among them, at least fp32."""
    dtype = torch.float32
    for t in tensors:
        if t.is_floating_point() and torch.finfo(t.dtype).bits > torch.finfo(dtype).bits:
            dtype = t.dtype
    return dtype


def token_advantages(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Advantages as a `[B, T]` tensor: `[B]` is broadcast over the tokens, `[B, T]` is kept.

    Args:
        advantages: [B] per response or [B, T] per token.
        mask: [B, T] response mask (only its shape is used).

    Returns:
        [B, T] advantages (a view when broadcast).
    """
    check_tensor("advantages", advantages)
    check_tensor("mask", mask, ndim=2)
    if advantages.dim() == 1:
        if advantages.shape[0] != mask.shape[0]:
            raise ValueError(
                f"advantages of shape {tuple(advantages.shape)} must have {mask.shape[0]} rows "
                f"(the batch size of mask {tuple(mask.shape)})"
            )
        return advantages[:, None].expand(mask.shape)  # [B, T]
    if advantages.shape != mask.shape:
        raise ValueError(f"advantages must be [B] or [B, T] = {tuple(mask.shape)}, got {tuple(advantages.shape)}")
    return advantages  # [B, T]


def as_bool(mask: torch.Tensor) -> torch.Tensor:
    """A 0/1 (or bool) mask as bool."""
    return mask if mask.dtype == torch.bool else mask != 0


def like_mask(keep: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The bool `keep` ∧ `mask`, returned in `mask`'s dtype (so a float mask stays a float mask)."""
    out = keep & as_bool(mask)  # [B, T] bool
    return out if mask.dtype == torch.bool else out.to(mask.dtype)


def count(mask: torch.Tensor) -> torch.Tensor:
    """Number of true entries of a bool / 0-1 mask, as a float64 0-d tensor (exact up to 2**53)."""
    return as_bool(mask).sum(dtype=torch.float64)


def floor_count(frac: float, n: torch.Tensor) -> torch.Tensor:
    """`floor(frac · n)` in float64, robust to the last-ulp rounding of the product. [] float64."""
    return torch.floor(n.to(torch.float64) * frac + _COUNT_TOL)


def ceil_count(frac: float, n: torch.Tensor) -> torch.Tensor:
    """`ceil(frac · n)` in float64, robust to the last-ulp rounding of the product. [] float64."""
    return torch.ceil(n.to(torch.float64) * frac - _COUNT_TOL)


def descending_rank(keys: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Rank of every valid entry when the valid entries are sorted by `keys`, largest first.

    Ties keep row-major order (stable sort). Invalid entries get ranks after every valid one, so
    `valid & (rank < k)` selects the top-k valid entries for a tensor `k` without a host sync.

    Args:
        keys: [...] float.
        valid: [...] bool, same shape.

    Returns:
        [...] long, 0 for the largest valid key.
    """
    flat = torch.where(valid, keys, torch.full_like(keys, -math.inf)).reshape(-1)  # [N]
    # Put invalid entries last even when a valid key is -inf: sort on (valid, key) lexicographically.
    order = torch.argsort(flat, descending=True, stable=True)  # [N]
    order = order[torch.argsort(~valid.reshape(-1)[order], stable=True)]  # [N] valid first
    rank = torch.empty_like(order)  # [N]
    rank[order] = torch.arange(order.numel(), device=order.device)
    return rank.reshape(keys.shape)  # [...]


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over the true entries of `mask`; 0 when the mask is empty. [] tensor."""
    m = as_bool(mask)
    total = torch.where(m, values, torch.zeros_like(values)).sum()  # []
    return total / m.sum().clamp_min(1).to(total.dtype)


def masked_population_std(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, population std) of `values` over the true entries of `mask` (divide by n, n ≥ 1). [] each."""
    m = as_bool(mask)
    n = m.sum().clamp_min(1).to(values.dtype)  # []
    zero = torch.zeros_like(values)
    mean = torch.where(m, values, zero).sum() / n  # []
    var = torch.where(m, (values - mean) ** 2, zero).sum() / n  # []
    return mean, var.sqrt()


def drop_fractions(old_mask: torch.Tensor, new_mask: torch.Tensor, adv: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Fractions of the valid tokens a control removed: overall, among A > 0 and among A < 0.

    Args:
        old_mask: [B, T] mask before the control.
        new_mask: [B, T] mask after the control.
        adv: [B, T] token advantages, or None (only the overall fraction is reported).

    Returns:
        {"frac_dropped", "frac_dropped_pos_adv", "frac_dropped_neg_adv", "tokens_dropped"}: 0-d float32
        tensors; a fraction whose population is empty is 0.
    """
    old = as_bool(old_mask)
    dropped = old & ~as_bool(new_mask)  # [B, T]

    def frac(pop: torch.Tensor) -> torch.Tensor:
        return (count(dropped & pop) / count(pop).clamp_min(1)).to(torch.float32)

    out = {"frac_dropped": frac(old), "tokens_dropped": count(dropped).to(torch.float32)}
    if adv is not None:
        out["frac_dropped_pos_adv"] = frac(old & (adv > 0))
        out["frac_dropped_neg_adv"] = frac(old & (adv < 0))
    return out
