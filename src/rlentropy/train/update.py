"""The update of one step: PPO epochs × mini-batches × micro-batches.

Per micro-batch: one forward through the (DDP-wrapped) `PolicyForward` gives the current policy's
`TokenStats`; the current-stage controls edit the mask / advantages or add loss terms; the policy
loss and the KL penalty are summed per token and aggregated once with the step's global counts;
backward (gradients synchronised over processes only on the last micro-batch of a mini-batch).
Per mini-batch: one optimizer step, or a skip when the loss or the gradient norm is not finite.
Metrics stay tensors and reach the host once, at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as torch_dist

from rlentropy.algorithms import aggregate_loss
from rlentropy.algorithms.dispatch import logged_metrics
from rlentropy.errors import TrainingError
from rlentropy.tokenstats import TokenStats
from rlentropy.train.batch import StepBatch
from rlentropy.train.dist import Dist, full_value
from rlentropy.train.kl import kl_estimate
from rlentropy.train.methods import MethodSet


@dataclass
class _Sums:
    """Token-weighted sums of per-micro-batch metrics, kept as tensors."""

    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    weight: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.float64))

    def add(self, values: dict[str, torch.Tensor], w: torch.Tensor) -> None:
        w = w.detach().double().cpu()
        for k, v in values.items():
            if isinstance(v, torch.Tensor) and v.numel() == 1:
                self.sums[k] = (
                    self.sums.get(k, torch.zeros((), dtype=torch.float64)) + v.detach().double().cpu().reshape(()) * w
                )
        self.weight = self.weight + w


@dataclass
class UpdateSettings:
    """What the update reads from the config (so the loop takes no config object).

    Attributes:
        ppo_epochs, micro_batch_size, grad_clip, max_nonfinite: `train:` settings.
        temperature: the sampling temperature (statistics are taken at it).
        kl_coef, kl_estimator: the reference KL penalty.
        max_len: the constant length of seq-mean-token-sum-norm.
        seed: the run seed (generators of random losses derive from it).
    """

    ppo_epochs: int
    micro_batch_size: int | None
    grad_clip: float | None
    max_nonfinite: int
    temperature: float
    kl_coef: float
    kl_estimator: str
    max_len: int
    seed: int


class Updater:
    """Runs the update of a step and keeps the count of consecutive non-finite updates.

    Args:
        forward: the (possibly DDP-wrapped) `PolicyForward`; its call returns the TokenStats fields.
        params: the trainable parameters.
        optimizer: their optimizer.
        methods: the configured methods.
        dist: process-group helpers.
        settings: `UpdateSettings`.
        probe: the dynamics probe (`on_micro_batch` is called on probed steps).
        autocast: context manager factory for the forward (bf16 on GPU, else a no-op).
        no_sync: `accelerator.no_sync(module)` (skip the gradient all-reduce of a micro-batch).
        seed_of: `derive_seed(seed, *tags)`, for the generators of random losses.
        last_checkpoint: describes the newest complete checkpoint (for the give-up message).
    """

    def __init__(
        self,
        *,
        forward: torch.nn.Module,
        params: list[torch.nn.Parameter],
        optimizer: torch.optim.Optimizer,
        methods: MethodSet,
        dist: Dist,
        settings: UpdateSettings,
        probe: Any,
        autocast: Callable[[], AbstractContextManager[Any]],
        no_sync: Callable[[torch.nn.Module], AbstractContextManager[Any]],
        seed_of: Callable[..., int],
        last_checkpoint: Callable[[], str],
    ) -> None:
        self.forward, self.params, self.optimizer, self.methods = forward, params, optimizer, methods
        self.dist, self.s, self.probe = dist, settings, probe
        self.autocast, self.no_sync, self.seed_of, self.last_checkpoint = autocast, no_sync, seed_of, last_checkpoint
        self.consecutive_nonfinite = 0

    def run(self, sb: StepBatch, *, probe_on: bool) -> dict[str, torch.Tensor]:
        """PPO epochs × mini-batches; returns the update metrics (0-d tensors)."""
        acc = _Sums()
        grad_norms: list[torch.Tensor] = []
        losses: list[torch.Tensor] = []
        skipped = 0
        self.forward.train()
        for epoch in range(self.s.ppo_epochs):
            for j, rows in enumerate(sb.mini_batches):
                norm, loss = self._mini_batch(sb, epoch, j, rows, acc, probe_on)
                if norm is None:
                    skipped += 1
                else:
                    grad_norms.append(norm)
                    losses.append(loss)
        self.optimizer.zero_grad(set_to_none=True)
        out = self._reduce(acc)
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        out["optim/grad_norm"] = torch.stack(grad_norms).double().mean() if grad_norms else nan
        out["optim/updates"] = torch.tensor(float(len(grad_norms)), dtype=torch.float64)
        out["loss/total"] = self.dist.all_sum(torch.stack(losses)).double().cpu().mean() if losses else nan
        out["train/skipped_updates"] = torch.tensor(float(skipped), dtype=torch.float64)
        return out

    # ------------------------------------------------------------------ one mini-batch
    def _mini_batch(
        self, sb: StepBatch, epoch: int, j: int, rows: list[int], acc: _Sums, probe_on: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Forward/backward every micro-batch of a mini-batch, then step (None: skipped, non-finite)."""
        self.optimizer.zero_grad(set_to_none=True)
        size = self.s.micro_batch_size or max(1, len(rows))
        micro = [rows[i : i + size] for i in range(0, len(rows), size)]
        fused = epoch == 0 and sb.old is not None and sb.old.is_deferred(rows)
        bad = torch.zeros((), dtype=torch.bool)
        loss_sum = torch.zeros((), dtype=torch.float64)
        for k, mrows in enumerate(micro):
            sync = k == len(micro) - 1
            with nullcontext() if sync else self.no_sync(self.forward):
                total, values, stats = self._micro_batch(sb, (epoch, j, k), mrows, fused)
                total.backward()
            if fused:
                sb.old.supply(mrows, stats)
            if probe_on:  # per-sequence loss weights [m]: the probe's exact effective sample size
                self.probe.on_micro_batch(sb.step, model=self.forward, weight=sb.token_weights[mrows].sum(-1))
            acc.add(values, sb.loss_mask[mrows].sum())
            bad = bad | ~torch.isfinite(total.detach().cpu())
            loss_sum = loss_sum + total.detach().double().cpu()
        clip = self.s.grad_clip if self.s.grad_clip is not None else float("inf")
        norm = full_value(torch.nn.utils.clip_grad_norm_(self.params, clip))  # a DTensor under FSDP
        nonfinite = bool(self.dist.all_sum(bad.double()).item() > 0) or not bool(torch.isfinite(norm))
        if nonfinite:
            self._give_up_or_skip(sb.step)
            return None, loss_sum
        self.consecutive_nonfinite = 0
        self.optimizer.step()
        return norm.detach().double().cpu(), loss_sum

    def _give_up_or_skip(self, step: int) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.consecutive_nonfinite += 1
        if self.consecutive_nonfinite >= self.s.max_nonfinite:
            raise TrainingError(
                f"{self.consecutive_nonfinite} non-finite losses/gradients in a row (step {step}); stopping. "
                f"{self.last_checkpoint()}"
            )

    # ------------------------------------------------------------------ one micro-batch
    def _micro_batch(
        self, sb: StepBatch, tag: tuple[int, int, int], rows: list[int], fused: bool
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], TokenStats]:
        """The loss of one micro-batch: (total [] with grad, metric tensors, its detached-able stats)."""
        sub = sb.batch.select(rows)
        with self.autocast():
            fields = self.forward(
                sub.input_ids,
                sub.attention_mask,
                sub.response_mask,
                prompt_len=sub.prompt_len,
                temperature=self.s.temperature,
                check_finite=False,
            )
        st = TokenStats(*fields)  # each [m, T]
        logp = st.logp.float()  # [m, T]
        old_logp = logp.detach() if fused else sb.old.logp(rows)  # [m, T]
        n_tok, n_seq = sb.counts[tag[1]]
        ctx = {"mode": self.methods.agg_mode, "global_tokens": n_tok, "global_seqs": n_seq, "max_len": self.s.max_len}
        cur = self.methods.current_stage(
            {
                "logp": logp,
                "entropy": st.entropy.float(),
                "s": st.s,
                "s_bar": st.s_bar,
                "sum_p2": st.sum_p2,
                "old_logp": old_logp,
                "advantages": sb.advantages[rows],
                "mask": sb.loss_mask[rows],
                **ctx,
            }
        )
        m = cur.mask  # [m, T]
        loss_in = {"logp": logp, "old_logp": old_logp, "advantages": cur.advantages, "mask": m}
        if sb.selected is not None:
            loss_in["selected"] = sb.selected[rows]
        elif self.methods.loss.needs_generator:
            seed = self.seed_of(self.s.seed, "clip_cov", sb.step, self.dist.rank, *tag)
            loss_in["generator"] = torch.Generator(device=logp.device).manual_seed(seed)
        loss_mat, loss_metrics = self.methods.policy_loss(loss_in)  # [m, T]
        values = {f"loss/{k}": v for k, v in loss_metrics.items()}
        if sb.ref_logp is not None:
            kl_mat, _ = kl_estimate(logp, sb.ref_logp[rows], estimator=self.s.kl_estimator)  # [m, T]
            loss_mat = loss_mat + self.s.kl_coef * kl_mat  # [m, T]
            values["kl/ref"] = (kl_mat.detach() * m).sum() / m.sum().clamp_min(1)
        total = aggregate_loss(
            loss_mat, m, self.methods.agg_mode, global_tokens=n_tok, global_seqs=n_seq, max_len=self.s.max_len
        )  # []
        for term in cur.terms:
            total = total + term
        values.update(logged_metrics(self.methods.step_controls(), cur.metrics))
        with torch.no_grad():
            d = old_logp - logp.detach()  # [m, T] log(old / new)
            rm = sub.response_mask.to(d.device)  # [m, T]
            n = rm.sum().clamp_min(1)
            values["policy/kl_old"] = ((torch.expm1(-d) + d) * rm).sum() / n  # k3 estimate of KL(old ‖ new)
            values["policy/ratio_mean"] = (torch.exp(-d) * rm).sum() / n
        return total, values, st

    def _reduce(self, acc: _Sums) -> dict[str, torch.Tensor]:
        """Token-weighted means over every process's micro-batches."""
        sums, weight = acc.sums, acc.weight
        if self.dist.world > 1:
            key_lists: list[Any] = [None] * self.dist.world
            torch_dist.all_gather_object(key_lists, sorted(sums))
            keys = sorted(set().union(*key_lists))
            zero = torch.zeros((), dtype=torch.float64)
            vec = self.dist.all_sum(torch.stack([sums.get(k, zero) for k in keys] + [weight])).cpu()
            sums, weight = dict(zip(keys, vec[:-1])), vec[-1]
        if float(weight) <= 0:
            return {}
        return {k: v / weight for k, v in sums.items()}
