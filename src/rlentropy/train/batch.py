"""`StepBatch`: everything one training step knows about its batch, in one place.

Built by the trainer stage by stage (rollout → rewards → old statistics → advantages → controls) and
read by the update loop, the probes and the step metrics. Local tensors hold this process's rows
([b, T]); `*_all` tensors hold the rows of every process ([B, ...], gathered).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from rlentropy.rollout.base import RolloutBatch
from rlentropy.train.old_stats import OldStats


@dataclass
class StepBatch:
    """One step's batch and what was computed from it.

    Attributes:
        step: the step number (1-based).
        batch: this process's rollouts ([b, L] ids, [b, T] response mask).
        rewards: [b] this process's rewards.
        group_ids: [b] global prompt ids of this process's rows.
        rewards_all / group_ids_all: [B] of every process (CPU).
        mask: [b, T] float32 response mask (on the device).
        old: the old-policy statistics (possibly completed by the update forward).
        advantages_all: [B] or [B, T] the estimator's output over every process.
        advantages: [b, T] per-token advantages of this process's rows (after advantage controls).
        adv_seq: [b] each row's advantage before controls (mean over its tokens for token-level ones).
        loss_mask: [b, T] the response mask after the old-stage mask controls.
        selected: [b, T] bool whole-batch token selection of the loss (or None).
        ref_logp: [b, T] reference-model log-probs (KL penalty) or None.
        mini_batches: row indices of each mini-batch (whole prompt groups).
        counts: per mini-batch (global loss tokens, global sequences), 0-d float64.
        token_weights: [b, T] each token's weight in the aggregated loss of its mini-batch.
        metrics: step metrics gathered along the way (advantage, control and selection metrics).
    """

    step: int
    batch: RolloutBatch
    rewards: torch.Tensor
    group_ids: torch.Tensor
    rewards_all: torch.Tensor
    group_ids_all: torch.Tensor
    mask: torch.Tensor
    old: OldStats | None = None
    advantages_all: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    adv_seq: torch.Tensor | None = None
    loss_mask: torch.Tensor | None = None
    selected: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None
    mini_batches: list[list[int]] = field(default_factory=list)
    counts: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    token_weights: torch.Tensor | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return len(self.batch)

    @property
    def width(self) -> int:
        return int(self.batch.response_mask.shape[1])
