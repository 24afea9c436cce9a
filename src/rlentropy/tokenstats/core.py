"""Exact, memory-bounded per-token statistics of a policy: log p of the sampled token, entropy H,
the entropy discriminator S = p_k (H + log p_k), its policy-weighted baseline E_p[S] and sum p^2.

Two entry points share one set of float32 block kernels (`_kernels.py`):

* `token_stats(logits, tokens)` for logits you already have ([..., V], any float dtype);
* `token_stats_from_hidden(hidden, lm_head_weight, tokens)`, which projects the last hidden states
  block by block, so [N, V] logits never exist, and recomputes the blocks in backward.

Both are custom autograd functions: `logp` and `entropy` are differentiable (gradients flow to the
logits, or to the hidden states, the lm_head weight and bias); `s`, `s_bar` and `sum_p2` are
detached statistics.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields

import torch

from rlentropy.tokenstats._kernels import (
    ChunkPlan,
    block_grad_logits,
    block_partials,
    finalize,
    merge_partials,
    plan_chunks,
)

DEFAULT_WORKSPACE_BYTES = 256 * 2**20
"""Default float32 scratch budget of one call (256 MiB)."""

_F32 = torch.float32


@dataclass(frozen=True)
class TokenStats:
    """Per-token statistics of the policy at the sampled tokens. All fields [B, T] float32
    (generally: the shape of `tokens`).

    Attributes:
        logp: log p_k, log-probability of the sampled token k (differentiable).
        entropy: H = -sum_i p_i log p_i (differentiable).
        s: S_k = p_k (H + log p_k) = -dH/dz_k, the entropy discriminator (detached).
        s_bar: E_{i~p}[S_i] = sum_i p_i S_i = H sum_i p_i^2 + sum_i p_i^2 log p_i (detached).
        sum_p2: sum_i p_i^2 (detached).

    Positions where the `mask` given to the producing function is 0 hold 0 in every field.
    """

    logp: torch.Tensor
    entropy: torch.Tensor
    s: torch.Tensor
    s_bar: torch.Tensor
    sum_p2: torch.Tensor

    def detach(self) -> TokenStats:
        """The same statistics with `logp` and `entropy` detached from the graph."""
        return TokenStats(
            logp=self.logp.detach(),
            entropy=self.entropy.detach(),
            s=self.s,
            s_bar=self.s_bar,
            sum_p2=self.sum_p2,
        )


STAT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(TokenStats))
"""The names of the `TokenStats` fields, in order."""


# --------------------------------------------------------------------------------------------
# validation


def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)


def _check_float(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype} with shape {_shape(t)}")


def _check_temperature(temperature: float) -> float:
    try:
        temp = float(temperature)
    except (TypeError, ValueError):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}") from None
    if not (temp > 0.0 and temp < float("inf")):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    return 1.0 / temp


def _check_workspace(workspace_bytes: int) -> int:
    if isinstance(workspace_bytes, bool) or not isinstance(workspace_bytes, int) or workspace_bytes <= 0:
        raise ValueError(f"workspace_bytes must be a positive int, got {workspace_bytes!r}")
    return workspace_bytes


def _check_tokens(tokens: torch.Tensor, lead: torch.Size, vocab: int, source: str) -> None:
    if not isinstance(tokens, torch.Tensor):
        raise ValueError(f"tokens must be a torch.Tensor, got {type(tokens).__name__}")
    if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise ValueError(f"tokens must be an integer tensor, got dtype {tokens.dtype}")
    if tokens.shape != lead:
        raise ValueError(
            f"tokens has shape {_shape(tokens)} but {source} has leading shape {list(lead)}; they must match"
        )
    if tokens.numel() > 0:
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= vocab:
            raise ValueError(f"tokens must lie in [0, {vocab}) (vocabulary size {vocab}), got values in [{lo}, {hi}]")


def _check_mask(mask: torch.Tensor | None, lead: torch.Size) -> torch.Tensor | None:
    """Flat int64 indices of the selected positions, or None for all positions."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
    if mask.shape != lead:
        raise ValueError(f"mask has shape {_shape(mask)} but tokens has shape {list(lead)}; they must match")
    return torch.nonzero(mask.reshape(-1) != 0).squeeze(1)  # [M]


