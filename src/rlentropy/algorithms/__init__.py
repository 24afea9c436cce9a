"""Pure math of GRPO-family training: advantages, policy losses, loss aggregation, entropy controls and
adaptive controllers. Registries map config names to functions; see docs/algorithms.md.

Every function takes plain tensors and keyword parameters and returns `(value, metrics)` with 0-d
tensor metrics (no `.item()`, no global RNG: randomness comes from an explicit `torch.Generator`).
"""

from rlentropy.algorithms.advantages import (
    ADVANTAGES,
    AdvantageSpec,
    dr_grpo,
    get_advantage,
    get_advantage_spec,
    grpo,
    grpo_advantages,
    group_stats,
    pass_at_k,
    reinforce_pp,
    rloo,
)
from rlentropy.algorithms.aggregation import AGG_MODES, aggregate_loss, aggregation_weights, batch_counts
from rlentropy.algorithms.controllers import ClipThresholdController, EntropyCoefController
from rlentropy.algorithms.controls import (
    CONTROLS,
    QUADRANTS,
    ControlSpec,
    clip_b_mask,
    clip_v_mask,
    entropy_bonus,
    get_control,
    get_control_spec,
    high_entropy_mask,
    quadrant_mask,
)
from rlentropy.algorithms.losses import (
    POLICY_LOSSES,
    PolicyLossSpec,
    ce_gppo,
    cispo,
    clip_cov,
    clip_cov_select,
    get_policy_loss,
    get_policy_loss_spec,
    gspo,
    kl_cov,
    kl_cov_select,
    ppo,
)
from rlentropy.algorithms.registry import Registry, UnknownNameError

__all__ = [
    "ADVANTAGES",
    "AGG_MODES",
    "CONTROLS",
    "POLICY_LOSSES",
    "QUADRANTS",
    "AdvantageSpec",
    "ClipThresholdController",
    "ControlSpec",
    "EntropyCoefController",
    "PolicyLossSpec",
    "Registry",
    "UnknownNameError",
    "aggregate_loss",
    "aggregation_weights",
    "batch_counts",
    "ce_gppo",
    "cispo",
    "clip_b_mask",
    "clip_cov",
    "clip_cov_select",
    "clip_v_mask",
    "dr_grpo",
    "entropy_bonus",
    "get_advantage",
    "get_advantage_spec",
    "get_control",
    "get_control_spec",
    "get_policy_loss",
    "get_policy_loss_spec",
    "group_stats",
    "grpo",
    "grpo_advantages",
    "gspo",
    "high_entropy_mask",
    "kl_cov",
    "kl_cov_select",
    "pass_at_k",
    "ppo",
    "quadrant_mask",
    "reinforce_pp",
    "rloo",
]
