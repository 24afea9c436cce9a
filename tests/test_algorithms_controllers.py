"""Adaptive controllers: direction of each move, clamps, gating, closed loop, state round-trip."""

from __future__ import annotations

import json
import math

import pytest

from rlentropy.algorithms import ClipThresholdController, EntropyCoefController


def test_entropy_coef_moves_toward_target_and_clamps():
    c = EntropyCoefController(target=1.0, coef_init=0.01, delta=0.005, coef_max=0.02)
    # Before any measurement the gate is closed (TRL starts from last entropy = +inf).
    assert c.applied_coef == 0.0
    # Entropy 0.5 ≤ 1.0 (collapsing): coef 0.01 → 0.015 → 0.02 → clamped at coef_max 0.02.
    assert c.update(0.5) == pytest.approx(0.015)
    assert c.applied_coef == pytest.approx(0.015)
    assert c.update(0.5) == pytest.approx(0.02)
    assert c.update(0.5) == pytest.approx(0.02)
    # Entropy 1.5 > target: coef 0.02 → 0.015; the gate closes (bonus off while above the target).
    assert c.update(1.5) == pytest.approx(0.015)
    assert c.applied_coef == 0.0
    # At the target exactly counts as "at or below" (TRL's ≤).
    assert c.update(1.0) == pytest.approx(0.02)
    for _ in range(10):
        c.update(3.0)
    assert c.coef == 0.0  # clamped at coef_min
    ungated = EntropyCoefController(target=1.0, coef_init=0.01, gate=False)
    assert ungated.applied_coef == 0.01
    ungated.update(2.0)
    assert ungated.applied_coef == pytest.approx(0.005)


def test_clip_threshold_moves_the_right_way():
    # Below target (collapse): e = (1 − 0.5)/1 = 0.5 → μ = 2.5·exp(−0.1·0.5) = 2.378073 (more clipping).
    c = ClipThresholdController(target=1.0, mu_init=2.5)
    assert c.update(0.5) == pytest.approx(2.5 * math.exp(-0.05), rel=1e-12)
    # Above target: e = (1 − 1.5)/1 = −0.5 → μ grows back by exp(+0.05) to 2.5.
    assert c.update(1.5) == pytest.approx(2.5, rel=1e-12)
    # Inside the ±5 % dead band: unchanged.
    assert c.update(1.03) == pytest.approx(2.5, rel=1e-12)
    # The relative error is clipped to ±1: entropy 0 gives exp(−0.1), not more.
    assert c.update(0.0) == pytest.approx(2.5 * math.exp(-0.1), rel=1e-12)
    # Clamps.
    lo = ClipThresholdController(target=1.0, mu_init=0.6, mu_min=0.5, gain=1.0)
    for _ in range(5):
        lo.update(0.0)
    assert lo.mu == 0.5
    hi = ClipThresholdController(target=1.0, mu_init=19.0, mu_max=20.0, gain=1.0)
    for _ in range(5):
        hi.update(5.0)
    assert hi.mu == 20.0


def test_clip_threshold_closed_loop_reaches_target():
    # Toy plant: the step's entropy rises as μ falls, H = 2.0 − 0.1·μ (monotone, like Clip_B). Target 1.5
    # ⇔ μ* = 5. From μ = 12 (H = 0.8, collapse) the controller lowers μ until H is within the dead band.
    c = ClipThresholdController(target=1.5, mu_init=12.0, gain=0.5, tolerance=0.01)
    h = 2.0 - 0.1 * c.mu
    for _ in range(200):
        c.update(h)
        h = 2.0 - 0.1 * c.mu
    assert abs(h - 1.5) <= 0.01 * 1.5 + 1e-9
    assert c.mu == pytest.approx(5.0, abs=0.2)


def test_ema_smoothing():
    c = ClipThresholdController(target=1.0, mu_init=2.5, ema=0.5, tolerance=0.0)
    c.update(0.0)  # first measurement initialises the average: 0.0
    c.update(1.0)  # 0.5·0 + 0.5·1 = 0.5 → still below target → μ keeps falling
    assert c.smoothed == 0.5
    assert c.mu == pytest.approx(2.5 * math.exp(-0.1) * math.exp(-0.05), rel=1e-12)


@pytest.mark.parametrize(
    "make, readings",
    [
        (lambda: EntropyCoefController(target=0.8, coef_init=0.002, delta=0.001), [0.5, 0.9, 0.7, 0.75]),
        (lambda: ClipThresholdController(target=0.8, mu_init=8.5, ema=0.3), [0.5, 0.9, 0.7, 0.75]),
    ],
)
def test_state_round_trip(make, readings):
    a = make()
    for h in readings[:2]:
        a.update(h)
    state = json.loads(json.dumps(a.state_dict()))  # what a checkpoint stores
    b = make()
    b.load_state_dict(state)
    assert b.state_dict() == a.state_dict()
    for h in readings[2:]:
        assert a.update(h) == b.update(h)
    assert a.state_dict() == b.state_dict()


def test_load_rejects_other_configuration():
    state = EntropyCoefController(target=0.8).state_dict()
    with pytest.raises(ValueError, match="target"):
        EntropyCoefController(target=0.5).load_state_dict(state)
    with pytest.raises(ValueError, match="state_dict"):
        ClipThresholdController(target=1.0).load_state_dict({"mu": 1.0})


@pytest.mark.parametrize(
    "make, param",
    [
        (lambda: EntropyCoefController(target=0.0), "target"),
        (lambda: EntropyCoefController(delta=-0.1), "delta"),
        (lambda: EntropyCoefController(coef_min=0.5, coef_max=0.1), "coef_max"),
        (lambda: EntropyCoefController(coef_init=2.0), "coef_init"),
        (lambda: ClipThresholdController(target=1.0, mu_init=0.0), "mu_init"),
        (lambda: ClipThresholdController(target=1.0, mu_min=0.0), "mu_min"),
        (lambda: ClipThresholdController(target=1.0, mu_min=3.0, mu_max=2.0), "mu_max"),
        (lambda: ClipThresholdController(target=1.0, ema=1.0), "ema"),
        (lambda: ClipThresholdController(target=1.0, gain=0.0), "gain"),
        (lambda: ClipThresholdController(target=1.0).update(float("nan")), "entropy"),
    ],
)
def test_invalid_parameters(make, param):
    with pytest.raises(ValueError, match=param):
        make()
