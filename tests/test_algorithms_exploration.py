"""Entropy and exploration methods (issue #12): hand-worked cases, float64 gradient references, the
entropy direction each method claims on small softmax policies, parameter errors, and selection by name
through the registries, `configure_controls` and the trainer's `MethodSet`."""

from __future__ import annotations

import json
import math
from math import comb

import pytest
import torch

from rlentropy.algorithms import (
    ADVANTAGES,
    CONTROLLERS,
    CONTROLS,
    POLICY_LOSSES,
    EntroPICController,
    clip_low,
    entropic,
    entropy_advantage,
    entropy_polarity,
    grpo,
    grpo_s,
    gtpo,
    nsr,
    passk_training,
    ppo,
    psr,
    unlikeliness,
    w_reinforce,
)
from rlentropy.algorithms.dispatch import check_values, configure_controls, dummy_inputs, run_controls


def softmax_stats(z: torch.Tensor, k: torch.Tensor):
    """Float64 reference statistics from logits z [N, V] and sampled ids k [N]:
    (logp_k, H, S_k = p_k (H + log p_k), s_bar = Σ_i p_i S_i)."""
    logq = torch.log_softmax(z, dim=-1)
    q = logq.exp()
    h = -(q * logq).sum(-1)
    s_all = q * (h[:, None] + logq)
    s_bar = (q * s_all).sum(-1)
    return logq.gather(-1, k[:, None])[:, 0], h, s_all.gather(-1, k[:, None])[:, 0], s_bar


def one_step_entropy_change(z: torch.Tensor, k: torch.Tensor, loss_of_logp, lr: float = 1e-3) -> torch.Tensor:
    """Σ over positions of H(z − lr·∇L) − H(z): each row of z [N, V] an independent softmax, k [N] the sampled
    ids, L(logp [1, N]) → [] the loss of one SGD step on the logits."""
    zz = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_of_logp(softmax_stats(zz, k)[0][None]), zz)
    return (softmax_stats(z - lr * grad, k)[1] - softmax_stats(z, k)[1]).sum()


def random_policy(seed: int, n: int = 400, v: int = 8, scale: float = 2.0):
    """Independent softmaxes z [n, v], tokens sampled from them, random ±1 advantages (random rewards)."""
    g = torch.Generator().manual_seed(seed)
    z = scale * torch.randn(n, v, generator=g, dtype=torch.float64)
    k = torch.multinomial(torch.softmax(z, -1), 1, generator=g)[:, 0]
    adv = torch.where(torch.rand(n, generator=g) < 0.5, 1.0, -1.0).double()
    return z, k, adv


# ====================================================================================================
# Registration and selection by name.


def test_registered_entries_declare_inputs_stage_and_defaults():
    spec = CONTROLS.get("entropy_advantage")
    assert (spec.kind, spec.inputs, spec.stage, spec.stages) == (
        "advantage",
        ("entropy", "advantages", "mask"),
        "old",
        ("old", "current"),
    )
    assert spec.defaults == {"alpha": 0.4, "kappa": 2.0} and "UNVERIFIED" in spec.notes
    spec = CONTROLS.get("entropic")
    assert spec.kind == "loss_term" and spec.stages == ("current",)
    assert spec.inputs[:4] == ("logp", "old_logp", "advantages", "mask") and "global_tokens" in spec.inputs
    assert spec.defaults["alpha"] == 0.0 and spec.defaults["high_prob_thresh"] == 0.95
    spec = CONTROLS.get("entropy_polarity")
    assert (spec.kind, spec.inputs, spec.stage) == ("advantage", ("s", "s_bar", "advantages", "mask"), "old")
    assert spec.paper.startswith("ours") and "OURS" in spec.notes
    spec = CONTROLLERS.get("entropic_pi")
    assert (spec.drives, spec.controls, spec.init_param) == ("alpha", ("entropic", "entropy_polarity"), "alpha_init")
    assert spec.required == ("target",) and spec.defaults == {"kp": 1.0, "ki": 0.01, "alpha_init": 0.0}
    spec = POLICY_LOSSES.get("clip_low")
    assert spec.defaults == {"eps_low": 0.1, "eps_high": 0.28, "clip_ratio_c": 3.0} and spec.stage == "current"
    expected = {
        "gtpo": (("rewards", "group_ids", "entropy", "mask"), ("entropy",)),
        "grpo_s": (("rewards", "group_ids", "entropy", "mask"), ("entropy",)),
        "unlikeliness": (("rewards", "group_ids", "logp", "mask"), ("logp",)),
        "passk_training": (("rewards", "group_ids"), ()),
        "psr": (("rewards", "group_ids"), ()),
        "nsr": (("rewards", "group_ids"), ()),
        "w_reinforce": (("rewards", "group_ids"), ()),
    }
    for name, (inputs, stats) in expected.items():
        spec = ADVANTAGES.get(name)
        assert spec.inputs == inputs and spec.reads_stats() == stats, name
        assert spec.paper and spec.summary and spec.notes, name
    assert ADVANTAGES.get("passk_training").required == ("k",)
    assert ADVANTAGES.get("w_reinforce").defaults == {"lam": 0.1}
    assert ADVANTAGES.get("unlikeliness").defaults == {"beta_rank": 0.25, "eps": 1e-6}
    assert ADVANTAGES.get("gtpo").defaults == {"alpha1": 1.0, "alpha2": 0.1, "normalize": "joint", "eps": 1e-6}


