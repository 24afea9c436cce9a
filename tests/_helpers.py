"""Helpers shared by tests: a tiny GRPO trainer on a real TRL, fixed trainer inputs, parameter gradients,
a real verl ActorConfig, and a ChatML stand-in tokenizer for the chat templates. The optional extras
(TRL, datasets, verl) are imported inside the helpers, so a test module imports this file before its
`importorskip`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def reward_len(completions, **kwargs):
    return [float(len(c) % 3) for c in completions]


def trl_trainer(trainer_cls: Any, config_cls: Any, model: Any, tok: Any, out: Path, reward: Any, **kw: Any) -> Any:
    """`trainer_cls` on four arithmetic prompts (batch 4, 2 generations, 6 new tokens, CPU, 2 steps, seed
    0, no saving; `kw` adds to or replaces those `config_cls` arguments), one accumulation step, in train
    mode."""
    from datasets import Dataset

    opts = dict(
        output_dir=str(out),
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=6,
        report_to="none",
        use_cpu=True,
        logging_steps=1,
        max_steps=2,
        seed=0,
        save_strategy="no",
    )
    args = config_cls(**{**opts, **kw})
    ds = Dataset.from_dict({"prompt": ["12+3=", "4*5=", "7-2=", "9+9="]})
    tr = trainer_cls(model=model, reward_funcs=reward, args=args, train_dataset=ds, processing_class=tok)
    tr.current_gradient_accumulation_steps = 1
    tr.model.train()
    return tr


def trl_inputs(seed=0, b=4, p=5, t=6, vocab=100):
    """The inputs of TRL's `_compute_loss`: random ids, one left-padded prompt, two right-padded completions."""
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
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": adv,
        "num_items_in_batch": completion_mask.sum(),
    }


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def verl_actor_config(loss_mode: str, actor: dict | None = None, **policy: Any):
    """A real verl ActorConfig built the way verl builds it (hydra `_target_`), with our policy-loss class;
    `actor` adds actor keys, `policy` policy-loss keys."""
    from omegaconf import OmegaConf
    from verl.utils.config import omega_conf_to_dataclass

    cfg = OmegaConf.create(
        {
            "_target_": "verl.workers.config.ActorConfig",
            "strategy": "fsdp",
            "rollout_n": 2,
            "ppo_mini_batch_size": 4,
            "ppo_micro_batch_size_per_gpu": 4,
            "clip_ratio": 0.2,
            "clip_ratio_low": 0.2,
            "clip_ratio_high": 0.28,
            "clip_ratio_c": 3.0,
            **(actor or {}),
            "policy_loss": {
                "_target_": "rlentropy.integrations.verl.RLEntropyPolicyLossConfig",
                "loss_mode": loss_mode,
                **policy,
            },
        }
    )
    return omega_conf_to_dataclass(cfg)


class ChatMLTokenizer:
    """The least a tokenizer needs for the chat templates: ChatML rendering of the messages."""

    chat_template = "chatml"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")
