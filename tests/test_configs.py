"""Every shipped config loads, validates, names its command and hardware, and builds its tasks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlentropy.algorithms import clip_b_mask, clip_v_mask, get_policy_loss
from rlentropy.data import build_task
from rlentropy.runs.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
MINE = {
    "clipb_qwen2.5-7b-instruct_dapo.yaml",
    "clipv_qwen2.5-7b-instruct_dapo.yaml",
    "clipcov_qwen2.5-7b_dapo.yaml",
    "klcov_qwen2.5-7b_dapo.yaml",
    "grpo_qwen2.5-1.5b_lora_gsm8k_r1.yaml",
    "smollm2-135m_gsm8k_cpu.yaml",
    "smollm2-135m_arithmetic_cpu.yaml",
}


def test_all_recipes_are_shipped():
    assert MINE <= {p.name for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_validates_and_documents_itself(path):
    cfg = load_config(path)
    head = path.read_text(encoding="utf-8").split("\n")
    comments = []
    for line in head:
        if not line.startswith("#"):
            break
        comments.append(line)
    text = "\n".join(comments)
    assert comments, "a shipped config opens with a comment"
    assert f"rlentropy train configs/{path.name}" in text or "rlentropy demo" in text
    assert "Hardware:" in text
    # The data section builds (train and eval tasks) and its algorithm parameters are accepted by
    # the functions they configure.
    task = build_task(cfg.data)
    build_task(cfg.data, for_eval=True)
    assert isinstance(task.stop_strings, list)
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(2, 3, generator=g) - 0.1  # [2, 3]
    mask = torch.ones(2, 3)  # [2, 3]
    adv = torch.tensor([[1.0] * 3, [-1.0] * 3])  # [2, 3]
    a = cfg.algorithm
    params = dict(a.loss_params)
    if a.loss == "clip_cov":
        params["generator"] = g
    loss, _ = get_policy_loss(a.loss)(logp, logp.detach(), adv, mask, **params)
    assert torch.isfinite(loss).all()
    s = torch.rand(2, 3, generator=g)  # [2, 3]
    if a.control == "clip_b":
        clip_b_mask(s, adv, mask, **a.control_params)
    elif a.control == "clip_v":
        clip_v_mask(s, s * 0.5, adv, mask, **a.control_params)


def test_recipe_values():
    b = load_config("configs/clipb_qwen2.5-7b-instruct_dapo.yaml")
    v = load_config("configs/clipv_qwen2.5-7b-instruct_dapo.yaml")
    for c in (b, v):
        assert c.model.path == "Qwen/Qwen2.5-7B-Instruct" and c.optim.lr == 1e-6
        assert c.rollout.max_new_tokens == 7168 and c.rollout.temperature == 1.0
        assert (c.eval.n, c.eval.temperature, c.eval.every) == (32, 0.7, 20)
        assert c.data.task == "dapo" and c.data.eval_task == "math-suite"
        assert c.algorithm.loss_params == {"eps_low": 0.2, "eps_high": 0.2, "clip_ratio_c": 3.0}
        assert (c.optim.weight_decay, c.train.prompts_per_step, c.algorithm.kl.coef) == (0.01, 64, 0.0)
    assert (b.algorithm.control, b.algorithm.control_params, b.train.group_size) == ("clip_b", {"mu": 2.5}, 16)
    assert (v.algorithm.control, v.train.group_size) == ("clip_v", 8)
    assert v.algorithm.control_params == {"mu": 8.5, "max_frac": 1e-4, "clip_zero_adv": True}
    cc = load_config("configs/clipcov_qwen2.5-7b_dapo.yaml").algorithm
    assert cc.loss == "clip_cov" and cc.loss_params["clip_cov_ratio"] == 2e-4
    assert (cc.loss_params["clip_cov_lb"], cc.loss_params["clip_cov_ub"], cc.loss_params["eps_high"]) == (1.0, 5.0, 1.0)
    kc = load_config("configs/klcov_qwen2.5-7b_dapo.yaml").algorithm
    assert kc.loss == "kl_cov" and kc.loss_params == {"kl_cov_ratio": 2e-3, "ppo_kl_coef": 1.0}
    seed = load_config("configs/grpo_qwen2.5-1.5b_lora_gsm8k_r1.yaml")
    assert seed.model.load_in_4bit and seed.model.lora.enabled and seed.data.template == "r1"
    assert (seed.rollout.max_new_tokens, seed.rollout.temperature, seed.algorithm.advantage) == (200, 0.7, "dr_grpo")
    assert build_task(seed.data).scorer.require_r1_format
    cpu = load_config("configs/smollm2-135m_gsm8k_cpu.yaml")
    assert cpu.model.path == "smollm2-135m" and cpu.train.device == "cpu"


def test_smollm2_study_config():
    """The SmolLM2 study: the calibrated task, the calibrated controls, probes, prompt sharing."""
    cfg = load_config("configs/smollm2-135m_arithmetic_cpu.yaml")
    assert (cfg.model.path, cfg.model.lora.enabled, cfg.data.template) == ("smollm2-135m", True, "calc")
    assert cfg.data.params == {"ops": "+", "min_operand": 1, "max_operand": 20, "train_size": 200, "eval_size": 200}
    assert cfg.train.share_prompts and cfg.probes.every > 0 and cfg.rollout.temperature == 1.0
    assert len(build_task(cfg.data, for_eval=True).eval_examples()) == 200
    methods = cfg.study.methods
    assert set(methods) == {"grpo", "clip_b", "clip_v"} and cfg.study.baseline == "grpo"
    assert "algorithm.control_params.mu=1.1" in methods["clip_b"]
    assert "algorithm.control_params.mu=2.2" in methods["clip_v"]
    for overrides in methods.values():
        load_config("configs/smollm2-135m_arithmetic_cpu.yaml", list(overrides))
