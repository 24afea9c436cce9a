"""Entropy controls: Clip_B / Clip_V rules and quirks (docs/algorithms.md: the rules and the upstream quirks), 80/20,
entropy bonus gradient, quadrant mask and the sign table of Theorem 3.3 on real softmax steps."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlentropy.algorithms import (
    CONTROLS,
    UnknownNameError,
    aggregate_loss,
    clip_b_mask,
    clip_v_mask,
    entropy_bonus,
    get_control,
    get_control_spec,
    high_entropy_mask,
    ppo,
    quadrant_mask,
)


def softmax_stats(z: torch.Tensor, k: torch.Tensor):
    """Float64 reference statistics from logits z [N, V] and sampled ids k [N]:
    (logp_k, H, S_k = p_k (H + log p_k), s_bar = Σ_i p_i S_i)."""
    logq = torch.log_softmax(z, dim=-1)
    q = logq.exp()
    h = -(q * logq).sum(-1)
    s_all = q * (h[:, None] + logq)
    s_bar = (q * s_all).sum(-1)
    logp_k = logq.gather(-1, k[:, None])[:, 0]
    return logp_k, h, s_all.gather(-1, k[:, None])[:, 0], s_bar


# ----------------------------------------------------------------------------------------------------
# Clip_B (§6 item 2).


def clip_b_case(adv_of_outlier: float):
    """10 valid tokens in a 2×6 batch (2 padding entries with extreme S, which must not matter).
    S = 0 on 9 tokens and −10 on one: mean −1, population var = (9·1 + 81)/10 = 9 → std 3
    (unbiased: sqrt(90/9) = 3.162). The outlier's centred S is −9."""
    s = torch.zeros(2, 6)
    s[1, 3] = -10.0
    s[1, 4:] = -1000.0  # padding
    mask = torch.ones(2, 6)
    mask[1, 4:] = 0
    adv = torch.full((2, 6), -0.5)
    adv[1, 3] = adv_of_outlier
    return s, adv, mask


def test_clip_b_drops_negative_outlier_only():
    s, adv, mask = clip_b_case(-1.0)
    # mu 2.5: threshold −2.5·3 = −7.5 > −9 → dropped.
    new_mask, m = clip_b_mask(s, adv, mask)
    expected = mask.clone()
    expected[1, 3] = 0
    assert torch.equal(new_mask, expected) and new_mask.dtype == mask.dtype
    torch.testing.assert_close(m["s_mean"], torch.tensor(-1.0))
    torch.testing.assert_close(m["s_std"], torch.tensor(3.0))
    torch.testing.assert_close(m["frac_dropped"], torch.tensor(0.1))
    torch.testing.assert_close(m["frac_dropped_neg_adv"], torch.tensor(0.1))  # 1 of 10 A<0 tokens
    # The same S on an A > 0 or A = 0 token is kept.
    for a in (1.0, 0.0):
        s, adv, mask = clip_b_case(a)
        assert torch.equal(clip_b_mask(s, adv, mask)[0], mask)


def test_clip_b_uses_population_std():
    s, adv, mask = clip_b_case(-1.0)
    # mu 2.9: population threshold −2.9·3 = −8.7 → −9 is dropped; with the unbiased std 3.162 the
    # threshold would be −9.17 and the token kept.
    assert clip_b_mask(s, adv, mask, mu=2.9)[0][1, 3] == 0
    # mu 3.05: −9.15 < −9 → kept.
    assert clip_b_mask(s, adv, mask, mu=3.05)[0][1, 3] == 1


def test_clip_b_zero_std_drops_nothing_and_both_sides():
    mask = torch.ones(2, 3)
    adv = -torch.ones(2, 3)
    assert torch.equal(clip_b_mask(torch.full((2, 3), 0.3), adv, mask, mu=1e-6)[0], mask)
    # sides="both": an A > 0 token far ABOVE the mean is dropped too. S = [0]*9 + [10] on A > 0.
    s, adv, mask = clip_b_case(1.0)
    s = -s
    assert clip_b_mask(s, adv, mask)[0][1, 3] == 1
    assert clip_b_mask(s, adv, mask, sides="both")[0][1, 3] == 0


# ----------------------------------------------------------------------------------------------------
# Clip_V (§6 item 3).