def _nonfinite_where(t: torch.Tensor) -> str:
    bad = torch.nonzero(~torch.isfinite(t))
    first = [int(i) for i in bad[0]] if bad.numel() else []
    return f"{int(bad.shape[0])} entries, first at index {first}"


# --------------------------------------------------------------------------------------------
# the shared block loops


def _autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """A context that disables autocast on `device` (a no-op where autocast does not exist).

    Inside a caller's `torch.autocast(...)` region the block loops must still project and reduce in
    float32 with float32 accumulation; autocast would run matmul-like ops (mm, bmm) in bf16/fp16.
    """
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _slices(
    fill: Callable[[torch.Tensor, int, int, int, int], None],
    m_rows: int,
    vocab: int,
    plan: ChunkPlan,
    device: torch.device,
) -> Iterator[tuple[int, int, Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]]]:
    """The block order of both loops: (v0, v1, row blocks) per vocabulary slice [v0, v1), outer; each
    row block [i0, i1) of that slice, inner, as (i0, i1, z, e) with `z` [n, vc] filled by
    `fill(z, i0, i1, v0, v1)` and `e` [n, vc] scratch, both views of two float32 buffers allocated
    once (a block is valid until the next one is drawn)."""
    zbuf = torch.empty(plan.rows * plan.vocab, dtype=_F32, device=device)
    ebuf = torch.empty(plan.rows * plan.vocab, dtype=_F32, device=device)

    def blocks(v0: int, v1: int) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
        for i0 in range(0, m_rows, plan.rows):
            i1 = min(m_rows, i0 + plan.rows)
            n = i1 - i0
            z = zbuf[: n * (v1 - v0)].view(n, v1 - v0)  # [n, vc]
            e = ebuf[: n * (v1 - v0)].view(n, v1 - v0)  # [n, vc]
            fill(z, i0, i1, v0, v1)
            yield i0, i1, z, e

    for v0 in range(0, vocab, plan.vocab):
        v1 = min(vocab, v0 + plan.vocab)
        yield v0, v1, blocks(v0, v1)


def _forward_blocks(
    fill: Callable[[torch.Tensor, int, int, int, int], None],
    tokens: torch.Tensor,
    vocab: int,
    plan: ChunkPlan,
    inv_temp: float,
    device: torch.device,
) -> tuple[torch.Tensor, ...]:
    """Run `block_partials` over all blocks; `fill(z, i0, i1, v0, v1)` writes raw float32 logits.

    Vocabulary slices are the outer loop and row blocks the inner one, so `fill` sees each slice
    [v0, v1) once, for all rows in order (a low-precision weight slice is up-cast once per call).
    Autocast is disabled on `device` for the whole loop (`fill` included).

    Returns:
        (logp, entropy, s, s_bar, sum_p2, mraw, log_s0), each [M] float32.
    """
    m_rows = tokens.shape[0]
    if m_rows == 0:
        return tuple(torch.empty(0, dtype=_F32, device=device) for _ in range(7))
    with _autocast_off(device):
        parts = []  # per vocabulary slice: the 7 `block_partials` results for all M rows
        for v0, _v1, blocks in _slices(fill, m_rows, vocab, plan, device):
            acc = [torch.empty(m_rows, dtype=_F32, device=device) for _ in range(6)]  # 6 x [M]
            acc.append(torch.empty(m_rows, dtype=torch.bool, device=device))  # [M] has_k
            for i0, i1, z, e in blocks:
                for a, t in zip(acc, block_partials(z, e, tokens[i0:i1], v0, inv_temp), strict=True):
                    a[i0:i1] = t
            parts.append(tuple(acc))
        mraw, r, w, q1, u, zk_raw = merge_partials(parts, inv_temp)
        logp, entropy, s, s_bar, sum_p2, log_s0 = finalize(mraw, r, w, q1, u, zk_raw, inv_temp)
    return logp, entropy, s, s_bar, sum_p2, mraw, log_s0


