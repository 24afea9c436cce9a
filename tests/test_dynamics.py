"""Pure math of `rlentropy.dynamics`: hand-worked cases, float64 references, hypothesis properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlentropy.dynamics import (
    QUADRANTS,
    THEOREM_SIGN,
    adam_metric,
    correlation,
    effective_sample_size,
    entropy_and_s,
    entropy_performance_fit,
    fisher_kernel,
    fit_entropy_performance,
    kernel_influence,
    kernel_summary,
    logit_space_check,
    logp_advantage_covariance,
    masked_token_mean,
    noise_scale,
    param_delta_dot,
    prediction_agreement,
    quadrant_decomposition,
    quadrant_ids,
    step_prediction,
    token_pressure,
)

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors run fastest on one thread (a loaded CI box makes extra threads spin)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _entropy(z: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(z, -1)
    return -(logp.exp() * logp).sum(-1)


# ----------------------------------------------------------------------------- pressure
def test_token_pressure_hand_worked():
    # three tokens, lr = 0.5, token-mean weights 1/3 on the two valid tokens... third is masked.
    s = torch.tensor([[0.2, -0.1, 0.05]], dtype=F64)
    s_bar = torch.tensor([[0.1, 0.1, 0.1]], dtype=F64)
    adv = torch.tensor([[1.0, 1.0, -2.0]], dtype=F64)
    mask = torch.tensor([[1.0, 1.0, 0.0]], dtype=F64)
    w = torch.tensor([[0.5, 0.5, 0.0]], dtype=F64)
    dh, m = token_pressure(s, s_bar, adv, mask, token_weights=w, lr=0.5)
    # xD = s_bar − S = [-0.1, 0.2, (masked)]; ΔH = 0.5·0.5·1·xD = [-0.025, 0.05, 0]
    torch.testing.assert_close(dh, torch.tensor([[-0.025, 0.05, 0.0]], dtype=F64), rtol=0, atol=1e-15)
    assert m["dH_sum"].item() == pytest.approx(0.025, abs=1e-15)
    assert m["dH_mean"].item() == pytest.approx(0.0125, abs=1e-15)  # 0.025 / 2 valid tokens
    # lr-free: Σ M·A·xD / Σ M = (1·(-0.1) + 1·0.2) / 2 = 0.05
    assert m["lrfree"].item() == pytest.approx(0.05, abs=1e-15)
    assert m["tokens"].item() == 2.0


def test_token_pressure_ratio_and_errors():
    s = torch.zeros(2, 2, dtype=F64)
    s_bar = torch.ones(2, 2, dtype=F64)
    adv = torch.ones(2, 2, dtype=F64)
    mask = torch.ones(2, 2, dtype=F64)
    w = torch.full((2, 2), 0.25, dtype=F64)
    ratio = torch.tensor([[2.0, 1.0], [0.0, 1.0]], dtype=F64)
    dh, _ = token_pressure(s, s_bar, adv, mask, token_weights=w, lr=1.0, ratio=ratio)
    torch.testing.assert_close(dh, 0.25 * ratio)
    with pytest.raises(ValueError, match="lr"):
        token_pressure(s, s_bar, adv, mask, token_weights=w, lr=-1.0)
    with pytest.raises(ValueError, match="advantages"):
        token_pressure(s, s_bar, adv[:, :1], mask, token_weights=w, lr=1.0)


def test_theorem_3_3_single_position_matches_real_entropy_change():
    # δz = α A (e_k − p) on one position: ΔH = α A (s_bar − S_k) + O(α²)  (arXiv 2602.03392)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20, 50, generator=g, dtype=F64) * 2  # [N, V]
    k = torch.randint(0, 50, (20,), generator=g)  # [N]
    adv = torch.randn(20, generator=g, dtype=F64)  # [N]
    h, s_full = entropy_and_s(z)  # [N], [N, V]
    p = torch.softmax(z, -1)
    s_k = s_full.gather(1, k[:, None]).squeeze(1)  # [N]
    s_bar = (p * s_full).sum(-1)  # [N]
    alpha = 1e-5
    dz = alpha * adv[:, None] * (torch.nn.functional.one_hot(k, 50).to(F64) - p)  # [N, V]
    measured = _entropy(z + dz) - h  # [N]
    dh, _ = token_pressure(
        s_k[None],
        s_bar[None],
        adv[None],
        torch.ones(1, 20, dtype=F64),
        token_weights=torch.ones(1, 20, dtype=F64),
        lr=alpha,
    )
    # residual is O(α²): relative to α it must be tiny
    assert (measured - dh[0]).abs().max().item() / alpha < 1e-4
    # identities: Σ_i S_i = 0 and s_bar = H Σp² + Σ p² log p
    assert s_full.sum(-1).abs().max().item() < 1e-12
    torch.testing.assert_close(s_bar, h * (p * p).sum(-1) + (p * p * torch.log(p)).sum(-1), rtol=1e-10, atol=1e-14)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), zero_frac=st.floats(0.0, 0.5))
def test_quadrant_contributions_sum_to_total(seed, zero_frac):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(4, 7, generator=g, dtype=F64)
    s_bar = torch.randn(4, 7, generator=g, dtype=F64)
    adv = torch.randn(4, 7, generator=g, dtype=F64)
    adv[torch.rand(4, 7, generator=g) < zero_frac] = 0.0
    mask = (torch.rand(4, 7, generator=g) > 0.2).to(F64)
    w = mask / mask.sum().clamp_min(1)
    dh, m = token_pressure(s, s_bar, adv, mask, token_weights=w, lr=1e-3)
    ids, qm = quadrant_decomposition(dh, s, s_bar, adv, mask)
    total = sum(qm[f"{q}/dH"] for q in QUADRANTS)
    assert total.item() == pytest.approx(m["dH_sum"].item(), rel=1e-12, abs=1e-18)
    counts = sum(qm[f"{q}/count"] for q in QUADRANTS) + qm["zero/count"]
    assert counts.item() == mask.sum().item()
    # every quadrant's contribution has the sign Theorem 3.3 gives it
    for q in QUADRANTS:
        val = qm[f"{q}/dH"].item()
        assert val * THEOREM_SIGN[q] >= 0.0


def test_quadrant_ids_hand_worked():
    s = torch.tensor([[0.3, 0.0, 0.3, 0.0, 0.3, 0.1]])
    s_bar = torch.full((1, 6), 0.1)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, 0.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    # S > s_bar: high. S == s_bar (last) counts as low.
    assert quadrant_ids(s, s_bar, adv, mask).tolist() == [[0, 1, 2, 3, 4, 3]]
    mask[0, 0] = 0
    assert quadrant_ids(s, s_bar, adv, mask)[0, 0].item() == 4


# ----------------------------------------------------------------------------- step level
def test_param_delta_dot_hand_worked():
    g = [torch.tensor([1.0, 2.0]), None]
    before = [torch.tensor([0.0, 0.0]), torch.tensor([1.0])]
    after = [torch.tensor([0.5, -1.0]), torch.tensor([4.0])]
    dot, m = param_delta_dot(g, before, after)
    # 1·0.5 + 2·(−1) = −1.5 ; |g| = √5 ; |Δθ| = √(0.25 + 1 + 9)
    assert dot.item() == pytest.approx(-1.5)
    assert m["grad_norm"].item() == pytest.approx(math.sqrt(5))
    assert m["delta_norm"].item() == pytest.approx(math.sqrt(10.25))
    assert m["cosine"].item() == pytest.approx(-1.5 / (math.sqrt(5) * math.sqrt(10.25)))


def test_step_prediction_fields():
    m = step_prediction(torch.tensor(-2e-3), torch.tensor(-2.2e-3))
    assert m["ratio"].item() == pytest.approx(1.1)
    assert m["residual"].item() == pytest.approx(-2e-4)
    assert m["rel_err"].item() == pytest.approx(2e-4 / 2.2e-3)
    assert m["sign_agree"].item() == 1.0
    m0 = step_prediction(torch.tensor(0.0), torch.tensor(1e-3))
    assert math.isnan(m0["ratio"].item()) and m0["sign_agree"].item() == 0.0


def test_masked_token_mean():
    x = torch.tensor([[1.0, 2.0, 9.0], [3.0, 9.0, 9.0]])
    m = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert masked_token_mean(x, m).item() == pytest.approx(2.0)  # (1 + 2 + 3) / 3


# ----------------------------------------------------------------------------- logit check
def test_logit_space_check_first_order_and_chunking():
    g = torch.Generator().manual_seed(1)
    n, d, v = 37, 8, 30
    hb = torch.randn(n, d, generator=g, dtype=F64)
    wb = torch.randn(v, d, generator=g, dtype=F64)
    eps = 1e-5
    ha = hb + eps * torch.randn(n, d, generator=g, dtype=F64)
    wa = wb + eps * torch.randn(v, d, generator=g, dtype=F64)
    out, m = logit_space_check(hb, wb, ha, wa, temperature=0.7, chunk=5)
    pred, meas = out
    # exact reference without chunking: H after − H before from full logits
    zb, za = hb @ wb.T / 0.7, ha @ wa.T / 0.7
    torch.testing.assert_close(meas, _entropy(za) - _entropy(zb), rtol=1e-9, atol=1e-15)
    # first order per position: the residual is O(eps²), far below the O(eps) changes themselves
    resid = (pred - meas).abs()
    assert resid.max().item() < 1e-3 * meas.pow(2).mean().sqrt().item()
    # ... and it is second order: halving the perturbation quarters it (within 10 %)
    out_half, _ = logit_space_check(hb, wb, (ha + hb) / 2, (wa + wb) / 2, temperature=0.7, chunk=5)
    ratio = resid.sum() / (out_half[0] - out_half[1]).abs().sum()
    assert ratio.item() == pytest.approx(4.0, rel=0.1)
    assert m["corr"].item() > 0.999999
    assert m["rel_err"].item() < 1e-4
    out1, _ = logit_space_check(hb, wb, ha, wa, temperature=0.7, chunk=1000)
    torch.testing.assert_close(out1, out, rtol=0, atol=1e-14)  # float64 round-off of H ~ 3
    # covariance identity: Σ S δz = Cov_p(log p, δz)
    p = torch.softmax(zb, -1)
    dz = za - zb
    logp = torch.log_softmax(zb, -1)
    cov = (p * logp * dz).sum(-1) - (p * logp).sum(-1) * (p * dz).sum(-1)
    torch.testing.assert_close(pred, -cov, rtol=1e-9, atol=1e-15)


def test_logit_space_check_errors():
    h = torch.zeros(3, 4)
    w = torch.zeros(5, 4)
    with pytest.raises(ValueError, match="hidden_before"):
        logit_space_check(h, w, torch.zeros(2, 4), w)
    with pytest.raises(ValueError, match="weight_before"):
        logit_space_check(h, w, h, torch.zeros(5, 3))
    with pytest.raises(ValueError, match="temperature"):
        logit_space_check(h, w, h, w, temperature=0.0)


def test_correlation_matches_float64_reference():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64)
    y = torch.tensor([2.0, 1.0, 4.0, 3.0], dtype=F64)
    # centred: x −2.5 ..; Σxy = (−1.5)(−0.5)+(−0.5)(−1.5)+(0.5)(1.5)+(1.5)(0.5) = 3 ; Σx² = Σy² = 5 → 0.6
    assert correlation(x, y).item() == pytest.approx(0.6, abs=1e-15)
    assert math.isnan(correlation(x[:1], y[:1]).item())


# ----------------------------------------------------------------------------- covariance
def test_logp_advantage_covariance_matches_reference():
    g = torch.Generator().manual_seed(2)
    logp = -torch.rand(5, 6, generator=g, dtype=F64) * 3
    adv = torch.randn(5, 6, generator=g, dtype=F64)
    mask = (torch.rand(5, 6, generator=g) > 0.3).to(F64)
    cov_tok, m = logp_advantage_covariance(logp, adv, mask, quantiles=(0.0, 0.5, 1.0))
    x, y = logp[mask > 0], adv[mask > 0]
    ref = ((x - x.mean()) * (y - y.mean())).mean()  # population covariance over valid tokens
    assert m["cov"].item() == pytest.approx(ref.item(), rel=1e-12)
    prods = (x - x.mean()) * (y - y.mean())
    assert m["cov_q0"].item() == pytest.approx(prods.min().item(), rel=1e-12)
    assert m["cov_q1"].item() == pytest.approx(prods.max().item(), rel=1e-12)
    assert m["cov_q0.5"].item() == pytest.approx(
        prods.median().item() if prods.numel() % 2 else torch.quantile(prods, 0.5).item(), rel=1e-12
    )
    assert m["corr"].item() == pytest.approx(torch.corrcoef(torch.stack([x, y]))[0, 1].item(), rel=1e-10)
    assert (cov_tok[mask == 0] == 0).all()


def test_fit_entropy_performance_recovers_exact_law():
    h = torch.tensor([0.2, 0.5, 0.9, 1.3, 1.6], dtype=F64)
    r = -0.3 * torch.exp(h) + 1.1  # a = 0.3, b = 1.1
    fitted, m = fit_entropy_performance(h, r)
    assert m["a"].item() == pytest.approx(0.3, rel=1e-10)
    assert m["b"].item() == pytest.approx(1.1, rel=1e-10)
    assert m["r2"].item() == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(fitted, r, rtol=1e-10, atol=1e-12)
    noisy = r + torch.tensor([0.01, -0.02, 0.015, -0.01, 0.005], dtype=F64)
    _, m2 = fit_entropy_performance(h, noisy)
    assert 0.9 < m2["r2"].item() < 1.0
    with pytest.raises(ValueError, match="at least 2"):
        fit_entropy_performance(h[:1], r[:1])


# ----------------------------------------------------------------------------- Fisher
def test_fisher_kernel_explicit_and_psd():
    g = torch.Generator().manual_seed(3)
    grads = torch.randn(6, 40, generator=g, dtype=F64)
    k, m = fisher_kernel(grads)
    for i in range(6):
        for j in range(6):
            assert k[i, j].item() == pytest.approx(torch.dot(grads[i], grads[j]).item(), rel=1e-12)
    assert torch.equal(k, k.T)
    assert torch.linalg.eigvalsh(k).min().item() > -1e-10
    p = torch.rand(40, generator=g, dtype=F64) + 0.1
    kp, _ = fisher_kernel(grads, metric=p)
    # metric applied ONCE: g_i · P · g_j, not (g_i P)·(g_j P)
    assert kp[1, 4].item() == pytest.approx((grads[1] * p * grads[4]).sum().item(), rel=1e-12)
    assert kp[1, 4].item() != pytest.approx((grads[1] * p * p * grads[4]).sum().item(), rel=1e-3)
    assert m["trace"].item() == pytest.approx(grads.pow(2).sum().item(), rel=1e-12)
    with pytest.raises(ValueError, match="metric"):
        fisher_kernel(grads, metric=torch.ones(3))


def test_adam_metric_is_the_real_preconditioner():
    # one Adam step: Δθ = −lr · m̂ · P with P = 1/(√v̂ + ε) from our adam_metric
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(7, dtype=F64))
    opt = torch.optim.Adam([w], lr=0.1, betas=(0.8, 0.9), eps=1e-3)
    before = w.detach().clone()
    for it in range(3):
        before = w.detach().clone()
        opt.zero_grad()
        (w.pow(3).sum() * (it + 1)).backward()
        opt.step()
    state = opt.state[w]
    p = adam_metric([state["exp_avg_sq"]], step=int(state["step"]), beta2=0.9, eps=1e-3)
    m_hat = state["exp_avg"] / (1 - 0.8 ** int(state["step"]))
    torch.testing.assert_close(w.detach() - before, -0.1 * m_hat * p, rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="step"):
        adam_metric([state["exp_avg_sq"]], step=0, beta2=0.9, eps=1e-3)


def test_kernel_summary_blocks_and_spectrum():
    # two prompts × two sequences, kernel hand-built: same-prompt off-diagonal 1, cross 0.25, diagonal 2
    k = torch.tensor(
        [[2.0, 1.0, 0.25, 0.25], [1.0, 2.0, 0.25, 0.25], [0.25, 0.25, 2.0, 1.0], [0.25, 0.25, 1.0, 2.0]], dtype=F64
    )
    groups = torch.tensor([0, 0, 1, 1])
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5], dtype=F64)
    eig, m = kernel_summary(k, groups, adv)
    assert m["same_prompt_mean"].item() == pytest.approx(1.0)
    assert m["cross_prompt_mean"].item() == pytest.approx(0.25)
    assert m["diag_mean"].item() == pytest.approx(2.0)
    # eigenvalues: 2+1+0.5 = 3.5, 2+1−0.5 = 2.5, 1, 1
    torch.testing.assert_close(eig, torch.tensor([3.5, 2.5, 1.0, 1.0], dtype=F64), rtol=1e-12, atol=1e-12)
    pr = torch.tensor([3.5, 2.5, 1.0, 1.0], dtype=F64) / 8.0
    assert m["eff_rank"].item() == pytest.approx(math.exp(-(pr * pr.log()).sum().item()), rel=1e-12)
    assert m["top_eig_frac"].item() == pytest.approx(3.5 / 8.0)
    infl, im = kernel_influence(k, adv)
    # row 0: 2·1 + 1·(−1) + 0.25·0.5 + 0.25·(−0.5) = 1
    assert infl[0].item() == pytest.approx(1.0)
    assert im["influence_abs_mean"].item() == pytest.approx(infl.abs().mean().item())


# ----------------------------------------------------------------------------- noise scale
def _synthetic_gns(seed: int, weights: torch.Tensor, n_micro: int, dim: int, sigma: float):
    """Per-sample gradients g + N(0, σ² I); returns noise_scale's metrics for one step."""
    g = torch.Generator().manual_seed(seed)
    true = torch.full((dim,), 1.0 / math.sqrt(dim), dtype=F64)  # |g|² = 1
    per = weights.numel() // n_micro
    incs, sq, ws, ess = [], [], [], []
    for i in range(n_micro):
        w = weights[i * per : (i + 1) * per]
        samples = true + sigma * torch.randn(per, dim, generator=g, dtype=F64)  # [b, D]
        inc = (w[:, None] * samples).sum(0)  # the micro-batch's gradient increment
        incs.append(inc)
        sq.append((inc / w.sum()).pow(2).sum())
        ws.append(w.sum())
        ess.append(effective_sample_size(w))
    total = torch.stack(incs).sum(0) / weights.sum()
    _, m = noise_scale(
        torch.stack(sq),
        torch.stack(ws),
        torch.stack(ess),
        total_sq_norm=total.pow(2).sum(),
        total_ess=effective_sample_size(weights),
    )
    return m


