"""Old-policy statistics of a step: one interface for the separate forward and the fused path.

The old policy is the policy that sampled the batch. Its `TokenStats` come from a no-grad forward
over the batch before the update — except, when nothing reads them before the loss, for the rows of
the first mini-batch: the weights first move after that mini-batch's last backward, so its own update
forward sees exactly the old policy and supplies them (`supply`), and the separate forward skips
those rows (with one mini-batch it is skipped altogether). Either way `result()` returns the same
numbers; nothing hands out a `TokenStats` before it is complete, and no `TokenStats` is ever mutated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from rlentropy.rollout.base import RolloutBatch
from rlentropy.tokenstats import STAT_FIELDS, TokenStats

StatsFn = Callable[[RolloutBatch], TokenStats]


class OldStats:
    """Old-policy `TokenStats` [b, T] of a step's local rows.

    Args:
        compute: the separate no-grad forward (`RolloutBatch` → `TokenStats`), at the old weights.
        batch: the step's local rows.
        deferred: rows whose statistics the first update forward will `supply` (empty: compute all now).
    """

    def __init__(self, compute: StatsFn, batch: RolloutBatch, deferred: Sequence[int] = ()) -> None:
        self._compute = compute
        self._batch = batch
        self._pending = set(int(i) for i in deferred)
        self._full: TokenStats | None = None
        self._parts: dict[str, torch.Tensor] = {}
        if not self._pending:
            self._full = compute(batch)  # TokenStats [b, T]
            return
        ref = batch.response_mask
        self._parts = {f: torch.zeros(ref.shape, dtype=torch.float32, device=ref.device) for f in STAT_FIELDS}
        self._fill([i for i in range(len(batch)) if i not in self._pending])

    def _fill(self, rows: list[int]) -> None:
        if not rows:
            return
        st = self._compute(self._batch.select(rows))  # TokenStats [len(rows), T]
        for f in STAT_FIELDS:
            part = self._parts[f]
            self._parts[f] = part.index_copy(
                0, torch.tensor(rows, device=part.device), getattr(st, f).float().to(part.device)
            )

    def is_deferred(self, rows: Sequence[int]) -> bool:
        """True when these rows wait for the update forward (their old log-probs are its detached ones)."""
        return bool(self._pending) and any(int(i) in self._pending for i in rows)

    def logp(self, rows: Sequence[int]) -> torch.Tensor:
        """Old log-probs [len(rows), T] of rows that are not deferred."""
        if self._full is not None:
            return self._full.logp[list(rows)]
        return self._parts["logp"][list(rows)]

    def supply(self, rows: Sequence[int], stats: TokenStats) -> None:
        """The update forward's statistics of deferred `rows` (taken at the old weights), detached."""
        idx = torch.tensor(list(rows), device=stats.logp.device)
        for f in STAT_FIELDS:
            part = self._parts[f]
            self._parts[f] = part.index_copy(0, idx.to(part.device), getattr(stats, f).detach().float().to(part.device))
        self._pending -= set(int(i) for i in rows)

    def result(self) -> TokenStats:
        """The complete statistics [b, T]."""
        if self._full is not None:
            return self._full
        if self._pending:
            raise RuntimeError(f"old-policy statistics of rows {sorted(self._pending)} were never supplied")
        self._full = TokenStats(**{f: self._parts[f] for f in STAT_FIELDS})
        return self._full
