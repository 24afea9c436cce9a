"""TRL adapter: with controls off the loss and gradients are TRL's; with Clip_B / Clip_V they equal our
own masked loss on the same tensors; a short real training run logs our metrics."""

from __future__ import annotations

import copy
from unittest import mock

import pytest
import torch

from _helpers import grads, reward_len, trl_inputs, trl_trainer

pytest.importorskip("trl", reason="TRL is an optional extra: pip install 'rlentropy[trl]' (make test installs it)")

from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from rlentropy.algorithms import aggregate_loss, clip_b_mask, clip_v_mask, get_policy_loss  # noqa: E402
from rlentropy.errors import ConfigError  # noqa: E402
from rlentropy.integrations.trl import EntropyGRPOConfig, EntropyGRPOTrainer  # noqa: E402
from rlentropy.models.tiny import make_random_tiny_policy  # noqa: E402
from rlentropy.tokenstats import token_stats  # noqa: E402


def _make(cls, cfg_cls, model, tok, tmp_path, **kw):
    return trl_trainer(cls, cfg_cls, model, tok, tmp_path, reward_len, **{"temperature": 0.9, **kw})


def test_controls_off_equals_plain_trl_loss_and_gradients(tmp_path):
    model, tok = make_random_tiny_policy(seed=0)
    plain = _make(GRPOTrainer, GRPOConfig, copy.deepcopy(model), tok, tmp_path / "a")
    ours = _make(EntropyGRPOTrainer, EntropyGRPOConfig, copy.deepcopy(model), tok, tmp_path / "b")
    inputs = trl_inputs()
    loss_plain = plain._compute_loss(plain.model, dict(inputs))
    loss_plain.backward()
    loss_ours = ours._compute_loss(ours.model, dict(inputs))
    loss_ours.backward()
    assert loss_ours.item() == loss_plain.item()
    g_plain, g_ours = grads(plain.model), grads(ours.model)
    assert g_plain.keys() == g_ours.keys() and len(g_plain) > 0
    for name in g_plain:
        assert torch.equal(g_plain[name], g_ours[name]), name
    # our hidden-state statistics agree with TRL's fused-head entropy on the same forward
    assert ours._metrics["train"]["rlentropy/entropy"][-1] == pytest.approx(
        plain._metrics["train"]["entropy"][-1], rel=1e-5
    )
    for key in ("rlentropy/S_mean", "rlentropy/s_bar_mean", "rlentropy/pressure", "rlentropy/quadrant/pos_high_frac"):
        assert key in ours._metrics["train"]


def _reference_stats(model, inputs, temperature):
    """Our own statistics from plain full logits (the float64-free path of rlentropy.tokenstats)."""
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    att = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    t = inputs["completion_ids"].shape[1]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=att).logits[:, -t - 1 : -1]  # [B, T, V]
    return token_stats(logits, inputs["completion_ids"], temperature=temperature, mask=inputs["completion_mask"])


_MASK_PARAMS = {
    "clip_b": {"entropy_control_params": {"mu": 0.5}},
    "clip_v": {"entropy_control_params": {"mu": 0.5, "max_frac": 0.2}},
}


