"""The fused path: old-policy statistics of the first mini-batch taken from its update forward.

When nothing reads the old-policy TokenStats before the loss (control "none", no whole-batch
Clip-Cov / KL-Cov selection, no probe, no dropout) the rows of the first mini-batch get them from
their own loss forward (detached; the weights first move after it), so the separate no-grad forward
runs on the other rows only, and not at all with one mini-batch. These tests run the same seeds with
`train.fuse_old_stats` on and off and require the same weights after every step and the same
metrics, and check which rows the separate forward really ran on (all of them whenever something
needs the statistics before the loss).
"""

from __future__ import annotations

import math

import pytest
import torch

from rlentropy.train import trainer as trainer_mod
from rlentropy.train.run import run_training

# Wall-clock keys differ between any two runs; everything else must agree.
_TIMING = ("time/", "wall_time")


def _cfg(
    fast_cfg,
    tmp_path,
    tag: str,
    *,
    fuse: bool,
    algorithm: dict | None = None,
    train: dict | None = None,
    probes: dict | None = None,
    model: dict | None = None,
):
    t = {"steps": 3, "mini_batches": 1, "ppo_epochs": 1, "fuse_old_stats": fuse, **(train or {})}
    kw = {
        "data": {"task": "parity_test"},
        "train": t,
        "algorithm": algorithm or {},
        "run_dir": str(tmp_path / f"{tag}-{fuse}"),
    }
    if probes is not None:
        kw["probes"] = probes
    if model is not None:
        kw["model"] = model
    return fast_cfg(**kw)


def _run(cfg, monkeypatch):
    """Train; return (per-step metrics, per-step weights, number of separate old-stats forwards)."""
    calls = []
    real = trainer_mod.Trainer._old_stats

    def spy(self, batch):
        calls.append(len(batch))
        return real(self, batch)

    monkeypatch.setattr(trainer_mod.Trainer, "_old_stats", spy)
    weights = []

    def hook(tr, step, metrics):
        weights.append({n: p.detach().clone() for n, p in tr.model.named_parameters()})

    tr = run_training(cfg, quiet=True, step_hook=hook)
    monkeypatch.setattr(trainer_mod.Trainer, "_old_stats", real)
    return tr.history, weights, calls


def _assert_same(h_fused, w_fused, h_sep, w_sep):
    assert len(h_fused) == len(h_sep) and len(w_fused) == len(w_sep)
    for step, (a, b) in enumerate(zip(h_fused, h_sep), start=1):
        keys = {k for k in a if not k.startswith(_TIMING)}
        assert keys == {k for k in b if not k.startswith(_TIMING)}, step
        for k in sorted(keys):
            x, y = a[k], b[k]
            if isinstance(x, float) and math.isnan(x):
                assert isinstance(y, float) and math.isnan(y), (step, k)
                continue
            # fp32 values of the same forward; the only freedom is the order of a few float sums
            assert x == pytest.approx(y, rel=1e-6, abs=1e-7), (step, k, x, y)
    for step, (wa, wb) in enumerate(zip(w_fused, w_sep), start=1):
        for n in wa:
            torch.testing.assert_close(wa[n], wb[n], rtol=1e-6, atol=1e-8, msg=f"step {step}: {n}")