def _backward_blocks(
    fill: Callable[[torch.Tensor, int, int, int, int], None],
    consume: Callable[[torch.Tensor, int, int, int, int], None],
    tokens: torch.Tensor,
    vocab: int,
    plan: ChunkPlan,
    inv_temp: float,
    mraw: torch.Tensor,
    log_s0: torch.Tensor,
    entropy: torch.Tensor,
    g_logp: torch.Tensor,
    g_entropy: torch.Tensor,
) -> None:
    """Recompute each block, form dL/dz and hand it to `consume(dz, i0, i1, v0, v1)`.

    Same order as `_forward_blocks` (vocabulary slices outer, row blocks inner). Autocast is
    disabled on the tokens' device for the whole loop (`fill` and `consume` included).
    """
    m_rows = tokens.shape[0]
    if m_rows == 0:
        return
    device = tokens.device
    with _autocast_off(device):
        for v0, v1, blocks in _slices(fill, m_rows, vocab, plan, device):
            for i0, i1, z, e in blocks:
                dz = block_grad_logits(
                    z,
                    e,
                    tokens[i0:i1],
                    v0,
                    mraw[i0:i1],
                    log_s0[i0:i1],
                    entropy[i0:i1],
                    g_logp[i0:i1],
                    g_entropy[i0:i1],
                    inv_temp,
                )  # [n, vc]
                consume(dz, i0, i1, v0, v1)


def _upstream(g: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if g is None else g.to(_F32)


# --------------------------------------------------------------------------------------------
# logits path


class _LogitsRows:
    """Reads rows [i0, i1) (of the selected rows) and vocabulary columns [v0, v1) of `logits`."""

    def __init__(self, logits: torch.Tensor, rows: torch.Tensor | None):
        self.logits = logits
        self.rows = rows
        self.vocab = logits.shape[-1]
        self.lead = logits.shape[:-1]
        try:
            self.flat: torch.Tensor | None = logits.view(-1, self.vocab)  # [N, V], no copy
        except RuntimeError:
            self.flat = None  # strided leading dims: index them instead of copying all logits

    def fill(self, z: torch.Tensor, i0: int, i1: int, v0: int, v1: int) -> None:
        if self.flat is not None and self.rows is None:
            z.copy_(self.flat[i0:i1, v0:v1])
            return
        idx = self.rows[i0:i1] if self.rows is not None else torch.arange(i0, i1, device=z.device)
        if self.flat is not None:
            z.copy_(self.flat[idx, v0:v1])
        else:
            z.copy_(self.logits[torch.unravel_index(idx, self.lead) + (slice(v0, v1),)])


class _LogitsStatsFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, rows, tokens, inv_temp, plan):  # noqa: D102
        reader = _LogitsRows(logits, rows)
        logp, entropy, s, s_bar, sum_p2, mraw, log_s0 = _forward_blocks(
            reader.fill, tokens, reader.vocab, plan, inv_temp, logits.device
        )
        ctx.save_for_backward(logits, rows, tokens, mraw, log_s0, entropy)
        ctx.inv_temp = inv_temp
        ctx.plan = plan
        ctx.mark_non_differentiable(s, s_bar, sum_p2)
        return logp, entropy, s, s_bar, sum_p2

    @staticmethod
    def backward(ctx, g_logp, g_entropy, _g_s, _g_sbar, _g_p2):  # noqa: D102
        logits, rows, tokens, mraw, log_s0, entropy = ctx.saved_tensors
        vocab = logits.shape[-1]
        grad = torch.zeros(logits.shape, dtype=logits.dtype, device=logits.device)  # [..., V]
        grad_flat = grad.view(-1, vocab)  # [N, V]
        reader = _LogitsRows(logits, rows)

        def consume(dz: torch.Tensor, i0: int, i1: int, v0: int, v1: int) -> None:
            if rows is None:
                grad_flat[i0:i1, v0:v1] = dz
            else:
                grad_flat[rows[i0:i1], v0:v1] = dz.to(grad.dtype)

        _backward_blocks(
            reader.fill,
            consume,
            tokens,
            vocab,
            ctx.plan,
            ctx.inv_temp,
            mraw,
            log_s0,
            entropy,
            _upstream(g_logp, entropy),
            _upstream(g_entropy, entropy),
        )
        return grad, None, None, None, None


# --------------------------------------------------------------------------------------------
# hidden-state path