@pytest.mark.parametrize("weighted", [False, True])
def test_noise_scale_recovers_known_noise(weighted):
    dim, sigma, n_micro, per = 200, 0.2, 4, 8
    # tr Σ = D σ² = 8 ; |g|² = 1 ; B_simple = 8
    if weighted:
        weights = torch.tensor([1.0, 2.0, 3.0, 1.0, 0.5, 2.0, 1.0, 4.0] * n_micro, dtype=F64) / 10
    else:
        weights = torch.full((n_micro * per,), 1.0 / (n_micro * per), dtype=F64)
    runs = [_synthetic_gns(s, weights, n_micro, dim, sigma) for s in range(300)]
    tr = torch.stack([m["trace_sigma"] for m in runs])
    gsq = torch.stack([m["grad_sq"] for m in runs])
    # unbiased: the means lie within 4 standard errors of the truth (and within 3 %)
    assert abs(tr.mean().item() - 8.0) < 4 * tr.std().item() / math.sqrt(300)
    assert abs(gsq.mean().item() - 1.0) < 4 * gsq.std().item() / math.sqrt(300)
    assert tr.mean().item() == pytest.approx(8.0, rel=0.03)
    assert gsq.mean().item() == pytest.approx(1.0, rel=0.03)
    b = tr.mean() / gsq.mean()
    assert b.item() == pytest.approx(8.0, rel=0.05)


