"""Entropy-dynamics probes wired into the training step (`probes:` config section).

The trainer owns one `DynamicsProbe` and calls, on every step:

    if probe.active(step):
        metrics |= probe.before_update(step, model=..., batch=..., old_stats=..., advantages=...,
                                       loss_mask=..., token_weights=..., lr=..., optimizer=...,
                                       sample_probe_batch=..., temperature=...)
    for each micro-batch: loss.backward(); probe.on_micro_batch(step, model=model, weight=w_mb)
    optimizer.step()
    metrics |= probe.after_update(step, model=model, optimizer=optimizer)

`on_micro_batch` and `after_update` do nothing (and return {}) on steps where `before_update` did not
run. Scalars come back as `probe/...` floats (the trainer writes them to metrics.jsonl); arrays are
saved by the probe itself to `<run_dir>/dynamics/step_N.npz`. The math lives in `rlentropy.dynamics`;
see docs/dynamics.md for every definition.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlentropy.dynamics import (
    adam_metric,
    effective_sample_size,
    fisher_kernel,
    kernel_influence,
    kernel_summary,
    logit_space_check,
    logp_advantage_covariance,
    noise_scale,
    param_delta_dot,
    quadrant_decomposition,
    step_prediction,
    token_pressure,
)
from rlentropy.errors import ConfigError
from rlentropy.models.forward import body_and_head, policy_token_stats
from rlentropy.models.forward import response_hidden as _forward_hidden
from rlentropy.runs.config import RECOMMENDED_EVERY, ProbesConfig

__all__ = ["ProbesConfig", "DynamicsProbe", "RECOMMENDED_EVERY", "response_hidden"]


StatsFn = Callable[..., Any]


@dataclass
class _StepState:
    """What `before_update` leaves for `on_micro_batch` / `after_update` of the same step."""

    step: int
    metrics: dict[str, float] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    params: list[torch.nn.Parameter] = field(default_factory=list)
    # step-level probe
    probe_batch: Any = None
    h_grads: list[torch.Tensor | None] | None = None
    before: list[torch.Tensor] | None = None
    h_before: float = math.nan
    hidden_before: torch.Tensor | None = None  # [N, d]
    lm_weight_before: torch.Tensor | None = None  # [V, d]
    # Fisher kernel
    fisher_grads: torch.Tensor | None = None  # [n, D]
    fisher_groups: torch.Tensor | None = None  # [n]
    fisher_adv: torch.Tensor | None = None  # [n]
    # gradient noise scale
    gns_prev: list[torch.Tensor] | None = None
    gns_grad_refs: list[Any] = field(default_factory=list)  # weak refs to the .grad tensors last seen
    gns_acc: list[_Accumulation] = field(default_factory=list)  # closed accumulations
    gns_cur: _Accumulation | None = None
    gns_total_w: float = 0.0
    gns_total_ess: float = 0.0


@dataclass
class _Accumulation:
    """The micro-batches summed into one optimizer step's gradient (one mini-batch)."""

    sq: list[float] = field(default_factory=list)  # |increment / w_i|²
    w: list[float] = field(default_factory=list)
    ess: list[float] = field(default_factory=list)
    seq_w: list[torch.Tensor] | None = field(default_factory=list)  # per-sequence weights when given
    total_sq: float = 0.0  # |Σ increments|²