def test_clip_v_drops_large_xd_on_negative_advantage():
    # 100 tokens: xD = 0 on 99, 10 on one. mean 0.1, population var = (99·0.01 + 9.9²)/100 = 0.99,
    # std 0.99499; 8.5·std = 8.457 < 10 → fails. Dropped fraction 0.01 > 1e-4, cap = max(floor(0.01), 1)
    # = 1, and 1 negative candidate is not more than the cap → dropped.
    s = torch.zeros(1, 100)
    s_bar = torch.zeros(1, 100)
    s_bar[0, 7] = 10.0
    mask = torch.ones(1, 100)
    for a, dropped in ((-1.0, True), (1.0, False), (0.0, True)):
        adv = torch.full((1, 100), 0.5)
        adv[0, 7] = a
        new_mask, m = clip_v_mask(s, s_bar, adv, mask)
        assert (new_mask[0, 7] == 0) == dropped
        assert new_mask.sum() == 100 - dropped
        torch.testing.assert_close(m["xd_std"], torch.tensor(math.sqrt(0.99)))
    # clip_zero_adv=False keeps the failing A = 0 token.
    adv = torch.full((1, 100), 0.5)
    adv[0, 7] = 0.0
    assert clip_v_mask(s, s_bar, adv, mask, clip_zero_adv=False)[0][0, 7] == 1


def cap_case(n: int, n_neg: int, n_zero: int):
    """n tokens, xD = 0 except n_neg A<0 tokens with xD = 100 + i and n_zero A=0 tokens with xD = 50."""
    s = torch.zeros(1, n)
    s_bar = torch.zeros(1, n)
    adv = torch.ones(1, n)
    s_bar[0, :n_neg] = 100.0 + torch.arange(n_neg, dtype=torch.float32)
    adv[0, :n_neg] = -1.0
    s_bar[0, n_neg : n_neg + n_zero] = 50.0
    adv[0, n_neg : n_neg + n_zero] = 0.0
    return s, s_bar, adv, torch.ones(1, n)


@pytest.mark.parametrize("n, n_neg, cap", [(20_000, 10, 2), (30_000, 10, 3), (5_000, 10, 1)])
def test_clip_v_cap_keeps_exactly_cap_largest(n, n_neg, cap):
    # cap = max(floor(1e-4 · n), 1): 2, 3, and max(0, 1) = 1.
    s, s_bar, adv, mask = cap_case(n, n_neg, n_zero=3)
    new_mask, m = clip_v_mask(s, s_bar, adv, mask)
    dropped = (new_mask == 0)[0]
    neg_dropped = dropped[:n_neg].nonzero()[:, 0].tolist()
    assert neg_dropped == list(range(n_neg - cap, n_neg))  # the largest xD (100 + i, i = n_neg−1 …)
    assert dropped[n_neg : n_neg + 3].all()  # failing A = 0 tokens stay dropped (not covered by the cap)
    assert dropped.sum() == cap + 3
    assert m["cap_active"].item() == 1


def test_clip_v_raw_versus_centred_threshold():
    # 98 A>0 tokens with xD = 9, token 0 (A<0) xD = 9, token 1 (A<0) xD = 19: mean 9.1, std 0.99499,
    # 8.5·std = 8.457. Raw xD (upstream): both A<0 tokens fail (9 > 8.457). Centred: 9 − 9.1 < 8.457
    # keeps token 0; 19 − 9.1 = 9.9 still fails.
    s = torch.zeros(1, 100)
    s_bar = torch.full((1, 100), 9.0)
    s_bar[0, 1] = 19.0
    adv = torch.ones(1, 100)
    adv[0, :2] = -1.0
    mask = torch.ones(1, 100)
    raw, _ = clip_v_mask(s, s_bar, adv, mask, max_frac=1.0)
    centred, _ = clip_v_mask(s, s_bar, adv, mask, max_frac=1.0, center=True)
    assert raw[0, :2].tolist() == [0.0, 0.0] and raw[0, 2:].all()
    assert centred[0, :2].tolist() == [1.0, 0.0] and centred[0, 2:].all()


def test_clip_v_zero_std_and_both_sides():
    mask = torch.ones(1, 4)
    assert torch.equal(clip_v_mask(torch.zeros(1, 4), torch.ones(1, 4), -torch.ones(1, 4), mask, mu=1e-3)[0], mask)
    # sides="both": A>0 token with xD = −10 (the mirror of the first test) is dropped.
    s = torch.zeros(1, 100)
    s[0, 7] = 10.0  # xD = −10
    adv = torch.ones(1, 100)
    assert clip_v_mask(s, torch.zeros(1, 100), adv, torch.ones(1, 100))[0][0, 7] == 1
    assert clip_v_mask(s, torch.zeros(1, 100), adv, torch.ones(1, 100), sides="both")[0][0, 7] == 0