def test_noise_scale_needs_two_micro_batches_and_ess():
    _, m = noise_scale(
        torch.tensor([1.0], dtype=F64),
        torch.tensor([1.0], dtype=F64),
        torch.tensor([4.0], dtype=F64),
        total_sq_norm=torch.tensor(1.0, dtype=F64),
        total_ess=torch.tensor(4.0, dtype=F64),
    )
    assert math.isnan(m["b_simple"].item())
    # effective sample size: weights (1, 1, 2) → 16 / 6
    assert effective_sample_size(torch.tensor([1.0, 1.0, 2.0])).item() == pytest.approx(16 / 6)
    with pytest.raises(ValueError, match="micro_weights"):
        noise_scale(
            torch.ones(2),
            torch.tensor([1.0, 0.0]),
            torch.ones(2),
            total_sq_norm=torch.tensor(1.0),
            total_ess=torch.tensor(2.0),
        )


def test_noise_scale_equal_batches_is_mccandlish_two_batch_formula():
    # k micro-batches of b samples, B = k·b: trΣ = (mean|G_b|² − |G_B|²) / (1/b − 1/B)
    sq = torch.tensor([5.0, 7.0, 6.0], dtype=F64)
    _, m = noise_scale(
        sq,
        torch.full((3,), 1 / 3, dtype=F64),
        torch.full((3,), 4.0, dtype=F64),
        total_sq_norm=torch.tensor(3.0, dtype=F64),
        total_ess=torch.tensor(12.0, dtype=F64),
    )
    tr = (6.0 - 3.0) / (1 / 4 - 1 / 12)  # = 18
    gsq = (12 * 3.0 - 4 * 6.0) / (12 - 4)  # = 1.5
    assert m["trace_sigma"].item() == pytest.approx(tr)
    assert m["grad_sq"].item() == pytest.approx(gsq)
    assert m["b_simple"].item() == pytest.approx(tr / gsq)
    assert m["b_simple_over_ess"].item() == pytest.approx(tr / gsq / 12)