@pytest.mark.parametrize(
    "name, params",
    [
        ("entropy_advantage", {}),
        ("entropy_polarity", {"alpha": 0.5}),
        ("entropic", {"alpha": 0.5}),
    ],
)
def test_controls_run_through_the_dispatch(name, params):
    (active,) = configure_controls(name, params)
    inputs = dummy_inputs()
    inputs["logp"] = inputs["logp"].clone().requires_grad_(True)
    out = run_controls([active], active.stage, inputs)
    assert name in out.metrics
    if active.spec.kind == "advantage":
        assert not torch.equal(out.advantages, inputs["advantages"])  # the advantages changed
        assert out.terms == []
    else:
        (term,) = out.terms
        assert term.requires_grad  # a loss term with a gradient through logp
    check_values(active.spec, active.params, "control_params")  # the setup check on a dummy batch passes


def test_controls_off_at_alpha_zero_and_stage_choice():
    assert not configure_controls("entropy_advantage", {"alpha": 0.0})[0].enabled()
    assert not configure_controls("entropy_polarity")[0].enabled()  # α = 0: a no-op until set or driven
    assert configure_controls("entropy_advantage", stage="current")[0].stage == "current"
    with pytest.raises(ValueError, match="stage"):
        configure_controls("entropic", stage="old")
    with pytest.raises(ValueError, match="kappa"):
        check_values(CONTROLS.get("entropy_advantage"), {"alpha": 0.4, "kappa": 0.5}, "control_params")


@pytest.mark.parametrize(
    "algorithm, reads",
    [
        ({"advantage": "gtpo"}, ("entropy",)),
        ({"advantage": "grpo_s", "advantage_params": {"normalize": "joint"}}, ("entropy",)),
        ({"advantage": "unlikeliness"}, ("logp",)),
        ({"advantage": "passk_training", "advantage_params": {"k": 2}}, ()),
        ({"advantage": "w_reinforce", "advantage_params": {"lam": 0.2}}, ()),
        ({"advantage": "nsr", "loss": "clip_low"}, ()),
        ({"advantage": "psr", "control": "entropy_advantage"}, ("entropy",)),
        ({"control": "entropy_polarity", "control_params": {"alpha": 0.2}}, ("s", "s_bar")),
        ({"control": "entropic", "controller": "entropic_pi", "controller_params": {"target": 0.3}}, ()),
        (
            {"control": "entropy_polarity", "controller": "entropic_pi", "controller_params": {"target": 0.3}},
            ("s", "s_bar"),
        ),
    ],
)
def test_selectable_in_the_trainer_config(algorithm, reads):
    from rlentropy.runs.config import AlgorithmConfig
    from rlentropy.train.methods import MethodSet

    methods = MethodSet.from_config(AlgorithmConfig(**algorithm))
    methods.validate()  # every method called once on a dummy batch
    assert methods.reads_old_stats() == reads  # old statistics are computed before the advantages
    if "controller" in algorithm:
        assert isinstance(methods.controller, EntroPICController)
        assert methods.logged_parameters() == {"control/alpha": 0.0}  # alpha_init from the control's alpha
        methods.after_step(0.8)  # H above the target 0.3: α = 1·0.5 = 0.5, the next step's value
        assert methods.logged_parameters() == {"control/alpha": pytest.approx(0.5)}
        assert methods.state_dict()["controller"]["integral"] == pytest.approx(0.5)


def test_controller_needs_a_target():
    from rlentropy.errors import ConfigError
    from rlentropy.runs.config import AlgorithmConfig

    with pytest.raises((ConfigError, ValueError), match="target"):
        AlgorithmConfig(control="entropic", controller="entropic_pi")


# ====================================================================================================
# B1. Entropy advantage shaping.


