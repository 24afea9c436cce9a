"""Verifiers: answer extraction, math correctness (pre-screened math-verify under hard time limits), format rewards,
and the registry of named reward functions (`register_reward`, `data.reward`).

from rlentropy.rewards import MathScorer, extract_answer, r1_format_reward
MathScorer(style="boxed").score(["... \\boxed{\\frac12}"], ["0.5"])   # -> [1.0]
"""

from rlentropy.rewards.extract import (
    as_plain_number,
    extract_answer,
    extract_boxed,
    extract_dapo,
    extract_gsm8k,
    extract_r1,
    r1_format_ok,
)
from rlentropy.rewards.math import MathScorer, math_reward, r1_format_reward, verify_answers
from rlentropy.rewards.pool import PoolStats, VerifierPool, default_pool
from rlentropy.rewards.registry import REWARDS, RewardSpec, get_reward, register_reward, reward_names
from rlentropy.rewards.screen import DEFAULT_SCREEN, ScreenLimits, screen_answer

__all__ = [
    "DEFAULT_SCREEN",
    "MathScorer",
    "PoolStats",
    "REWARDS",
    "RewardSpec",
    "ScreenLimits",
    "VerifierPool",
    "as_plain_number",
    "default_pool",
    "extract_answer",
    "extract_boxed",
    "extract_dapo",
    "extract_gsm8k",
    "extract_r1",
    "get_reward",
    "math_reward",
    "r1_format_ok",
    "r1_format_reward",
    "register_reward",
    "reward_names",
    "screen_answer",
    "verify_answers",
]
