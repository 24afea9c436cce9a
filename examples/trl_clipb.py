"""TRL GRPO with rlentropy's Clip_B on the tiny shipped policy (runs on CPU in about a minute).

    python examples/trl_clipb.py --steps 4 --control clip_b      # or clip_v, clip_cov, kl_cov, none

Logs TRL's metrics plus ours (`rlentropy/entropy`, `rlentropy/S_mean`, `rlentropy/s_bar_mean`,
`rlentropy/pressure`, `rlentropy/quadrant/*`, `rlentropy/control/frac_removed*`).
"""

from __future__ import annotations

import argparse

from datasets import Dataset

from rlentropy.integrations.trl import EntropyGRPOConfig, EntropyGRPOTrainer
from rlentropy.models.tiny import load_shipped_policy, make_random_tiny_policy


def reward_digits(completions, **kwargs):
    """A toy verifiable reward: the fraction of characters that are digits."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--control", default="clip_b")
    ap.add_argument("--out", default="runs/trl_clipb")
    ap.add_argument("--random", action="store_true", help="a random tiny model instead of the shipped policy")
    a = ap.parse_args()
    model, tok = make_random_tiny_policy(seed=0) if a.random else load_shipped_policy()
    prompts = [f"{i}+{j}=" for i in range(10) for j in range(10)]
    args = EntropyGRPOConfig(
        output_dir=a.out,
        entropy_control=a.control,
        max_steps=a.steps,
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=16,
        learning_rate=1e-4,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        seed=0,
    )
    trainer = EntropyGRPOTrainer(
        model=model,
        processing_class=tok,
        reward_funcs=reward_digits,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
    )
    trainer.train()


if __name__ == "__main__":
    main()