class _Float32Slices:
    """Float32 views of vocabulary slices of the lm_head weight, up-cast at most once per slice.

    The block loops visit the slices in order, each for all row blocks (forward: `fill`; backward:
    `fill` then `consume`), so one cached slice means one up-cast per slice per pass, at most
    `vc * d` float32 at a time (what `plan_chunks` charges). A float32 weight is sliced in place.
    """

    def __init__(self, weight: torch.Tensor):
        self.weight = weight
        self.key: tuple[int, int] | None = None
        self.slice: torch.Tensor | None = None

    def __call__(self, v0: int, v1: int) -> torch.Tensor:
        """The float32 [v1 - v0, d] slice of the weight."""
        if self.weight.dtype == _F32:
            return self.weight[v0:v1]  # [vc, d]
        if self.key != (v0, v1):
            self.slice = None  # free the previous slice first: one at a time
            self.slice = self.weight[v0:v1].to(_F32)  # [vc, d]
            self.key = (v0, v1)
        return self.slice


class _HiddenStatsFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, tokens, inv_temp, plan):  # noqa: D102
        vocab = weight.shape[0]
        w32 = _Float32Slices(weight)
        b32 = bias.to(_F32) if bias is not None else None  # [V]

        def fill(z: torch.Tensor, i0: int, i1: int, v0: int, v1: int) -> None:
            _project(z, hidden[i0:i1], w32(v0, v1), b32, v0, v1)

        logp, entropy, s, s_bar, sum_p2, mraw, log_s0 = _forward_blocks(
            fill, tokens, vocab, plan, inv_temp, hidden.device
        )
        ctx.save_for_backward(hidden, weight, bias, tokens, mraw, log_s0, entropy)
        ctx.inv_temp = inv_temp
        ctx.plan = plan
        ctx.mark_non_differentiable(s, s_bar, sum_p2)
        return logp, entropy, s, s_bar, sum_p2

    @staticmethod
    def backward(ctx, g_logp, g_entropy, _g_s, _g_sbar, _g_p2):  # noqa: D102
        hidden, weight, bias, tokens, mraw, log_s0, entropy = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        plan: ChunkPlan = ctx.plan
        vocab = weight.shape[0]
        w32 = _Float32Slices(weight)  # shared by fill and consume: one up-cast per slice
        b32 = bias.to(_F32) if bias is not None else None  # [V]
        g_h = torch.zeros(hidden.shape, dtype=_F32, device=hidden.device) if need_h else None  # [M, d]
        g_w = torch.zeros(weight.shape, dtype=_F32, device=weight.device) if need_w else None  # [V, d]
        g_b = torch.zeros(vocab, dtype=_F32, device=weight.device) if need_b else None  # [V]

        def fill(z: torch.Tensor, i0: int, i1: int, v0: int, v1: int) -> None:
            _project(z, hidden[i0:i1], w32(v0, v1), b32, v0, v1)

        def consume(dz: torch.Tensor, i0: int, i1: int, v0: int, v1: int) -> None:
            if g_h is not None:
                g_h[i0:i1].addmm_(dz, w32(v0, v1))  # [n, d]
            if g_w is not None:
                g_w[v0:v1].addmm_(dz.t(), hidden[i0:i1].to(_F32))  # [vc, d]
            if g_b is not None:
                g_b[v0:v1] += dz.sum(0)  # [vc]

        _backward_blocks(
            fill,
            consume,
            tokens,
            vocab,
            plan,
            ctx.inv_temp,
            mraw,
            log_s0,
            entropy,
            _upstream(g_logp, entropy),
            _upstream(g_entropy, entropy),
        )
        return (
            g_h.to(hidden.dtype) if g_h is not None else None,
            g_w.to(weight.dtype) if g_w is not None else None,
            g_b.to(bias.dtype) if g_b is not None else None,
            None,
            None,
            None,
        )


def _project(
    z: torch.Tensor, h: torch.Tensor, w_slice: torch.Tensor, b32: torch.Tensor | None, v0: int, v1: int
) -> None:
    """z[n, vc] = h[n, d] @ w_slice[vc, d].T + bias[v0:v1], computed and stored in float32.

    `w_slice` is float32; `h` of any float dtype is up-cast here (n * d elements per block).
    """
    h32 = h if h.dtype == _F32 else h.to(_F32)  # [n, d]
    if b32 is not None:
        torch.addmm(b32[v0:v1], h32, w_slice.t(), out=z)  # [n, vc]
    else:
        torch.mm(h32, w_slice.t(), out=z)  # [n, vc]


# --------------------------------------------------------------------------------------------
# public API


