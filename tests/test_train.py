"""End-to-end training on a tiny random Llama: every control, loss invariances, NaN handling, LoRA, KL.

The `parity_test` task (tests/conftest.py) gives rewards that vary within groups, so advantages are
non-zero and the controls have candidates.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from rlentropy.errors import ConfigError, DataError, TrainingError
from rlentropy.train.run import run_training
from rlentropy.train.trainer import DataCursor, derive_seed, make_lr_lambda

REQUIRED = [
    "reward/mean",
    "reward/std",
    "reward/pass_rate",
    "reward/zero_var_group_frac",
    "entropy/mean",
    "entropy/surprisal",
    "entropy/s_mean",
    "entropy/s_bar_mean",
    "control/frac_removed",
    "control/frac_removed_pos",
    "control/frac_removed_neg",
    "control/frac_controlled",
    "policy/kl_old",
    "optim/grad_norm",
    "optim/lr",
    "response/length_mean",
    "time/rollout",
    "time/reward",
    "time/stats",
    "time/update",
    "wall_time",
    "loss/total",
]

# Settings that make each control find candidates on a 16-sequence batch (the upstream defaults
# would select max(floor(1e-4·N), 1) = 1 token or none at this size).
CONTROLS = {
    "none": {},
    "clip_b": {"control": "clip_b", "control_params": {"mu": 0.5}},
    "clip_v": {"control": "clip_v", "control_params": {"mu": 0.5, "max_frac": 1.0}},
    "clip_cov": {
        "loss": "clip_cov",
        "loss_params": {"clip_cov_ratio": 0.2, "clip_cov_lb": -100.0, "clip_cov_ub": 100.0},
    },
    "kl_cov": {"loss": "kl_cov", "loss_params": {"kl_cov_ratio": 0.2}},
    "high_entropy": {"control": "high_entropy", "control_params": {"rho": 0.5}},
}


def _params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _cfg(fast_cfg, **kw):
    base = {"data": {"task": "parity_test"}, "train": {"ppo_epochs": 2}}
    for k, v in kw.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = {**base[k], **v}
        else:
            base[k] = v
    return fast_cfg(**base)


@pytest.mark.parametrize("control", list(CONTROLS))
def test_each_control_trains_and_changes_the_update(fast_cfg, tmp_path, control):
    """Two steps run with finite metrics; step 1 with the control differs from step 1 without it."""
    cfg = _cfg(
        fast_cfg,
        algorithm=CONTROLS[control],
        train={"steps": 1 if control != "none" else 2},
        run_dir=str(tmp_path / control),
    )
    tr = run_training(cfg)
    m = tr.history[0]
    for key in REQUIRED:
        assert key in m and m[key] is not None and math.isfinite(m[key]), key
    assert m["reward/std"] > 0, "the parity task must give mixed rewards"
    lines = (tmp_path / control / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(1, len(tr.history) + 1))
    if control == "none":
        assert m["control/frac_controlled"] == 0.0
        return
    assert m["control/frac_controlled"] > 0, "the control found no candidates"
    ref = run_training(_cfg(fast_cfg, train={"steps": 1}, run_dir=str(tmp_path / "ref")))
    # Same seed → same rollouts, rewards and old statistics at step 1 …
    assert ref.history[0]["entropy/mean"] == m["entropy/mean"]
    assert ref.history[0]["reward/mean"] == m["reward/mean"]
    # … but the control changed the update.
    a, b = _params(tr.model), _params(ref.model)
    assert max((a[n] - b[n]).abs().max().item() for n in a) > 1e-7


def test_update_does_not_depend_on_micro_batch_split(fast_cfg, tmp_path, tiny_model_dir):
    """Gradient accumulation with the global token count: 16 rows at once == micro-batches of 3 / 5.

    Adam's first step is lr·g/(|g| + eps); with eps = 1 it is a smooth function of the gradient g, so
    equal gradients (up to fp32 summation order) give equal weight changes.
    """
    from safetensors.torch import load_file

    init = load_file(str(tiny_model_dir / "model.safetensors"))
    deltas = []
    for mbs, mode in (
        (None, "token-mean"),
        (3, "token-mean"),
        (None, "seq-mean-token-mean"),
        (5, "seq-mean-token-mean"),
    ):
        cfg = _cfg(
            fast_cfg,
            train={"steps": 1, "micro_batch_size": mbs, "ppo_epochs": 1, "grad_clip": None},
            optim={"lr": 1.0, "eps": 1.0, "weight_decay": 0.0},
            algorithm={"aggregation": mode},
            run_dir=str(tmp_path / f"mb{mbs}{mode}"),
        )
        after = _params(run_training(cfg).model)
        deltas.append({n: after[n] - init[n] for n in init if n in after})
    for x, y in ((deltas[0], deltas[1]), (deltas[2], deltas[3])):
        scale = max(v.abs().max().item() for v in x.values())
        assert scale > 1e-6
        for n in x:
            torch.testing.assert_close(x[n], y[n], rtol=1e-4, atol=1e-5 * scale, msg=n)


def test_nan_loss_skips_update_then_stops_after_three(fast_cfg, tmp_path, monkeypatch):
    from rlentropy.train.methods import MethodSet
    from rlentropy.train.trainer import Trainer

    bad_steps = {2, 4, 5, 6}
    current = {}
    real_step, real_loss = Trainer.train_step, MethodSet.policy_loss

    def tracking(self, step):
        current["step"] = step
        return real_step(self, step)

    def poisoned(self, inputs):
        loss, m = real_loss(self, inputs)
        return (loss * float("nan") if current.get("step") in bad_steps else loss), m

    monkeypatch.setattr(Trainer, "train_step", tracking)
    monkeypatch.setattr(MethodSet, "policy_loss", poisoned)
    snaps = {}

    def hook(tr, step, metrics):
        snaps[step] = _params(tr.model)

    cfg = _cfg(
        fast_cfg,
        train={"steps": 8, "ppo_epochs": 1},
        checkpoint={"every": 1, "keep_last": 2},
        run_dir=str(tmp_path / "nan"),
    )
    with pytest.raises(TrainingError, match="3 non-finite.*step 6.*last good checkpoint"):
        run_training(cfg, step_hook=hook)
    # step 2 was skipped: the weights after it equal those after step 1; step 3 updated again
    assert all(torch.equal(snaps[1][n], snaps[2][n]) for n in snaps[1])
    assert any(not torch.equal(snaps[2][n], snaps[3][n]) for n in snaps[2])
    rows = [json.loads(x) for x in (tmp_path / "nan" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/skipped_updates"] for r in rows] == [0, 1, 0, 1, 1]
    from rlentropy.runs.checkpoints import latest_checkpoint

    step, path = latest_checkpoint(tmp_path / "nan")
    assert step == 5  # the last checkpoint written before the stop; its weights are finite
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(path / "model.safetensors").values())


def test_lora_with_reference_kl(fast_cfg, tmp_path):
    cfg = _cfg(
        fast_cfg,
        model={"lora": {"enabled": True, "r": 4, "alpha": 8}},
        algorithm={"kl": {"coef": 0.1, "estimator": "k3"}},
        optim={"lr": 1e-2},
        train={"steps": 2},
        run_dir=str(tmp_path / "lora"),
    )
    before = None

    def hook(tr, step, metrics):
        nonlocal before
        if before is None:
            before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}

    tr = run_training(cfg, step_hook=hook)
    h = tr.history
    # Fresh adapters (B = 0): the policy equals the reference at step 1, KL is 0 in the first epoch's
    # first forward and grows once the adapters moved.
    assert h[1]["kl/ref"] > 0
    assert all(math.isfinite(x["kl/ref"]) for x in h)
    after = dict(tr.model.named_parameters())
    changed = {n for n, p in after.items() if not torch.equal(before[n], p.detach())}
    assert changed and all("lora_" in n for n in changed), "only adapter weights may train"
    ckpt = tmp_path / "lora" / "checkpoints" / "step_2"
    assert (ckpt / "adapter_model.safetensors").is_file()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(cfg.model.path)
    loaded = PeftModel.from_pretrained(base, str(ckpt))
    sd = dict(loaded.named_parameters())
    for n in changed:
        torch.testing.assert_close(sd[n].detach(), after[n].detach())


def test_kl_estimators_hand_values():
    from rlentropy.train.kl import kl_estimate

    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.0]])
    k1, _ = kl_estimate(logp, ref, estimator="k1")
    # k1 = logp − ref = [0.5, −1.0]
    torch.testing.assert_close(k1, torch.tensor([[0.5, -1.0]]))
    k3, _ = kl_estimate(logp, ref, estimator="k3")
    # d = ref − logp = [−0.5, 1.0]; k3 = e^d − d − 1 = [0.1065307, 0.7182818]
    torch.testing.assert_close(k3, torch.tensor([[math.exp(-0.5) + 0.5 - 1, math.e - 2]]), rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="estimator"):
        kl_estimate(logp, ref, estimator="k2")


def test_input_errors_before_any_work(fast_cfg, tmp_path):
    with pytest.raises(ConfigError, match="model.path.*does not exist"):
        run_training(_cfg(fast_cfg, model={"path": str(tmp_path / "nope")}))
    # on a CPU the missing GPU is the message, whether bitsandbytes is installed or not
    with pytest.raises(ConfigError, match="load_in_4bit: 4-bit base weights need a CUDA GPU"):
        run_training(_cfg(fast_cfg, model={"load_in_4bit": True, "lora": {"enabled": True}}, train={"device": "cpu"}))
    with pytest.raises(ConfigError, match="loss_params"):
        run_training(_cfg(fast_cfg, algorithm={"loss_params": {"eps_low": -1.0}}))
    with pytest.raises(ConfigError, match="control_params"):
        run_training(_cfg(fast_cfg, algorithm={"control": "clip_b", "control_params": {"mu": -1.0}}))
    with pytest.raises(DataError, match="no training examples"):
        run_training(_cfg(fast_cfg, data={"task": "parity_test", "params": {"n_train": 0}}))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_ctrl_c_writes_a_checkpoint_and_stops(fast_cfg, tmp_path):
    def hook(tr, step, metrics):
        tr._stop.requested = True  # what the SIGINT handler does

    with pytest.raises(KeyboardInterrupt):
        run_training(_cfg(fast_cfg, train={"steps": 5}, run_dir=str(tmp_path / "int")), step_hook=hook)
    assert (tmp_path / "int" / "checkpoints" / "step_1" / "trainer_state.pt").is_file()


def test_lr_schedule_and_cursor():
    f = make_lr_lambda(warmup_steps=3, total_steps=10, schedule="linear", min_lr_ratio=0.0)
    # warm-up (s + 1) / (warmup + 1): 0.25, 0.5, 0.75; then 1 − (s − 3) / 7
    assert [round(f(s), 6) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, round(1 - 1 / 7, 6)]
    c = make_lr_lambda(warmup_steps=0, total_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert c(0) == 1.0 and abs(c(5) - 0.55) < 1e-12 and abs(c(10) - 0.1) < 1e-12
    # linear goes from 1 to min_lr_ratio at train.steps (not toward 0, clipped at min_lr_ratio early):
    # by hand, 4 steps to 0.2: 1 − 0.8·s/4 = 1.0, 0.8, 0.6, 0.4, then 0.2 after the last step
    lin = make_lr_lambda(warmup_steps=0, total_steps=4, schedule="linear", min_lr_ratio=0.2)
    assert [round(lin(s), 12) for s in range(5)] == [1.0, 0.8, 0.6, 0.4, 0.2]
    # with 2 warm-up steps of 6: 1/3, 2/3, then 1 − 0.8·(s − 2)/4 = 1.0, 0.8, 0.6, 0.4, 0.2
    lw = make_lr_lambda(warmup_steps=2, total_steps=6, schedule="linear", min_lr_ratio=0.2)
    assert [round(lw(s), 12) for s in range(7)] == [round(1 / 3, 12), round(2 / 3, 12), 1.0, 0.8, 0.6, 0.4, 0.2]
    cur = DataCursor()
    first = cur.take(5, 3, seed=0) + cur.take(5, 3, seed=0)  # wraps into epoch 1
    assert sorted(first[:5]) == [0, 1, 2, 3, 4] and (cur.epoch, cur.pos) == (1, 1)
    again = DataCursor()
    assert again.take(5, 6, seed=0) == first


def test_concat_batches_repads_prompts_and_responses():
    from rlentropy.rollout.base import RolloutBatch, concat_batches

    a = RolloutBatch(
        input_ids=torch.tensor([[5, 6, 7]]),
        attention_mask=torch.tensor([[1, 1, 1]]),
        response_mask=torch.tensor([[1.0]]),
        prompt_len=2,
        sampler_logp=torch.tensor([[-0.5]]),
        group_ids=torch.tensor([0]),
        prompts=["a"],
        completions=["x"],
        examples=[None],
    )
    b = RolloutBatch(
        input_ids=torch.tensor([[8, 9, 10]]),
        attention_mask=torch.tensor([[1, 1, 1]]),
        response_mask=torch.tensor([[1.0, 1.0]]),
        prompt_len=1,
        sampler_logp=torch.tensor([[-1.0, -2.0]]),
        group_ids=torch.tensor([0]),
        prompts=["b"],
        completions=["yz"],
        examples=[None],
    )
    c = concat_batches([a, b], pad_id=0)
    # P = 2, T = 2: row a = [5, 6 | 7, pad], row b = [pad, 8 | 9, 10]
    assert c.prompt_len == 2
    assert c.input_ids.tolist() == [[5, 6, 7, 0], [0, 8, 9, 10]]
    assert c.attention_mask.tolist() == [[1, 1, 1, 0], [0, 1, 1, 1]]
    assert c.response_mask.tolist() == [[1.0, 0.0], [1.0, 1.0]]
    assert c.sampler_logp.tolist() == [[-0.5, 0.0], [-1.0, -2.0]]
    assert c.group_ids.tolist() == [0, 1] and c.completions == ["x", "yz"]


def test_gradient_checkpointing_gives_the_same_update(fast_cfg, tmp_path):
    """Recomputing activations in the backward pass changes memory, not the gradient."""
    outs = []
    for gc in (False, True):
        cfg = _cfg(
            fast_cfg,
            model={"gradient_checkpointing": gc},
            train={"steps": 1, "ppo_epochs": 1},
            run_dir=str(tmp_path / f"gc{gc}"),
        )
        outs.append(_params(run_training(cfg).model))
    for n in outs[0]:
        torch.testing.assert_close(outs[0][n], outs[1][n], rtol=1e-6, atol=1e-8, msg=n)


def test_controllers_and_in_training_eval(fast_cfg, tmp_path):
    # clip_threshold: the entropy (~4.6 nats on a random model) is far above the target 1.0, so the
    # relative error is clipped to −1 and μ grows by e^{gain} = e^{0.1} each step: 2.5 → 2.763 → 3.054.
    cfg = _cfg(
        fast_cfg,
        algorithm={
            "control": "clip_b",
            "controller": "clip_threshold",
            "controller_params": {"target": 1.0, "mu_init": 2.5},
        },
        train={"steps": 2, "ppo_epochs": 1},
        eval={"every": 2, "n": 2, "max_prompts": 2},
        run_dir=str(tmp_path / "ct"),
    )
    h = run_training(cfg).history
    assert h[0]["control/mu"] == 2.5
    assert abs(h[0]["controller/mu"] - 2.5 * math.exp(0.1)) < 1e-9
    assert abs(h[1]["control/mu"] - 2.5 * math.exp(0.1)) < 1e-9
    assert 0.0 <= h[1]["eval/pass@1"] <= h[1]["eval/pass@2"] <= 1.0
    # the in-training eval is saved like `rlentropy eval` saves it: settings record + eval/metrics.csv,
    # so `rlentropy eval` with the same settings skips the step instead of recomputing it
    rec = json.loads((tmp_path / "ct" / "eval" / "step_2" / "metrics.json").read_text())
    seed = derive_seed(0, "eval") % (2**31)
    assert rec["step"] == 2 and rec["pass@1"] == h[1]["eval/pass@1"]
    assert rec["settings"] == {
        "task": "parity_test",
        "dataset": None,
        "n": 2,
        "temperature": 1.0,
        "top_p": 1.0,
        "max_new_tokens": 12,
        "max_prompts": 2,
        "seed": seed,
    }
    csv_lines = (tmp_path / "ct" / "eval" / "metrics.csv").read_text().splitlines()
    assert len(csv_lines) == 2 and csv_lines[1].startswith("2,")
    from rlentropy.evaluate.run import evaluate_run

    logs: list[str] = []
    evaluate_run(tmp_path / "ct", n=2, temperature=1.0, max_prompts=2, seed=seed, include_base=False, log=logs.append)
    assert logs == ["step_2: already evaluated, skipped (use --force to recompute)"]
    # entropy_coef: entropy above target → coefficient moves down by delta, clamped at coef_min = 0;
    # with gate=False the bonus applies from step 1 and changes the loss.
    cfg = _cfg(
        fast_cfg,
        algorithm={
            "entropy_bonus": 0.01,
            "controller": "entropy_coef",
            "controller_params": {"target": 1.0, "delta": 0.004, "gate": False},
        },
        train={"steps": 2, "ppo_epochs": 1},
        run_dir=str(tmp_path / "ec"),
    )
    h = run_training(cfg).history
    assert abs(h[0]["controller/entropy_coef"] - 0.006) < 1e-12 and abs(h[1]["controller/entropy_coef"] - 0.002) < 1e-12
    assert "loss/entropy_term" in h[0] and h[0]["loss/entropy_term"] > 4.0


def test_gns_gets_per_sequence_weights_for_the_exact_effective_sample_size(fast_cfg, tmp_path, monkeypatch):
    # The trainer hands the probe each micro-batch's per-sequence loss weights Σ_t token_weights (a [b]
    # tensor), so the noise-scale estimate uses the exact effective sample size (Σw)² / Σw² of each
    # accumulation instead of the step's ESS pro-rated by weight. Clip_B (mu 0.5) removes tokens from
    # some A < 0 rows, so the weights are unequal.
    from rlentropy.train.probes import DynamicsProbe

    seen: list[torch.Tensor] = []
    original = DynamicsProbe.on_micro_batch

    def spy(self, step, *, model, weight):
        seen.append(weight.detach().clone() if isinstance(weight, torch.Tensor) else torch.tensor(weight))
        return original(self, step, model=model, weight=weight)

    monkeypatch.setattr(DynamicsProbe, "on_micro_batch", spy)
    cfg = _cfg(
        fast_cfg,
        algorithm={"control": "clip_b", "control_params": {"mu": 0.5}},
        train={"steps": 1, "ppo_epochs": 1, "mini_batches": 2, "micro_batch_size": 4},
        probes={"every": 1, "step_probe": False, "logit_check": False},
        run_dir=str(tmp_path / "gns"),
    )
    m = run_training(cfg).history[0]
    assert m["probe/gns_accumulations"] == 2.0 and m["probe/gns_micro_batches"] == 4.0
    arrays = np.load(tmp_path / "gns" / "dynamics" / "step_1.npz")
    seq_w = torch.from_numpy((arrays["token_weights"] * arrays["loss_mask"]).sum(-1)).double()  # [16]
    groups = torch.arange(16) // 4  # 4 prompts × 4 samples, rows in group order
    assert seq_w.unique().numel() > 1  # unequal weights: the exact ESS is below the row count
    exact = []
    micro = 0
    for j in range(2):  # mini-batch j = the groups with index % 2 == j, split into micro-batches of 4 rows
        rows = torch.nonzero(groups % 2 == j).flatten()
        w = seq_w[rows]
        exact.append(float(w.sum() ** 2 / (w**2).sum()))
        for k in range(0, len(rows), 4):
            assert seen[micro].shape == (4,)
            torch.testing.assert_close(seen[micro].double(), seq_w[rows[k : k + 4]], rtol=1e-6, atol=0)
            micro += 1
    assert micro == len(seen) == 4
    assert m["probe/gns_ess"] == pytest.approx(sum(exact) / 2, rel=1e-6)  # float32 weights


def test_control_metrics_count_removed_tokens_with_nonzero_advantage():
    from rlentropy.algorithms.dispatch import configure_controls, logged_metrics, run_controls
    from rlentropy.train.metrics import removal_metrics

    # Clip_V, mu 1, no cap: xD = s_bar − S = [[0, 0, 3], [0, 0, 3]], mean 1, population std
    # sqrt(18/6 − 1) = sqrt(2) ≈ 1.414; the two xD = 3 tokens fail. Row 0 has A = −1 (dropped as a
    # penalised token), row 1 has A = 0 (dropped too, upstream's clip_zero_adv): 2 of 6 tokens removed,
    # 1 of 6 with a non-zero advantage.
    s = torch.zeros(2, 3)
    s_bar = torch.tensor([[0.0, 0.0, 3.0], [0.0, 0.0, 3.0]])
    adv = torch.tensor([[-1.0, -1.0, -1.0], [0.0, 0.0, 0.0]])
    mask = torch.ones(2, 3)
    active = configure_controls("clip_v", {"mu": 1.0, "max_frac": 1.0})
    out = run_controls(active, "old", {"s": s, "s_bar": s_bar, "advantages": adv, "mask": mask})
    assert out.mask.tolist() == [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]]
    m = {**logged_metrics(active, out.metrics), **removal_metrics(mask, out.mask, adv)}
    assert float(m["control/frac_removed"]) == pytest.approx(2 / 6)
    assert float(m["control/frac_removed_active"]) == pytest.approx(1 / 6)
    none = run_controls(configure_controls("none"), "old", {"advantages": adv, "mask": mask})
    assert torch.equal(none.mask, mask) and none.metrics == {}
    assert float(removal_metrics(mask, none.mask, adv)["control/frac_removed_active"]) == 0.0
