"""Policy losses: hand-worked tokens, values and gradients against a float64 element-wise reference,
Clip-Cov / KL-Cov selection rules (docs/algorithms.md), registry and argument errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlentropy.algorithms import (
    POLICY_LOSSES,
    UnknownNameError,
    aggregate_loss,
    clip_cov,
    clip_cov_select,
    get_policy_loss,
    get_policy_loss_spec,
    kl_cov,
    kl_cov_select,
    ppo,
)

E = math.e


def one_token(fn, log_ratio: float, adv: float, logp: float = -1.0, **kw):
    """Loss value and d loss / d logp of a single valid token."""
    lp = torch.tensor([[logp]], requires_grad=True)
    old = torch.tensor([[logp - log_ratio]])
    loss, metrics = fn(lp, old, torch.tensor([adv]), torch.ones(1, 1), **kw)
    (grad,) = torch.autograd.grad(loss.sum(), lp)
    return loss.item(), grad.item(), metrics


# ----------------------------------------------------------------------------------------------------
# Hand-worked single tokens.


@pytest.mark.parametrize(
    "log_ratio, adv, value, grad, flags",
    [
        # A=1, r=e^0.5=1.6487 > 1.2: L = max(−1.6487, −1.2) = −1.2, clipped high → no gradient.
        (0.5, 1.0, -1.2, 0.0, "high"),
        # A=1, r=e^−0.5=0.60653: L1=−0.60653 > L2=−0.8 → unclipped, dL/dlogp = −A·r = −0.60653.
        (-0.5, 1.0, -math.exp(-0.5), -math.exp(-0.5), ""),
        # A=−1, r=e^−0.5: L1=0.60653 < L2=0.8 → clipped low, L = 0.8, no gradient.
        (-0.5, -1.0, 0.8, 0.0, "low"),
        # A=−1, r=e^0.5: L1=1.6487 > L2=1.2 → unclipped, below c=3 → L = 1.6487, grad = −A·r = 1.6487.
        (0.5, -1.0, math.exp(0.5), math.exp(0.5), ""),
        # A=−1, r=e^1.5=4.4817: L = min(4.4817, −A·c = 3) = 3 (dual clip), no gradient.
        (1.5, -1.0, 3.0, 0.0, "dual"),
        # A=2, r=1: L = −2, grad = −2.
        (0.0, 2.0, -2.0, -2.0, ""),
    ],
)
def test_ppo_hand_worked(log_ratio, adv, value, grad, flags):
    v, g, m = one_token(ppo, log_ratio, adv)
    assert v == pytest.approx(value, rel=1e-6)
    assert g == pytest.approx(grad, rel=1e-6, abs=1e-7)
    assert m["clip_frac_high"].item() == (flags == "high")
    assert m["clip_frac_low"].item() == (flags == "low")
    assert m["clip_frac_dual"].item() == (flags == "dual")


def test_ppo_clip_higher_and_no_dual():
    # A=1, r=e^0.2=1.2214: eps_high 0.2 clips (L=−1.2); DAPO's 0.28 does not (L=−1.2214, grad −1.2214).
    v, g, _ = one_token(ppo, 0.2, 1.0)
    assert (v, g) == (pytest.approx(-1.2, rel=1e-6), 0.0)
    v, g, _ = one_token(ppo, 0.2, 1.0, eps_high=0.28)
    assert v == pytest.approx(-math.exp(0.2), rel=1e-6) and g == pytest.approx(-math.exp(0.2), rel=1e-6)
    # clip_ratio_c=None: A=−1, r=e^1.5 stays at 4.4817 with gradient 4.4817.
    v, g, m = one_token(ppo, 1.5, -1.0, clip_ratio_c=None)
    assert v == pytest.approx(math.exp(1.5), rel=1e-6) and g == pytest.approx(math.exp(1.5), rel=1e-6)
    assert m["clip_frac_dual"].item() == 0


def test_gspo_hand_worked():
    # Row 0: d = [0.1, 0.3] → log s = 0.2, s = e^0.2 = 1.2214 > 1 + 4e-4; A=1 → L = −1.0004 on both
    #   tokens, clipped, no gradient.
    # Row 1: d = [1e-5, −1e-5] → s = 1; A = 2 → L = −2·1 = −2; dL/dlogp_t = −A·s = −2 per token.
    # Row 2 has one valid token (second is padding with a garbage log-prob).
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.7], [-0.3, 50.0]], requires_grad=True)
    old = torch.tensor([[-1.1, -2.3], [-0.5 - 1e-5, -0.7 + 1e-5], [-0.3, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    loss, m = get_policy_loss("gspo")(logp, old, torch.tensor([1.0, 2.0, -1.0]), mask)
    torch.testing.assert_close(loss[0], torch.tensor([-1.0004, -1.0004]), rtol=1e-6, atol=0)
    torch.testing.assert_close(loss[1], torch.tensor([-2.0, -2.0]), rtol=1e-6, atol=0)
    # Row 2: d = 0 → s = 1, A = −1 → L = 1; the padding entry is 0.
    torch.testing.assert_close(loss[2], torch.tensor([1.0, 0.0]))
    assert get_policy_loss_spec("gspo").agg_mode == "seq-mean-token-mean"
    total = aggregate_loss(loss, mask, "seq-mean-token-mean")
    (grad,) = torch.autograd.grad(total, logp)
    # seq-mean-token-mean over 3 rows: weights 1/(2·3) on rows 0–1, 1/3 on row 2.
    torch.testing.assert_close(grad, torch.tensor([[0.0, 0.0], [-2 / 6, -2 / 6], [1 / 3, 0.0]]), rtol=1e-5, atol=1e-7)
    # 2 of the 5 valid tokens are clipped (row 0, A > 0, high side).
    torch.testing.assert_close(m["clip_frac_high"], torch.tensor(0.4))


@pytest.mark.parametrize(
    "log_ratio, adv, logp, value, grad",
    [
        # r = e^2 = 7.389 > 5 → weight 5 (no gradient through it); L = −5·A·logp = −5·1·(−1) = 5; dL/dlogp = −5.
        (2.0, 1.0, -1.0, 5.0, -5.0),
        # r = e^0.5 = 1.6487 in [0, 5]; A = −1, logp = −2: L = −1.6487·(−1)·(−2) = −3.2974; grad = 1.6487.
        (0.5, -1.0, -2.0, -2 * math.exp(0.5), math.exp(0.5)),
    ],
)
def test_cispo_hand_worked(log_ratio, adv, logp, value, grad):
    v, g, m = one_token(get_policy_loss("cispo"), log_ratio, adv, logp=logp)
    assert v == pytest.approx(value, rel=1e-6) and g == pytest.approx(grad, rel=1e-6)
    assert m["clip_frac_high"].item() == (log_ratio == 2.0)


@pytest.mark.parametrize(
    "log_ratio, adv, value, grad",
    [
        # §6 item 8. A=−1, r=e^−0.5 < 0.8 (NA&LP): value = −β1(1−ε)A = −0.75·0.8·(−1) = 0.6, gradient 0.6.
        (-0.5, -1.0, 0.6, 0.6),
        # A=1, r=e^0.5 > 1.2 (PA&LP): value = −β2(1+ε)A = −1·1.2·1 = −1.2, gradient −1.2.
        (0.5, 1.0, -1.2, -1.2),
        # Inside the clip range: plain −r·A, gradient −r·A.
        (0.1, 1.0, -math.exp(0.1), -math.exp(0.1)),
        # A=−1, r=e^2.5=12.18 > c=10: dual clip → 10, no gradient.
        (2.5, -1.0, 10.0, 0.0),
    ],
)
def test_ce_gppo_hand_worked(log_ratio, adv, value, grad):
    v, g, _ = one_token(get_policy_loss("ce_gppo"), log_ratio, adv)
    assert v == pytest.approx(value, rel=1e-6) and g == pytest.approx(grad, rel=1e-6, abs=1e-7)


# ----------------------------------------------------------------------------------------------------
# Values and gradients against a float64 element-wise reference.


def ref_token(name: str, lp, old, a, kw):
    """Float64 reference per token: plain formulas, one scalar at a time."""
    r = torch.exp(lp - old)
    if name == "ppo":
        el, eh, c = kw.get("eps_low", 0.2), kw.get("eps_high", 0.2), kw.get("clip_ratio_c", 3.0)
        out = torch.maximum(-a * r, -a * torch.clamp(r, 1 - el, 1 + eh))
        return torch.minimum(out, -a * c) if (a < 0 and c is not None) else out
    if name == "cispo":
        w = torch.clamp(r.detach(), 1 - kw.get("eps_low", 1.0), 1 + kw.get("eps_high", 4.0))
        return -w * a * lp
    if name == "ce_gppo":
        el, eh, b1, b2, c = 0.2, 0.2, 0.75, 1.0, 10.0
        if r < 1 - el and a < 0:
            out = -b1 * (1 - el) * (r / r.detach()) * a
        elif r > 1 + eh and a > 0:
            out = -b2 * (1 + eh) * (r / r.detach()) * a
        else:
            out = -r * a
        return torch.minimum(out, -a * c) if a < 0 else out
    raise AssertionError(name)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 100_000), name=st.sampled_from(["ppo", "cispo", "ce_gppo"]), per_token=st.booleans())
def test_tokenwise_losses_match_reference(seed, name, per_token):
    g = torch.Generator().manual_seed(seed)
    B, T = 3, 5
    logp64 = -3 * torch.rand(B, T, generator=g, dtype=torch.float64)
    old64 = logp64 + 0.4 * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv64 = (
        torch.randn(B, T, generator=g, dtype=torch.float64)
        if per_token
        else torch.randn(B, generator=g, dtype=torch.float64)
    )
    mask = torch.rand(B, T, generator=g) < 0.8
    lp = logp64.float().requires_grad_(True)
    loss, _ = get_policy_loss(name)(lp, old64.float(), adv64.float(), mask)
    (grad,) = torch.autograd.grad(loss.sum(), lp)

    lp_ref = logp64.clone().requires_grad_(True)
    adv_tok = adv64 if per_token else adv64[:, None].expand(B, T)
    ref = torch.zeros(B, T, dtype=torch.float64)
    total = torch.zeros((), dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            if mask[b, t]:
                v = ref_token(name, lp_ref[b, t], old64[b, t], adv_tok[b, t], {})
                ref[b, t] = v.detach()
                total = total + v
    (grad_ref,) = torch.autograd.grad(total, lp_ref) if total.requires_grad else (torch.zeros_like(lp_ref),)
    # fp32 inputs are the fp64 values rounded (relative 6e-8); ratios e^{±1.2} amplify that by ~4.
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), grad_ref, rtol=1e-5, atol=1e-6)


def test_gspo_matches_reference():
    g = torch.Generator().manual_seed(3)
    B, T = 4, 6
    logp64 = -2 * torch.rand(B, T, generator=g, dtype=torch.float64)
    old64 = logp64 + 2e-4 * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    mask = torch.rand(B, T, generator=g) < 0.8
    mask[:, 0] = True
    lp = logp64.float().requires_grad_(True)
    loss, _ = get_policy_loss("gspo")(lp, old64.float(), adv.float(), mask)
    ours = aggregate_loss(loss, mask, "seq-mean-token-mean")
    (grad,) = torch.autograd.grad(ours, lp)
    # Reference: the sequence-level objective of the GSPO paper, (1/B) Σ_b max(−A s_b, −A clip(s_b)),
    # with s_b = exp(mean_t (logp − old)); its gradient equals the token-level form's.
    lp_ref = logp64.clone().requires_grad_(True)
    total = torch.zeros((), dtype=torch.float64)
    for b in range(B):
        d = [lp_ref[b, t] - old64[b, t] for t in range(T) if mask[b, t]]
        s = torch.exp(sum(d) / len(d))
        total = total + torch.maximum(-adv[b] * s, -adv[b] * torch.clamp(s, 1 - 3e-4, 1 + 4e-4))
    total = total / B
    (grad_ref,) = torch.autograd.grad(total, lp_ref)
    torch.testing.assert_close(ours.double(), total.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), grad_ref, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# Clip-Cov (§6 item 5) and KL-Cov (§6 item 6).


def cov_case():
    """4 valid tokens of one row (+1 padding). A = [2, 2, −2, −2] (mean 0),
    logp = [−0.1, −3, −0.1, −3.2] (mean −1.6), so cov = A·(logp + 1.6) = [3.0, −2.8, −3.0, 3.2]:
    tokens 0 and 3 lie in the band (1, 5)."""
    logp = torch.tensor([[-0.1, -3.0, -0.1, -3.2, 9.0]])
    adv = torch.tensor([[2.0, 2.0, -2.0, -2.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    return logp, adv, mask


def test_clip_cov_hand_worked_and_denominator():
    logp, adv, mask = cov_case()
    lp = logp.clone().requires_grad_(True)
    # n_clip = max(floor(2e-4 · 4), 1) = 1: exactly one of the 2 candidates is zeroed.
    loss, m = clip_cov(lp, logp, adv, mask, generator=torch.Generator().manual_seed(0))
    assert m["candidates"].item() == 2 and m["tokens_selected"].item() == 1
    zeroed = (loss == 0) & (mask > 0)
    assert zeroed.sum() == 1 and (zeroed[0, 0] or zeroed[0, 3])
    # On-policy (r = 1, eps 1/1 → clamp [0, 2]): L = −A on the others.
    expected = -adv * (~zeroed) * mask
    torch.testing.assert_close(loss, expected)
    # The zeroed token stays in the token-mean denominator (4, not 3).
    torch.testing.assert_close(aggregate_loss(loss, mask, "token-mean"), expected.sum() / 4)
    (grad,) = torch.autograd.grad(loss.sum(), lp)
    torch.testing.assert_close(grad, expected)  # dL/dlogp = −A·r = L here, 0 on the zeroed token
    # ratio 0.5: n_clip = floor(0.5 · 4) = 2 → both candidates.
    loss2, m2 = clip_cov(logp, logp, adv, mask, clip_cov_ratio=0.5, generator=torch.Generator().manual_seed(0))
    assert m2["tokens_selected"].item() == 2 and loss2[0, 0] == 0 and loss2[0, 3] == 0


def test_clip_cov_count_reproducibility_and_uniformity():
    g = torch.Generator().manual_seed(11)
    B, T = 8, 64
    logp = -4 * torch.rand(B, T, generator=g)
    adv = torch.randn(B, generator=g).sign() * 2
    mask = torch.rand(B, T, generator=g) < 0.9
    n = int(mask.sum())
    ratio = 0.01
    sel_a, m = clip_cov_select(logp, adv, mask, clip_cov_ratio=ratio, generator=torch.Generator().manual_seed(5))
    n_cand = int(m["candidates"])
    assert n_cand > max(math.floor(ratio * n), 1)  # the case where the count binds
    assert int(sel_a.sum()) == min(max(math.floor(ratio * n), 1), n_cand)
    sel_b, _ = clip_cov_select(logp, adv, mask, clip_cov_ratio=ratio, generator=torch.Generator().manual_seed(5))
    assert torch.equal(sel_a, sel_b)
    # Every candidate is equally likely: over 400 seeds each is chosen with probability k / |cand|.
    hits = torch.zeros(B, T)
    for seed in range(400):
        sel, _ = clip_cov_select(logp, adv, mask, clip_cov_ratio=ratio, generator=torch.Generator().manual_seed(seed))
        hits += sel
    cand = hits > 0
    assert int(cand.sum()) == n_cand
    p = max(math.floor(ratio * n), 1) / n_cand
    freq = hits[cand] / 400
    # Binomial(400, p) standard error ≈ sqrt(p(1−p)/400); allow 5 standard errors.
    assert (freq - p).abs().max() < 5 * math.sqrt(p * (1 - p) / 400)


def test_clip_cov_never_selects_ppo_clipped_tokens():
    logp, adv, mask = cov_case()
    # Token 0 (A=2) gets r = e^1.5 > 1 + eps_high (0.2): PPO-clipped → not a candidate; only token 3 remains.
    old = logp.clone()
    old[0, 0] -= 1.5
    for seed in range(20):
        loss, m = clip_cov(
            logp,
            old,
            adv,
            mask,
            eps_low=0.2,
            eps_high=0.2,
            clip_cov_ratio=1.0,
            generator=torch.Generator().manual_seed(seed),
        )
        assert m["candidates"].item() == 1 and loss[0, 3] == 0 and loss[0, 0] != 0


def test_clip_cov_global_selection_slices():
    logp, adv, mask = cov_case()
    selected = torch.tensor([[False, False, False, True, False]])
    loss, m = clip_cov(logp, logp, adv, mask, selected=selected)
    torch.testing.assert_close(loss, torch.tensor([[-2.0, -2.0, 2.0, 0.0, 0.0]]))
    assert m["tokens_selected"].item() == 1
    assert get_policy_loss_spec("clip_cov").select is clip_cov_select


def test_kl_cov_hand_worked():
    logp, adv, mask = cov_case()
    old = logp - torch.tensor([[0.1, -0.2, 0.3, -0.4, 0.0]])  # d = logp − old
    lp = logp.clone().requires_grad_(True)
    # k = max(1, floor(0.5 · 4)) = 2 → the two largest cov: token 3 (3.2) and token 0 (3.0).
    loss, m = kl_cov(lp, old, adv, mask, kl_cov_ratio=0.5, ppo_kl_coef=1.0)
    r = torch.exp(torch.tensor([0.1, -0.2, 0.3, -0.4]))
    a = torch.tensor([2.0, 2.0, -2.0, -2.0])
    # −A·r on every token, + |d| on tokens 0 and 3 (|0.1| and |−0.4|); no clipping anywhere.
    expected = -a * r + torch.tensor([0.1, 0.0, 0.0, 0.4])
    torch.testing.assert_close(loss[0, :4], expected)
    assert loss[0, 4] == 0 and m["tokens_selected"].item() == 2
    (grad,) = torch.autograd.grad(loss.sum(), lp)
    # d/dlogp: −A·r, plus β·sign(d) on the selected tokens (+1 for d=0.1, −1 for d=−0.4).
    torch.testing.assert_close(grad[0, :4], -a * r + torch.tensor([1.0, 0.0, 0.0, -1.0]))
    # Default ratio 2e-4 → k = max(1, 0) = 1: only token 3.
    sel, _ = kl_cov_select(logp, adv, mask)
    assert sel.nonzero().tolist() == [[0, 3]]


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), ratio=st.sampled_from([1e-3, 0.01, 0.05, 0.2]))
def test_kl_cov_count_is_fraction(seed, ratio):
    g = torch.Generator().manual_seed(seed)
    logp = -3 * torch.rand(6, 40, generator=g)
    adv = torch.randn(6, generator=g)
    mask = torch.rand(6, 40, generator=g) < 0.7
    sel, m = kl_cov_select(logp, adv, mask, kl_cov_ratio=ratio)
    n = int(mask.sum())
    assert int(sel.sum()) == max(1, math.floor(ratio * n))
    # They are the top tokens by covariance among the valid ones.
    a = adv[:, None].expand(6, 40)[mask]
    lp = logp[mask]
    cov = (a - a.mean()) * (lp - lp.mean())
    chosen = ((adv[:, None] - a.mean()) * (logp - lp.mean()))[sel]
    assert chosen.min() >= cov.topk(int(sel.sum())).values.min() - 1e-6


def test_kl_cov_on_policy_is_plain_pg():
    logp, adv, mask = cov_case()
    lp = logp.clone().requires_grad_(True)
    loss, _ = kl_cov(lp, logp, adv, mask, kl_cov_ratio=1.0)
    (grad,) = torch.autograd.grad(loss.sum(), lp)
    torch.testing.assert_close(grad, -adv * mask)  # |d| = 0 has zero gradient on-policy


# ----------------------------------------------------------------------------------------------------
# Shared behaviour, registry and errors.


@pytest.mark.parametrize("name", ["ppo", "gspo", "cispo", "ce_gppo", "clip_cov", "kl_cov"])
def test_padding_is_inert_and_adv_forms_agree(name):
    g = torch.Generator().manual_seed(1)
    logp = -2 * torch.rand(3, 4, generator=g)
    old = logp + 0.1 * torch.randn(3, 4, generator=g)
    mask = torch.ones(3, 4)
    mask[1, 2:] = 0
    logp_bad = logp.clone()
    logp_bad[1, 2:] = 80.0  # garbage on padding: would overflow exp() without the mask
    lp = logp_bad.requires_grad_(True)
    adv = torch.tensor([1.0, -2.0, 0.5])
    kw = {"generator": torch.Generator().manual_seed(0)} if name == "clip_cov" else {}
    loss, metrics = get_policy_loss(name)(lp, old, adv, mask, **kw)
    (grad,) = torch.autograd.grad(loss.sum(), lp)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    assert (loss[1, 2:] == 0).all() and (grad[1, 2:] == 0).all()
    assert all(v.dim() == 0 and torch.isfinite(v) for v in metrics.values())
    kw = {"generator": torch.Generator().manual_seed(0)} if name == "clip_cov" else {}
    loss_tok, _ = get_policy_loss(name)(logp_bad, old, adv[:, None].expand(3, 4) * mask, mask, **kw)
    torch.testing.assert_close(loss_tok, loss.detach())


def test_registry_and_spec():
    assert set(POLICY_LOSSES.names()) == {
        *("ppo", "gspo", "cispo", "ce_gppo", "clip_cov", "kl_cov"),
        *("sapo", "gmpo", "dppo_tv", "dppo_kl", "gpg", "dro", "luspo", "vespo"),
        "clip_low",
    }
    assert get_policy_loss_spec("ppo").defaults == {"eps_low": 0.2, "eps_high": 0.2, "clip_ratio_c": 3.0}
    assert get_policy_loss_spec("clip_cov").needs_generator
    valid = (
        "ce_gppo, cispo, clip_cov, clip_low, dppo_kl, dppo_tv, dro, gmpo, gpg, gspo, kl_cov, luspo, ppo, sapo, vespo"
    )
    with pytest.raises(UnknownNameError, match=f"valid names: {valid}$"):
        get_policy_loss("grpo")


@pytest.mark.parametrize(
    "name, kw, param",
    [
        ("ppo", {"eps_low": -0.1}, "eps_low"),
        ("ppo", {"eps_low": 1.5}, "eps_low"),
        ("ppo", {"eps_high": -0.2}, "eps_high"),
        ("ppo", {"clip_ratio_c": 0.9}, "clip_ratio_c"),
        ("ce_gppo", {"beta1": -1.0}, "beta1"),
        ("kl_cov", {"kl_cov_ratio": 0.0}, "kl_cov_ratio"),
        ("kl_cov", {"kl_cov_ratio": 2.0}, "kl_cov_ratio"),  # a percent is not a fraction
        ("kl_cov", {"ppo_kl_coef": -1.0}, "ppo_kl_coef"),
        ("clip_cov", {"clip_cov_ratio": 0.0, "generator": torch.Generator()}, "clip_cov_ratio"),
        ("clip_cov", {"clip_cov_lb": 5.0, "clip_cov_ub": 1.0, "generator": torch.Generator()}, "clip_cov_lb"),
        ("clip_cov", {}, "generator"),
    ],
)
def test_invalid_parameters(name, kw, param):
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=param):
        get_policy_loss(name)(x, x, torch.ones(2), torch.ones(2, 3), **kw)


def test_shape_errors():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="old_logp"):
        ppo(x, torch.zeros(2, 4), torch.ones(2), torch.ones(2, 3))
    with pytest.raises(ValueError, match="advantages"):
        ppo(x, x, torch.ones(3), torch.ones(2, 3))
