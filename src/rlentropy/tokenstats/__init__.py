"""Exact, memory-bounded per-token policy statistics (layer 1: pure tensor math, no I/O).

    from rlentropy.tokenstats import TokenStats, token_stats, token_stats_from_hidden

See docs/tokenstats.md.
"""

from rlentropy.tokenstats.core import (
    DEFAULT_WORKSPACE_BYTES,
    STAT_FIELDS,
    TokenStats,
    token_stats,
    token_stats_from_hidden,
)
from rlentropy.tokenstats.reference import token_stats_reference

__all__ = [
    "DEFAULT_WORKSPACE_BYTES",
    "STAT_FIELDS",
    "TokenStats",
    "token_stats",
    "token_stats_from_hidden",
    "token_stats_reference",
]
