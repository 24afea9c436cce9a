"""The losses and estimators TRL 1.16 / verl 0.9.1 ship (issue #12): sapo, gmpo, dppo_tv, dppo_kl, gpg, dro,
luspo, vespo; advantage estimators gpg and grpo_passk.

Each has a hand-worked case (arithmetic in the comments), the custom gradient forms are checked against
float64 autograd of the plain formula, and each is compared with the upstream code on the same tensors:
verl's registered loss / estimator (float64, 1e-12) and TRL's `GRPOTrainer._compute_loss` on a real tiny
trainer (fp32 forward) plus TRL's static `get_gamma_weights` (float64, 1e-12). Every entry is also found
through verl's registry as `rlentropy_<name>`, with verl's own keys reaching our parameters.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from _helpers import grads, trl_inputs, trl_trainer, verl_actor_config
from rlentropy.algorithms import (
    ADVANTAGES,
    POLICY_LOSSES,
    aggregate_loss,
    dppo_kl,
    dppo_tv,
    dro,
    get_advantage,
    get_policy_loss,
    get_policy_loss_spec,
    gmpo,
    gpg_advantage,
    gpg_loss,
    grpo_passk,
    luspo,
    sapo,
    vespo,
    vespo_weights,
)

NEW_LOSSES = ("sapo", "gmpo", "dppo_tv", "dppo_kl", "gpg", "dro", "luspo", "vespo")
NEW_ESTIMATORS = ("gpg", "grpo_passk")
REQUIRED = {"dro": {"dro_beta": 0.1}}  # parameters without a default


def one_token(fn, logp: float, old_logp: float, adv: float, **kw):
    """Loss value and d loss / d logp of a single valid token (float64)."""
    lp = torch.tensor([[logp]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[old_logp]], dtype=torch.float64)
    loss, metrics = fn(lp, old, torch.tensor([adv], dtype=torch.float64), torch.ones(1, 1), **kw)
    (grad,) = torch.autograd.grad(loss.sum(), lp)
    return loss.item(), grad.item(), metrics


def batch(seed: int = 0, b: int = 6, t: int = 9, noise: float = 0.3, empty_row: bool = False):
    """Random float64 (old_logp, logp, sequence-level advantages [B, T], mask) with ragged lengths."""
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=g, dtype=torch.float64) * 3  # [B, T]
    logp = (old + noise * torch.randn(b, t, generator=g, dtype=torch.float64)).clamp(max=-1e-3)  # [B, T]
    adv = torch.randn(b, 1, generator=g, dtype=torch.float64).expand(b, t).contiguous()  # [B, T]
    lengths = torch.randint(3, t + 1, (b,), generator=g)
    if empty_row:
        lengths[1] = 0
    mask = torch.arange(t)[None, :] < lengths[:, None]  # [B, T] bool
    return old, logp, adv, mask


# ----------------------------------------------------------------------------------------------------
# Hand-worked cases.


@pytest.mark.parametrize(
    "ratio, adv, value, grad",
    [
        # The spec's vectors. τ+ = 1 (A > 0): g(r) = σ(r − 1)·4; g'(r) = 4σ(1 − σ); dL/dlogp = −A·g'(r)·r.
        # r = 0.5: σ(−0.5) = 0.377541 → g = 1.510163, g' = 4·0.377541·0.622459 = 0.940015; grad = −0.470008.
        (0.5, 1.0, -1.510163, -0.940015 * 0.5),
        # r = 1: g = 4·0.5 = 2, g' = 1 → L = −2, grad = −1 (PPO's on-policy gradient).
        (1.0, 1.0, -2.0, -1.0),
        # r = 1.5: g = 4σ(0.5) = 2.489837, g' = 0.940015 → grad = −1.5·0.940015.
        (1.5, 1.0, -2.489837, -0.940015 * 1.5),
        # τ− = 1.05 (A ≤ 0). r = 1: g = 2/1.05 = 1.904762; A = −1 → L = +1.904762, grad = +1.
        (1.0, -1.0, 1.904762, 1.0),
        # r = 0.5: σ(−0.525) = 0.371684, g' = 4·0.371684·0.628316 = 0.934140, g = 4/1.05·0.371684 = 1.415938;
        # A = −2 → L = 2·1.415938 = 2.831877, grad = 2·0.934140·0.5 = 0.934140.
        (0.5, -2.0, 2.831877, 0.934140),
        # A = 0 takes τ− and gives 0.
        (1.3, 0.0, 0.0, 0.0),
    ],
)
def test_sapo_hand_worked(ratio, adv, value, grad):
    v, g, m = one_token(sapo, -1.0, -1.0 - math.log(ratio), adv)
    assert v == pytest.approx(value, abs=2e-6) and g == pytest.approx(grad, abs=2e-6)
    assert set(m) == {"gate_grad_mean", "approx_kl", "ratio_mean"}


def test_sapo_temperature_by_sign():
    # τ+ = 2 changes only the A > 0 token: g = σ(2·(e^0.2 − 1))·4/2 = σ(0.442806)·2 = 1.217855.
    def sig(x):
        return 1 / (1 + math.exp(-x))

    v, _, _ = one_token(sapo, -1.0, -1.2, 1.0, tau_pos=2.0)
    assert v == pytest.approx(-2 * sig(2 * (math.exp(0.2) - 1)), rel=1e-12)
    assert v == pytest.approx(-1.217855, rel=1e-6)
    v, _, _ = one_token(sapo, -1.0, -1.2, -1.0, tau_pos=2.0)  # A < 0 still τ− = 1.05
    assert v == pytest.approx(4 / 1.05 * sig(1.05 * (math.exp(0.2) - 1)), rel=1e-12)


def test_gmpo_hand_worked():
    # Row 0: A = 1, d = [0.3, −0.1, 0.05]; A > 0 clips only d > 0.2: d̃ = [0.2, −0.1, 0.05], mean 0.05,
    #   ρ = e^0.05 = 1.051271, L_0 = −1.051271, carried as −1.051271/3 = −0.350424 on each token.
    # Row 1: A = −2, d = [−0.5, 0.1] (third token padding): A < 0 clips only d < −0.2: d̃ = [−0.2, 0.1],
    #   mean −0.05, ρ = e^−0.05 = 0.951229, L_1 = 2·0.951229 = 1.902459, 0.951229 per token.
    old = torch.full((2, 3), -1.0, dtype=torch.float64)
    d = torch.tensor([[0.3, -0.1, 0.05], [-0.5, 0.1, 7.0]], dtype=torch.float64)
    lp = (old + d).requires_grad_(True)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv = torch.tensor([1.0, -2.0], dtype=torch.float64)
    loss, m = gmpo(lp, old, adv, mask)
    e1, e2 = math.exp(0.05), math.exp(-0.05)
    torch.testing.assert_close(loss, torch.tensor([[-e1 / 3] * 3, [e2, e2, 0.0]], dtype=torch.float64))
    assert get_policy_loss_spec("gmpo").agg_mode == "seq-mean-token-sum"
    total = aggregate_loss(loss, mask, "seq-mean-token-sum")
    # mean_i L_i = (−1.051271 + 1.902459)/2 = 0.425594
    assert total.item() == pytest.approx((-e1 + 2 * e2) / 2, rel=1e-12)
    (grad,) = torch.autograd.grad(total, lp)
    # dL_i/dlogp_t = −Â_i·ρ_i·(1/n_i) on unclipped tokens, 0 on clipped ones; then × 1/2 (two rows).
    expected = torch.tensor([[0.0, -e1 / 6, -e1 / 6], [0.0, 2 * e2 / 4, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-15)
    # 2 of the 5 valid tokens are clipped: one high (row 0), one low (row 1).
    assert m["clip_frac_high"].item() == pytest.approx(0.2) and m["clip_frac_low"].item() == pytest.approx(0.2)


# (p, q, A): p = e^logp, q = e^old_logp. δ = 0.2, C = 3.
DPPO_TOKENS = [
    # A > 0, p − q = 0.3 > δ_high: outside the TV region (binary KL 0.5·ln(0.5/0.8) + 0.5·ln(0.5/0.2) =
    # 0.223144 > δ with p > q: outside the KL region too) → L = 0, no gradient.
    (0.8, 0.5, 1.0, 0.0, 0.0),
    # A > 0, p − q = 0.1 (KL 0.020411): inside; w = r = 1.2; L = −A·w·ln p = −1.2·ln 0.6 = 0.612991; grad −1.2.
    (0.6, 0.5, 1.0, -1.2 * math.log(0.6), -1.2),
    # A < 0, p − q = −0.3 < −δ_low (KL 0.223144, p < q): outside → 0.
    (0.2, 0.5, -1.0, 0.0, 0.0),
    # A < 0, p rose (always valid for A < 0), r = 5 truncated to C = 3: L = 3·ln 0.5 = −2.079442, grad +3.
    (0.5, 0.1, -1.0, 3 * math.log(0.5), 3.0),
]


@pytest.mark.parametrize("fn", [dppo_tv, dppo_kl], ids=["tv", "kl"])
@pytest.mark.parametrize("p, q, adv, value, grad", DPPO_TOKENS)
def test_dppo_hand_worked(fn, p, q, adv, value, grad):
    v, g, m = one_token(fn, math.log(p), math.log(q), adv)
    assert v == pytest.approx(value, rel=1e-12, abs=1e-15) and g == pytest.approx(grad, rel=1e-12, abs=1e-15)
    assert m["clip_frac"].item() == (value == 0.0)
    assert m["trunc_frac"].item() == (p / q > 3)


def test_dppo_tv_and_kl_regions_differ():
    # q = 0.9 → p = 0.99, A = 1, δ_high = 0.1: TV p − q = 0.09 ≤ 0.1 keeps it; binary KL
    # 0.9·ln(0.9/0.99) + 0.1·ln(0.1/0.01) = −0.085779 + 0.230259 = 0.144479 > 0.1 with p > q drops it.
    _, g_tv, _ = one_token(dppo_tv, math.log(0.99), math.log(0.9), 1.0, eps_high=0.1)
    _, g_kl, _ = one_token(dppo_kl, math.log(0.99), math.log(0.9), 1.0, eps_high=0.1)
    assert g_tv == pytest.approx(-1.1, rel=1e-12) and g_kl == 0.0
    # clip_ratio_c=None: no truncation, w = r = 5.
    _, g, _ = one_token(dppo_tv, math.log(0.5), math.log(0.1), -1.0, clip_ratio_c=None)
    assert g == pytest.approx(5.0, rel=1e-12)


def test_gpg_and_dro_hand_worked():
    # GPG: L = −A·logp = −2·(−0.5) = 1, grad −2 (the ratio e^0.3 plays no part).
    assert one_token(gpg_loss, -0.5, -0.8, 2.0)[:2] == (pytest.approx(1.0), pytest.approx(-2.0))
    # DRO, β = 0.5, d = logp − old = 0.2: L = −(−1·1 − ½·0.5·0.04) = 1.01; grad = −(A − β d) = −0.9.
    v, g, m = one_token(dro, -1.0, -1.2, 1.0, dro_beta=0.5)
    assert (v, g) == (pytest.approx(1.01, rel=1e-12), pytest.approx(-0.9, rel=1e-12))
    assert m["sq_log_ratio_mean"].item() == pytest.approx(0.04)
    # A = 0: only the penalty, ½β d² = 0.01, gradient β d = 0.1.
    assert one_token(dro, -1.0, -1.2, 0.0, dro_beta=0.5)[:2] == (pytest.approx(0.01), pytest.approx(0.1))
    assert get_policy_loss_spec("dro").required == ("dro_beta",) and get_policy_loss_spec("dro").defaults == {}
    with pytest.raises(TypeError, match="dro_beta"):
        dro(*[torch.zeros(1, 1)] * 2, torch.ones(1), torch.ones(1, 1))


def test_luspo_hand_worked():
    # Row 0: d = [0.1, 0.3] → s = e^0.2 = 1.221403 > 1.2; A = 1 → L = −1.2 on both tokens (clipped, no grad).
    # Row 1: d = [0.05, −0.05] → s = 1; A = 2 → L = −2 per token, dL/dlogp_t = −A·s = −2.
    # Row 2: one valid token, d = 0, A = −1 → L = 1 (the padding entry is 0).
    old = torch.tensor([[-1.1, -2.3], [-0.55, -0.65], [-0.3, 0.0]], dtype=torch.float64)
    d = torch.tensor([[0.1, 0.3], [0.05, -0.05], [0.0, 9.0]], dtype=torch.float64)
    lp = (old + d).requires_grad_(True)
    mask = torch.tensor([[1, 1], [1, 1], [1, 0]])
    loss, m = luspo(lp, old, torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64), mask)
    torch.testing.assert_close(loss, torch.tensor([[-1.2, -1.2], [-2.0, -2.0], [1.0, 0.0]], dtype=torch.float64))
    # seq-mean-token-sum: row sums −2.4, −4, 1 → mean −1.8; each token weighs 1/3 whatever its row's length.
    total = aggregate_loss(loss, mask, get_policy_loss_spec("luspo").agg_mode)
    assert total.item() == pytest.approx(-1.8, rel=1e-12)
    (grad,) = torch.autograd.grad(total, lp)
    expected = torch.tensor([[0.0, 0.0], [-2 / 3, -2 / 3], [1 / 3, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-15)
    assert m["clip_frac_high"].item() == pytest.approx(0.4)


@pytest.mark.parametrize(
    "w, adv, phi",
    [
        # (k, λ) = (2, 3) for A ≥ 0: φ(w) = e^3·w²·e^{−3w}; φ(0.5) = e^1.5/4 = 1.120422, φ(2) = 4e^−3 = 0.199148.
        (0.5, 1.0, 1.120422),
        (2.0, 1.0, 0.199148),
        # (k, λ) = (3, 2) for A < 0: φ(0.5) = e/8 = 0.339785, φ(2) = 8e^−2 = 1.082682.
        (0.5, -1.0, 0.339785),
        (2.0, -1.0, 1.082682),
        # φ(1) = 1 on both sides.
        (1.0, 1.0, 1.0),
    ],
)
def test_vespo_hand_worked(w, adv, phi):
    # w is the product of the row's token ratios: split log w over two tokens, plus a padding token.
    old = torch.tensor([[-1.0, -2.0, -1.0]], dtype=torch.float64)
    d = torch.tensor([[0.3 * math.log(w), 0.7 * math.log(w), 5.0]], dtype=torch.float64)
    lp = (old + d).requires_grad_(True)
    mask = torch.tensor([[1, 1, 0]])
    loss, m = vespo(lp, old, torch.tensor([adv], dtype=torch.float64), mask)
    # L_t = −φ·A·logp_t; the gradient is −φ·A (φ is detached).
    torch.testing.assert_close(loss[0, :2], -phi * adv * lp.detach()[0, :2], rtol=2e-6, atol=0)
    (grad,) = torch.autograd.grad(loss.sum(), lp)
    torch.testing.assert_close(grad[0], torch.tensor([-phi * adv] * 2 + [0.0], dtype=torch.float64), rtol=2e-6, atol=0)
    assert m["phi_mean"].item() == pytest.approx(phi, rel=2e-6)


def test_vespo_weights_a_zero_uses_positive_side():
    lr = torch.full((1, 2), 0.5 * math.log(2.0), dtype=torch.float64)  # w = 2
    phi = vespo_weights(lr, torch.zeros(1, 2, dtype=torch.float64), torch.ones(1, 2, dtype=torch.bool))
    torch.testing.assert_close(phi, torch.full((1, 2), 4 * math.exp(-3), dtype=torch.float64))  # (k, λ) = (2, 3)


def test_gpg_advantage_hand_worked():
    # 4 of the 7 rewards are non-zero → α = 7/4 = 1.75. Group means: 0.5, 0, 1, and 0 for the singleton.
    # A = 1.75·(R − mean) = [0.875, −0.875, 0, 0, 0, 0, 1.75·0.5 = 0.875]; no std division.
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.5], dtype=torch.float64)
    g = torch.tensor([0, 0, 1, 1, 2, 2, 3])
    adv, m = gpg_advantage(r, g)
    torch.testing.assert_close(adv, torch.tensor([0.875, -0.875, 0, 0, 0, 0, 0.875], dtype=torch.float64))
    assert m["alpha"].item() == 1.75
    # No non-zero reward: α = B / max(0, 1) = 4, every advantage 0.
    adv, m = gpg_advantage(torch.zeros(4), torch.tensor([0, 0, 1, 1]))
    assert m["alpha"].item() == 4.0 and (adv == 0).all()
    assert get_advantage("gpg") is gpg_advantage


def test_grpo_passk_hand_worked():
    # Group 0 [1, 0, 0, 0]: only response 0 gains; R_max − R_2nd = 1, unbiased std = √(0.75/3) = 0.5
    #   → A_0 = 1/(0.5 + 1e-6) = 1.999996.
    # Group 1 [1, 1, 0, 0]: a tie at the top → every A = 0.
    # Group 2 [0.2, 0.9, 0.5]: response 9 gains 0.9 − 0.5 = 0.4; std = √(0.246667/2) = 0.351188
    #   → A_9 = 0.4/(0.351188 + 1e-6) = 1.138986.
    r = torch.tensor([1, 0, 0, 0, 1, 1, 0, 0, 0.2, 0.9, 0.5], dtype=torch.float64)
    g = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
    adv, m = grpo_passk(r, g)
    std2 = float(torch.tensor([0.2, 0.9, 0.5], dtype=torch.float64).std())
    expected = torch.zeros(11, dtype=torch.float64)
    expected[0] = 1 / (0.5 + 1e-6)
    expected[9] = 0.4 / (std2 + 1e-6)
    torch.testing.assert_close(adv, expected, rtol=1e-12, atol=1e-15)
    assert expected[9].item() == pytest.approx(1.138986, rel=1e-6)
    assert m["frac_groups_credited"].item() == pytest.approx(2 / 3)
    adv, _ = grpo_passk(r, g, scale="none")
    assert adv[0].item() == 1.0 and adv[9].item() == pytest.approx(0.4, rel=1e-12) and adv.count_nonzero() == 2
    with pytest.raises(ValueError, match="at least 2 responses per group; group id 7"):
        grpo_passk(torch.tensor([1.0, 0.0, 1.0]), torch.tensor([3, 3, 7]))


# ----------------------------------------------------------------------------------------------------
# Custom gradient forms against float64 autograd of the plain formula.


def test_luspo_equals_plain_sequence_formula_in_value_and_gradient():
    # Plain form (TRL, importance_sampling_level="sequence"): c_b = exp(mean_t M·d) as one [B, 1] tensor,
    # ℓ_b = −min(c_b·A, clip(c_b)·A), loss = mean_b (n_b·ℓ_b).
    old, logp, adv, mask = batch(2, noise=0.4)
    adv_row = adv[:, 0]
    lp1 = logp.clone().requires_grad_(True)
    mf = mask.double()
    c = torch.exp(((lp1 - old) * mf).sum(-1) / mf.sum(-1))  # [B]
    ref_rows = -torch.minimum(c * adv_row, c.clamp(0.8, 1.28) * adv_row) * mf.sum(-1)  # [B]
    ref = ref_rows.mean()
    ref.backward()
    lp2 = logp.clone().requires_grad_(True)
    mat, m = luspo(lp2, old, adv_row, mask, eps_high=0.28)
    ours = aggregate_loss(mat, mask, "seq-mean-token-sum")
    ours.backward()
    assert 0 < m["clip_frac"].item() < 1  # both branches taken
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lp2.grad, lp1.grad, rtol=1e-12, atol=1e-12)


def test_gmpo_equals_plain_sequence_formula_in_value_and_gradient():
    old, logp, adv, mask = batch(4, noise=0.4)
    lp1 = logp.clone().requires_grad_(True)
    mf = mask.double()
    d = lp1 - old
    sgn = torch.sign(adv)
    d_clip = sgn * torch.minimum(sgn * d, sgn * d.clamp(-0.2, 0.28))  # verl's form
    rho = torch.exp((d_clip * mf).sum(-1) / mf.sum(-1))  # [B]
    ref = (-(adv * mf).sum(-1) / mf.sum(-1) * rho).mean()
    ref.backward()
    lp2 = logp.clone().requires_grad_(True)
    mat, m = gmpo(lp2, old, adv, mask, eps_high=0.28)
    ours = aggregate_loss(mat, mask, "seq-mean-token-sum")
    ours.backward()
    assert 0 < m["clip_frac"].item() < 1
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lp2.grad, lp1.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["sapo", "dppo_tv", "dppo_kl", "gpg", "dro", "vespo"])
def test_gradient_matches_closed_form(name):
    # d loss_mat.sum() / d logp against each method's stated gradient, token by token.
    old, logp, adv, mask = batch(6, noise=0.6)
    lp = logp.clone().requires_grad_(True)
    kw = REQUIRED.get(name, {})
    mat, _ = get_policy_loss(name)(lp, old, adv, mask, **kw)
    (grad,) = torch.autograd.grad(mat.sum(), lp)
    d = logp - old
    r = torch.exp(d)
    p, q = torch.exp(logp), torch.exp(old)
    if name == "sapo":
        tau = torch.where(adv > 0, adv.new_tensor(1.0), adv.new_tensor(1.05))
        expected = -adv * r / torch.cosh(tau * (r - 1) / 2) ** 2  # −A · sech²(τ(r − 1)/2) · r
    elif name in ("dppo_tv", "dppo_kl"):
        if name == "dppo_tv":
            valid = torch.where(adv > 0, p - q <= 0.2, p - q >= -0.2)
        else:
            kl = q * (old - logp) + (1 - q) * torch.log((1 - q + 1e-8) / (1 - p + 1e-8))
            valid = torch.where(adv > 0, (kl <= 0.2) | (p <= q), (kl <= 0.2) | (p >= q))
        assert 0 < valid[mask].double().mean() < 1
        expected = torch.where(valid, -adv * r.clamp(max=3.0), 0.0)
    elif name == "gpg":
        expected = -adv
    elif name == "dro":
        expected = -(adv - 0.1 * d)
    else:
        w = torch.exp((d * mask).sum(-1, keepdim=True))  # [B, 1]
        k = torch.where(adv >= 0, adv.new_tensor(2.0), adv.new_tensor(3.0))
        lam = torch.where(adv >= 0, adv.new_tensor(3.0), adv.new_tensor(2.0))
        expected = -adv * torch.exp(lam + k * torch.log(w) - lam * w)
    torch.testing.assert_close(grad, torch.where(mask, expected, 0.0), rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------------------------------
# Shared behaviour, registry and errors.


@pytest.mark.parametrize("name", NEW_LOSSES)
def test_padding_is_inert_and_adv_forms_agree(name):
    g = torch.Generator().manual_seed(1)
    logp = -2 * torch.rand(3, 4, generator=g) - 0.01
    old = logp + 0.1 * torch.randn(3, 4, generator=g)
    mask = torch.ones(3, 4)
    mask[1, 2:] = 0
    logp_bad = logp.clone()
    logp_bad[1, 2:] = 80.0  # garbage on padding: would overflow exp() without the mask
    lp = logp_bad.requires_grad_(True)
    adv = torch.tensor([1.0, -2.0, 0.5])
    kw = REQUIRED.get(name, {})
    loss, metrics = get_policy_loss(name)(lp, old, adv, mask, **kw)
    (grad,) = torch.autograd.grad(loss.sum(), lp)
    assert loss.dtype == torch.float32 and metrics and all(v.dtype == torch.float32 for v in metrics.values())
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    assert (loss[1, 2:] == 0).all() and (grad[1, 2:] == 0).all()
    assert all(v.dim() == 0 and torch.isfinite(v) for v in metrics.values())
    loss_tok, _ = get_policy_loss(name)(logp_bad, old, adv[:, None].expand(3, 4) * mask, mask, **kw)
    torch.testing.assert_close(loss_tok, loss.detach())


def test_registry_entries():
    assert set(NEW_LOSSES) <= set(POLICY_LOSSES.names())
    assert set(NEW_ESTIMATORS) <= set(ADVANTAGES.names())
    expected = {
        "sapo": ({"tau_pos": 1.0, "tau_neg": 1.05}, "seq-mean-token-mean"),
        "gmpo": ({"eps_low": 0.2, "eps_high": 0.2}, "seq-mean-token-sum"),
        "dppo_tv": ({"eps_low": 0.2, "eps_high": 0.2, "clip_ratio_c": 3.0}, None),
        "dppo_kl": ({"eps_low": 0.2, "eps_high": 0.2, "clip_ratio_c": 3.0}, None),
        "gpg": ({}, None),
        "dro": ({}, None),
        "luspo": ({"eps_low": 0.2, "eps_high": 0.2}, "seq-mean-token-sum"),
        "vespo": ({"k_pos": 2.0, "lambda_pos": 3.0, "k_neg": 3.0, "lambda_neg": 2.0}, "token-mean"),
    }
    for name, (defaults, agg) in expected.items():
        spec = get_policy_loss_spec(name)
        assert spec.defaults == defaults and spec.agg_mode == agg, name
        assert spec.paper and spec.summary and spec.also_in, name
    assert ADVANTAGES.get("gpg").defaults == {}
    assert ADVANTAGES.get("grpo_passk").defaults == {"scale": "group", "eps": 1e-6}


@pytest.mark.parametrize(
    "name, kw, param",
    [
        ("sapo", {"tau_pos": 0.0}, "tau_pos"),
        ("sapo", {"tau_neg": -1.0}, "tau_neg"),
        ("gmpo", {"eps_low": -0.1}, "eps_low"),
        ("gmpo", {"eps_high": float("nan")}, "eps_high"),
        ("dppo_tv", {"eps_low": -0.1}, "eps_low"),
        ("dppo_kl", {"eps_high": -0.1}, "eps_high"),
        ("dppo_tv", {"clip_ratio_c": 0.0}, "clip_ratio_c"),
        ("dro", {"dro_beta": 0.0}, "dro_beta"),
        ("dro", {"dro_beta": None}, "dro_beta"),
        ("luspo", {"eps_low": 1.5}, "eps_low"),
        ("vespo", {"k_pos": -1.0}, "k_pos"),
        ("vespo", {"lambda_neg": 0.0}, "lambda_neg"),
    ],
)
def test_invalid_parameters(name, kw, param):
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=param):
        get_policy_loss(name)(x, x, torch.ones(2), torch.ones(2, 3), **kw)


def test_invalid_estimator_parameters():
    r, g = torch.tensor([1.0, 0.0]), torch.tensor([0, 0])
    with pytest.raises(ValueError, match="scale"):
        grpo_passk(r, g, scale="batch")
    with pytest.raises(ValueError, match="eps"):
        grpo_passk(r, g, eps=-1.0)
    with pytest.raises(ValueError, match="group_ids"):
        gpg_advantage(r, torch.tensor([0.0, 0.0]))


# ----------------------------------------------------------------------------------------------------
# Parity with verl 0.9.1 (its registered functions, an ActorConfig built the way verl builds it).


@pytest.fixture(scope="module")
def verl():
    pytest.importorskip("verl", reason="verl is an optional extra: pip install 'rlentropy[verl]'")
    from omegaconf import OmegaConf
    from verl.trainer.ppo import core_algos

    import rlentropy.integrations.verl as rv

    return SimpleNamespace(core_algos=core_algos, rv=rv, actor_config=verl_actor_config, OmegaConf=OmegaConf)


def _verl_pair(verl, verl_name, ours_name, cfg, old, logp, adv, mask, agg="token-mean"):
    """(verl loss, verl grad, adapter loss, adapter grad) of the same tensors through verl's registry."""
    lp1 = logp.clone().requires_grad_(True)
    ref, _ = verl.core_algos.get_policy_loss_fn(verl_name)(old, lp1, adv, mask, agg, cfg)
    ref.backward()
    lp2 = logp.clone().requires_grad_(True)
    ours, metrics = verl.core_algos.get_policy_loss_fn(f"rlentropy_{ours_name}")(old, lp2, adv, mask, agg, cfg)
    ours.backward()
    return ref, lp1.grad, ours, lp2.grad, metrics


