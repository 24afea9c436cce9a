"""Block kernels behind `rlentropy.tokenstats`: per-row softmax statistics of a float32 logits block.

Everything here works on one block of raw (un-tempered) float32 logits `z` of shape [n, vc] (n
rows, a slice [v0, v0 + vc) of the vocabulary) and returns per-row partial statistics that merge
exactly across vocabulary slices. No function here allocates anything of size [n, vc]: callers pass
two scratch buffers (`z`, which is overwritten, and `e`).

Notation (per row, tempered logits x = z / tau, m = max x, one arg-max position i*):
    e_i = exp(x_i - m)                 (e_{i*} = 1)
    r   = sum_{i != i*} e_i            (so s0 = sum_i e_i = 1 + r, log s0 = log1p(r))
    w   = sum_i e_i (m - x_i)          (>= 0)
    q1  = sum_i e_i^2                  (>= 1)
    u   = sum_i e_i^2 (m - x_i)        (>= 0)
Then, with p = e / s0:
    log p_k = (x_k - m) - log1p(r)
    H       = log1p(r) + w / s0                     (a sum of non-negative terms: no cancellation,
                                                     exact to float32 rounding even at H ~ 1e-8)
    sum p^2 = q1 / s0^2
    S_bar   = sum_i p_i^2 (H + log p_i) = sum_p2 * w / s0 - u / s0^2
Keeping the arg-max term out of `r` is what makes near-one-hot rows exact: 1 + r would round r away.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_F32 = 4  # bytes per float32 element
MIN_ROW_CHUNK = 64  # fewer rows than this per block and we split the vocabulary instead


@dataclass(frozen=True)
class ChunkPlan:
    """How a [rows, vocab] problem is tiled: `rows` per block and `vocab` columns per block."""

    rows: int
    vocab: int
    vocab_slices: int = 1

    @property
    def vocab_chunked(self) -> bool:
        """Whether blocks cover only a slice of the vocabulary."""
        return self.vocab_slices > 1


def plan_chunks(n_rows: int, vocab: int, *, workspace_bytes: int, weight_upcast_width: int = 0) -> ChunkPlan:
    """Choose a block shape whose float32 scratch fits in `workspace_bytes`.

    A block of n rows and vc vocabulary columns needs two float32 buffers of [n, vc] (8 bytes per
    cell) plus, when the lm_head weight must be up-cast to float32 per slice, vc * width * 4 bytes.
    Full-vocabulary blocks are preferred; the vocabulary is split only when fewer than
    `MIN_ROW_CHUNK` rows (or all rows, if there are fewer) would fit.

    Args:
        n_rows: rows (tokens) to process, >= 0.
        vocab: vocabulary size V, >= 1.
        workspace_bytes: scratch budget in bytes.
        weight_upcast_width: hidden size d if the weight slice must be copied to float32, else 0.

    Returns:
        A `ChunkPlan`.

    Raises:
        ValueError: if `workspace_bytes` cannot hold even one row of one vocabulary column.
    """
    per_cell = 2 * _F32
    per_col_fixed = weight_upcast_width * _F32
    want_rows = max(1, min(n_rows, MIN_ROW_CHUNK))
    rows_full = (workspace_bytes - vocab * per_col_fixed) // (vocab * per_cell)
    if rows_full >= want_rows:
        rows = int(max(1, min(rows_full, n_rows)))
        return ChunkPlan(rows=rows, vocab=vocab, vocab_slices=1)
    vc = workspace_bytes // (want_rows * per_cell + per_col_fixed)
    if vc < 1:
        raise ValueError(
            f"workspace_bytes={workspace_bytes} is too small: one block of {want_rows} rows needs at "
            f"least {want_rows * per_cell + per_col_fixed} bytes per vocabulary column"
        )
    vc = int(min(vc, vocab))
    return ChunkPlan(rows=want_rows, vocab=vc, vocab_slices=-(-vocab // vc))


def block_partials(
    z: torch.Tensor, e: torch.Tensor, tokens: torch.Tensor, v0: int, inv_temp: float
) -> tuple[torch.Tensor, ...]:
    """Partial statistics of one block. Overwrites `z` and `e`.

    Args:
        z: [n, vc] raw float32 logits of vocabulary ids [v0, v0 + vc); overwritten.
        e: [n, vc] float32 scratch; overwritten.
        tokens: [n] int64 sampled ids (global vocabulary ids).
        v0: first vocabulary id of the block.
        inv_temp: 1 / temperature.

    Returns:
        (mraw, r, w, q1, u, zk_raw, has_k), each [n]: the raw (un-tempered) block maximum, the
        accumulators of the module docstring in the block's own scale, the raw logit of the sampled
        token (meaningful where `has_k`), and whether the sampled token lies in this block.
    """
    vc = z.shape[1]
    mraw, amax = z.max(dim=-1)  # [n], [n]
    local = tokens - v0  # [n]
    has_k = (local >= 0) & (local < vc)  # [n] bool
    zk_raw = z.gather(1, local.clamp(0, vc - 1).unsqueeze(1)).squeeze(1)  # [n]
    z.sub_(mraw.unsqueeze(1))  # [n, vc]  x - m (tempered after the next line), <= 0
    if inv_temp != 1.0:
        z.mul_(inv_temp)
    torch.exp(z, out=e)  # [n, vc]
    e.scatter_(1, amax.unsqueeze(1), 0.0)  # drop the arg-max term (it is exactly 1)
    # Every accumulator is an elementwise product followed by `sum`, never a matmul: `sum` reduces
    # pairwise / in a tree on every backend (error ~1e-7 relative at V = 151,936), while a
    # [1, V] x [V, 1] bmm is one serial float32 chain on CPU (2.4e-4 relative, biased low) and runs
    # in bf16 under autocast. z is consumed in place: x - m, then e (x - m), then e^2 (x - m).
    r = e.sum(dim=1)  # [n]
    z.mul_(e)  # [n, vc]  e (x - m), 0 at the arg-max
    w = z.sum(dim=1).neg_()  # [n]  sum e (m - x)
    z.mul_(e)  # [n, vc]  e^2 (x - m)
    u = z.sum(dim=1).neg_()  # [n]  sum e^2 (m - x)
    e.mul_(e)  # [n, vc]  e^2 (arg-max term still 0)
    q1 = e.sum(dim=1).add_(1.0)  # [n]
    return mraw, r, w, q1, u, zk_raw, has_k


def merge_partials(parts: list[tuple[torch.Tensor, ...]], inv_temp: float) -> tuple[torch.Tensor, ...]:
    """Merge the partials of vocabulary slices into whole-vocabulary accumulators.

    With slice maxima m_j (tempered), M = max_j m_j, delta_j = m_j - M <= 0 and a_j = exp(delta_j):
        r  = sum_j a_j r_j + sum_{j != j*} a_j          (each slice's own max is a non-max term now)
        w  = sum_j a_j (w_j - delta_j (1 + r_j))
        q1 = sum_j a_j^2 q1_j
        u  = sum_j a_j^2 (u_j - delta_j q1_j)

    Args:
        parts: one `block_partials` result per vocabulary slice, all for the same rows.
        inv_temp: 1 / temperature.

    Returns:
        (mraw, r, w, q1, u, zk_raw): whole-vocabulary values, each [n].
    """
    if len(parts) == 1:
        mraw, r, w, q1, u, zk_raw, _ = parts[0]
        return mraw, r, w, q1, u, zk_raw
    mraw_j = torch.stack([p[0] for p in parts], dim=1)  # [n, J]
    r_j = torch.stack([p[1] for p in parts], dim=1)  # [n, J]
    w_j = torch.stack([p[2] for p in parts], dim=1)  # [n, J]
    q1_j = torch.stack([p[3] for p in parts], dim=1)  # [n, J]
    u_j = torch.stack([p[4] for p in parts], dim=1)  # [n, J]
    zk_j = torch.stack([p[5] for p in parts], dim=1)  # [n, J]
    has_j = torch.stack([p[6] for p in parts], dim=1)  # [n, J]
    mraw, jstar = mraw_j.max(dim=1)  # [n], [n]
    delta = (mraw_j - mraw.unsqueeze(1)) * inv_temp  # [n, J]  <= 0
    a = torch.exp(delta)  # [n, J]
    ones = a.scatter(1, jstar.unsqueeze(1), 0.0)  # [n, J]  a_j for j != j*
    r = (a * r_j).sum(1) + ones.sum(1)  # [n]
    w = (a * (w_j - delta * (1.0 + r_j))).sum(1)  # [n]
    a2 = a * a  # [n, J]
    q1 = (a2 * q1_j).sum(1)  # [n]
    u = (a2 * (u_j - delta * q1_j)).sum(1)  # [n]
    zk_raw = (zk_j * has_j).sum(1)  # [n]  exactly one slice holds the token
    return mraw, r, w, q1, u, zk_raw


def finalize(
    mraw: torch.Tensor,
    r: torch.Tensor,
    w: torch.Tensor,
    q1: torch.Tensor,
    u: torch.Tensor,
    zk_raw: torch.Tensor,
    inv_temp: float,
) -> tuple[torch.Tensor, ...]:
    """Turn whole-vocabulary accumulators into the statistics.

    Args:
        mraw, r, w, q1, u, zk_raw: [n] float32 from `merge_partials`.
        inv_temp: 1 / temperature.

    Returns:
        (logp, entropy, s, s_bar, sum_p2, log_s0), each [n] float32; `log_s0` = log sum_i exp(x_i - m)
        is kept for the backward pass.
    """
    log_s0 = torch.log1p(r)  # [n]
    inv_s0 = 1.0 / (1.0 + r)  # [n]
    w_over = w * inv_s0  # [n]  E_p[m - x]
    entropy = log_s0 + w_over  # [n]
    logp = (zk_raw - mraw) * inv_temp - log_s0  # [n]
    sum_p2 = q1 * inv_s0 * inv_s0  # [n]
    s_bar = sum_p2 * w_over - u * inv_s0 * inv_s0  # [n]
    s = torch.exp(logp) * (entropy + logp)  # [n]
    return logp, entropy, s, s_bar, sum_p2, log_s0


def block_grad_logits(
    z: torch.Tensor,
    e: torch.Tensor,
    tokens: torch.Tensor,
    v0: int,
    mraw: torch.Tensor,
    log_s0: torch.Tensor,
    entropy: torch.Tensor,
    g_logp: torch.Tensor,
    g_entropy: torch.Tensor,
    inv_temp: float,
) -> torch.Tensor:
    """Gradient of sum(g_logp * logp + g_entropy * H) with respect to one block of raw logits.

    With x = z / tau, p = softmax(x), lp = log p:
        d logp / dx = e_k - p,   dH / dx = -p (lp + H)
    so dL/dz = (1/tau) [g_logp e_k - p (g_logp + g_entropy (lp + H))].

    Args:
        z: [n, vc] raw float32 logits of the block; overwritten.
        e: [n, vc] float32 scratch; receives the gradient.
        tokens: [n] int64 sampled ids.
        v0: first vocabulary id of the block.
        mraw, log_s0, entropy: [n] float32 from the forward pass (whole vocabulary).
        g_logp, g_entropy: [n] float32 upstream gradients.
        inv_temp: 1 / temperature.

    Returns:
        `e`, holding dL/dz [n, vc] float32.
    """
    vc = z.shape[1]
    gl = g_logp * inv_temp  # [n]
    gh = g_entropy * inv_temp  # [n]
    z.sub_(mraw.unsqueeze(1))  # [n, vc]
    if inv_temp != 1.0:
        z.mul_(inv_temp)
    z.sub_(log_s0.unsqueeze(1))  # [n, vc]  lp
    torch.exp(z, out=e)  # [n, vc]  p
    # -(gh (lp + H) + gl) = a * lp + c with a = -gh, c = -(gh H + gl)
    z.mul_(gh.neg().unsqueeze(1)).add_((gh * entropy + gl).neg_().unsqueeze(1))  # [n, vc]
    e.mul_(z)  # [n, vc]
    local = tokens - v0  # [n]
    has_k = (local >= 0) & (local < vc)  # [n]
    e.scatter_add_(1, local.clamp(0, vc - 1).unsqueeze(1), (gl * has_k).unsqueeze(1))
    return e