class DynamicsProbe:
    """Predict and measure the entropy change of probed training steps.

    Args:
        cfg: the `probes:` config.
        run_dir: the run directory (arrays go to `run_dir/dynamics/step_N.npz`); None = no files.
        stats_fn: `fn(model, batch, *, temperature, with_grad) -> TokenStats` ([B, T] fields
            `entropy`, `logp`, ...). Defaults to `rlentropy.models.forward.policy_token_stats`, the
            same statistics every other consumer uses.
    """

    def __init__(self, cfg: ProbesConfig, *, run_dir: str | Path | None, stats_fn: StatsFn | None = None) -> None:
        self.cfg = cfg
        self.run_dir = None if run_dir is None else Path(run_dir)
        self._stats_fn = stats_fn
        self._state: _StepState | None = None

    # ------------------------------------------------------------------ hooks
    def active(self, step: int) -> bool:
        """True on the steps this probe measures (step % every == 0, every > 0)."""
        return self.cfg.every > 0 and step % self.cfg.every == 0

    def before_update(
        self,
        step: int,
        *,
        model: torch.nn.Module,
        batch: Any,
        old_stats: Any,
        advantages: torch.Tensor,
        loss_mask: torch.Tensor,
        token_weights: torch.Tensor,
        lr: float,
        optimizer: torch.optim.Optimizer,
        sample_probe_batch: Callable[[], Any] | None,
        temperature: float = 1.0,
    ) -> dict[str, float]:
        """Everything measured at θ_before: pressure, covariance, ∇H on the probe batch, snapshots.

        Args:
            step: the training step.
            model: the policy (trainable parameters = those with requires_grad).
            batch: the step's `RolloutBatch` ([B, L] ids, [B, T] response mask).
            old_stats: `TokenStats` of the old policy on `batch` ([B, T] logp, entropy, s, s_bar).
            advantages: [B, T] per-token advantages used by the loss.
            loss_mask: [B, T] the loss mask after controls (Clip_B / Clip_V / ...).
            token_weights: [B, T] each token's weight in the aggregated loss over the whole step.
            lr: the learning rate of this step.
            optimizer: the optimizer (not read here; the Adam metric is read after the update).
            sample_probe_batch: returns an independent `RolloutBatch` (used when
                `probe_batch == "independent"` and the step probe or logit check is on).
            temperature: the sampling temperature the statistics are computed at.

        Returns:
            `probe/...` scalars.
        """
        del optimizer  # read in after_update (Adam metric of this step's update)
        cfg = self.cfg
        st = _StepState(step=step)
        self._temperature = float(temperature)
        st.params = [p for p in model.parameters() if p.requires_grad]
        mask = loss_mask.to(torch.float32)  # [B, T]
        if cfg.pressure or cfg.covariance or cfg.save_arrays:
            st.arrays["loss_mask"] = _np(mask)
            st.arrays["advantages"] = _np(advantages)
            st.arrays["token_weights"] = _np(token_weights)
        self._batch_statistics(st, old_stats, advantages.detach().float(), mask, token_weights.detach().float(), lr)
        if cfg.step_probe or cfg.logit_check:
            self._snapshot(st, model, batch, sample_probe_batch, temperature)
        if cfg.fisher_every > 0 and step % cfg.fisher_every == 0:
            self._fisher_grads(st, model, batch, advantages, temperature)
        if cfg.gns:
            seq_w = (token_weights.detach().float() * mask).sum(dim=1)  # [B]
            st.gns_total_w = float(seq_w.sum().item())
            st.gns_total_ess = float(effective_sample_size(seq_w).item())
            st.gns_prev = [torch.zeros_like(p, dtype=torch.float32) for p in st.params]
            st.gns_cur = _Accumulation()
        self._state = st
        out = dict(st.metrics)
        st.metrics.clear()
        return out

    def _batch_statistics(
        self, st: _StepState, old_stats: Any, adv: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor, lr: float
    ) -> None:
        """Per-token pressure, quadrants and Cov(log p, A) of the training batch (nearly free)."""
        if self.cfg.pressure:
            s, s_bar = old_stats.s.detach().float(), old_stats.s_bar.detach().float()  # [B, T]
            dh_tok, pm = token_pressure(s, s_bar, adv, mask, token_weights=weights, lr=float(lr))  # [B, T]
            ids, qm = quadrant_decomposition(dh_tok, s, s_bar, adv, mask)  # [B, T]
            _put(st.metrics, "probe/pressure_", pm)
            _put(st.metrics, "probe/quad_", qm)
            st.arrays.update(S=_np(s), s_bar=_np(s_bar), dH_tok=_np(dh_tok), quadrant=ids.cpu().numpy().astype(np.int8))
        if self.cfg.covariance:
            cov_tok, cm = logp_advantage_covariance(old_stats.logp.detach().float(), adv, mask)
            _put(st.metrics, "probe/", cm)
            st.arrays["cov_tok"] = _np(cov_tok)
            st.metrics["probe/entropy_old"] = float(
                ((old_stats.entropy.detach().float() * mask).sum() / mask.sum().clamp_min(1.0)).item()
            )

    def _snapshot(
        self,
        st: _StepState,
        model: torch.nn.Module,
        batch: Any,
        sample_probe_batch: Callable[[], Any] | None,
        temperature: float,
    ) -> None:
        """θ_before on the probe batch: H and ∇H (step probe), hidden states and the head (logit check)."""
        st.probe_batch = self._probe_batch(batch, sample_probe_batch)
        with _eval_mode(model):
            if self.cfg.step_probe:
                st.h_before, st.h_grads = self._entropy_and_grad(model, st.probe_batch, st.params, temperature)
                st.before = [p.detach().clone() for p in st.params]
            if self.cfg.logit_check:
                st.hidden_before = response_hidden(model, st.probe_batch, self.cfg.probe_micro_batch)  # [N, d]
                w = _lm_head_weight(model)
                st.lm_weight_before = w.detach().clone() if w.requires_grad else w.detach()
        st.metrics["probe/probe_sequences"] = float(len(st.probe_batch))

    def on_micro_batch(self, step: int, *, model: torch.nn.Module, weight: float | torch.Tensor) -> None:
        """Record one micro-batch's gradient increment (the `.grad` running sum minus the last one).

        Args:
            step: the training step.
            model: the policy (its `.grad` holds the running sum over this step's micro-batches).
            weight: the micro-batch's loss weight: a float (its share Σ token_weights) or a [b] tensor
                of per-sequence weights Σ_t token_weights (gives its exact effective sample size;
                with a float, the effective sample size is pro-rated from the whole step's).

        Several optimizer steps per training step (mini-batches, PPO epochs) are supported when the
        trainer zeroes gradients with `zero_grad(set_to_none=True)` (PyTorch's default): each
        accumulation gets its own estimate and the step reports their average.
        """
        del model
        st = self._state
        if st is None or st.step != step or not self.cfg.gns or st.gns_prev is None or st.gns_cur is None:
            return
        # A new optimizer step (mini-batch) zeroes the gradients with set_to_none: the .grad tensors
        # are then new objects. Close the current accumulation and start from zero.
        grads_now = [p.grad for p in st.params]
        if st.gns_grad_refs and any(
            g is not None and (ref is None or ref() is not g) for g, ref in zip(grads_now, st.gns_grad_refs)
        ):
            self._close_accumulation(st)
        st.gns_grad_refs = [None if g is None else weakref.ref(g) for g in grads_now]
        if isinstance(weight, torch.Tensor) and weight.dim() == 1:
            seq_w = weight.detach().double().cpu()  # [b]
            w_i = float(seq_w.sum().item())
            ess_i = float(effective_sample_size(seq_w).item())
        else:
            seq_w = None
            w_i = float(weight)
            ess_i = st.gns_total_ess * w_i / st.gns_total_w if st.gns_total_w > 0 else 0.0
        sq = torch.zeros((), dtype=torch.float64)
        for g, prev in zip(grads_now, st.gns_prev):
            cur = g.detach().float() if g is not None else torch.zeros_like(prev)
            sq = sq + (cur - prev).double().pow(2).sum().cpu()
            prev.copy_(cur)
        acc = st.gns_cur
        if w_i > 0 and ess_i > 0:
            acc.sq.append(float(sq.item()) / (w_i * w_i))
            acc.w.append(w_i)
            acc.ess.append(ess_i)
            if acc.seq_w is not None and seq_w is not None:
                acc.seq_w.append(seq_w)
            else:
                acc.seq_w = None

    def _close_accumulation(self, st: _StepState) -> None:
        acc = st.gns_cur
        if acc is not None and acc.w:
            acc.total_sq = sum(float(prev.double().pow(2).sum().item()) for prev in st.gns_prev)
            st.gns_acc.append(acc)
        st.gns_cur = _Accumulation()
        for prev in st.gns_prev:
            prev.zero_()

    def _noise_scale(self, st: _StepState) -> dict[str, float]:
        """Average the unbiased tr Σ and |g|² estimates over the step's accumulations (k >= 2 each)."""
        self._close_accumulation(st)
        trs, gsqs, esss = [], [], []
        for acc in st.gns_acc:
            if len(acc.w) < 2:
                continue
            w_tot = sum(acc.w)
            if acc.seq_w:
                ess_tot = float(effective_sample_size(torch.cat(acc.seq_w)).item())
            else:
                ess_tot = st.gns_total_ess * w_tot / st.gns_total_w if st.gns_total_w > 0 else 0.0
            _, nm = noise_scale(
                torch.tensor(acc.sq, dtype=torch.float64),
                torch.tensor(acc.w, dtype=torch.float64),
                torch.tensor(acc.ess, dtype=torch.float64),
                total_sq_norm=torch.tensor(acc.total_sq / w_tot**2, dtype=torch.float64),
                total_ess=torch.tensor(ess_tot, dtype=torch.float64),
            )
            if math.isfinite(float(nm["trace_sigma"])):
                trs.append(float(nm["trace_sigma"]))
                gsqs.append(float(nm["grad_sq"]))
                esss.append(ess_tot)
        out = {
            "probe/gns_accumulations": float(len(trs)),
            "probe/gns_micro_batches": float(sum(len(a.w) for a in st.gns_acc)),
        }
        if trs:
            tr, gsq, ess = sum(trs) / len(trs), sum(gsqs) / len(gsqs), sum(esss) / len(esss)
            b = tr / gsq if gsq != 0 else math.nan
            out.update(
                {
                    "probe/gns_trace_sigma": tr,
                    "probe/gns_grad_sq": gsq,
                    "probe/gns_b_simple": b,
                    "probe/gns_ess": ess,
                    "probe/gns_b_simple_over_ess": b / ess if ess > 0 else math.nan,
                }
            )
        return out

    def after_update(self, step: int, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """Everything measured at θ_after: measured ΔH, logit check, noise scale, Fisher; saves arrays.

        Returns:
            `probe/...` scalars (empty on steps `before_update` did not see).
        """
        st = self._state
        if st is None or st.step != step:
            return {}
        self._state = None
        cfg = self.cfg
        out: dict[str, float] = {}
        if cfg.step_probe and st.h_grads is not None and st.before is not None:
            after = [p.detach() for p in st.params]
            dot, dm = param_delta_dot(st.h_grads, st.before, after)
            with _eval_mode(model), torch.no_grad():
                h_after = self._entropy(model, st.probe_batch, self._temperature)
            sp = step_prediction(dot, torch.tensor(h_after - st.h_before, dtype=torch.float64))
            _put(out, "probe/step_", sp)
            _put(out, "probe/step_", dm)
            out["probe/H_before"] = st.h_before
            out["probe/H_after"] = h_after
        if cfg.logit_check and st.hidden_before is not None:
            with _eval_mode(model), torch.no_grad():
                hidden_after = response_hidden(model, st.probe_batch, cfg.probe_micro_batch)  # [N, d]
                w_after = _lm_head_weight(model).detach()
            pm, lm = logit_space_check(
                st.hidden_before,
                st.lm_weight_before,
                hidden_after,
                w_after,
                temperature=self._temperature,
                chunk=cfg.logit_chunk,
            )  # [2, N]
            _put(out, "probe/logit_", lm)
            st.arrays["logit_pred_dH"] = pm[0].cpu().numpy()
            st.arrays["logit_meas_dH"] = pm[1].cpu().numpy()
        if cfg.gns and st.gns_prev is not None:
            out.update(self._noise_scale(st))
        if st.fisher_grads is not None:
            metric = None
            if cfg.fisher_metric == "adam":
                metric = _adam_metric_of(optimizer, st.params)
            kern, fm = fisher_kernel(st.fisher_grads, metric=metric)  # [n, n]
            eig, sm = kernel_summary(kern, st.fisher_groups, st.fisher_adv)  # [n]
            _put(out, "probe/fisher_", fm)
            _put(out, "probe/fisher_", sm)
            infl, _ = kernel_influence(kern, st.fisher_adv)  # [n]
            st.arrays.update(
                fisher_kernel=kern.cpu().numpy(),
                fisher_eigvals=eig.cpu().numpy(),
                fisher_influence=infl.cpu().numpy(),
                fisher_adv=_np(st.fisher_adv),
                fisher_group_ids=st.fisher_groups.cpu().numpy(),
            )
        if cfg.step_probe and "probe/step_pred_dH" in out:
            st.arrays["step_pred_meas_dH"] = np.array([out["probe/step_pred_dH"], out["probe/step_meas_dH"]])
        if cfg.save_arrays and self.run_dir is not None and st.arrays:
            self._save(step, st.arrays)
        return out

    # --------------------------------------------------------------- helpers
    _temperature: float = 1.0

    def _stats(self) -> StatsFn:
        if self._stats_fn is None:
            self._stats_fn = policy_token_stats
        return self._stats_fn

    def _probe_batch(self, batch: Any, sample_probe_batch: Callable[[], Any] | None) -> Any:
        if self.cfg.probe_batch == "independent":
            if sample_probe_batch is None:
                raise ConfigError(
                    "probes.probe_batch is 'independent' but the trainer gave no probe-batch sampler; "
                    "set probes.probe_batch=train"
                )
            pb = sample_probe_batch()
        else:
            pb = batch
        if len(pb) > self.cfg.probe_max_sequences:
            pb = pb.select(list(range(self.cfg.probe_max_sequences)))
        return pb

    def _entropy_and_grad(
        self, model: torch.nn.Module, batch: Any, params: list[torch.nn.Parameter], temperature: float
    ) -> tuple[float, list[torch.Tensor | None]]:
        """Token-mean entropy H over the batch's response positions and ∇_θ H (micro-batched)."""
        n_tok = float(batch.response_mask.float().sum().item())
        grads: list[torch.Tensor | None] = [None] * len(params)
        total = 0.0
        for rows in _chunks(len(batch), self.cfg.probe_micro_batch):
            mb = batch.select(rows)
            stats = self._stats()(model, mb, temperature=temperature, with_grad=True)
            m = mb.response_mask.to(stats.entropy.dtype)  # [b, T]
            h_part = (stats.entropy * m).sum() / max(n_tok, 1.0)  # []
            total += float(h_part.detach().item())
            if not h_part.requires_grad:
                continue
            g = torch.autograd.grad(h_part, params, allow_unused=True)
            grads = [gi if acc is None else (acc if gi is None else acc + gi) for acc, gi in zip(grads, g)]
        return total, [None if g is None else g.detach() for g in grads]

    def _entropy(self, model: torch.nn.Module, batch: Any, temperature: float) -> float:
        n_tok = float(batch.response_mask.float().sum().item())
        total = 0.0
        for rows in _chunks(len(batch), self.cfg.probe_micro_batch):
            mb = batch.select(rows)
            stats = self._stats()(model, mb, temperature=temperature, with_grad=False)
            total += float((stats.entropy.detach().double() * mb.response_mask.double()).sum().item())
        return total / max(n_tok, 1.0)

    def _fisher_grads(
        self, st: _StepState, model: torch.nn.Module, batch: Any, advantages: torch.Tensor, temperature: float
    ) -> None:
        """Per-sequence ∇_θ log π(sequence) for the first `fisher_sequences` rows of the batch."""
        n = min(self.cfg.fisher_sequences, len(batch))
        rows = list(range(n))
        sub = batch.select(rows)
        mask = sub.response_mask.float()  # [n, T]
        adv = (advantages[:n].detach().float() * mask).sum(1) / mask.sum(1).clamp_min(1.0)  # [n]
        vecs = []
        with _eval_mode(model):
            for chunk in _chunks(n, self.cfg.probe_micro_batch):
                mb = sub.select(chunk)
                stats = self._stats()(model, mb, temperature=temperature, with_grad=True)
                seq_logp = (stats.logp * mb.response_mask.to(stats.logp.dtype)).sum(1)  # [b]
                for i in range(len(chunk)):
                    g = torch.autograd.grad(seq_logp[i], st.params, retain_graph=i + 1 < len(chunk), allow_unused=True)
                    vecs.append(
                        torch.cat(
                            [
                                (
                                    torch.zeros(p.numel(), device=p.device)
                                    if gi is None
                                    else gi.detach().reshape(-1).float()
                                )
                                for p, gi in zip(st.params, g)
                            ]
                        ).cpu()
                    )
        st.fisher_grads = torch.stack(vecs)  # [n, D]
        st.fisher_groups = sub.group_ids.detach().cpu()  # [n]
        st.fisher_adv = adv.cpu()  # [n]

    def _save(self, step: int, arrays: dict[str, np.ndarray]) -> None:
        out_dir = self.run_dir / "dynamics"
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / f"step_{step}.tmp.npz"
        np.savez_compressed(tmp, **arrays)
        tmp.replace(out_dir / f"step_{step}.npz")


# ---------------------------------------------------------------------- model access
def _lm_head_weight(model: torch.nn.Module) -> torch.Tensor:
    _, head = body_and_head(model)
    if getattr(head, "bias", None) is not None:
        raise ConfigError("probes.logit_check needs a bias-free LM head; set probes.logit_check=false")
    return head.weight


def response_hidden(model: torch.nn.Module, batch: Any, micro_batch: int = 16) -> torch.Tensor:
    """Last hidden states at the valid response-predicting positions, no grad, micro-batched.

    Uses `rlentropy.models.forward.response_hidden` (the same body pass as `policy_token_stats`).

    Args:
        model: a transformers causal LM (optionally PEFT-wrapped).
        batch: a `RolloutBatch`.
        micro_batch: rows per forward.

    Returns:
        [N, d] hidden states, N = Σ response_mask, rows in (b, t) order.
    """
    out = []
    with torch.no_grad():
        for rows in _chunks(len(batch), micro_batch):
            mb = batch.select(rows)
            h = _forward_hidden(model, mb)  # [b, T, d]
            out.append(h[mb.response_mask > 0])  # [n_b, d]
    return torch.cat(out)


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _adam_metric_of(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> torch.Tensor:
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    metrics = []
    for p in params:
        state = optimizer.state.get(p, {})
        if "exp_avg_sq" not in state or id(p) not in group_of:
            raise ConfigError(
                "probes.fisher_metric=adam needs an Adam-family optimizer with state for every trainable "
                "parameter; use probes.fisher_metric=identity"
            )
        g = group_of[id(p)]
        step = int(torch.as_tensor(state["step"]).item())
        metrics.append(adam_metric([state["exp_avg_sq"]], step=step, beta2=float(g["betas"][1]), eps=float(g["eps"])))
    return torch.cat(metrics).cpu()  # [D], on the CPU like the stored sequence gradients


def _chunks(n: int, size: int) -> list[list[int]]:
    return [list(range(lo, min(lo + size, n))) for lo in range(0, n, size)]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def _put(out: dict[str, float], prefix: str, metrics: dict[str, torch.Tensor]) -> None:
    for k, v in metrics.items():
        out[prefix + k] = float(v.item()) if isinstance(v, torch.Tensor) else float(v)