def _direct(name, old, logp, adv, mask, params, mode):
    """Our loss called directly and reduced by our aggregate_loss: (value, d value / d logp)."""
    lp = logp.clone().requires_grad_(True)
    mat, _ = get_policy_loss(name)(lp, old, adv, mask, **params)
    total = aggregate_loss(mat, mask, mode)
    total.backward()
    return total, lp.grad


def test_every_new_entry_is_in_verl_registry(verl):
    for name in NEW_LOSSES:
        fn = verl.core_algos.get_policy_loss_fn(f"rlentropy_{name}")
        assert fn is verl.rv.VERL_LOSSES[f"rlentropy_{name}"]
    for name in NEW_ESTIMATORS:
        fn = verl.core_algos.get_adv_estimator_fn(f"rlentropy_{name}")
        assert fn is verl.rv.ADV_ESTIMATORS[f"rlentropy_{name}"]


@pytest.mark.parametrize("seed", [0, 1])
def test_sapo_equals_verl(verl, seed):
    old, logp, adv, mask = batch(seed, noise=0.5)  # mask: bool, as verl's ppo_loss passes it
    params = {"tau_pos": 0.8, "tau_neg": 1.3}
    lp = logp.clone().requires_grad_(True)
    cfg = verl.actor_config("rlentropy_sapo", actor=params)  # verl's actor.tau_pos / tau_neg
    ref, _ = verl.core_algos.get_policy_loss_fn("sapo")(old, lp, adv, mask, "token-mean", cfg)
    ref.backward()
    # verl adds 1e-8 to each row's token count, but to an integer count of a bool mask, so in float32,
    # where it vanishes: verl's reduction is exactly aggregate_loss's seq-mean-token-mean.
    direct, direct_g = _direct("sapo", old, logp, adv, mask, params, "seq-mean-token-mean")
    torch.testing.assert_close(direct, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(direct_g, lp.grad, rtol=1e-12, atol=1e-12)
    # Through verl's registry τ comes from verl's keys. The adapter casts the mask to float before verl's
    # agg_loss, which then divides by n_b + 1e-8 in float64: a relative 1e-8 / n_b off verl's own value.
    _, _, ours, ours_g, _ = _verl_pair(verl, "sapo", "sapo", cfg, old, logp, adv, mask)
    torch.testing.assert_close(ours, ref, rtol=1e-8, atol=0)
    torch.testing.assert_close(ours_g, lp.grad, rtol=1e-8, atol=1e-15)
    # With a float mask given to both, verl adds the same 1e-8 and they agree to rounding.
    ref_f, ref_fg, ours_f, ours_fg, _ = _verl_pair(verl, "sapo", "sapo", cfg, old, logp, adv, mask.double())
    torch.testing.assert_close(ours_f, ref_f, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours_fg, ref_fg, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gmpo_equals_verl_geo_mean(verl, seed):
    old, logp, adv, mask = batch(seed, noise=0.4)
    cfg = verl.actor_config("rlentropy_gmpo")  # clip_ratio_low 0.2 / clip_ratio_high 0.28 → eps_low / eps_high
    ref, ref_g, ours, ours_g, m = _verl_pair(verl, "geo_mean", "gmpo", cfg, old, logp, adv, mask)
    assert 0 < m["actor/rlentropy_gmpo/clip_frac"] < 1
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours_g, ref_g, rtol=1e-12, atol=1e-12)
    direct, direct_g = _direct("gmpo", old, logp, adv, mask, {"eps_low": 0.2, "eps_high": 0.28}, "seq-mean-token-sum")
    torch.testing.assert_close(direct, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(direct_g, ref_g, rtol=1e-12, atol=1e-12)


def test_gmpo_fully_masked_row_differs_from_verl_only_in_the_row_count(verl):
    # verl's torch.mean counts an empty row (its L_i is 0); seq-mean-token-sum counts the 5 rows with a
    # token unless global_seqs says otherwise.
    old, logp, adv, mask = batch(3, noise=0.4, empty_row=True)
    ref, _ = verl.core_algos.get_policy_loss_fn("geo_mean")(old, logp, adv, mask, "token-mean", verl.actor_config("x"))
    mat, _ = gmpo(logp, old, adv, mask, eps_high=0.28)
    torch.testing.assert_close(aggregate_loss(mat, mask, "seq-mean-token-sum") * 5 / 6, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(aggregate_loss(mat, mask, "seq-mean-token-sum", global_seqs=6), ref)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum"])
@pytest.mark.parametrize("name", ["dppo_tv", "dppo_kl"])
def test_dppo_equals_verl(verl, name, agg):
    old, logp, adv, mask = batch(3, noise=0.8)
    # δ 0.05 / 0.08 so both regions bite; C = 2.5 from verl's clip_ratio_c reaches our clip_ratio_c.
    cfg = verl.actor_config(
        f"rlentropy_{name}", actor={"clip_ratio_low": 0.05, "clip_ratio_high": 0.08, "clip_ratio_c": 2.5}
    )
    ref, ref_g, ours, ours_g, m = _verl_pair(verl, name, name, cfg, old, logp, adv, mask, agg)
    assert 0 < m[f"actor/rlentropy_{name}/clip_frac"] < 1 and m[f"actor/rlentropy_{name}/trunc_frac"] > 0
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours_g, ref_g, rtol=1e-12, atol=1e-12)
    params = {"eps_low": 0.05, "eps_high": 0.08, "clip_ratio_c": 2.5}
    direct, direct_g = _direct(name, old, logp, adv, mask, params, agg)
    torch.testing.assert_close(direct, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(direct_g, ref_g, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum"])
def test_gpg_loss_equals_verl(verl, agg):
    old, logp, adv, mask = batch(5)
    cfg = verl.actor_config("rlentropy_gpg")
    ref, ref_g, ours, ours_g, _ = _verl_pair(verl, "gpg", "gpg", cfg, old, logp, adv, mask, agg)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours_g, ref_g, rtol=1e-12, atol=1e-12)
    direct, direct_g = _direct("gpg", old, logp, adv, mask, {}, agg)
    torch.testing.assert_close(direct, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(direct_g, ref_g, rtol=1e-12, atol=1e-12)


def test_dro_equals_verl_and_needs_beta(verl):
    old, logp, adv, mask = batch(7, noise=0.5)
    cfg = verl.actor_config("rlentropy_dro", dro_beta=0.3)  # verl's policy_loss.dro_beta → our dro_beta
    ref, ref_g, ours, ours_g, _ = _verl_pair(verl, "dro", "dro", cfg, old, logp, adv, mask)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours_g, ref_g, rtol=1e-12, atol=1e-12)
    direct, direct_g = _direct("dro", old, logp, adv, mask, {"dro_beta": 0.3}, "token-mean")
    torch.testing.assert_close(direct, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(direct_g, ref_g, rtol=1e-12, atol=1e-12)
    # Without dro_beta both refuse: verl with ValueError, ours with the missing keyword argument.
    bare = verl.actor_config("rlentropy_dro")
    with pytest.raises(ValueError, match="dro_beta"):
        verl.core_algos.get_policy_loss_fn("dro")(old, logp, adv, mask, "token-mean", bare)
    with pytest.raises(TypeError, match="dro_beta"):
        verl.core_algos.get_policy_loss_fn("rlentropy_dro")(old, logp, adv, mask, "token-mean", bare)


def _verl_adv_inputs(rewards, index, t=4):
    tlr = torch.zeros(len(rewards), t, dtype=torch.float64)
    tlr[:, -1] = torch.as_tensor(rewards, dtype=torch.float64)  # outcome reward on the last token
    mask = torch.ones(len(rewards), t, dtype=torch.float64)
    mask[0, 2:] = 0
    return tlr, mask, np.array(index)


@pytest.mark.parametrize(
    "rewards, index",
    [
        # 8 responses, 4 non-zero → α = 2 (verl computes α in float32: keep B / count exact there).
        ([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.3, 0.0], ["a", "a", "b", "b", "c", "c", "d", "e"]),
        ([0.0, 0.0, 0.0, 0.0], ["a", "a", "b", "b"]),  # no non-zero reward → α = B = 4
    ],
)
def test_gpg_estimator_equals_verl(verl, rewards, index):
    tlr, mask, idx = _verl_adv_inputs(rewards, index)
    ref, _ = verl.core_algos.compute_gpg_outcome_advantage(tlr.clone(), mask, index=idx)
    adv, _ = verl.core_algos.get_adv_estimator_fn("rlentropy_gpg")(
        token_level_rewards=tlr, response_mask=mask, index=list(index), config=verl.OmegaConf.create({})
    )
    torch.testing.assert_close(adv, ref, rtol=1e-12, atol=1e-12)
    groups = torch.tensor([sorted(set(index)).index(i) for i in index])
    ours, _ = gpg_advantage(torch.tensor(rewards, dtype=torch.float64), groups)
    torch.testing.assert_close(ours[:, None] * mask, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("norm", [True, False])
def test_grpo_passk_equals_verl(verl, norm):
    rewards = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.2, 0.9, 0.5, 0.7, 0.1]
    index = ["a"] * 4 + ["b"] * 4 + ["c"] * 3 + ["d"] * 2
    tlr, mask, idx = _verl_adv_inputs(rewards, index)
    cfg = verl.OmegaConf.create({"norm_adv_by_std_in_grpo": norm})
    ref, _ = verl.core_algos.compute_grpo_passk_outcome_advantage(tlr, mask, index=idx, config=cfg)
    # verl's norm_adv_by_std_in_grpo reaches our `scale` through the adapter.
    adv, _ = verl.core_algos.get_adv_estimator_fn("rlentropy_grpo_passk")(
        token_level_rewards=tlr, response_mask=mask, index=list(index), config=cfg
    )
    torch.testing.assert_close(adv, ref, rtol=1e-12, atol=1e-12)
    assert (ref != 0).any(dim=-1).sum() == 3  # groups a, c, d are credited; the tie in b is not


# ----------------------------------------------------------------------------------------------------
# Parity with TRL 1.16: a real tiny GRPOTrainer's `_compute_loss`, and its static `get_gamma_weights`.


@pytest.fixture(scope="module")
def trl():
    pytest.importorskip("trl", reason="TRL is an optional extra: pip install 'rlentropy[trl]'")
    from trl import GRPOConfig, GRPOTrainer

    from rlentropy.models.tiny import make_random_tiny_policy

    return SimpleNamespace(GRPOConfig=GRPOConfig, GRPOTrainer=GRPOTrainer, tiny=make_random_tiny_policy)


def _reward(completions, **kwargs):
    return [0.0 for _ in completions]


# (TRL loss_type, its GRPOConfig parameters, our name, the same parameters in our names)
TRL_CASES = [
    ("sapo", {"sapo_temperature_pos": 0.8, "sapo_temperature_neg": 1.3}, "sapo", {"tau_pos": 0.8, "tau_neg": 1.3}),
    ("luspo", {"importance_sampling_level": "sequence", "epsilon": 0.1, "epsilon_high": 0.15}, "luspo",
     {"eps_low": 0.1, "eps_high": 0.15}),
    ("vespo", {"vespo_k_pos": 1.5, "vespo_lambda_neg": 2.5}, "vespo", {"k_pos": 1.5, "lambda_neg": 2.5}),
]  # fmt: skip


@pytest.mark.parametrize("loss_type, extra, name, params", TRL_CASES, ids=[c[0] for c in TRL_CASES])
def test_equals_trl_compute_loss(trl, tmp_path, loss_type, extra, name, params):
    model, tok = trl.tiny(seed=0)
    tr = trl_trainer(
        trl.GRPOTrainer, trl.GRPOConfig, model, tok, tmp_path, _reward, max_steps=1, loss_type=loss_type, **extra
    )
    inputs = trl_inputs()
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    att = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    t = inputs["completion_ids"].shape[1]
    with torch.no_grad():
        lp0, _, _ = tr._get_per_token_logps_and_entropies(tr.model, ids, att, t)  # [B, T]
    g = torch.Generator().manual_seed(1)
    # off-policy: token noise plus a per-row shift of ±0.2, so the sequence ratios leave the clip range
    shift = torch.tensor([0.2, -0.2, 0.0, 0.15])[:, None]
    inputs["old_per_token_logps"] = lp0 + 0.3 * torch.randn(lp0.shape, generator=g) + shift

    loss_trl = tr._compute_loss(tr.model, dict(inputs))
    loss_trl.backward()
    g_trl = grads(tr.model)
    tr.model.zero_grad()

    lp, _, _ = tr._get_per_token_logps_and_entropies(tr.model, ids, att, t)  # [B, T] same forward
    mask = inputs["completion_mask"]
    spec = get_policy_loss_spec(name)
    mat, m = spec.call(
        {"logp": lp, "old_logp": inputs["old_per_token_logps"], "advantages": inputs["advantages"], "mask": mask},
        spec.resolve(params),
    )
    # TRL's reductions: grpo-style (sapo) and luspo average over every row; vespo divides by num_items_in_batch.
    ours = aggregate_loss(mat, mask, spec.agg_mode, global_tokens=inputs["num_items_in_batch"], global_seqs=4)
    ours.backward()
    g_ours = grads(tr.model)
    if name == "luspo":
        assert 0 < m["clip_frac"].item() < 1
    # fp32 forward: the values differ in the order of the fp32 sums (measured ≤ 8e-8 relative); the
    # parameter gradients agree to rounding.
    torch.testing.assert_close(ours.double(), loss_trl.double(), rtol=1e-6, atol=1e-9)
    assert g_ours.keys() == g_trl.keys() and len(g_ours) > 0
    for key in g_trl:
        torch.testing.assert_close(g_ours[key], g_trl[key], rtol=1e-6, atol=1e-10, msg=key)


def test_vespo_weights_equal_trl_get_gamma_weights(trl):
    old, logp, adv, mask = batch(8, noise=0.3)
    adv = adv[:, :1]  # [B, 1], TRL's shape
    gamma = trl.GRPOTrainer.get_gamma_weights

    def ours(log_ratio, *params):
        k_pos, lam_pos, k_neg, lam_neg = params
        kw = {"k_pos": k_pos, "lambda_pos": lam_pos, "k_neg": k_neg, "lambda_neg": lam_neg}
        return vespo_weights(log_ratio, adv.expand(mask.shape), mask, **kw)

    # TRL builds k and λ with torch.where on Python floats, i.e. in float32: values exact in float32 agree
    # to rounding.
    for params in [(2.0, 3.0, 3.0, 2.0), (1.5, 0.5, 4.0, 0.25)]:
        ref = gamma(adv, logp - old, mask.double(), None, *params)
        torch.testing.assert_close(ours(logp - old, *params), ref.expand(mask.shape), rtol=1e-12, atol=1e-15)
    # λ below TRL's floor 1e-4 is floored (TRL's floor is float32(1e-4), a relative 2.5e-8 off).
    params = (2.0, 3.0, 3.0, 1e-6)
    ref = gamma(adv, logp - old, mask.double(), None, *params)
    torch.testing.assert_close(ours(logp - old, *params), ref.expand(mask.shape), rtol=1e-7, atol=1e-15)
    # Large log-ratios hit the clamps of log w (≤ 20, ≥ log 1e-8) the same way.
    sign = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0], dtype=torch.float64)[:, None]
    big = torch.where(mask, 5.0 * sign, 0.0)  # [B, T] Σ = ±5·n_b, beyond both clamps
    params = (2.0, 3.0, 3.0, 2.0)
    ref = gamma(adv, big, mask.double(), None, *params)
    torch.testing.assert_close(ours(big, *params), ref.expand(mask.shape), rtol=1e-12, atol=1e-300)
    # w = e^20 underflows φ to 0; w = 1e-8 leaves a tiny non-zero φ (e^3·1e-16 = 2.0e-15 for A ≥ 0).
    assert (ref == 0).any() and (ref > 0).any()


def test_sapo_empty_row_with_trl_reduction():
    # TRL's grpo reduction counts a fully masked row in the row mean; aggregate_loss does when given
    # global_seqs = B (the TRL adapter passes it), and verl / the default exclude it.
    old, logp, adv, mask = batch(9, empty_row=True)
    mat, _ = sapo(logp, old, adv, mask)
    mf = mask.double()
    trl_value = ((mat * mf).sum(-1) / mf.sum(-1).clamp(min=1.0)).mean()
    torch.testing.assert_close(aggregate_loss(mat, mask, "seq-mean-token-mean", global_seqs=6), trl_value)
    b_valid = int(mask.any(-1).sum())
    torch.testing.assert_close(aggregate_loss(mat, mask, "seq-mean-token-mean"), trl_value * 6 / b_valid)