def _scatter_rows(vals: torch.Tensor, rows: torch.Tensor | None, lead: torch.Size) -> torch.Tensor:
    """[M] values at flat rows -> [lead] with zeros elsewhere (differentiable)."""
    if rows is None:
        return vals.reshape(lead)
    full = torch.zeros(lead.numel(), dtype=vals.dtype, device=vals.device)  # [N]
    return full.index_copy(0, rows, vals).reshape(lead)


def _finish(outs: tuple[torch.Tensor, ...], rows: torch.Tensor | None, lead: torch.Size) -> TokenStats:
    logp, entropy, s, s_bar, sum_p2 = (_scatter_rows(t, rows, lead) for t in outs)
    return TokenStats(logp=logp, entropy=entropy, s=s, s_bar=s_bar, sum_p2=sum_p2)


def _outputs_finite(outs: tuple[torch.Tensor, ...]) -> bool:
    logp, entropy, s, s_bar, sum_p2 = outs
    return bool(torch.isfinite(torch.stack([logp.detach(), entropy.detach(), s, s_bar, sum_p2])).all())


def token_stats(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    *,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    check_finite: bool | None = None,
) -> TokenStats:
    """Per-token statistics from logits you already have.

    Works in float32 on row blocks of at most `workspace_bytes` of scratch, whatever the dtype of
    `logits` (bf16 / fp16 / fp32 / fp64), with max-subtracted logits, and with autocast disabled
    inside (a caller's `torch.autocast` region does not change the result). Only positions with
    `mask != 0` are computed; the others are 0 in every field and get zero gradient.

    Args:
        logits: [..., V] floating-point logits (e.g. [B, T, V]); strided views are read in place.
        tokens: [...] integer sampled ids in [0, V) (same leading shape as `logits`).
        temperature: divide the logits by this (> 0) before the softmax.
        mask: optional [...] tensor; nonzero marks the positions to compute.
        workspace_bytes: float32 scratch budget for one block (default 256 MiB).
        check_finite: raise `ValueError` if a computed statistic is not finite, naming the input
            that holds the non-finite value. None means on unless Python runs with -O.

    Returns:
        TokenStats, every field shaped like `tokens`, float32. `logp` and `entropy` are
        differentiable with respect to `logits`; `s`, `s_bar` and `sum_p2` are detached.

    Raises:
        ValueError: on non-float logits, mismatched shapes, token ids outside [0, V), a
            non-positive temperature, a bad workspace, or (with `check_finite`) non-finite logits.
    """
    _check_float("logits", logits)
    if logits.dim() < 2:
        raise ValueError(f"logits must have shape [..., V] with at least 2 dimensions, got {_shape(logits)}")
    vocab = logits.shape[-1]
    if vocab < 1:
        raise ValueError(f"logits has an empty vocabulary dimension: shape {_shape(logits)}")
    lead = logits.shape[:-1]
    _check_tokens(tokens, lead, vocab, f"logits {_shape(logits)}")
    inv_temp = _check_temperature(temperature)
    _check_workspace(workspace_bytes)
    rows = _check_mask(mask, lead)
    tok = tokens.reshape(-1).to(torch.int64)  # [N]
    if rows is not None:
        tok = tok[rows]  # [M]
    plan = plan_chunks(tok.shape[0], vocab, workspace_bytes=workspace_bytes)
    outs = _LogitsStatsFn.apply(logits, rows, tok, inv_temp, plan)
    if (__debug__ if check_finite is None else check_finite) and not _outputs_finite(outs):
        lg = logits.reshape(-1, vocab) if rows is None else logits.reshape(-1, vocab)[rows]
        raise ValueError(
            f"logits (shape {_shape(logits)}) contains non-finite values at computed positions: "
            f"{_nonfinite_where(lg) if not torch.isfinite(lg).all() else 'none found; the statistics overflowed'}"
        )
    return _finish(outs, rows, lead)


