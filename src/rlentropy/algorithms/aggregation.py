"""Loss aggregation: how a per-token loss matrix `[B, T]` becomes the scalar that is back-propagated.

Modes (L = loss matrix, M = mask, n_b = Σ_t M[b, t], N = Σ M, S = #rows with n_b > 0):

| mode | value | used by |
|---|---|---|
| token-mean | Σ L·M / N | DAPO, verl default, Clip_B / Clip_V / Clip-Cov / KL-Cov recipes |
| token-sum | Σ L·M | verl `token-sum` |
| seq-mean-token-sum | (1/S) Σ_b Σ_t L·M | verl |
| seq-mean-token-mean | (1/S) Σ_b (Σ_t L·M) / n_b | original GRPO; forced by GSPO |
| seq-mean-token-sum-norm | Σ L·M / (S · max_len) | Dr.GRPO (constant length normaliser) |

Micro-batch invariance: pass the counts of the whole batch (`global_tokens` = N, `global_seqs` = S,
both from `batch_counts(full_mask)`) and a constant `max_len`; then the sum of `aggregate_loss` over
micro-batches equals the whole-batch value, for every mode. Left out, they default to the counts of
the tensor given (what verl does on a single rank).

`aggregation_weights` returns the per-token weight w with `aggregate_loss(L, M, mode) == Σ L·w`;
the dynamics probes need it (the α of a token in the first-order entropy change).
"""

from __future__ import annotations

import torch

from rlentropy.algorithms._util import as_bool, check_choice, check_positive, check_tensor, float_dtype

AGG_MODES = (
    "token-mean",
    "token-sum",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
)


def batch_counts(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(valid tokens N, sequences with at least one valid token S) of a whole batch, as 0-d float64.

    Pass them as `global_tokens` / `global_seqs` to every micro-batch's `aggregate_loss`.

    Args:
        mask: [B, T] response (loss) mask.
    """
    m = as_bool(check_tensor("mask", mask, ndim=2))
    tokens = m.sum(dtype=torch.float64)  # []
    seqs = m.any(dim=-1).sum(dtype=torch.float64)  # []
    return tokens, seqs


def _denominator(
    name: str, value: torch.Tensor | float | int | None, default: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    if value is None:
        return default.to(dtype).clamp_min(1)  # an empty batch gives 0, not NaN
    if isinstance(value, torch.Tensor):
        return value.to(device=default.device, dtype=dtype)
    return torch.tensor(check_positive(name, value), dtype=dtype, device=default.device)


def aggregation_weights(
    mask: torch.Tensor,
    mode: str,
    *,
    global_tokens: torch.Tensor | float | int | None = None,
    global_seqs: torch.Tensor | float | int | None = None,
    max_len: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Per-token weights w of an aggregation mode: `aggregate_loss(L, mask, mode, ...) == (L * w).sum()`.

    Args:
        mask: [B, T] loss mask (bool or 0/1).
        mode: one of `AGG_MODES`.
        global_tokens: valid tokens of the whole batch (token-mean); default: of `mask`.
        global_seqs: sequences with a valid token in the whole batch (seq-mean-*); default: of `mask`.
        max_len: the constant length of seq-mean-token-sum-norm; default: T. Set it to the generation
            budget (`max_new_tokens`) so it does not change between batches (Dr.GRPO).
        dtype: dtype of the weights.

    Returns:
        [B, T] weights, 0 on masked tokens.
    """
    check_choice("mode", mode, AGG_MODES)
    m = as_bool(check_tensor("mask", mask, ndim=2))  # [B, T]
    mf = m.to(dtype)  # [B, T]
    if mode == "token-sum":
        return mf
    if mode == "token-mean":
        n = _denominator("global_tokens", global_tokens, m.sum(), dtype)  # []
        return mf / n
    seq_len = mf.sum(dim=-1, keepdim=True)  # [B, 1]
    s = _denominator("global_seqs", global_seqs, (seq_len > 0).sum(), dtype)  # []
    if mode == "seq-mean-token-sum":
        return mf / s
    if mode == "seq-mean-token-mean":
        return mf / (seq_len.clamp_min(1) * s)  # [B, T]
    horizon = check_positive("max_len", max_len) if max_len is not None else float(mask.shape[-1])
    return mf / (s * horizon)  # seq-mean-token-sum-norm


def aggregate_loss(
    loss_mat: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token-mean",
    *,
    global_tokens: torch.Tensor | float | int | None = None,
    global_seqs: torch.Tensor | float | int | None = None,
    max_len: int | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss matrix to a scalar (see the module docstring for the modes).

    Masked entries never contribute, even when they are inf or NaN.

    Args:
        loss_mat: [B, T] per-token loss.
        mask: [B, T] loss mask (bool or 0/1).
        mode: one of `AGG_MODES`.
        global_tokens, global_seqs, max_len: see `aggregation_weights`.

    Returns:
        [] scalar loss in the dtype of `loss_mat` (at least fp32).
    """
    check_tensor("loss_mat", loss_mat, ndim=2)
    if loss_mat.shape != mask.shape:
        raise ValueError(f"loss_mat {tuple(loss_mat.shape)} and mask {tuple(mask.shape)} must have the same shape")
    dtype = float_dtype(loss_mat)
    w = aggregation_weights(
        mask, mode, global_tokens=global_tokens, global_seqs=global_seqs, max_len=max_len, dtype=dtype
    )  # [B, T]
    contrib = torch.where(as_bool(mask), loss_mat.to(dtype) * w, 0.0)  # [B, T]
    return contrib.sum()