def _mask_control_step(tr, inputs):
    """One generation + loss of `tr` on fixed `inputs`; returns (loss, the batch TRL's loss saw, #extra passes)."""
    seen = []
    trl_loss = GRPOTrainer._compute_loss

    def spy(self, model, batch):
        seen.append(batch)
        return trl_loss(self, model, batch)

    extra = mock.Mock(side_effect=tr._rl_old_policy_stats)
    with (
        mock.patch.object(GRPOTrainer, "_generate_and_score_completions", return_value=dict(inputs)),
        mock.patch.object(GRPOTrainer, "_compute_loss", spy),
        mock.patch.object(tr, "_rl_old_policy_stats", extra),
    ):
        out = tr._generate_and_score_completions([])
        loss = tr._compute_loss(tr.model, out)
    return loss, seen[-1], extra.call_count


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "extra_pass"])
@pytest.mark.parametrize("control", ["clip_b", "clip_v"])
def test_mask_controls_equal_our_loss_on_same_tensors(tmp_path, control, fuse):
    model, tok = make_random_tiny_policy(seed=1)
    tr = _make(
        EntropyGRPOTrainer,
        EntropyGRPOConfig,
        model,
        tok,
        tmp_path,
        entropy_control=control,
        fuse_old_stats=fuse,
        **_MASK_PARAMS[control],
    )
    inputs = trl_inputs(seed=3)
    loss, out, n_extra = _mask_control_step(tr, inputs)
    assert n_extra == (0 if fuse else 1)  # on-policy, one loss call per generation batch: fused skips the pass
    loss.backward()
    g_ours = grads(tr.model)

    ref_model = copy.deepcopy(model)
    ref_model.zero_grad(set_to_none=True)
    st = _reference_stats(ref_model, inputs, 0.9)
    m = inputs["completion_mask"].float()
    adv = inputs["advantages"][:, None].expand_as(m)
    if control == "clip_b":
        keep, _ = clip_b_mask(st.s, adv, m, mu=0.5)
    else:
        keep, _ = clip_v_mask(st.s, st.s_bar, adv, m, mu=0.5, max_frac=0.2)
    assert 0 < keep.sum() < m.sum()  # the control dropped some tokens, not all
    torch.testing.assert_close(out["tool_mask"].float() * m, keep)
    assert out["num_items_in_batch"].item() == keep.sum().item()
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    att = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    t = m.shape[1]
    logits = ref_model(input_ids=ids, attention_mask=att).logits[:, -t - 1 : -1]
    logp = token_stats(logits, inputs["completion_ids"], temperature=0.9, mask=inputs["completion_mask"]).logp
    # TRL's loss: PPO clip (no dual clip), loss_type "dapo" = token sum / global kept-token count
    mat, _ = get_policy_loss("ppo")(logp, logp.detach(), adv, keep, eps_low=0.2, eps_high=0.2, clip_ratio_c=None)
    ref = aggregate_loss(mat, keep, "token-mean")
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-7)
    g_ref = grads(ref_model)
    for name, g in g_ref.items():
        torch.testing.assert_close(g_ours[name], g, rtol=1e-4, atol=1e-7, msg=name)


@pytest.mark.parametrize("control", ["clip_b", "clip_v"])
def test_fused_old_stats_equal_extra_pass_bitwise(tmp_path, control):
    """Same batch, same weights: the fused path (statistics of the loss forward) and the extra no-grad pass
    give the same keep mask, token count, loss, gradients and logged metrics, bit for bit."""
    model, tok = make_random_tiny_policy(seed=4)
    runs = {}
    for fuse in (True, False):
        tr = _make(
            EntropyGRPOTrainer,
            EntropyGRPOConfig,
            copy.deepcopy(model),
            tok,
            tmp_path / str(fuse),
            entropy_control=control,
            fuse_old_stats=fuse,
            **_MASK_PARAMS[control],
        )
        loss, seen, n_extra = _mask_control_step(tr, trl_inputs(seed=5))
        loss.backward()
        metrics = {k: v[-1] for k, v in tr._metrics["train"].items() if k.startswith("rlentropy/")}
        runs[fuse] = (loss.detach(), seen["tool_mask"], seen["num_items_in_batch"], grads(tr.model), metrics, n_extra)
    (l1, m1, n1, g1, x1, e1), (l0, m0, n0, g0, x0, e0) = runs[True], runs[False]
    assert (e1, e0) == (0, 1)
    m = trl_inputs(seed=5)["completion_mask"]
    assert 0 < (m1 * m).sum() < m.sum()  # the control dropped some tokens, not all
    assert torch.equal(m1, m0) and torch.equal(n1, n0)
    assert torch.equal(l1, l0)
    assert g1.keys() == g0.keys() and len(g1) > 0
    for name in g1:
        assert torch.equal(g1[name], g0[name]), name
    assert x1 == x0 and x1["rlentropy/control/frac_removed"] > 0


def test_fusion_only_when_the_loss_forward_is_the_whole_old_batch(tmp_path):
    model, tok = make_random_tiny_policy(seed=0)
    fused = _make(EntropyGRPOTrainer, EntropyGRPOConfig, model, tok, tmp_path / "a", entropy_control="clip_b")
    assert fused._rl_fuse(trl_inputs())
    # TRL computed old log-probs: the loss forward is not at the generating weights
    assert not fused._rl_fuse({**trl_inputs(), "old_per_token_logps": torch.zeros(4, 6)})
    # the generation batch is split over two loss calls (one per accumulation step): whole-batch S needed first
    split = _make(
        EntropyGRPOTrainer,
        EntropyGRPOConfig,
        model,
        tok,
        tmp_path / "b",
        entropy_control="clip_b",
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
    )
    assert split.args.steps_per_generation == 2 and not split._rl_fuse(trl_inputs())
    split.model.eval()  # evaluation: the batch is one loss call
    assert split._rl_fuse(trl_inputs())
    # dropout makes the loss forward a different function from the old policy's
    model_d, tok_d = make_random_tiny_policy(seed=0)
    model_d.config.attention_dropout = 0.1
    drop = _make(EntropyGRPOTrainer, EntropyGRPOConfig, model_d, tok_d, tmp_path / "c", entropy_control="clip_b")
    assert not drop._rl_fuse(trl_inputs())
    off = _make(
        EntropyGRPOTrainer,
        EntropyGRPOConfig,
        model,
        tok,
        tmp_path / "d",
        entropy_control="clip_b",
        fuse_old_stats=False,
    )
    assert not off._rl_fuse(trl_inputs())


