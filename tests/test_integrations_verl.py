"""verl adapter: registry lookup through verl's own functions, parity with verl's clip_cov / kl_cov,
Clip_B / Clip_V through the actor-side piece equal our own masked loss on the same tensors."""

from __future__ import annotations

import functools

import pytest
import torch

from _helpers import verl_actor_config

pytestmark = pytest.mark.verl  # `make test-core` runs every other test without the verl extra

pytest.importorskip("verl", reason="verl is an optional extra: pip install 'rlentropy[verl]' (make test installs it)")

from omegaconf import OmegaConf  # noqa: E402
from verl.trainer.ppo import core_algos  # noqa: E402

import rlentropy.integrations.verl as rv  # noqa: E402
from rlentropy.algorithms import aggregate_loss, clip_b_mask, clip_v_mask, get_policy_loss  # noqa: E402


def _batch(seed: int = 0, b: int = 6, t: int = 9):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=g, dtype=torch.float64) * 3  # [B, T]
    logp = (old + 0.3 * torch.randn(b, t, generator=g, dtype=torch.float64)).clamp(max=-1e-3)  # [B, T]
    adv = torch.randn(b, 1, generator=g, dtype=torch.float64).expand(b, t).contiguous()  # [B, T]
    lengths = torch.randint(3, t + 1, (b,), generator=g)
    mask = torch.arange(t)[None, :] < lengths[:, None]  # [B, T] bool
    return old, logp, adv, mask


def test_registered_losses_and_estimators_found_through_verl_registry():
    for name, fn in rv.VERL_LOSSES.items():
        assert core_algos.get_policy_loss_fn(name) is fn
    for name, fn in rv.ADV_ESTIMATORS.items():
        assert core_algos.get_adv_estimator_fn(name) is fn
    rv.register_all()  # idempotent: registering again must not raise
    assert core_algos.get_policy_loss_fn("rlentropy_clip_b") is rv.VERL_LOSSES["rlentropy_clip_b"]


def test_policy_loss_config_accepts_our_keys_via_target():
    cfg = verl_actor_config("rlentropy_clip_v", rlentropy_params={"mu": 3.0, "max_frac": 0.5})
    assert isinstance(cfg.policy_loss, rv.RLEntropyPolicyLossConfig)
    assert cfg.policy_loss.rlentropy_params == {"mu": 3.0, "max_frac": 0.5}
    assert cfg.policy_loss.rlentropy_base_loss == "ppo"  # default untouched


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kl_cov_equals_verl(seed):
    old, logp, adv, mask = _batch(seed)
    cfg = verl_actor_config("rlentropy_kl_cov", kl_cov_ratio=0.1, ppo_kl_coef=0.7)
    lp1 = logp.clone().requires_grad_(True)
    ref, _ = core_algos.get_policy_loss_fn("kl_cov")(old, lp1, adv, mask, "token-mean", cfg)
    ref.backward()
    lp2 = logp.clone().requires_grad_(True)
    ours, _ = core_algos.get_policy_loss_fn("rlentropy_kl_cov")(old, lp2, adv, mask, "token-mean", cfg)
    ours.backward()
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lp2.grad, lp1.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 3])
def test_clip_cov_equals_verl_when_every_candidate_is_selected(seed):
    # clip_cov_ratio 1.0 → n_clip = Σ M ≥ |candidates|, so verl's random subset is every candidate and
    # the selection is the same in both implementations whatever the RNG.
    old, logp, adv, mask = _batch(seed)
    cfg = verl_actor_config("rlentropy_clip_cov", clip_cov_ratio=1.0, clip_cov_lb=-0.05, clip_cov_ub=0.5)
    lp1 = logp.clone().requires_grad_(True)
    ref, ref_m = core_algos.get_policy_loss_fn("clip_cov")(old, lp1, adv, mask, "token-mean", cfg)
    ref.backward()
    lp2 = logp.clone().requires_grad_(True)
    ours, m = core_algos.get_policy_loss_fn("rlentropy_clip_cov")(old, lp2, adv, mask, "token-mean", cfg)
    ours.backward()
    assert 0 < m["actor/rlentropy_clip_cov/frac_selected"] < 1  # the band selects some tokens, not all
    assert m["actor/rlentropy_clip_cov/frac_selected"] == pytest.approx(ref_m["actor/pg_clipfrac"], rel=1e-12)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lp2.grad, lp1.grad, rtol=1e-12, atol=1e-12)


def _stats(logp, seed=0):
    g = torch.Generator().manual_seed(100 + seed)
    # H close to −log p makes every S = p (H + log p) small, so one planted token stands out
    h = -logp + 0.02 * torch.randn(logp.shape, generator=g, dtype=torch.float64)  # [B, T]
    s_bar = 0.02 * torch.rand(logp.shape, generator=g, dtype=torch.float64)  # [B, T]
    return h, s_bar