def test_entropy_advantage_hand_worked():
    # α = 0.4, κ = 2. ψ = min(α·H, |A|/κ):
    #   t0: A = 2,  H = 0.5 → min(0.2, 1.0) = 0.2  → 2.2
    #   t1: A = −1, H = 3.0 → min(1.2, 0.5) = 0.5  → −0.5 (capped: the sign survives)
    #   t2: A = 0,  H = 2.0 → min(0.8, 0)   = 0    → 0
    #   t3: A = 0.5, H = 0.1 → min(0.04, 0.25) = 0.04 → 0.54
    #   t4: masked → unchanged −1.
    adv = torch.tensor([[2.0, -1.0, 0.0, 0.5, -1.0]])
    h = torch.tensor([[0.5, 3.0, 2.0, 0.1, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    out, m = entropy_advantage(h, adv, mask)
    torch.testing.assert_close(out, torch.tensor([[2.2, -0.5, 0.0, 0.54, -1.0]]))
    torch.testing.assert_close(m["psi_mean"], torch.tensor((0.2 + 0.5 + 0.0 + 0.04) / 4))
    torch.testing.assert_close(m["frac_capped"], torch.tensor(1 / 3))  # t1 of the A ≠ 0 tokens t0, t1, t3
    assert all(v.dtype == torch.float32 and v.dim() == 0 for v in m.values())
    # [B] advantages broadcast over the tokens.
    out_b, _ = entropy_advantage(h[:, :2], torch.tensor([-1.0]), mask[:, :2])
    torch.testing.assert_close(out_b, torch.tensor([[-0.8, -0.5]]))  # min(0.2, 0.5), min(1.2, 0.5)


@pytest.mark.parametrize("seed", range(5))
def test_entropy_advantage_never_flips_the_sign(seed):
    g = torch.Generator().manual_seed(seed)
    adv = torch.randn(6, 9, generator=g) * torch.randint(0, 2, (6, 9), generator=g)  # some exact zeros
    h = 10 * torch.rand(6, 9, generator=g)
    h[0, 0] = -1e-7  # a rounding-negative entropy counts as 0
    mask = torch.ones(6, 9)
    out, _ = entropy_advantage(h, adv, mask, alpha=5.0, kappa=1.01)
    assert torch.equal(torch.sign(out), torch.sign(adv))
    assert (out[adv == 0] == 0).all()
    assert (out >= adv).all()  # ψ ≥ 0: a penalty shrinks, a reward grows


def test_entropy_advantage_detaches_the_current_entropy():
    h = torch.full((1, 3), 2.0, requires_grad=True)
    out, _ = entropy_advantage(h, torch.tensor([1.0]), torch.ones(1, 3))
    assert not out.requires_grad


# ====================================================================================================
# B2. GTPO / GRPO-S.


def test_gtpo_hand_worked_separate_and_joint():
    # One group: r = [1, 1, 0], H = [[3, 1], [1, 3], [2, 2]], α1 = 1, α2 = 0.1.
    # t = 0: O+ entropies 3, 1 (sum 4, d = 2): 1 + 0.1·(3/4)·2 = 1.15 and 1 + 0.1·(1/4)·2 = 1.05;
    #        O− single response (h = 1, weight 1): −1 − 0.1·1·1 = −1.1. t = 1 mirrors: 1.05, 1.15, −1.1.
    r = torch.tensor([1.0, 1.0, 0.0])
    gid = torch.zeros(3, dtype=torch.long)
    h = torch.tensor([[3.0, 1.0], [1.0, 3.0], [2.0, 2.0]])
    mask = torch.ones(3, 2)
    # separate: O+ {1.15, 1.05, 1.05, 1.15} mean 1.1, population std 0.05 → ±1; O− all −1.1 → 0.
    adv, m = gtpo(r, gid, h, mask, normalize="separate")
    torch.testing.assert_close(adv, torch.tensor([[1.0, -1.0], [-1.0, 1.0], [0.0, 0.0]]), atol=1e-4, rtol=0)
    torch.testing.assert_close(m["frac_pos"], torch.tensor(2 / 3))
    # joint: mean of all six = 2.2/6 = 0.366667, population std = sqrt(6.463333/6) = 1.037893:
    # (1.15 − 0.366667)/1.037893 = 0.754734, (1.05 − …) = 0.658385, (−1.1 − …) = −1.413120.
    adv, _ = gtpo(r, gid, h, mask, normalize="joint")
    a, b, c = 0.754734, 0.658385, -1.413120
    torch.testing.assert_close(adv, torch.tensor([[a, b], [b, a], [c, c]]), atol=1e-5, rtol=0)


def test_gtpo_counts_only_valid_positions():
    # Response 1 ends after one token; its padded entropy 9 must not enter the sums.
    # t = 0 as above: 1.15, 1.05, −1.1. t = 1: only response 0 is an active O+ (d = 1):
    # 1 + 0.1·(1/1)·1 = 1.1. O+ values {1.15, 1.1, 1.05}: mean 1.1, std sqrt(0.005/3) = 0.0408248.
    r = torch.tensor([1.0, 1.0, 0.0])
    h = torch.tensor([[3.0, 1.0], [1.0, 9.0], [2.0, 2.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    adv, _ = gtpo(r, torch.zeros(3, dtype=torch.long), h, mask, normalize="separate")
    z = 0.05 / math.sqrt(0.005 / 3)  # 1.224745
    torch.testing.assert_close(adv, torch.tensor([[z, 0.0], [-z, 0.0], [0.0, 0.0]]), atol=1e-4, rtol=0)


def test_gtpo_groups_are_independent_and_zero_entropy_is_finite():
    g = torch.Generator().manual_seed(0)
    r = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    h = 3 * torch.rand(6, 5, generator=g)
    mask = (torch.rand(6, 5, generator=g) < 0.8).float()
    mask[:, 0] = 1
    gid = torch.tensor([7, 7, 3, 7, 3, 3])
    for fn in (gtpo, grpo_s):
        for normalize in ("separate", "joint"):
            both, _ = fn(r, gid, h, mask, normalize=normalize)
            for group in (7, 3):
                rows = (gid == group).nonzero()[:, 0]
                alone, _ = fn(r[rows], gid[rows], h[rows], mask[rows], normalize=normalize)
                torch.testing.assert_close(both[rows], alone)
    # H = 0 everywhere: the ε guards keep every value finite (all tokens of a class equal → 0).
    for fn in (gtpo, grpo_s):
        adv, _ = fn(r, gid, torch.zeros(6, 5), mask, normalize="separate")
        assert torch.isfinite(adv).all() and (adv == 0).all()
        adv, _ = fn(r, gid, torch.zeros(6, 5), mask)  # joint: the reward still orders the responses
        assert torch.isfinite(adv).all()
    # A confident mistake (H = 0) is penalised more than an unsure one, finitely.
    adv, _ = gtpo(
        torch.tensor([0.0, 0.0]), torch.zeros(2, dtype=torch.long), torch.tensor([[0.0], [1.0]]), torch.ones(2, 1)
    )
    assert torch.isfinite(adv).all() and adv[0, 0] < adv[1, 0]


def test_grpo_s_hand_worked():
    # r = [1, 1, 0, 0], mean entropies Ĥ = [3, 1, 2, 0.5].
    # O+: 1 + 0.1·(3/4)·2 = 1.15, 1 + 0.1·(1/4)·2 = 1.05.
    # O−: 1/Ĥ = 0.5 and 2 (sum 2.5): −1 − 0.1·(0.5/2.5)·2 = −1.04, −1 − 0.1·(2/2.5)·2 = −1.16.
    r = torch.tensor([1.0, 1.0, 0.0, 0.0])
    gid = torch.zeros(4, dtype=torch.long)
    h = torch.tensor([[3.0, 3.0], [1.0, 1.0], [2.0, 2.0], [0.5, 0.5]])
    mask = torch.ones(4, 2)
    # separate: O+ mean 1.1, std 0.05 → ±1; O− mean −1.1, std 0.06 → ±1.
    adv, _ = grpo_s(r, gid, h, mask, normalize="separate")
    torch.testing.assert_close(adv, torch.tensor([1.0, -1.0, 1.0, -1.0]), atol=1e-4, rtol=0)
    # joint: mean 0, population std sqrt(4.8522/4) = 1.101386.
    adv, _ = grpo_s(r, gid, h, mask, normalize="joint")
    torch.testing.assert_close(adv, torch.tensor([1.15, 1.05, -1.04, -1.16]) / 1.101386, atol=1e-5, rtol=0)
    # A response with no valid token gets 0.
    adv, _ = grpo_s(r, gid, h, torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]))
    assert adv[2] == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_stats_reading_estimators_accept_host_rewards_with_device_statistics():
    # Our trainer hands the estimators host rewards / group ids and device statistics.
    g = torch.Generator().manual_seed(0)
    r = torch.tensor([1.0, 0.0, 1.0, 1.0])
    gid = torch.tensor([0, 0, 1, 1])
    stat = torch.rand(4, 3, generator=g)
    mask = torch.ones(4, 3)
    for fn in (gtpo, grpo_s, unlikeliness):
        on_host, _ = fn(r, gid, stat, mask)
        mixed, _ = fn(r, gid, stat.cuda(), mask.cuda())
        torch.testing.assert_close(mixed.cpu(), on_host)


# ====================================================================================================
# B3. Pass@k training.


def test_passk_training_spec_vectors():
    gid = torch.zeros(8, dtype=torch.long)
    # N = 8, k = 4, c = 2: R̄ = 1 − C(6,4)/C(8,4) = 1 − 15/70 = 0.785714, σ = 0.410326;
    # A_pos = 0.214286/0.410326 = 0.522232; A_neg = (0.214286 − C(5,3)/C(7,3) = 10/35)/σ = −0.174077.
    adv, m = passk_training(torch.tensor([1.0, 0, 1, 0, 0, 0, 0, 0]), gid, k=4)
    torch.testing.assert_close(adv, torch.tensor([0.522232, -0.174077, 0.522232] + [-0.174077] * 5), atol=1e-6, rtol=0)
    torch.testing.assert_close(m["passk_mean"], torch.tensor(0.785714), atol=1e-6, rtol=0)
    # c = 1: R̄ = 1 − C(7,4)/C(8,4) = 0.5, σ = 0.5: A_pos = 1 (up to eps), A_neg = (0.5 − C(6,3)/C(7,3))/0.5
    # = (0.5 − 20/35)/0.5 = −0.142857.
    adv, _ = passk_training(torch.tensor([1.0] + [0.0] * 7), gid, k=4)
    torch.testing.assert_close(adv, torch.tensor([1.0] + [-0.142857] * 7), atol=1e-5, rtol=0)


def test_passk_training_limits_and_reference():
    # k = 1 is GRPO with the population std.
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])
    gid = torch.zeros(5, dtype=torch.long)
    p = 0.6
    torch.testing.assert_close(
        passk_training(r, gid, k=1)[0], (r - p) / (math.sqrt(p * (1 - p)) + 1e-6), atol=1e-6, rtol=0
    )
    assert (passk_training(r, gid, k=5)[0] == 0).all()  # k = N: pass@N is certain → zero gradient
    assert (passk_training(torch.zeros(5), gid, k=3)[0] == 0).all()  # all wrong
    assert (passk_training(torch.ones(5), gid, k=3)[0] == 0).all()  # all correct
    # Non-binary rewards pass through unchanged (as upstream).
    assert passk_training(torch.tensor([1.0, 0.0, 0.5]), torch.zeros(3, dtype=torch.long), k=2)[0][2] == 0.5
    # Several groups of different sizes against math.comb in float64.
    g = torch.Generator().manual_seed(0)
    sizes = [3, 8, 5, 6]
    gid = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    r = (torch.rand(len(gid), generator=g) < 0.4).float()
    k = 3
    adv, _ = passk_training(r, gid, k=k)
    for i, n in enumerate(sizes):
        rows = (gid == i).nonzero()[:, 0]
        c = int(r[rows].sum())
        rho = 1 - comb(n - c, k) / comb(n, k)
        sigma = math.sqrt(rho * (1 - rho))
        a_pos = (1 - rho) / (sigma + 1e-6)
        a_neg = (1 - rho - (comb(n - c - 1, k - 1) / comb(n - 1, k - 1) if c < n else 0.0)) / (sigma + 1e-6)
        expected = torch.where(r[rows] == 1, torch.tensor(a_pos), torch.tensor(a_neg)).float()
        torch.testing.assert_close(adv[rows], expected, atol=1e-5, rtol=1e-5)


# ====================================================================================================
# B5. PSR / NSR / W-REINFORCE.


def test_psr_nsr_w_reinforce_hand_worked():
    r = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.5, -1.0])
    gid = torch.tensor([0, 0, 1, 1, 2, 2])
    torch.testing.assert_close(psr(r, gid)[0], r)
    torch.testing.assert_close(nsr(r, gid)[0], torch.tensor([0.0, -1.0, 0.0, -1.0, -0.5, -2.0]))
    # λ·r on r = 1, r − 1 on r ∈ {0, −1}, the raw reward otherwise.
    torch.testing.assert_close(w_reinforce(r, gid)[0], torch.tensor([0.1, -1.0, 0.1, -1.0, 0.5, -2.0]))
    torch.testing.assert_close(w_reinforce(r, gid, lam=1.0)[0], torch.tensor([1.0, -1.0, 1.0, -1.0, 0.5, -2.0]))
    # No baseline: an all-correct group still gets gradient (GRPO gives 0).
    ones = torch.ones(4)
    same = torch.zeros(4, dtype=torch.long)
    assert (psr(ones, same)[0] == 1).all() and (grpo(ones, same)[0] == 0).all()


