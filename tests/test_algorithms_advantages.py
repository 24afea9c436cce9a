"""Advantage estimators and pass@k: hand-worked cases, a float64 loop reference, registry errors."""

from __future__ import annotations

import math
from math import comb

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from rlentropy.algorithms import (
    ADVANTAGES,
    UnknownNameError,
    dr_grpo,
    get_advantage,
    get_advantage_spec,
    grpo,
    grpo_advantages,
    pass_at_k,
    reinforce_pp,
    rloo,
)
from rlentropy.errors import ConfigError


def reference_grpo(rewards: list[float], groups: list[int], scale: str, eps: float) -> list[float]:
    """Plain float64 loop (verl's compute_grpo_outcome_advantage restated)."""
    by_group: dict[int, list[float]] = {}
    for r, g in zip(rewards, groups):
        by_group.setdefault(g, []).append(r)
    stats = {}
    for g, rs in by_group.items():
        if len(rs) == 1:
            stats[g] = (0.0, 1.0)
        else:
            mean = sum(rs) / len(rs)
            std = math.sqrt(sum((r - mean) ** 2 for r in rs) / (len(rs) - 1))
            stats[g] = (mean, std)
    if scale == "batch":
        mean_all = sum(rewards) / len(rewards)
        batch_std = math.sqrt(sum((r - mean_all) ** 2 for r in rewards) / (len(rewards) - 1))
    out = []
    for r, g in zip(rewards, groups):
        mean, std = stats[g]
        if scale == "group":
            out.append((r - mean) / (std + eps))
        elif scale == "batch":
            out.append((r - mean) / (batch_std + eps))
        else:
            out.append(r - mean)
    return out


def test_grpo_hand_worked():
    # Group 7: rewards [1, 0, 1, 1]: mean 0.75, unbiased var = (3·0.25² + 0.75²)/3 = 0.75/3 = 0.25, std 0.5.
    #   A(1) = 0.25 / (0.5 + 1e-6) = 0.4999990..., A(0) = −0.75 / 0.500001 = −1.4999970...
    # Group 2: a single response with reward 3: mean 0, std 1 → A = 3 / (1 + 1e-6).
    # Group 5: all-equal rewards → A = 0.
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 3.0, 0.5, 0.5])
    groups = torch.tensor([7, 7, 7, 7, 2, 5, 5])
    adv, metrics = grpo(rewards, groups)
    expected = torch.tensor(
        [0.25 / 0.500001, -0.75 / 0.500001, 0.25 / 0.500001, 0.25 / 0.500001, 3 / 1.000001, 0.0, 0.0]
    )
    torch.testing.assert_close(adv, expected, rtol=1e-6, atol=1e-7)
    # Responses in a group with all-equal rewards (group 5, size 2): 2 of 7.
    torch.testing.assert_close(metrics["frac_zero_std"], torch.tensor(2 / 7))
    torch.testing.assert_close(grpo_advantages(rewards, groups), adv)


def test_grpo_scales_and_dr_grpo():
    rewards = torch.tensor([1.0, 0.0, 0.0, 2.0])
    groups = torch.tensor([0, 0, 1, 1])
    # Group means 0.5 and 1.0 → centred [0.5, −0.5, −1, 1].
    # scale="none" (= Dr.GRPO): the centred rewards.
    torch.testing.assert_close(grpo(rewards, groups, scale="none")[0], torch.tensor([0.5, -0.5, -1.0, 1.0]))
    torch.testing.assert_close(dr_grpo(rewards, groups)[0], torch.tensor([0.5, -0.5, -1.0, 1.0]))
    # scale="batch": batch mean 0.75, unbiased var = (0.0625 + 0.5625 + 0.5625 + 1.5625)/3 = 2.75/3.
    batch_std = math.sqrt(2.75 / 3)
    expected = torch.tensor([0.5, -0.5, -1.0, 1.0]) / (batch_std + 1e-6)
    torch.testing.assert_close(grpo(rewards, groups, scale="batch")[0], expected, rtol=1e-6, atol=0)