def test_bad_config_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="entropy_control"):
        EntropyGRPOConfig(output_dir=str(tmp_path), entropy_control="clip_x", report_to="none", use_cpu=True)
    with pytest.raises(ConfigError, match="entropy_control_params: mu must be > 0"):
        EntropyGRPOConfig(
            output_dir=str(tmp_path),
            entropy_control="clip_b",
            entropy_control_params={"mu": 0.0},
            report_to="none",
            use_cpu=True,
        )
    with pytest.raises(ConfigError, match="unknown parameter 'muu' of entropy control 'clip_b'; allowed: mu, sides"):
        EntropyGRPOConfig(
            output_dir=str(tmp_path),
            entropy_control="clip_b",
            entropy_control_params='{"muu": 1}',
            report_to="none",
            use_cpu=True,
        )


@pytest.mark.parametrize("control", ["clip_b", "kl_cov"])
def test_short_training_run_logs_metrics(tmp_path, control):
    model, tok = make_random_tiny_policy(seed=2)
    tr = _make(EntropyGRPOTrainer, EntropyGRPOConfig, model, tok, tmp_path, entropy_control=control)
    logged = []
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    import transformers

    # GRPOTrainer.log merges its _metrics (ours included) into the logs, then calls Trainer.log
    extra = mock.Mock(side_effect=tr._rl_old_policy_stats)
    with (
        mock.patch.object(transformers.Trainer, "log", lambda self, logs, start_time=None: logged.append(dict(logs))),
        mock.patch.object(tr, "_rl_old_policy_stats", extra),
    ):
        tr.train()
    assert extra.call_count == 0  # on-policy, one loss call per generation batch: the extra pass is fused away
    after = dict(tr.model.named_parameters())
    assert any(not torch.equal(before[n], after[n].detach()) for n in before)
    train_logs = [lg for lg in logged if "rlentropy/entropy" in lg or f"rlentropy/{control}/frac_selected" in lg]
    assert train_logs, logged


def test_pass_at_k_callback_logs_eval_metrics_through_trl(tmp_path):
    from rlentropy.integrations.trl import PassAtKCallback, RewardTask

    model, tok = make_random_tiny_policy(seed=2)
    tr = _make(EntropyGRPOTrainer, EntropyGRPOConfig, model, tok, tmp_path)

    def even_length(prompts, completions, answer, **kwargs):  # "correct" = an even-length completion
        assert len(answer) == len(completions)  # the dataset's other columns reach the reward function
        return [1.0 if len(c) % 2 == 0 else 0.0 for c in completions]

    heldout = [{"prompt": "1+1=", "answer": "2"}, {"prompt": "2+2=", "answer": "4"}, {"prompt": "3*3=", "answer": "9"}]
    cb = PassAtKCallback(RewardTask(heldout, even_length), every=1, n=4, at_start=True).attach(tr)
    logged = []
    import transformers

    with mock.patch.object(transformers.Trainer, "log", lambda self, logs, start_time=None: logged.append(dict(logs))):
        tr.train()
    assert [h["step"] for h in cb.history] == [0, 1, 2]
    for h in cb.history:
        assert 0 <= h["pass@1"] <= h["pass@2"] <= h["pass@4"] <= 1 and h["avg@4"] == pytest.approx(h["pass@1"])
        assert h["entropy"] > 0
    with_eval = [lg for lg in logged if "rlentropy_eval/pass@4" in lg]
    assert with_eval, logged
    with pytest.raises(ConfigError, match="every must be >= 1"):
        PassAtKCallback(RewardTask(heldout, even_length), every=0)
    with pytest.raises(ConfigError, match="'prompt' column"):
        RewardTask([{"question": "x"}], even_length)