# ====================================================================================================
# B6. Unlikeliness reward.


def test_unlikeliness_spec_vector():
    # ℓ = [−.5, −1, −.2, −2] → ascending ranks [2, 1, 3, 0], /G = [.5, .25, .75, 0];
    # r' = r·(1 − .25·rank/G) = [.875, .9375, 0, 1] → GRPO: [0.3645, 0.4971, −1.4912, 0.6296].
    r = torch.tensor([1.0, 1.0, 0.0, 1.0])
    logp = torch.tensor([[-0.5, -0.5, 50.0], [-1.0, -1.0, 50.0], [-0.2, -0.2, 50.0], [-2.0, -2.0, 50.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]] * 4)  # the padded column never counts
    adv, m = unlikeliness(r, torch.zeros(4, dtype=torch.long), logp, mask)
    torch.testing.assert_close(adv, torch.tensor([0.3645, 0.4971, -1.4912, 0.6296]), atol=1e-4, rtol=0)
    # Mean penalty over the correct responses: (0.125 + 0.0625 + 0)/3.
    torch.testing.assert_close(m["rank_penalty_mean"], torch.tensor(0.1875 / 3))


def test_unlikeliness_ranks_within_groups_and_ties():
    # Two interleaved groups; each ranks on its own. Ties keep index order.
    r = torch.tensor([1.0, 1.0, 1.0, 1.0])
    gid = torch.tensor([5, 2, 5, 2])
    logp = torch.tensor([[-1.0], [-3.0], [-1.0], [-0.1]])
    adv, _ = unlikeliness(r, gid, logp, torch.ones(4, 1))
    # group 5: tie at −1 → ranks [0, 1] → r' = [1, 1 − .25·1/2 = .875]; group 2: ℓ = [−3, −.1] → same.
    # GRPO of (1, .875): ±0.0625/0.0883883 = ±0.707107.
    torch.testing.assert_close(adv, torch.tensor([0.707107, 0.707107, -0.707107, -0.707107]), atol=1e-4, rtol=0)
    # β = 0 is plain GRPO.
    r = torch.tensor([1.0, 0.0, 1.0, 1.0])
    torch.testing.assert_close(unlikeliness(r, gid, logp, torch.ones(4, 1), beta_rank=0.0)[0], grpo(r, gid)[0])


