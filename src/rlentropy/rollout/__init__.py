"""Rollout engines: sample completions and return token ids, masks and the sampler's log-probs."""

from rlentropy.rollout.base import RolloutBatch

__all__ = ["RolloutBatch"]