@pytest.mark.parametrize("control", ["clip_b", "clip_v"])
def test_mask_controls_leave_advantages_and_shrink_denominator(control):
    # §6 item 4: advantages unchanged, mask changed, token-mean excludes dropped tokens.
    s, adv, mask = clip_b_case(-1.0)
    if control == "clip_b":
        fn = lambda: clip_b_mask(s, adv, mask)  # noqa: E731
    else:
        # xD = s_bar − 0: 10 on the outlier, 0 elsewhere; population std 3 (as for S). With 10 tokens
        # one outlier is at most 3 std away, so use mu 2.5: 10 > 7.5 fails.
        s_bar = -s.clone() * (mask > 0)
        s_ = torch.zeros_like(s)
        fn = lambda: clip_v_mask(s_, s_bar, adv, mask, mu=2.5, max_frac=1.0)  # noqa: E731
    adv_before, mask_before = adv.clone(), mask.clone()
    new_mask, _ = fn()
    assert torch.equal(adv, adv_before) and torch.equal(mask, mask_before)
    assert new_mask.sum() == mask.sum() - 1
    loss_mat = torch.arange(12, dtype=torch.float32).reshape(2, 6)
    kept = loss_mat[new_mask > 0]
    torch.testing.assert_close(aggregate_loss(loss_mat, new_mask, "token-mean"), kept.sum() / kept.numel())


# ----------------------------------------------------------------------------------------------------
# 80/20 high-entropy tokens (§6 item 7).


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), rho=st.sampled_from([0.2, 0.1, 0.5, 1.0, 0.05]))
def test_high_entropy_selects_ceil_rho_n(seed, rho):
    g = torch.Generator().manual_seed(seed)
    h = torch.rand(4, 9, generator=g) * 3
    mask = torch.rand(4, 9, generator=g) < 0.7
    n = int(mask.sum())
    new_mask, m = high_entropy_mask(h, mask, rho=rho)
    k = max(1, math.ceil(round(rho * n, 9))) if n else 0
    assert int(new_mask.sum()) == k == int(m["tokens_selected"])
    if k:
        rest = h[mask & ~new_mask]
        assert rest.numel() == 0 or h[new_mask].min() >= rest.max()
        # The token-mean denominator becomes the selected count.
        loss = torch.randn(4, 9, generator=g)
        torch.testing.assert_close(aggregate_loss(loss, new_mask), loss[new_mask].sum() / k)


def test_high_entropy_float_rounding():
    # n = 15, rho 0.2: 0.2·15 = 3.0000000000000004 in float64; ceil must give 3, not 4.
    h = torch.arange(15.0)[None]
    new_mask, m = high_entropy_mask(h, torch.ones(1, 15), rho=0.2)
    assert new_mask[0].nonzero()[:, 0].tolist() == [12, 13, 14]
    assert m["entropy_threshold"].item() == 12.0
    # n = 11: ceil(2.2) = 3.
    assert high_entropy_mask(torch.arange(11.0)[None], torch.ones(1, 11))[0].sum() == 3


# ----------------------------------------------------------------------------------------------------
# Entropy bonus.


def test_entropy_bonus_has_gradient_through_entropy():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 11, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 1.0])[None].expand(1, 6).clone()
    logq = torch.log_softmax(z, -1)
    h = -(logq.exp() * logq).sum(-1)[None]  # [1, 6]
    coef = 0.01
    term, m = entropy_bonus(h, mask, coef=coef)
    (grad,) = torch.autograd.grad(term, z)
    # term = −c · Σ_t M_t H_t / 5; ∂H/∂z = −p ⊙ (log p + H) → ∂term/∂z_t = (c/5) M_t p (log p + H).
    p = logq.exp().detach()
    expected = coef / 5 * mask[0, :, None].double() * p * (logq.detach() + h.detach()[0, :, None])
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-14)
    assert grad.abs().sum() > 0
    torch.testing.assert_close(m["entropy"], (h[0] * mask[0]).sum().float() / 5)
    torch.testing.assert_close(term, -coef * (h * mask).sum() / 5)


def test_entropy_bonus_refuses_detached_entropy():
    h = torch.rand(2, 3)
    with pytest.raises(ValueError, match="entropy does not require grad"):
        entropy_bonus(h, torch.ones(2, 3), coef=0.01)
    with torch.no_grad():  # logging use: no gradient wanted
        term, _ = entropy_bonus(h, torch.ones(2, 3), coef=0.01)
    torch.testing.assert_close(term, -0.01 * h.mean())
    entropy_bonus(h, torch.ones(2, 3), coef=0.0)  # a zero coefficient needs no gradient


# ----------------------------------------------------------------------------------------------------
# Quadrant mask and the sign table of Theorem 3.3.