def test_rloo_hand_worked():
    # Group [1, 0, 1, 1]: A_i = R_i − mean of the others: 1 − 2/3 = 1/3 and 0 − 1 = −1.
    # Singleton group (reward 5): no baseline, A = 5.
    adv, _ = rloo(torch.tensor([1.0, 0.0, 1.0, 1.0, 5.0]), torch.tensor([0, 0, 0, 0, 1]))
    torch.testing.assert_close(adv, torch.tensor([1 / 3, -1.0, 1 / 3, 1 / 3, 5.0]))


def test_reinforce_pp_hand_worked():
    # Group baseline: [1, 0, 1, 1] → [0.25, −0.75, 0.25, 0.25]; [0, 0] → [0, 0].
    # Whitening over the 6 responses: mean 0; unbiased var = (3·0.0625 + 0.5625)/5 = 0.15.
    x = torch.tensor([0.25, -0.75, 0.25, 0.25, 0.0, 0.0])
    adv, _ = reinforce_pp(torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0]), torch.tensor([0, 0, 0, 0, 1, 1]))
    torch.testing.assert_close(adv, x / (math.sqrt(0.15) + 1e-6), rtol=1e-6, atol=0)
    # baseline="none": whiten the raw rewards [1, 0, 1, 1, 0, 0]: mean 0.5, unbiased var 0.3.
    raw = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    adv_none, _ = reinforce_pp(raw, torch.tensor([0, 0, 0, 0, 1, 1]), baseline="none")
    torch.testing.assert_close(adv_none, (raw - 0.5) / (math.sqrt(0.3) + 1e-6), rtol=1e-6, atol=0)


@settings(max_examples=40, deadline=None)
@given(
    data=st.lists(st.tuples(st.integers(0, 5), st.floats(-3, 3, allow_nan=False, width=32)), min_size=2, max_size=24),
    scale=st.sampled_from(["group", "batch", "none"]),
)
@example(data=[(0, 1.6875), (0, 1.6875), (0, 1.69140625)], scale="group")  # std ≈ 2e-3: ill-conditioned
def test_grpo_matches_float64_loop(data, scale):
    groups = [g for g, _ in data]
    rewards = [r for _, r in data]
    ours, _ = grpo(torch.tensor(rewards, dtype=torch.float32), torch.tensor(groups), scale=scale)
    ref = torch.tensor(reference_grpo(rewards, groups, scale, 1e-6), dtype=torch.float64)
    # Error bound derived from the conditioning: centring rounds at eps32·max|r|, and dividing by a
    # (std + 1e-6) that is small amplifies it by 1/std; the std itself carries the same relative
    # error, scaled by |A|. So tol = c·eps32·max|r|/(std_min + 1e-6)·(1 + max|A|), floored at 1e-5.
    r64 = torch.tensor(rewards, dtype=torch.float64)
    g = torch.tensor(groups)
    if scale == "group":
        stds = [r64[g == k].std() for k in g.unique() if int((g == k).sum()) > 1]
        std_min = min((float(x) for x in stds), default=1.0)
    elif scale == "batch":
        std_min = float(r64.std()) if len(rewards) > 1 else 1.0
    else:
        std_min = 1.0
    eps32 = torch.finfo(torch.float32).eps
    kappa = float(r64.abs().max()) / (std_min + 1e-6)
    tol = max(1e-5, 8 * eps32 * kappa * (1.0 + float(ref.abs().max())))
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=tol)


def test_float64_rewards_stay_float64():
    adv, _ = grpo(torch.tensor([0.0, 1.0], dtype=torch.float64), torch.tensor([0, 0]))
    assert adv.dtype == torch.float64
    # Unbiased std of [0, 1] = sqrt(0.5); A = ±0.5 / (0.70710678 + 1e-6).
    torch.testing.assert_close(adv, torch.tensor([-0.5, 0.5], dtype=torch.float64) / (math.sqrt(0.5) + 1e-6))


