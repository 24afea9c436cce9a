"""Loss aggregation: hand-worked values per mode, weights identity, micro-batch invariance."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlentropy.algorithms import AGG_MODES, aggregate_loss, aggregation_weights, batch_counts

# Rows: 2 valid tokens, 1 valid token, fully masked.
L = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
M = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])


@pytest.mark.parametrize(
    "mode, kw, expected",
    [
        # (1 + 2 + 4) / 3 valid tokens.
        ("token-mean", {}, 7 / 3),
        # 1 + 2 + 4.
        ("token-sum", {}, 7.0),
        # Row sums 3 and 4, mean over the 2 rows with a valid token (the masked row is excluded).
        ("seq-mean-token-sum", {}, 3.5),
        # Row means 1.5 and 4 → (1.5 + 4) / 2.
        ("seq-mean-token-mean", {}, 2.75),
        # Σ L·M / (rows 2 · T 3) = 7 / 6.
        ("seq-mean-token-sum-norm", {}, 7 / 6),
        # Dr.GRPO constant: 7 / (2 · 10).
        ("seq-mean-token-sum-norm", {"max_len": 10}, 7 / 20),
        # Explicit global counts: 7 / 14 tokens; 7 / 4 sequences.
        ("token-mean", {"global_tokens": 14}, 0.5),
        ("seq-mean-token-sum", {"global_seqs": 4}, 1.75),
    ],
)
def test_hand_worked(mode, kw, expected):
    out = aggregate_loss(L, M, mode, **kw)
    torch.testing.assert_close(out, torch.tensor(expected), rtol=1e-6, atol=0)
    w = aggregation_weights(M, mode, **kw)
    torch.testing.assert_close((L * w).sum(), torch.tensor(expected), rtol=1e-6, atol=0)


def test_masked_inf_and_nan_do_not_leak():
    bad = L.clone()
    bad[0, 2] = float("inf")
    bad[2, 0] = float("nan")
    bad.requires_grad_(True)
    for mode in AGG_MODES:
        out = aggregate_loss(bad, M, mode)
        assert torch.isfinite(out)
        (grad,) = torch.autograd.grad(out, bad)
        assert torch.isfinite(grad).all()
        torch.testing.assert_close(grad, aggregation_weights(M, mode))


def test_empty_mask_gives_zero():
    for mode in AGG_MODES:
        assert aggregate_loss(L, torch.zeros(3, 3), mode) == 0


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    mode=st.sampled_from(AGG_MODES),
    cuts=st.lists(st.integers(1, 11), min_size=0, max_size=4, unique=True),
)
def test_micro_batch_invariance(seed, mode, cuts):
    g = torch.Generator().manual_seed(seed)
    B, T = 12, 7
    loss = torch.randn(B, T, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(B, T, generator=g) < 0.6  # some rows may be empty
    tokens, seqs = batch_counts(mask)
    whole = aggregate_loss(loss, mask, mode, max_len=T)
    bounds = [0, *sorted(cuts), B]
    parts = [
        aggregate_loss(loss[a:b], mask[a:b], mode, global_tokens=tokens, global_seqs=seqs, max_len=T)
        for a, b in zip(bounds[:-1], bounds[1:])
    ]
    torch.testing.assert_close(sum(parts), whole, rtol=1e-12, atol=1e-12)
    (g_whole,) = torch.autograd.grad(whole, loss)
    (g_parts,) = torch.autograd.grad(sum(parts), loss)
    torch.testing.assert_close(g_parts, g_whole, rtol=1e-12, atol=1e-12)
    # The weights are the gradient of the aggregate with respect to the loss matrix.
    torch.testing.assert_close(g_whole, aggregation_weights(mask, mode, max_len=T, dtype=torch.float64))


def test_weights_of_token_mean_sum_to_one():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(5, 9, generator=g) < 0.5
    torch.testing.assert_close(aggregation_weights(mask, "token-mean").sum(), torch.tensor(1.0))
    torch.testing.assert_close(aggregation_weights(mask, "seq-mean-token-mean").sum(), torch.tensor(1.0))


def test_batch_counts():
    tokens, seqs = batch_counts(M)
    assert tokens.item() == 3 and seqs.item() == 2


def test_errors():
    with pytest.raises(ValueError, match="mode must be one of token-mean"):
        aggregate_loss(L, M, "seq-mean")
    with pytest.raises(ValueError, match="global_tokens"):
        aggregate_loss(L, M, "token-mean", global_tokens=0)
    with pytest.raises(ValueError, match="max_len"):
        aggregate_loss(L, M, "seq-mean-token-sum-norm", max_len=0)
    with pytest.raises(ValueError, match="same shape"):
        aggregate_loss(L, M[:2], "token-mean")
