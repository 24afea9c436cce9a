"""TRL adapter: with controls off the loss and gradients are TRL's; with Clip_B / Clip_V they equal our
own masked loss on the same tensors; a short real training run logs our metrics."""

from __future__ import annotations

import copy
from unittest import mock

import pytest
import torch

pytest.importorskip("trl", reason="TRL is an optional extra: pip install 'rlentropy[trl]' (make test installs it)")

from datasets import Dataset  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from rlentropy.algorithms import aggregate_loss, clip_b_mask, clip_v_mask, get_policy_loss  # noqa: E402
from rlentropy.errors import ConfigError  # noqa: E402
from rlentropy.integrations.trl import EntropyGRPOConfig, EntropyGRPOTrainer  # noqa: E402
from rlentropy.models.tiny import make_random_tiny_policy  # noqa: E402
from rlentropy.tokenstats import token_stats  # noqa: E402


def reward_len(completions, **kwargs):
    return [float(len(c) % 3) for c in completions]


def _make(cls, cfg_cls, model, tok, tmp_path, **kw):
    args = cfg_cls(
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2, max_completion_length=6,
        report_to="none", use_cpu=True, logging_steps=1, max_steps=2, seed=0, save_strategy="no",
        temperature=0.9, **kw,
    )
    ds = Dataset.from_dict({"prompt": ["12+3=", "4*5=", "7-2=", "9+9="]})
    tr = cls(model=model, reward_funcs=reward_len, args=args, train_dataset=ds, processing_class=tok)
    tr.current_gradient_accumulation_steps = 1
    tr.model.train()
    return tr


def _inputs(seed=0, b=4, p=5, t=6, vocab=100):
    g = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(4, vocab, (b, p), generator=g)
    prompt_mask = torch.ones(b, p, dtype=torch.long)
    prompt_mask[1, :2] = 0  # left padding
    completion_ids = torch.randint(4, vocab, (b, t), generator=g)
    completion_mask = torch.ones(b, t, dtype=torch.long)
    completion_mask[0, 4:] = 0  # right padding
    completion_mask[2, 2:] = 0
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    return {
        "prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
        "completion_mask": completion_mask, "advantages": adv, "num_items_in_batch": completion_mask.sum(),
    }


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_controls_off_equals_plain_trl_loss_and_gradients(tmp_path):
    model, tok = make_random_tiny_policy(seed=0)
    plain = _make(GRPOTrainer, GRPOConfig, copy.deepcopy(model), tok, tmp_path / "a")
    ours = _make(EntropyGRPOTrainer, EntropyGRPOConfig, copy.deepcopy(model), tok, tmp_path / "b")
    inputs = _inputs()
    loss_plain = plain._compute_loss(plain.model, dict(inputs))
    loss_plain.backward()
    loss_ours = ours._compute_loss(ours.model, dict(inputs))
    loss_ours.backward()
    assert loss_ours.item() == loss_plain.item()
    g_plain, g_ours = _grads(plain.model), _grads(ours.model)
    assert g_plain.keys() == g_ours.keys() and len(g_plain) > 0
    for name in g_plain:
        assert torch.equal(g_plain[name], g_ours[name]), name
    # our hidden-state statistics agree with TRL's fused-head entropy on the same forward
    assert ours._metrics["train"]["rlentropy/entropy"][-1] == pytest.approx(plain._metrics["train"]["entropy"][-1], rel=1e-5)
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


@pytest.mark.parametrize("control", ["clip_b", "clip_v"])
def test_mask_controls_equal_our_loss_on_same_tensors(tmp_path, control):
    model, tok = make_random_tiny_policy(seed=1)
    params = {"clip_b": {"clip_b_mu": 0.5}, "clip_v": {"clip_v_mu": 0.5, "clip_v_max_frac": 0.2}}[control]
    tr = _make(EntropyGRPOTrainer, EntropyGRPOConfig, model, tok, tmp_path, entropy_control=control, **params)
    inputs = _inputs(seed=3)
    with mock.patch.object(GRPOTrainer, "_generate_and_score_completions", return_value=dict(inputs)):
        out = tr._generate_and_score_completions([])
    loss = tr._compute_loss(tr.model, out)
    loss.backward()
    g_ours = _grads(tr.model)

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
    g_ref = _grads(ref_model)
    for name, g in g_ref.items():
        torch.testing.assert_close(g_ours[name], g, rtol=1e-4, atol=1e-7, msg=name)


def test_bad_config_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="entropy_control"):
        EntropyGRPOConfig(output_dir=str(tmp_path), entropy_control="clip_x", report_to="none", use_cpu=True)
    with pytest.raises(ConfigError, match="clip_b_mu"):
        EntropyGRPOConfig(output_dir=str(tmp_path), clip_b_mu=0.0, report_to="none", use_cpu=True)


@pytest.mark.parametrize("control", ["clip_b", "kl_cov"])
def test_short_training_run_logs_metrics(tmp_path, control):
    model, tok = make_random_tiny_policy(seed=2)
    tr = _make(EntropyGRPOTrainer, EntropyGRPOConfig, model, tok, tmp_path, entropy_control=control)
    logged = []
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    import transformers

    # GRPOTrainer.log merges its _metrics (ours included) into the logs, then calls Trainer.log
    with mock.patch.object(transformers.Trainer, "log", lambda self, logs, start_time=None: logged.append(dict(logs))):
        tr.train()
    after = dict(tr.model.named_parameters())
    assert any(not torch.equal(before[n], after[n].detach()) for n in before)
    train_logs = [lg for lg in logged if "rlentropy/entropy" in lg or f"rlentropy/{control}/frac_selected" in lg]
    assert train_logs, logged