@pytest.mark.parametrize("control", ["clip_b", "clip_v"])
def test_mask_controls_equal_our_masked_loss(control):
    old, logp, adv, mask = _batch(5, b=8, t=12)
    logp = logp.clone()
    # an outlier: a long low-probability negative-advantage token, the kind both controls drop
    neg_rows = (adv[:, 0] < 0).nonzero().flatten()
    r = int(neg_rows[0])
    h, s_bar = _stats(logp)
    logp[r, 0], old[r, 0], h[r, 0], s_bar[r, 0] = -1.0, -1.0, 0.0, 0.5  # S = e^-1·(0 − 1) = −0.368, xD = 0.868
    params = {"clip_b": {"mu": 1.5}, "clip_v": {"mu": 1.0, "max_frac": 0.05}}[control]
    cfg = verl_actor_config(f"rlentropy_{control}", rlentropy_params=params)
    n_global = float(mask.sum())
    cfg.global_batch_info.update(
        {"dp_size": 1, "batch_num_tokens": n_global, "global_batch_size": None, "loss_scale_factor": None}
    )
    lp = logp.clone().requires_grad_(True)
    with rv.actor_stats(rv.ActorStats(entropy=h, s_bar=s_bar)):
        ours, metrics = core_algos.get_policy_loss_fn(f"rlentropy_{control}")(old, lp, adv, mask, "token-mean", cfg)
    ours.backward()

    # reference: our own pieces on the same tensors
    m = mask.double()
    s = torch.exp(logp) * (h + logp) * m
    if control == "clip_b":
        keep, _ = clip_b_mask(s, adv, m, mu=1.5)
    else:
        keep, _ = clip_v_mask(s, s_bar * m, adv, m, mu=1.0, max_frac=0.05)
    assert float(keep.sum()) < n_global  # the control dropped something
    lp_ref = logp.clone().requires_grad_(True)
    mat, _ = get_policy_loss("ppo")(lp_ref, old, adv, keep, eps_low=0.2, eps_high=0.28, clip_ratio_c=3.0)
    ref = aggregate_loss(mat, keep, "token-mean")
    ref.backward()
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lp.grad, lp_ref.grad, rtol=1e-12, atol=1e-12)
    assert metrics[f"actor/rlentropy_{control}/tokens_dropped"] == n_global - float(keep.sum())


def test_mask_control_without_actor_stats_is_a_clear_error():
    old, logp, adv, mask = _batch(0)
    cfg = verl_actor_config("rlentropy_clip_b")
    with pytest.raises(RuntimeError, match="external_lib=rlentropy.integrations.verl"):
        core_algos.get_policy_loss_fn("rlentropy_clip_b")(old, logp, adv, mask, "token-mean", cfg)


def test_actor_piece_installed_and_other_modes_pass_through():
    import verl.workers.utils.losses as losses
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    assert losses.ppo_loss is rv.rlentropy_ppo_loss
    assert FSDPEngineWithLMHead.prepare_model_outputs is rv._prepare_model_outputs_with_s_bar
    cfg = verl_actor_config("rlentropy_clip_v")
    assert rv._wants_s_bar(functools.partial(rv.rlentropy_ppo_loss, config=cfg))
    assert not rv._wants_s_bar(functools.partial(rv.rlentropy_ppo_loss, config=verl_actor_config("vanilla")))


def test_s_bar_from_packed_logits_matches_float64_reference():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 33, generator=g)  # [N, V]
    labels = torch.randint(0, 33, (7,), generator=g)
    temp = torch.full((7,), 0.7)
    p = torch.softmax(logits.double() / 0.7, dim=-1)  # [N, V]
    h = -(p * p.log()).sum(-1)  # [N]
    ref = (p * p * (h[:, None] + p.log())).sum(-1)  # [N]  Σ p_i S_i with S_i = p_i (H + log p_i)
    torch.testing.assert_close(rv.s_bar_from_packed_logits(logits, labels, temp).double(), ref, rtol=1e-5, atol=1e-7)


def test_advantage_estimator_matches_grpo():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    tlr = torch.zeros(6, 4)
    tlr[:, -1] = rewards  # outcome reward on the last token
    mask = torch.ones(6, 4)
    mask[0, 3] = 0
    index = ["a", "a", "b", "b", "c", "c"]
    cfg = OmegaConf.create({"norm_adv_by_std_in_grpo": True})
    adv, ret = core_algos.get_adv_estimator_fn("rlentropy_grpo")(
        token_level_rewards=tlr, response_mask=mask, index=index, config=cfg
    )
    # group a: rewards (1, 0): mean 0.5, unbiased std √0.5 → A = ±0.5/0.70711 = ±0.70711; group c: all equal → 0
    expected = torch.tensor([0.5, -0.5, -0.5, 0.5, 0.0, 0.0]) / (0.5**0.5 + 1e-6)
    torch.testing.assert_close(adv, expected[:, None] * mask, rtol=1e-6, atol=1e-7)
    ref_adv, _ = core_algos.compute_grpo_outcome_advantage(tlr, mask, index=__import__("numpy").array(index))
    torch.testing.assert_close(adv, ref_adv, rtol=1e-5, atol=1e-6)