def test_registry_and_errors():
    assert set(ADVANTAGES.names()) == {
        "w_reinforce",
        "reinforce_pp",
        "grpo",
        "gtpo",
        "rloo",
        "grpo_passk",
        "nsr",
        "unlikeliness",
        "gpg",
        "psr",
        "grpo_s",
        "passk_training",
        "dr_grpo",
    }
    assert get_advantage("rloo") is rloo
    assert get_advantage_spec("grpo").defaults == {"scale": "group", "eps": 1e-6}
    with pytest.raises(
        UnknownNameError,
        match="valid names: dr_grpo, gpg, grpo, grpo_passk, grpo_s, gtpo, nsr, passk_training, psr, reinforce_pp, "
        "rloo, unlikeliness, w_reinforce",
    ) as info:
        get_advantage("ppo")
    assert isinstance(info.value, ValueError) and isinstance(info.value, ConfigError)
    r, g = torch.tensor([1.0, 0.0]), torch.tensor([0, 0])
    with pytest.raises(ValueError, match="scale"):
        grpo(r, g, scale="std")
    with pytest.raises(ValueError, match="eps"):
        grpo(r, g, eps=-1e-6)
    with pytest.raises(ValueError, match="group_ids"):
        grpo(r, torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="group_ids"):
        grpo(r, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="baseline"):
        reinforce_pp(r, g, baseline="mean")


def test_pass_at_k_hand_worked():
    # n=5, c=2, k=1: 1 − C(3,1)/C(5,1) = 1 − 3/5 = 0.4 (= c/n).
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4, rel=1e-15)
    # n=5, c=2, k=2: 1 − C(3,2)/C(5,2) = 1 − 3/10 = 0.7.
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7, rel=1e-15)
    # Fewer wrong samples than k: every k-subset contains a correct one.
    assert pass_at_k(5, 4, 2) == 1.0
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(1, 1, 1) == 1.0


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), data=st.data())
def test_pass_at_k_matches_product_form(n, data):
    c = data.draw(st.integers(0, n))
    k = data.draw(st.integers(1, n))
    ours = pass_at_k(n, c, k)
    exact = 1 - comb(n - c, k) / comb(n, k) if comb(n, k) < 2**1000 else None
    # The numerically stable product form of Chen et al.: 1 − Π_{i=n−c+1}^{n} (1 − k/i).
    prod = 1.0 if n - c < k else 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))
    assert ours == pytest.approx(prod, rel=1e-9, abs=1e-12)
    if exact is not None:
        assert ours == pytest.approx(exact, rel=1e-12, abs=1e-15)
    assert 0.0 <= ours <= 1.0


def test_pass_at_k_large_n_is_exact():
    # C(2000, 1000) overflows a float; the rational computation does not. 1 − C(1000,10)/C(2000,10):
    # the ratio is Π_{i=0}^{9} (1000 − i)/(2000 − i).
    ratio = math.prod((1000 - i) / (2000 - i) for i in range(10))
    assert pass_at_k(2000, 1000, 10) == pytest.approx(1 - ratio, rel=1e-14)
    assert pass_at_k(2000, 1000, 1000) == 1.0 - float(
        __import__("fractions").Fraction(comb(1000, 1000), comb(2000, 1000))
    )


@pytest.mark.parametrize(
    "args, name",
    [((0, 0, 1), "n"), ((5, 6, 1), "c"), ((5, -1, 1), "c"), ((5, 2, 0), "k"), ((5, 2, 6), "k"), ((5.0, 2, 1), "n")],
)
def test_pass_at_k_invalid(args, name):
    with pytest.raises(ValueError, match=f"^{name} "):
        pass_at_k(*args)