def test_quadrant_mask_hand_worked():
    # Tokens: (A, S, s_bar) = (+1, 0.3, 0.1) pos_high; (+1, −0.2, 0.1) pos_low; (−1, 0.5, 0.2) neg_high;
    # (−1, −0.4, 0.2) neg_low; (0, 0.9, 0.0) zero advantage.
    s = torch.tensor([[0.3, -0.2, 0.5, -0.4, 0.9]])
    s_bar = torch.tensor([[0.1, 0.1, 0.2, 0.2, 0.0]])
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, 0.0]])
    mask = torch.ones(1, 5)
    for q, expected in [
        ("pos_high", [1, 0, 0, 0, 0]),
        ("pos_low", [0, 1, 0, 0, 0]),
        ("neg_high", [0, 0, 1, 0, 0]),
        ("neg_low", [0, 0, 0, 1, 0]),
    ]:
        new_mask, m = quadrant_mask(s, s_bar, adv, mask, keep=(q,))
        assert new_mask[0].tolist() == expected
        torch.testing.assert_close(m[f"frac_{q}"], torch.tensor(0.2))
    new_mask, _ = quadrant_mask(s, s_bar, adv, mask, keep=("pos_high", "neg_low"), keep_zero_adv=True)
    assert new_mask[0].tolist() == [1, 0, 0, 1, 1]
    # batch_mean baseline: mean S = (0.3 − 0.2 + 0.5 − 0.4 + 0.9)/5 = 0.22 → token 0 (0.3) is high.
    assert quadrant_mask(s, None, adv, mask, keep="pos_high", baseline="batch_mean")[0][0].tolist() == [1, 0, 0, 0, 0]
    # zero baseline (Theorem 3.2): S > 0.
    assert quadrant_mask(s, None, adv, mask, keep="neg_high", baseline="zero")[0][0].tolist() == [0, 0, 1, 0, 0]


def _one_step_entropy_change(z, k, adv, mask, lr):
    """Per-position entropy change after one SGD step on token-sum PPO loss (positions independent)."""
    z = z.clone().requires_grad_(True)
    logp = torch.log_softmax(z, -1).gather(-1, k[:, None])[:, 0][None]  # [1, N]
    loss, _ = ppo(logp, logp.detach(), adv[None], mask)
    (grad,) = torch.autograd.grad(aggregate_loss(loss, mask, "token-sum"), z)
    h0 = softmax_stats(z.detach(), k)[1]
    h1 = softmax_stats(z.detach() - lr * grad, k)[1]
    return h1 - h0


def test_quadrants_follow_theorem_3_3():
    g = torch.Generator().manual_seed(0)
    N, V = 400, 8
    z = 2.0 * torch.randn(N, V, generator=g, dtype=torch.float64)
    k = torch.multinomial(torch.softmax(z, -1), 1, generator=g)[:, 0]
    adv = torch.where(torch.rand(N, generator=g) < 0.5, 1.0, -1.0).double()
    _, _, s, s_bar = softmax_stats(z, k)
    mask = torch.ones(1, N, dtype=torch.float64)
    lr = 1e-3
    sign = {"pos_high": -1, "pos_low": 1, "neg_high": 1, "neg_low": -1}
    for q, expected_sign in sign.items():
        new_mask, _ = quadrant_mask(s[None], s_bar[None], adv[None], mask, keep=(q,))
        kept = new_mask[0] > 0
        assert kept.sum() > 20
        dh = _one_step_entropy_change(z, k, adv, new_mask, lr)
        # First order: ΔH = lr·A·(s_bar − S) per kept position, 0 elsewhere.
        first_order = lr * adv * (s_bar - s) * kept
        torch.testing.assert_close(dh, first_order, rtol=0, atol=5 * lr**2)
        clear = kept & ((s_bar - s).abs() > 0.01)
        assert (torch.sign(dh[clear]) == expected_sign).all()
        assert torch.sign(dh.sum()) == expected_sign


def test_clip_b_raises_entropy_relative_to_no_clip():
    # Dropping negative-advantage, low-S tokens removes updates that lower the entropy.
    g = torch.Generator().manual_seed(1)
    N, V = 600, 8
    z = 3.0 * torch.randn(N, V, generator=g, dtype=torch.float64)
    k = torch.multinomial(torch.softmax(z, -1), 1, generator=g)[:, 0]
    adv = torch.where(torch.rand(N, generator=g) < 0.5, 1.0, -1.0).double()
    _, _, s, _ = softmax_stats(z, k)
    mask = torch.ones(1, N, dtype=torch.float64)
    clipped, m = clip_b_mask(s[None], adv[None], mask, mu=1.0)
    assert 0 < m["tokens_dropped"] < N
    dh_all = _one_step_entropy_change(z, k, adv, mask, 1e-3).sum()
    dh_clip = _one_step_entropy_change(z, k, adv, clipped, 1e-3).sum()
    assert dh_clip > dh_all
    # Lower mu drops more such tokens and raises the entropy change further.
    clipped_lo, m_lo = clip_b_mask(s[None], adv[None], mask, mu=0.5)
    assert m_lo["tokens_dropped"] > m["tokens_dropped"]
    assert _one_step_entropy_change(z, k, adv, clipped_lo, 1e-3).sum() > dh_clip