# ====================================================================================================
# B7. EntroPIC: the loss term and the PI controller.


def _entropic_case():
    p = torch.tensor([[0.99, 0.97, 0.5, 0.96]], dtype=torch.float64)
    p_old = torch.tensor([[0.9, 0.97, 0.5, 0.99]], dtype=torch.float64)
    adv = torch.tensor([[2.0, -1.0, 3.0, 0.5]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    return p.log(), p_old.log(), adv, mask


def test_entropic_hand_worked_and_gradient():
    # M = valid ∧ p > 0.95 = {t0, t1} (t2 has p = 0.5, t3 is masked). r = [0.99/0.9 = 1.1, 1].
    # term = α · mean_M(−r·|A|) = 0.5 · (−1.1·2 − 1·1)/2 = −0.8.
    # d term / d logp_t = α·(−r_t |A_t|)/|M|: t0: 0.5·(−2.2)/2 = −0.55, t1: 0.5·(−1)/2 = −0.25, else 0.
    logp64, old64, adv64, mask64 = _entropic_case()
    logp = logp64.float().requires_grad_(True)
    term, m = entropic(logp, old64.float(), adv64.float(), mask64.float(), alpha=0.5)
    torch.testing.assert_close(term.detach(), torch.tensor(-0.8))
    torch.testing.assert_close(m["frac_high_prob"], torch.tensor(2 / 3))
    (grad,) = torch.autograd.grad(term, logp)
    torch.testing.assert_close(grad, torch.tensor([[-0.55, -0.25, 0.0, 0.0]]))
    # Float64 autograd of the formula written out.
    x = logp64.clone().requires_grad_(True)
    high = (mask64 > 0) & (x.detach() > math.log(0.95))
    ref = 0.5 * torch.where(high, -torch.exp(x - old64) * adv64.abs(), 0.0).sum() / high.sum()
    (ref_grad,) = torch.autograd.grad(ref, x)
    torch.testing.assert_close(grad.double(), ref_grad)
    # [B] advantages, an empty M and α = 0.
    assert entropic(logp, old64.float(), torch.tensor([1.0]), mask64.float(), alpha=0.3)[0].requires_grad
    empty, m = entropic(logp, old64.float(), adv64.float(), mask64.float(), alpha=0.5, high_prob_thresh=0.999)
    assert empty.item() == 0.0 and m["frac_high_prob"] == 0


def test_entropic_micro_batches_weight_by_their_share():
    # token-mean over a step of 4 valid tokens in two micro-batches: (3 valid, M = {t0, t1}) and (1 valid, M =
    # {t0}). Each micro-batch's M-mean is weighted by its share of the loss weight: 3/4 and 1/4.
    logp64, old64, adv64, mask64 = _entropic_case()
    lp, old, adv = logp64.float(), old64.float(), adv64.float()
    t1, _ = entropic(lp, old, adv, mask64.float(), alpha=0.5, global_tokens=4, require_grad=False)
    mb2 = dict(logp=lp[:, :1], old_logp=old[:, :1], advantages=adv[:, :1], mask=torch.ones(1, 1))
    t2, _ = entropic(**mb2, alpha=0.5, global_tokens=4, require_grad=False)
    torch.testing.assert_close(t1, torch.tensor(-0.8 * 3 / 4))
    torch.testing.assert_close(t2, torch.tensor(0.5 * (-1.1 * 2) / 4))  # its own M-mean −2.2, share 1/4
    # Without a global count a micro-batch is the whole step (share 1).
    torch.testing.assert_close(entropic(**mb2, alpha=0.5, require_grad=False)[0], torch.tensor(0.5 * -2.2))


def test_entropic_positive_alpha_lowers_the_entropy():
    # Peaked softmaxes whose sampled token has p > 0.95: the term's gradient raises those probabilities,
    # so α > 0 lowers the entropy (sharpening) and α < 0 raises it, whatever the sign of A.
    g = torch.Generator().manual_seed(0)
    n, v = 50, 6
    z = 0.5 * torch.randn(n, v, generator=g, dtype=torch.float64)
    z[:, 0] += 8.0
    k = torch.zeros(n, dtype=torch.long)
    adv = torch.where(torch.rand(n, generator=g) < 0.5, 1.0, -1.0).double()[None]
    old = softmax_stats(z, k)[0][None]
    assert (old.exp() > 0.95).all()

    def loss(alpha):
        return lambda lp: entropic(lp, old, adv, torch.ones(1, n, dtype=torch.float64), alpha=alpha)[0]

    assert one_step_entropy_change(z, k, loss(0.5)) < 0 < one_step_entropy_change(z, k, loss(-0.5))


def test_entropic_refuses_logp_without_grad():
    logp64, old64, adv64, mask64 = _entropic_case()
    with pytest.raises(ValueError, match="logp does not require grad"):
        entropic(logp64, old64, adv64, mask64, alpha=0.5)
    entropic(logp64, old64, adv64, mask64, alpha=0.5, require_grad=False)
    entropic(logp64, old64, adv64, mask64, alpha=0.0)  # α = 0 needs no gradient


def test_entropic_pi_hand_worked():
    # target 0.5, Kp = 1, Ki = 0.01; α uses the integral before this step's error:
    #   H = 0.8: e = 0.3  → α = 0.3 + 0.01·0    = 0.3,    I = 0.3
    #   H = 0.9: e = 0.4  → α = 0.4 + 0.01·0.3  = 0.403,  I = 0.7
    #   H = 2.0: e = 1.5  → α = 1.5 + 0.007 → clipped to 1, I = 2.2
    #   H = 0.1: e = −0.4 → α = −0.4 + 0.022    = −0.378, I = 1.8
    c = EntroPICController(target=0.5)
    assert c.value == 0.0  # alpha_init before the first update
    for h, alpha, integral in [(0.8, 0.3, 0.3), (0.9, 0.403, 0.7), (2.0, 1.0, 2.2), (0.1, -0.378, 1.8)]:
        assert c.update(h) == pytest.approx(alpha)
        assert c.value == pytest.approx(alpha) and c.integral == pytest.approx(integral)
    assert c.metrics() == {"controller/alpha": pytest.approx(-0.378), "controller/integral": pytest.approx(1.8)}
    lo = EntroPICController(target=5.0)
    assert lo.update(0.0) == -1.0  # clipped below too


def test_entropic_pi_integral_removes_the_steady_state_error():
    # Toy plant: the step's entropy falls as α grows, H = 0.5 − 0.4·α. Target 0.3 ⇔ α* = 0.5.
    # P alone settles at α = 0.2/1.4 = 0.142857 (H = 0.442857); the integral drives H to the target.
    def settle(ki):
        c = EntroPICController(target=0.3, ki=ki)
        for _ in range(300):
            h = 0.5 - 0.4 * c.value
            c.update(h)
        return h, c.value

    h, alpha = settle(0.0)
    assert h == pytest.approx(0.442857, abs=1e-6) and alpha == pytest.approx(1 / 7, abs=1e-6)
    h, alpha = settle(0.1)
    assert h == pytest.approx(0.3, abs=1e-3) and alpha == pytest.approx(0.5, abs=5e-3)


def test_entropic_pi_state_round_trip():
    c = EntroPICController(target=0.4, kp=0.5, ki=0.02, alpha_init=0.1)
    for h in (0.9, 0.2, 0.6):
        c.update(h)
    state = json.loads(json.dumps(c.state_dict()))  # JSON-serialisable
    d = EntroPICController(target=0.4, kp=0.5, ki=0.02)
    d.load_state_dict(state)
    assert (d.value, d.integral, d.steps) == (c.value, c.integral, c.steps)
    assert d.update(0.7) == c.update(0.7)
    with pytest.raises(ValueError, match="ki"):
        EntroPICController(target=0.4, kp=0.5, ki=0.05).load_state_dict(state)
    with pytest.raises(ValueError, match="state_dict"):
        d.load_state_dict({"alpha": 0.0})


# ====================================================================================================
# B8. Entropy polarity (ours).


def test_entropy_polarity_hand_worked():
    # Polarity π = sign(A·(s_bar − S)) (ΔH_tok ∝ A·(s_bar − S)); α = 0.5 → A' = A·(1 − 0.5·π).
    #   t0: A = +1, S = .1, s̄ = .3: xD = +.2, π = +1 (a rewarded unlikely token raises H) → 0.5
    #   t1: A = +1, S = .5:          xD = −.2, π = −1                                    → 1.5
    #   t2: A = −2, S = .5:          xD = −.2, π = +1 (a penalised likely token)          → −1.0
    #   t3: A = −2, S = .1:          xD = +.2, π = −1                                    → −3.0
    #   t4: A = 0 → 0;  t5: S = s̄ → π = 0 → 1.
    s = torch.tensor([[0.1, 0.5, 0.5, 0.1, 0.1, 0.3]])
    s_bar = torch.full((1, 6), 0.3)
    adv = torch.tensor([[1.0, 1.0, -2.0, -2.0, 0.0, 1.0]])
    out, m = entropy_polarity(s, s_bar, adv, torch.ones(1, 6), alpha=0.5)
    torch.testing.assert_close(out, torch.tensor([[0.5, 1.5, -1.0, -3.0, 0.0, 1.0]]))
    torch.testing.assert_close(m["frac_raise"], torch.tensor(0.4))  # 2 of the 5 A ≠ 0 tokens
    torch.testing.assert_close(m["frac_lower"], torch.tensor(0.4))
    # Pressure Σ A·xD / 6: before (.2 − .2 + .4 − .4)/6 = 0; after (.1 − .3 + .2 − .6)/6 = −0.1
    # = −α·Σ|A·xD|/6 = −0.5·1.2/6.
    torch.testing.assert_close(m["pressure_before"], torch.tensor(0.0))
    torch.testing.assert_close(m["pressure_after"], torch.tensor(-0.1))
    # |α| < 1 keeps every sign; |α| = 1 switches one polarity off (here α = −1: the entropy-lowering tokens).
    out, _ = entropy_polarity(s, s_bar, adv, torch.ones(1, 6), alpha=-0.99)
    assert torch.equal(torch.sign(out), torch.sign(adv))
    out, _ = entropy_polarity(s, s_bar, adv, torch.ones(1, 6), alpha=-1.0)
    torch.testing.assert_close(out, torch.tensor([[2.0, 0.0, -4.0, 0.0, 0.0, 1.0]]))


def test_entropy_polarity_moves_the_entropy_the_way_alpha_says():
    # One SGD step of the token-sum REINFORCE loss −A'·logp on random softmaxes with random rewards:
    # ΔH ≈ lr·Σ A'·(s_bar − S) = lr·(Σ A·xD − α·Σ|A·xD|) falls strictly as α grows.
    z, k, adv = random_policy(0)
    _, _, s, s_bar = softmax_stats(z, k)
    mask = torch.ones(1, len(k), dtype=torch.float64)
    dh = {}
    for alpha in (-0.5, 0.0, 0.5):
        new_adv, m = entropy_polarity(s[None], s_bar[None], adv[None], mask, alpha=alpha)
        dh[alpha] = one_step_entropy_change(z, k, lambda lp, a=new_adv: -(a * lp).sum(), lr=1e-3)
        torch.testing.assert_close(dh[alpha] / 1e-3, (new_adv[0] * (s_bar - s)).sum(), rtol=1e-2, atol=1e-2)
    assert dh[-0.5] > dh[0.0] > dh[0.5]


# ====================================================================================================
# B10. Clip-low preset.


def test_clip_low_is_ppo_with_its_defaults():
    g = torch.Generator().manual_seed(0)
    logp = (-torch.rand(3, 5, generator=g)).requires_grad_(True)
    old = logp.detach() + 0.3 * torch.randn(3, 5, generator=g)
    adv = torch.randn(3, generator=g)
    mask = torch.ones(3, 5)
    a, ma = clip_low(logp, old, adv, mask)
    b, mb = ppo(logp, old, adv, mask, eps_low=0.1, eps_high=0.28, clip_ratio_c=3.0)
    torch.testing.assert_close(a, b)
    assert ma.keys() == mb.keys()


def test_clip_low_clips_more_below_and_less_above_hand_worked():
    # ratios r and advantages:      0.85 (A<0)  0.75 (A<0)  1.25 (A>0)  1.30 (A>0)  1.0 (A>0)
    # symmetric ε = 0.2: low-clipped r < 0.8 → {0.75}; high-clipped r > 1.2 → {1.25, 1.30}.
    # clip_low (0.1, 0.28): low-clipped r < 0.9 → {0.85, 0.75}; high-clipped r > 1.28 → {1.30}.
    r = torch.tensor([[0.85, 0.75, 1.25, 1.30, 1.0]], dtype=torch.float64)
    adv = torch.tensor([[-1.0, -1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    mask = torch.ones(1, 5, dtype=torch.float64)
    logp = torch.zeros(1, 5, dtype=torch.float64, requires_grad=True)
    old = -r.log()  # logp − old_logp = log r
    loss, m = clip_low(logp, old, adv, mask)
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    assert m["clip_frac_low"] == pytest.approx(2 / 5) and m["clip_frac_high"] == pytest.approx(1 / 5)
    # Clipped tokens get no gradient; the others −A·r.
    torch.testing.assert_close(grad, torch.tensor([[0.0, 0.0, -1.25, 0.0, -1.0]], dtype=torch.float64))
    _, m = ppo(logp, old, adv, mask, eps_low=0.2, eps_high=0.2)
    assert m["clip_frac_low"] == pytest.approx(1 / 5) and m["clip_frac_high"] == pytest.approx(2 / 5)


def test_clip_low_gradient_matches_float64_reference():
    g = torch.Generator().manual_seed(1)
    logp64 = -torch.rand(4, 6, generator=g, dtype=torch.float64) - 0.1
    old64 = logp64 + 0.4 * torch.randn(4, 6, generator=g, dtype=torch.float64)
    adv64 = torch.randn(4, 6, generator=g, dtype=torch.float64)
    adv64[0, 0], old64[0, 0] = -1.0, logp64[0, 0] - math.log(4.0)  # r = 4 > c = 3: the dual clip
    mask = (torch.rand(4, 6, generator=g) < 0.8).float()
    x = logp64.float().requires_grad_(True)
    loss, _ = clip_low(x, old64.float(), adv64.float(), mask)
    (grad,) = torch.autograd.grad((loss * mask).sum() / mask.sum(), x)
    y = logp64.clone().requires_grad_(True)
    ratio = torch.exp(y - old64)
    ref = torch.maximum(-adv64 * ratio, -adv64 * ratio.clamp(0.9, 1.28))
    ref = torch.where(adv64 < 0, torch.minimum(ref, -adv64 * 3.0), ref)
    (ref_grad,) = torch.autograd.grad((ref * mask).sum() / mask.sum(), y)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_clip_low_raises_the_entropy_relative_to_symmetric_ppo(seed):
    # A constructed batch with random rewards (A = ±1) on peaked softmaxes (top p ≈ 0.9+). As in an LM, the
    # ratio has moved only on the rare sampled tokens (half the positions, r uniform in [0.7, 1.4]); the
    # likely ones sit at r = 1. A rare token has S < s_bar, so its update moves the entropy by
    # ∝ A·(s_bar − S): down for A < 0, up for A > 0. Clipping more A < 0 rare tokens (eps_low 0.1) and fewer
    # A > 0 ones (eps_high 0.28) removes entropy-lowering updates and keeps entropy-raising ones.
    g = torch.Generator().manual_seed(seed)
    n, v = 400, 6
    z = 0.3 * torch.randn(n, v, generator=g, dtype=torch.float64)
    z[:, 0] += 4.0
    rare = torch.arange(n) % 2 == 1
    k = torch.where(rare, torch.randint(1, v, (n,), generator=g), 0)
    ratio = torch.where(rare, 0.7 + 0.7 * torch.rand(n, generator=g, dtype=torch.float64), 1.0)
    adv = torch.where(torch.rand(n, generator=g) < 0.5, 1.0, -1.0).double()[None]
    _, _, s, s_bar = softmax_stats(z, k)
    assert (s_bar - s)[rare].min() > 0
    old = (softmax_stats(z, k)[0] - ratio.log())[None]
    mask = torch.ones(1, n, dtype=torch.float64)

    def dh(**eps):
        loss = clip_low if not eps else lambda *a: ppo(*a, **eps)
        return one_step_entropy_change(z, k, lambda lp: loss(lp, old, adv, mask)[0].sum())

    preset, symmetric = dh(), dh(eps_low=0.2, eps_high=0.2)
    assert preset > symmetric
    # The opposite asymmetry (clip more above than below) lowers it: the comparison can fail.
    assert dh(eps_low=0.28, eps_high=0.1) < symmetric


# ====================================================================================================
# Parameter errors name the parameter.


def _x(*shape):
    return torch.ones(*shape)


@pytest.mark.parametrize(
    "call, param",
    [
        (lambda: entropy_advantage(_x(1, 2), _x(1, 2), _x(1, 2), alpha=-0.1), "alpha"),
        (lambda: entropy_advantage(_x(1, 2), _x(1, 2), _x(1, 2), kappa=0.0), "kappa"),
        (lambda: entropy_advantage(_x(1, 2), _x(1, 2), _x(1, 2), kappa=-2.0), "kappa"),
        (lambda: entropy_advantage(_x(1, 2), _x(1, 2), _x(1, 2), kappa=1.0), "kappa"),
        (lambda: gtpo(_x(2), torch.zeros(2, dtype=torch.long), _x(2, 3), _x(2, 3), alpha2=-1.0), "alpha2"),
        (lambda: gtpo(_x(2), torch.zeros(2, dtype=torch.long), _x(2, 3), _x(2, 3), normalize="batch"), "normalize"),
        (lambda: grpo_s(_x(2), torch.zeros(2, dtype=torch.long), _x(2, 3), _x(2, 3), eps=0.0), "eps"),
        (lambda: gtpo(_x(2), torch.zeros(2, dtype=torch.long), _x(3, 3), _x(3, 3)), "entropy"),
        (lambda: passk_training(_x(4), torch.zeros(4, dtype=torch.long), k=5), "k"),
        (lambda: passk_training(_x(4), torch.tensor([0, 0, 0, 1]), k=2), "k"),  # the smallest group has 1
        (lambda: passk_training(_x(4), torch.zeros(4, dtype=torch.long), k=0), "k"),
        (lambda: passk_training(_x(4), torch.zeros(4, dtype=torch.long), k=2.0), "k"),
        (lambda: w_reinforce(_x(2), torch.zeros(2, dtype=torch.long), lam=-0.1), "lam"),
        (
            lambda: unlikeliness(_x(2), torch.zeros(2, dtype=torch.long), _x(2, 3), _x(2, 3), beta_rank=-0.1),
            "beta_rank",
        ),
        (lambda: unlikeliness(_x(2), torch.zeros(2, dtype=torch.long), _x(2, 3), _x(2, 3), beta_rank=1.5), "beta_rank"),
        (lambda: unlikeliness(_x(2), torch.zeros(2, dtype=torch.long), _x(3, 3), _x(3, 3)), "logp"),
        (lambda: entropic(_x(1, 2), _x(1, 2), _x(1, 2), _x(1, 2), alpha=1.5, require_grad=False), "alpha"),
        (lambda: entropic(_x(1, 2), _x(1, 2), _x(1, 2), _x(1, 2), high_prob_thresh=1.0), "high_prob_thresh"),
        (lambda: entropy_polarity(_x(1, 2), _x(1, 2), _x(1, 2), _x(1, 2), alpha=-1.5), "alpha"),
        (lambda: entropy_polarity(_x(1, 2), _x(1, 3), _x(1, 2), _x(1, 2), alpha=0.5), "s_bar"),
        (lambda: clip_low(_x(1, 2), _x(1, 2), _x(1, 2), _x(1, 2), eps_low=0.3, eps_high=0.2), "eps_low"),
        (lambda: clip_low(_x(1, 2), _x(1, 2), _x(1, 2), _x(1, 2), eps_high=-0.1), "eps_high"),
        (lambda: EntroPICController(target=0.0), "target"),
        (lambda: EntroPICController(target=-0.5), "target"),
        (lambda: EntroPICController(target=0.5, kp=-1.0), "kp"),
        (lambda: EntroPICController(target=0.5, alpha_init=2.0), "alpha_init"),
    ],
)
def test_invalid_parameters_name_the_parameter(call, param):
    with pytest.raises(ValueError, match=param):
        call()
