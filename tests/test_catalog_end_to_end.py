"""Every registered method runs two steps in our trainer on the tiny model, selected by name in the
config, and is reachable through the TRL adapter's config and verl's registries.

The list of methods is read from the registries, so a method added later is covered without editing
this file; `NEEDS` holds the parameters a method has no default for (or that switch it on).
"""

from __future__ import annotations

import math

import pytest
import torch

from rlentropy.algorithms import ADVANTAGES, CONTROLLERS, CONTROLS, POLICY_LOSSES

# Parameters without a default, or whose default is the off value, per method.
NEEDS: dict[str, dict] = {
    "passk_training": {"advantage_params": {"k": 2}},
    "dro": {"loss_params": {"dro_beta": 0.05}},
    "quadrant": {"control_params": {"keep": ["pos_high", "neg_low"]}},
    "entropy_bonus": {"control_params": {"coef": 0.01}},
    "entropic": {"control_params": {"alpha": 0.5}},
    "entropy_polarity": {"control_params": {"alpha": 0.5}},
    "entropy_coef": {"entropy_bonus": 0.01, "controller_params": {"target": 1.0}},
    "clip_threshold": {"control": "clip_b", "controller_params": {"target": 1.0}},
    "entropic_pi": {"control": "entropic", "controller_params": {"target": 1.0}},
}

CASES = (
    [("advantage", n) for n in ADVANTAGES.names()]
    + [("loss", n) for n in POLICY_LOSSES.names()]
    + [("control", n) for n in CONTROLS.names()]
    + [("controller", n) for n in CONTROLLERS.names()]
)


def _algorithm(family: str, name: str) -> dict:
    extra = dict(NEEDS.get(name, {}))
    return {family: name, **extra}


@pytest.mark.slow
@pytest.mark.parametrize("family, name", CASES, ids=[f"{f}-{n}" for f, n in CASES])
def test_every_method_trains_two_steps(family, name, fast_cfg, tmp_path):
    from rlentropy.train.run import run_training

    cfg = fast_cfg(
        algorithm=_algorithm(family, name),
        data={"task": "parity_test"},
        train={"steps": 2, "prompts_per_step": 4, "group_size": 4, "micro_batch_size": 8},
        run_dir=str(tmp_path / name),
    )
    before = None

    def hook(tr, step, metrics):
        nonlocal before
        if before is None:
            before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}

    tr = run_training(cfg, step_hook=hook)
    h = tr.history
    assert [r["step"] for r in _rows(tmp_path / name)] == [1, 2]
    for r in h:
        for key in ("entropy/mean", "reward/mean", "optim/grad_norm", "loss/total"):
            assert math.isfinite(r[key]), (key, r[key])
        assert r["train/skipped_updates"] == 0
    after = dict(tr.model.named_parameters())
    assert any(not torch.equal(before[n], after[n].detach()) for n in before), "the second step did not move weights"


def _rows(run_dir):
    import json

    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def test_every_method_is_registered_in_verl():
    pytest.importorskip("verl")
    from verl.trainer.ppo import core_algos

    import rlentropy.integrations.verl  # noqa: F401 - registers at import

    for name in POLICY_LOSSES.names():
        assert core_algos.get_policy_loss_fn(f"rlentropy_{name}").__name__ == f"rlentropy_{name}"
    for spec in CONTROLS.specs():
        if spec.kind in ("mask", "advantage"):
            assert core_algos.get_policy_loss_fn(f"rlentropy_{spec.name}").__name__ == f"rlentropy_{spec.name}"
    for name in ADVANTAGES.names():
        assert core_algos.get_adv_estimator_fn(f"rlentropy_{name}").__name__ == f"rlentropy_{name}"


def test_every_method_is_selectable_through_the_trl_config(tmp_path):
    pytest.importorskip("trl")
    from rlentropy.integrations.trl import EntropyGRPOConfig

    common = {"output_dir": str(tmp_path), "report_to": "none", "use_cpu": True, "num_generations": 4}
    for name in CONTROLS.names():
        params = NEEDS.get(name, {}).get("control_params")
        cfg = EntropyGRPOConfig(**common, entropy_control=name, entropy_control_params=params)
        assert cfg.control_names() == [name]
    for name in POLICY_LOSSES.names():
        params = NEEDS.get(name, {}).get("loss_params")
        assert EntropyGRPOConfig(**common, entropy_loss=name, entropy_loss_params=params).entropy_loss == name
    for name in ADVANTAGES.names():
        params = NEEDS.get(name, {}).get("advantage_params")
        cfg = EntropyGRPOConfig(**common, entropy_advantage=name, entropy_advantage_params=params)
        assert cfg.entropy_advantage == name
