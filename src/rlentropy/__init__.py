"""rlentropy: measure, predict and control the entropy dynamics of RL fine-tuning of language models.

Layers (import direction top → bottom only):
    tokenstats → algorithms, dynamics → rollout, rewards, data, models → train, evaluate, report,
    integrations → cli
See docs/architecture.md.
"""

__version__ = "0.1.0"