@pytest.mark.parametrize(
    "case,separate_rows",
    [
        # token-mean PPO with two micro-batches (gradient accumulation inside the one mini-batch)
        ({"train": {"micro_batch_size": 8}}, []),
        # Dr.GRPO aggregation, clip-higher, an entropy bonus (its term comes from the same forward)
        (
            {
                "algorithm": {
                    "aggregation": "seq-mean-token-sum-norm",
                    "loss_params": {"eps_high": 0.28},
                    "entropy_bonus": 0.01,
                }
            },
            [],
        ),
        # Clip-Cov with per-micro-batch selection (the selection reads the current log-probs only)
        (
            {
                "algorithm": {
                    "loss": "clip_cov",
                    "cov_selection": "micro_batch",
                    "loss_params": {"clip_cov_ratio": 0.2, "clip_cov_lb": -100.0, "clip_cov_ub": 100.0},
                }
            },
            [],
        ),
        # GSPO (sequence-level ratio; its own aggregation)
        ({"algorithm": {"loss": "gspo"}}, []),
        # two PPO epochs: the first epoch's forward gives the old statistics of every row for the second
        ({"train": {"ppo_epochs": 2}}, []),
        # two mini-batches (2 groups of 4 each): the second one's rows still need the separate forward,
        # taken before any update (micro-batches of 4 rows: the same row blocks as the unfused forward)
        ({"train": {"mini_batches": 2, "micro_batch_size": 4}}, [8, 8, 8]),
    ],
    ids=["ppo-micro", "drgrpo-bonus", "clip_cov-micro", "gspo", "epochs", "mini_batches"],
)
def test_fused_path_equals_separate_forward(fast_cfg, tmp_path, monkeypatch, case, separate_rows):
    h_f, w_f, calls_f = _run(_cfg(fast_cfg, tmp_path, "c", fuse=True, **case), monkeypatch)
    h_s, w_s, calls_s = _run(_cfg(fast_cfg, tmp_path, "c", fuse=False, **case), monkeypatch)
    assert calls_f == separate_rows and calls_s == [16, 16, 16]  # rows of each separate no-grad forward
    _assert_same(h_f, w_f, h_s, w_s)
    if case.get("train", {}).get("ppo_epochs", 1) == 1 and case.get("train", {}).get("mini_batches", 1) == 1:
        # on-policy: log(old / new) is exactly 0 and the ratio exactly 1 in both paths
        for h in (h_f, h_s):
            assert all(r["policy/kl_old"] == 0.0 and r["policy/ratio_mean"] == 1.0 for r in h)
    else:  # later mini-batches / epochs see a moved policy: the ratio is not 1 any more
        assert all(r["policy/kl_old"] > 0.0 for r in h_f)
    # the statistics are real (a random 100-token policy: entropy a little under log 100 = 4.605)
    assert all(3.5 < r["entropy/mean"] < 4.61 and r["entropy/surprisal"] > 3.0 for r in h_f)
    # the run trained: the weights moved at every step
    assert all(any(not torch.equal(a[n], b[n]) for n in a) for a, b in zip(w_f, w_f[1:]))


@pytest.mark.parametrize(
    "case",
    [
        {"algorithm": {"control": "clip_b", "control_params": {"mu": 0.5}}},  # reads S before the loss
        {"algorithm": {"loss": "kl_cov", "loss_params": {"kl_cov_ratio": 0.2}}},  # whole-batch selection
        {"model": {"lora": {"enabled": True, "r": 4, "dropout": 0.1}}},  # train-mode forward is stochastic
    ],
    ids=["clip_b", "kl_cov-batch", "dropout"],
)
def test_separate_forward_runs_when_something_needs_it(fast_cfg, tmp_path, monkeypatch, case):
    _, _, calls = _run(
        _cfg(fast_cfg, tmp_path, "n", fuse=True, **{**case, "train": {"steps": 1, **case.get("train", {})}}),
        monkeypatch,
    )
    assert calls == [16]  # 4 prompts × 4 samples, one forward


def test_probe_steps_run_the_separate_forward_and_others_do_not(fast_cfg, tmp_path, monkeypatch):
    probes = {
        "every": 2,
        "probe_prompts": 2,
        "step_probe": False,
        "logit_check": False,
        "gns": False,
        "save_arrays": False,
    }
    h, _, calls = _run(_cfg(fast_cfg, tmp_path, "p", fuse=True, probes=probes), monkeypatch)
    assert calls == [16]  # step 2 only (probe active); steps 1 and 3 fused
    assert [any(k.startswith("probe/") for k in r) for r in h] == [False, True, False]


def test_non_finite_loss_on_a_fused_step_still_logs_the_statistics(fast_cfg, tmp_path, monkeypatch):
    """Every micro-batch's loss is NaN: the update is skipped, but every micro-batch still ran its forward
    (the non-finite gradients are discarded at the mini-batch's end), so the fused rows' statistics come
    from those forwards and the step's entropy equals the unfused run's."""
    from rlentropy.train.methods import MethodSet

    real = MethodSet.policy_loss

    def poisoned(self, inputs):
        loss, m = real(self, inputs)
        return loss * float("nan"), m

    monkeypatch.setattr(MethodSet, "policy_loss", poisoned)
    out = {}
    for fuse in (True, False):
        h, w, calls = _run(
            _cfg(fast_cfg, tmp_path, "nan", fuse=fuse, train={"steps": 1, "micro_batch_size": 4}), monkeypatch
        )
        out[fuse] = (h, w, calls)
    assert out[True][2] == [] and out[False][2] == [16]  # fused: no separate forward at all
    assert out[True][0][0]["train/skipped_updates"] == 1.0
    _assert_same(out[True][0], out[True][1], out[False][0], out[False][1])