# ----------------------------------------------------------------------------- summary
def test_prediction_agreement_hand_worked():
    rows = [
        {"step": 0, "probe/step_pred_dH": -1.0, "probe/step_meas_dH": -2.0},
        {"step": 1},
        {"step": 2, "probe/step_pred_dH": 1.0, "probe/step_meas_dH": 1.0},
        {"step": 3, "probe/step_pred_dH": 2.0, "probe/step_meas_dH": -1.0},
        {"step": 4, "probe/step_pred_dH": float("nan"), "probe/step_meas_dH": 1.0},
    ]
    s = prediction_agreement(rows)
    assert s["n"] == 3.0
    assert s["sign_agree"] == pytest.approx(2 / 3)
    # ratios 2, 1, −0.5 → median 1
    assert s["median_ratio"] == pytest.approx(1.0)
    ref = torch.corrcoef(torch.tensor([[-1.0, 1.0, 2.0], [-2.0, 1.0, -1.0]], dtype=F64))[0, 1].item()
    assert s["corr"] == pytest.approx(ref, rel=1e-12)
    empty = prediction_agreement([{"step": 0}])
    assert empty["n"] == 0.0 and math.isnan(empty["corr"])


def test_entropy_performance_fit_from_records():
    hs = [1.5, 1.2, 0.9, 0.7]
    rows = [{"entropy/mean": h, "reward/mean": 0.9 - 0.2 * math.exp(h)} for h in hs]  # a = 0.2, b = 0.9
    rows.insert(1, {"entropy/mean": 1.0})  # no reward: skipped
    fit = entropy_performance_fit(rows)
    assert fit["n"] == 4.0
    assert fit["a"] == pytest.approx(0.2, rel=1e-9) and fit["b"] == pytest.approx(0.9, rel=1e-9)
    assert fit["r2"] == pytest.approx(1.0, abs=1e-12)
    assert math.isnan(entropy_performance_fit(rows[:1])["a"])