# ----------------------------------------------------------------------------------------------------
# Registry and errors.


def test_registry():
    assert set(CONTROLS.names()) == {
        "entropic",
        "clip_b",
        "clip_v",
        "entropy_polarity",
        "high_entropy",
        "quadrant",
        "entropy_advantage",
        "entropy_bonus",
    }
    assert get_control("clip_v") is clip_v_mask
    spec = get_control_spec("clip_v")
    assert spec.inputs == ("s", "s_bar", "advantages", "mask") and spec.stage == "old" and spec.kind == "mask"
    assert spec.defaults["mu"] == 8.5 and spec.defaults["max_frac"] == 1e-4
    assert get_control_spec("entropy_bonus").kind == "loss_term"
    with pytest.raises(
        UnknownNameError,
        match="valid names: clip_b, clip_v, entropic, entropy_advantage, entropy_bonus, entropy_polarity, "
        "high_entropy, quadrant",
    ):
        get_control("clip_cov")


@pytest.mark.parametrize(
    "call, param",
    [
        (lambda x: clip_b_mask(x, x, x, mu=0.0), "mu"),
        (lambda x: clip_b_mask(x, x, x, mu=-1.0), "mu"),
        (lambda x: clip_b_mask(x, x, x, sides="pos"), "sides"),
        (lambda x: clip_v_mask(x, x, x, x, mu=0.0), "mu"),
        (lambda x: clip_v_mask(x, x, x, x, max_frac=0.0), "max_frac"),
        (lambda x: clip_v_mask(x, x, x, x, max_frac=1.5), "max_frac"),
        (lambda x: high_entropy_mask(x, x, rho=0.0), "rho"),
        (lambda x: high_entropy_mask(x, x, rho=20.0), "rho"),
        (lambda x: entropy_bonus(x, x, coef=0.0, mode="mean"), "mode"),
        (lambda x: quadrant_mask(x, x, x, x, keep=("pos_mid",)), "keep"),
        (lambda x: quadrant_mask(x, x, x, x, keep=()), "keep"),
        (lambda x: quadrant_mask(x, None, x, x, keep=("pos_high",)), "s_bar"),
        (lambda x: quadrant_mask(x, x, x, x, keep=("pos_high",), baseline="median"), "baseline"),
        (lambda x: clip_v_mask(x, x[:, :2], x, x), "s_bar"),
    ],
)
def test_invalid_parameters(call, param):
    with pytest.raises(ValueError, match=param):
        call(torch.ones(2, 3))


def test_clip_v_both_sides_caps_each_side():
    # Mirror of the cap case: 20 000 tokens, 10 A>0 tokens with xD = −(100 + i) and 10 A<0 tokens with
    # xD = 100 + i. cap = floor(1e-4 · 20 000) = 2 per side: the 2 most extreme of each side are dropped.
    n = 20_000
    s = torch.zeros(1, n)
    s_bar = torch.zeros(1, n)
    adv = torch.full((1, n), 0.5)
    ramp = 100.0 + torch.arange(10, dtype=torch.float32)
    s_bar[0, :10], adv[0, :10] = ramp, -1.0  # xD = +ramp on A<0
    s[0, 10:20], adv[0, 10:20] = ramp, 1.0  # xD = −ramp on A>0
    mask = torch.ones(1, n, dtype=torch.bool)
    new_mask, m = clip_v_mask(s, s_bar, adv, mask, sides="both")
    assert new_mask.dtype == torch.bool
    assert (~new_mask[0]).nonzero()[:, 0].tolist() == [8, 9, 18, 19]
    torch.testing.assert_close(m["frac_dropped_pos_adv"], torch.tensor(2 / 19_990))  # of all A>0 tokens
    torch.testing.assert_close(m["frac_dropped_neg_adv"], torch.tensor(2 / 10))
    # One-sided (upstream): only the A<0 side.
    assert (~clip_v_mask(s, s_bar, adv, mask)[0][0]).nonzero()[:, 0].tolist() == [8, 9]