def token_stats_from_hidden(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    tokens: torch.Tensor,
    *,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    check_finite: bool | None = None,
) -> TokenStats:
    """Per-token statistics straight from the last hidden states: logits z = hidden @ W.T + bias.

    Never materialises logits for all tokens: rows are projected in blocks (and the vocabulary is
    split into slices when even 64 rows of full-vocabulary float32 scratch would exceed
    `workspace_bytes`); per-row statistics merge exactly across slices. The backward pass
    recomputes each block from (hidden, W) instead of storing [N, V]; it saves only a few float32
    values per token. Positions with `mask == 0` (prompt, padding) are never projected, are 0 in
    every field and get zero gradient. Inputs of any float dtype are projected and reduced in
    float32 (low-precision weights are up-cast one vocabulary slice at a time, once per slice per
    pass), with autocast disabled inside, so a caller's `torch.autocast` region does not change them.

    Args:
        hidden: [..., d] final hidden states (after the final norm), e.g. [B, T, d], where
            position (b, t) predicts `tokens[b, t]`.
        lm_head_weight: [V, d] output projection.
        tokens: [...] integer sampled ids in [0, V).
        temperature: divide the logits by this (> 0) before the softmax.
        mask: optional [...] tensor; nonzero marks the positions to compute.
        bias: optional [V] output bias.
        workspace_bytes: float32 scratch budget for one block (default 256 MiB). Gradients of
            the weight (when it requires grad) need a further [V, d] float32 accumulator.
        check_finite: raise `ValueError` if a computed statistic is not finite, naming the input
            that holds the non-finite value. None means on unless Python runs with -O.

    Returns:
        TokenStats, every field shaped like `tokens`, float32. `logp` and `entropy` are
        differentiable with respect to `hidden`, `lm_head_weight` and `bias`; `s`, `s_bar` and
        `sum_p2` are detached.

    Raises:
        ValueError: on non-float inputs, mismatched shapes or devices, token ids outside [0, V),
            a non-positive temperature, a bad workspace, or (with `check_finite`) non-finite inputs.
    """
    _check_float("hidden", hidden)
    _check_float("lm_head_weight", lm_head_weight)
    if lm_head_weight.dim() != 2:
        raise ValueError(f"lm_head_weight must have shape [V, d], got {_shape(lm_head_weight)}")
    vocab, width = lm_head_weight.shape
    if vocab < 1:
        raise ValueError(f"lm_head_weight has an empty vocabulary dimension: shape {_shape(lm_head_weight)}")
    if hidden.dim() < 2 or hidden.shape[-1] != width:
        raise ValueError(
            f"hidden must have shape [..., d] with d = lm_head_weight.shape[1] = {width}, got {_shape(hidden)}"
        )
    if bias is not None:
        _check_float("bias", bias)
        if bias.shape != (vocab,):
            raise ValueError(f"bias must have shape [V] = [{vocab}], got {_shape(bias)}")
    for name, t in (("lm_head_weight", lm_head_weight), ("tokens", tokens), ("bias", bias), ("mask", mask)):
        if isinstance(t, torch.Tensor) and t.device != hidden.device:
            raise ValueError(f"{name} is on {t.device} but hidden is on {hidden.device}")
    lead = hidden.shape[:-1]
    _check_tokens(tokens, lead, vocab, f"hidden {_shape(hidden)}")
    inv_temp = _check_temperature(temperature)
    _check_workspace(workspace_bytes)
    rows = _check_mask(mask, lead)
    h = hidden.reshape(-1, width)  # [N, d]
    tok = tokens.reshape(-1).to(torch.int64)  # [N]
    if rows is not None:
        h = h.index_select(0, rows)  # [M, d]  masked positions are never projected
        tok = tok[rows]  # [M]
    # only a low-precision weight needs a float32 copy in the workspace (one [vc, d] slice at a time);
    # low-precision hidden rows are up-cast per block ([n, d]) and the bias once ([V]), uncharged
    upcast = width if lm_head_weight.dtype != _F32 else 0
    plan = plan_chunks(tok.shape[0], vocab, workspace_bytes=workspace_bytes, weight_upcast_width=upcast)
    outs = _HiddenStatsFn.apply(h, lm_head_weight, bias, tok, inv_temp, plan)
    if (__debug__ if check_finite is None else check_finite) and not _outputs_finite(outs):
        for name, t in (("hidden", h), ("lm_head_weight", lm_head_weight), ("bias", bias)):
            if t is not None and not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name} (shape {_shape(t)}) contains non-finite values: {_nonfinite_where(t)}")
        raise ValueError(
            "the logits hidden @ lm_head_weight.T overflowed float32 (inputs are finite); "
            f"hidden {_shape(hidden)}, lm_head_weight {_shape(lm_head_weight)}"
        )
    return _finish(outs, rows, lead)
