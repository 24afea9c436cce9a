"""The GRPO-family trainer: the loop, the update, logging (docs/training.md).

from rlentropy.train import load_config, run_training
cfg = load_config("configs/demo_countdown.yaml", ["train.steps=5"])
trainer = run_training(cfg)
"""

from rlentropy.runs.config import RunConfig, load_config
from rlentropy.train.run import run_training

__all__ = ["RunConfig", "load_config", "run_training"]
