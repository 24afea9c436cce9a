"""rlentropy inside TRL: a `GRPOTrainer` with Clip_B, Clip_V, Clip-Cov, KL-Cov and TokenStats metrics.

Install with `pip install 'rlentropy[trl]'` (TRL >= 1.16). Usage::

    from rlentropy.integrations.trl import EntropyGRPOConfig, EntropyGRPOTrainer
    args = EntropyGRPOConfig(output_dir="out", entropy_control="clip_b", clip_b_mu=2.5, ...)
    trainer = EntropyGRPOTrainer(model=..., reward_funcs=..., args=args, train_dataset=...)
    trainer.train()

How each piece plugs into TRL's loop:

- **Clip_B / Clip_V** edit the loss mask from *old-policy* statistics of the *whole* batch, like our
  own trainer. After TRL has generated and scored a generation batch (`_generate_and_score_completions`)
  we run one no-grad pass of the transformer body, take the last hidden states at the completion
  positions and call `rlentropy.tokenstats.token_stats_from_hidden` with the LM head weight (so S and
  s_bar come without `[B, T, V]` logits and without turning off TRL's fused LM head for the loss). The
  statistics of every process are gathered, the control runs on the global batch, and the dropped
  tokens are removed through TRL's `tool_mask` (which only enters the loss mask, never the attention
  mask); `num_items_in_batch` is recomputed, so the dropped tokens leave the token-mean denominator
  too. TRL's own `_compute_loss` then runs unchanged. When the step is on-policy and the generation
  batch is one loss call (`steps_per_generation == 1`, `num_iterations == 1`, no `old_per_token_logps`,
  no dropout; `fuse_old_stats`, on by default) the extra pass is skipped: the loss forward runs at the
  old weights on the same rows, so the body hook's hidden states give the same statistics, the same
  mask and the same loss (`_rl_fused_mask_loss`).
- **Clip-Cov / KL-Cov** are policy losses: `_compute_loss` computes the current log-probs with TRL's
  fused head, the per-token loss with `rlentropy.algorithms.get_policy_loss("clip_cov" | "kl_cov")`
  (selection per micro-batch, as in verl), and aggregates it exactly as TRL does for `loss_type`.
- **Metrics** (`rlentropy/...` keys in TRL's logs, see `rlentropy.integrations.common`): with a
  mask control they come from the old-policy pass over the whole batch. Otherwise a forward hook on
  the transformer body captures the last hidden states of TRL's own loss forward (no second body
  pass), and the statistics are computed from them without gradient, summed over the micro-batches of
  an optimizer step and all-reduced across processes.

With `entropy_control="none"` the loss and its gradients are exactly TRL's (the hook only reads).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from rlentropy.errors import ConfigError
from rlentropy.integrations.common import CONTROLS, LOSS_CONTROLS, MASK_CONTROLS, control_keep_mask, summary_metrics, summary_sums

try:
    from trl import GRPOConfig, GRPOTrainer
    from trl.trainer.utils import maybe_gather_lm_head_ctx
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "rlentropy.integrations.trl needs TRL >= 1.16: pip install 'rlentropy[trl]'"
    ) from err

__all__ = ["EntropyGRPOConfig", "EntropyGRPOTrainer"]

_COV_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


@dataclass
class EntropyGRPOConfig(GRPOConfig):
    """`trl.GRPOConfig` plus rlentropy's entropy controls and statistics.

    Defaults are the upstream ones (ALGORITHMS.md): Clip_B μ 2.5; Clip_V μ 8.5, cap 1e-4; Clip-Cov
    ratio 2e-4 in the band (1, 5); KL-Cov ratio 2e-4 (a fraction, not a percent) with coefficient 1.
    """

    entropy_control: str = field(
        default="none",
        metadata={"help": "Entropy control: none | clip_b | clip_v | clip_cov | kl_cov."},
    )
    clip_b_mu: float = field(default=2.5, metadata={"help": "Clip_B threshold in standard deviations of S."})
    clip_v_mu: float = field(default=8.5, metadata={"help": "Clip_V threshold in standard deviations of xD."})
    clip_v_max_frac: float = field(default=1e-4, metadata={"help": "Clip_V cap on negative-advantage drops."})
    clip_v_clip_zero_adv: bool = field(
        default=True, metadata={"help": "Clip_V also drops failing zero-advantage tokens (upstream behaviour)."}
    )
    clip_cov_ratio: float = field(default=2e-4, metadata={"help": "Clip-Cov fraction of tokens detached."})
    clip_cov_lb: float = field(default=1.0, metadata={"help": "Clip-Cov lower covariance bound."})
    clip_cov_ub: float = field(default=5.0, metadata={"help": "Clip-Cov upper covariance bound."})
    kl_cov_ratio: float = field(default=2e-4, metadata={"help": "KL-Cov fraction of tokens penalised."})
    kl_cov_coef: float = field(default=1.0, metadata={"help": "KL-Cov coefficient of |log r|."})
    rlentropy_metrics: bool = field(
        default=True, metadata={"help": "Log rlentropy/* TokenStats metrics (S, s_bar, quadrants, pressure)."}
    )
    fuse_old_stats: bool = field(
        default=True,
        metadata={
            "help": "Clip_B / Clip_V: take the old-policy statistics from the loss forward when the step is "
            "on-policy and the generation batch is one loss call (skips the extra no-grad pass; exact)."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.entropy_control not in CONTROLS:
            raise ConfigError(f"entropy_control must be one of {list(CONTROLS)}, got {self.entropy_control!r}")
        for name in ("clip_b_mu", "clip_v_mu", "kl_cov_coef"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("clip_v_max_frac", "clip_cov_ratio", "kl_cov_ratio"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ConfigError(f"{name} must be in (0, 1], got {value}")
        if not self.clip_cov_lb < self.clip_cov_ub:
            raise ConfigError(f"clip_cov_lb ({self.clip_cov_lb}) must be < clip_cov_ub ({self.clip_cov_ub})")


def _backbone_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The transformer body (whose output is the last hidden state) and the LM head, PEFT-aware."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(base, "base_model", None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if backbone is None or backbone is base or head is None:
        raise ConfigError(
            f"{type(base).__name__} has no separate transformer body and LM head; rlentropy statistics need a "
            "causal LM with `base_model` and `get_output_embeddings()`"
        )
    return backbone, head


def _check_plain_head(model: torch.nn.Module) -> None:
    """Our statistics assume logits = hidden @ W.T (+ b); refuse heads with scaling or soft-capping."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = base.config.get_text_config()
    if getattr(cfg, "final_logit_softcapping", None) is not None:
        raise ConfigError("rlentropy statistics do not support final_logit_softcapping models")
    for key in ("logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling"):
        value = getattr(cfg, key, None)
        if value is not None and float(value) != 1.0:
            raise ConfigError(f"rlentropy statistics do not support models with {key}={value}")


class EntropyGRPOTrainer(GRPOTrainer):
    """`trl.GRPOTrainer` with rlentropy's entropy controls and TokenStats metrics (see module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cfg = self.args
        if not isinstance(cfg, EntropyGRPOConfig):
            raise ConfigError("EntropyGRPOTrainer needs args=EntropyGRPOConfig(...)")
        self._rl_control = cfg.entropy_control
        if self._rl_control in LOSS_CONTROLS:
            if self.loss_type not in _COV_LOSS_TYPES:
                raise ConfigError(
                    f"entropy_control={self._rl_control!r} supports loss_type in {list(_COV_LOSS_TYPES)}, "
                    f"got {self.loss_type!r}"
                )
            if self.importance_sampling_level != "token":
                raise ConfigError(f"entropy_control={self._rl_control!r} needs importance_sampling_level='token'")
            if self.top_entropy_quantile < 1.0 or self._entropy_bonus_enabled or self.off_policy_mask_threshold:
                raise ConfigError(
                    f"entropy_control={self._rl_control!r} cannot be combined with top_entropy_quantile, "
                    "the entropy bonus or off_policy_mask_threshold"
                )
        if self._rl_control != "none" or cfg.rlentropy_metrics:
            _check_plain_head(self.accelerator.unwrap_model(self.model))
        self._rl_generator = torch.Generator(device="cpu")
        self._rl_generator.manual_seed(int(cfg.seed) * 1000003 + self.accelerator.process_index)
        self._rl_sums: torch.Tensor | None = None
        self._rl_dropout: bool | None = None

    # ------------------------------------------------------------------ helpers
    def _rl_lr(self) -> float:
        sched = getattr(self, "lr_scheduler", None)
        if sched is not None:
            return float(sched.get_last_lr()[0])
        return float(self.args.learning_rate)

    def _rl_loss_mask(self, inputs: dict[str, Any]) -> torch.Tensor:
        mask = inputs["completion_mask"]  # [B, T]
        return mask if inputs.get("tool_mask") is None else mask * inputs["tool_mask"]  # [B, T]

    def _rl_token_weights(self, loss_mask: torch.Tensor, num_items: torch.Tensor, global_rows: int) -> torch.Tensor:
        """Each token's weight in the aggregated loss of one optimizer step, for `loss_type`."""
        lm = loss_mask.to(torch.float64)  # [B, T]
        if self.loss_type in ("grpo", "sapo", "luspo"):
            return lm / lm.sum(-1, keepdim=True).clamp_min(1.0) / global_rows  # [B, T]
        if self.loss_type == "dr_grpo":
            return lm / (global_rows * self.max_completion_length)  # [B, T]
        return lm / num_items.to(torch.float64).clamp_min(1.0)  # [B, T]

    def _rl_stats_from_hidden(
        self, hidden: torch.Tensor, completion_ids: torch.Tensor, mask: torch.Tensor
    ) -> Any:
        """TokenStats [B, T] of the completion tokens from the last hidden states at their positions."""
        from rlentropy.tokenstats import token_stats_from_hidden

        _, head = _backbone_and_head(self.accelerator.unwrap_model(self.model))
        with torch.no_grad(), maybe_gather_lm_head_ctx(head.weight, head.bias):
            return token_stats_from_hidden(
                hidden.detach(),
                head.weight.detach(),
                completion_ids,
                temperature=self.temperature,
                mask=mask,
                bias=None if head.bias is None else head.bias.detach(),
            )

    @contextlib.contextmanager
    def _rl_capture_hidden(self, model: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
        """Capture the body's last hidden states during TRL's own forward (read-only forward hook)."""
        backbone, _ = _backbone_and_head(self.accelerator.unwrap_model(model))
        captured: list[torch.Tensor] = []

        def hook(_module: torch.nn.Module, _args: Any, out: Any) -> None:
            hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
            captured.append(hidden.detach())

        handle = backbone.register_forward_hook(hook)
        try:
            yield captured
        finally:
            handle.remove()

    def _rl_old_policy_stats(self, output: dict[str, Any]) -> Any:
        """No-grad TokenStats of the completions under the current (= old) policy, in chunks."""
        from rlentropy.tokenstats import TokenStats

        model = self.accelerator.unwrap_model(self.model)
        backbone, _ = _backbone_and_head(model)
        ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)  # [B, L]
        att = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)  # [B, L]
        t = output["completion_ids"].size(1)
        mask = output["completion_mask"]  # [B, T]
        chunk = self.args.per_device_train_batch_size if self.model.training else self.args.per_device_eval_batch_size
        parts = []
        with torch.no_grad():
            for start in range(0, ids.size(0), chunk):
                sl = slice(start, start + chunk)
                with self.accelerator.autocast():
                    out = backbone(input_ids=ids[sl], attention_mask=att[sl], use_cache=False)
                hidden = out.last_hidden_state[:, -t - 1 : -1]  # [b, T, d]
                parts.append(self._rl_stats_from_hidden(hidden, output["completion_ids"][sl], mask[sl]))
        return TokenStats(**{f: torch.cat([getattr(p, f) for p in parts], dim=0) for f in _STAT_FIELDS})

    def _rl_gather_rows(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T] local rows → [B * P, T_max] rows of every process (padded with 0 along T)."""
        x = self.accelerator.pad_across_processes(x.contiguous(), dim=1, pad_index=0)
        return self.accelerator.gather(x)

    # ------------------------------------------------------------------ TRL hooks
    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        if self._rl_control not in MASK_CONTROLS or self._rl_fuse(output):
            return output
        return self._rl_apply_mask_control(output, self._rl_old_policy_stats(output))

    def _compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        if self._rl_control in MASK_CONTROLS:
            if self._rl_fuse(inputs):
                return self._rl_fused_mask_loss(model, inputs)
            return super()._compute_loss(model, inputs)
        want_hook = self.args.rlentropy_metrics
        with self._rl_capture_hidden(model) if want_hook else contextlib.nullcontext([]) as captured:
            if self._rl_control in LOSS_CONTROLS:
                loss = self._rl_cov_loss(model, inputs)
            else:
                loss = super()._compute_loss(model, inputs)
        if want_hook and captured:
            self._rl_metrics_from_loss_forward(inputs, torch.cat(captured, dim=0))
        return loss

    # ------------------------------------------------------------------ Clip_B / Clip_V
    def _rl_has_dropout(self) -> bool:
        """True when the policy's forward is stochastic (a dropout with p > 0 in a module or the config)."""
        if self._rl_dropout is None:
            model = self.accelerator.unwrap_model(self.model)
            mods = any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            conf = getattr(base, "config", None)
            attrs = [
                v for k, v in (vars(conf).items() if conf is not None else ())
                if ("dropout" in k or "pdrop" in k) and isinstance(v, (int, float)) and not isinstance(v, bool)
            ]
            self._rl_dropout = mods or any(v > 0 for v in attrs)
        return self._rl_dropout

    def _rl_fuse(self, batch: dict[str, Any]) -> bool:
        """Whether the mask control of this batch runs on the statistics of TRL's own loss forward.

        True when that forward sees exactly the old policy over the whole generation batch: TRL computed
        no `old_per_token_logps` (the step is on-policy: the weights have not moved since generation and
        no vLLM importance-sampling correction), the generation batch reaches one `_compute_loss` call on
        each process (training: `steps_per_generation == 1` and `num_iterations == 1`; evaluation always),
        and the forward is deterministic (no dropout). Otherwise the extra no-grad pass runs after
        generation. `fuse_old_stats=False` always takes the extra pass.
        """
        if self._rl_control not in MASK_CONTROLS or not self.args.fuse_old_stats:
            return False
        if batch.get("old_per_token_logps") is not None:
            return False
        if self.model.training and (self.args.steps_per_generation != 1 or self.num_iterations != 1):
            return False
        return not self._rl_has_dropout()

    def _rl_apply_mask_control(self, batch: dict[str, Any], stats: Any) -> dict[str, Any]:
        """Run Clip_B / Clip_V on the whole batch of every process; return the batch with the new masks.

        `stats` are the old-policy TokenStats [B, T] of this process's rows. The dropped tokens leave the
        loss through `tool_mask` and `num_items_in_batch`; the metrics of the batch are logged here.
        """
        out = dict(batch)
        mode = "train" if self.model.training else "eval"
        loss_mask = self._rl_loss_mask(out)  # [B, T]
        b, t = loss_mask.shape
        adv = out["advantages"]
        adv = adv.unsqueeze(1).expand(b, t) if adv.dim() == 1 else adv  # [B, T]
        g_s, g_sb, g_a, g_m = (self._rl_gather_rows(x.float()) for x in (stats.s, stats.s_bar, adv, loss_mask))
        cfg = self.args
        if self._rl_control == "clip_b":
            params: dict[str, Any] = {"mu": cfg.clip_b_mu}
        else:
            params = {"mu": cfg.clip_v_mu, "max_frac": cfg.clip_v_max_frac, "clip_zero_adv": cfg.clip_v_clip_zero_adv}
        g_keep, _ = control_keep_mask(self._rl_control, s=g_s, s_bar=g_sb, advantages=g_a, mask=g_m, params=params)
        rank = self.accelerator.process_index
        keep = g_keep[rank * b : (rank + 1) * b, :t]  # [B, T]
        tool_mask = out.get("tool_mask")
        base = torch.ones_like(out["completion_mask"]) if tool_mask is None else tool_mask
        out["tool_mask"] = base * keep.to(base.dtype)  # [B, T]
        new_mask = self._rl_loss_mask(out)  # [B, T]
        out["num_items_in_batch"] = self.accelerator.gather(new_mask.sum()).sum()
        if cfg.rlentropy_metrics:
            weights = self._rl_token_weights(new_mask, out["num_items_in_batch"], b * self.accelerator.num_processes)
            sums = summary_sums(
                entropy=stats.entropy, logp=stats.logp, s=stats.s, s_bar=stats.s_bar, advantages=adv,
                mask=loss_mask, loss_mask=new_mask, token_weights=weights, lr=self._rl_lr(),
            )
            self._rl_log(mode, self.accelerator.reduce(sums, reduction="sum"))
        return out

    def _rl_fused_mask_loss(self, model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        """TRL's loss with the mask control computed from the statistics of the loss forward itself.

        TRL builds its loss mask before its forward, so the forward is run first: TRL's own call of
        `_get_per_token_logps_and_entropies` for this batch is recorded (TRL's `_compute_loss` stops at
        it), run once with the read-only hook on the transformer body, the control runs on the detached
        hidden-state statistics (gathered over processes), and TRL's `_compute_loss` then runs on the
        masked batch with that call answered by the forward already done (graph included).
        """
        recorded: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

        def record(*args: Any, **kwargs: Any) -> Any:
            recorded.append((args, kwargs))
            raise _ForwardRecorded

        self._get_per_token_logps_and_entropies = record
        try:
            super()._compute_loss(model, inputs)
        except _ForwardRecorded:
            pass
        finally:
            del self._get_per_token_logps_and_entropies
        if len(recorded) != 1:
            raise RuntimeError("TRL's _compute_loss did not call _get_per_token_logps_and_entropies once")
        args, kwargs = recorded[0]
        with self._rl_capture_hidden(model) as captured:
            result = self._get_per_token_logps_and_entropies(*args, **kwargs)
        completion_ids = inputs["completion_ids"]
        t = completion_ids.size(1)
        hidden = torch.cat(captured, dim=0)[:, -t - 1 : -1]  # [B, T, d]
        stats = self._rl_stats_from_hidden(hidden, completion_ids, inputs["completion_mask"])
        masked = self._rl_apply_mask_control(inputs, stats)
        self._get_per_token_logps_and_entropies = lambda *_a, **_k: result
        try:
            return super()._compute_loss(model, masked)
        finally:
            del self._get_per_token_logps_and_entropies

    # ------------------------------------------------------------------ pieces
    def _rl_log(self, mode: str, sums: torch.Tensor) -> None:
        for key, value in summary_metrics(sums).items():
            self._metrics[mode][key].append(value)

    def _rl_metrics_from_loss_forward(self, inputs: dict[str, Any], hidden_full: torch.Tensor) -> None:
        mode = "train" if self.model.training else "eval"
        completion_ids = inputs["completion_ids"]
        b, t = completion_ids.shape
        mask = self._rl_loss_mask(inputs)  # [B, T]
        hidden = hidden_full[:, -t - 1 : -1]  # [B, T, d]
        stats = self._rl_stats_from_hidden(hidden, completion_ids, inputs["completion_mask"])
        adv = inputs["advantages"]
        adv = adv.unsqueeze(1).expand(b, t) if adv.dim() == 1 else adv  # [B, T]
        accum = self.current_gradient_accumulation_steps if mode == "train" else 1
        weights = self._rl_token_weights(mask, inputs["num_items_in_batch"], b * accum * self.accelerator.num_processes)
        sums = summary_sums(
            entropy=stats.entropy, logp=stats.logp, s=stats.s, s_bar=stats.s_bar, advantages=adv,
            mask=mask, loss_mask=mask, token_weights=weights, lr=self._rl_lr(),
        )
        self._rl_sums = sums if self._rl_sums is None else self._rl_sums + sums
        if mode == "eval" or self.accelerator.sync_gradients:
            total = self.accelerator.reduce(self._rl_sums, reduction="sum")
            self._rl_sums = None
            self._rl_log(mode, total)

    def _rl_cov_loss(self, model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        """Clip-Cov / KL-Cov policy loss, aggregated exactly as TRL aggregates `loss_type`."""
        from rlentropy.algorithms import get_policy_loss

        mode = "train" if self.model.training else "eval"
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # [B, L]
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)  # [B, L]
        mask = self._rl_loss_mask(inputs)  # [B, T]
        logps, entropies, _ = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, completion_ids.size(1), compute_entropy=True
        )  # [B, T]
        adv = inputs["advantages"]
        adv = adv.unsqueeze(1).expand_as(logps) if adv.dim() == 1 else adv  # [B, T]
        old = inputs.get("old_per_token_logps")
        old = logps.detach() if old is None else old  # [B, T]
        cfg = self.args
        if self._rl_control == "clip_cov":
            params: dict[str, Any] = {
                "eps_low": self.epsilon_low, "eps_high": self.epsilon_high, "clip_cov_ratio": cfg.clip_cov_ratio,
                "clip_cov_lb": cfg.clip_cov_lb, "clip_cov_ub": cfg.clip_cov_ub, "generator": self._rl_generator,
            }
        else:
            params = {"kl_cov_ratio": cfg.kl_cov_ratio, "ppo_kl_coef": cfg.kl_cov_coef}
        per_token_loss, loss_metrics = get_policy_loss(self._rl_control)(logps, old, adv, mask.float(), **params)
        if self.use_vllm and self.vllm_importance_sampling_correction:
            per_token_loss = per_token_loss * inputs["importance_sampling_ratio"]
        if self.beta != 0.0:
            ref = inputs["ref_per_token_logps"]
            per_token_kl = torch.exp(ref - logps) - (ref - logps) - 1  # [B, T]
            if self.args.use_bias_correction_kl:
                per_token_kl = per_token_kl * torch.exp(logps - old)
            per_token_loss = per_token_loss + self.beta * per_token_kl
        accum = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        if self.loss_type == "grpo":
            loss = ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean() / accum
        elif self.loss_type == "bnpo":
            loss = (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0) / accum
        elif self.loss_type == "dr_grpo":
            loss = (per_token_loss * mask).sum() / (per_token_loss.size(0) * self.max_completion_length) / accum
        else:  # dapo
            normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
            if mode == "train":
                normalizer = normalizer * self.current_gradient_accumulation_steps / self.args.steps_per_generation
            loss = (per_token_loss * mask).sum() / normalizer

        def global_mean(x: torch.Tensor) -> float:
            totals = self.accelerator.reduce(torch.stack([(x * mask).sum(), mask.sum().float()]), reduction="sum")
            return (totals[0] / totals[1].clamp(min=1.0)).item()

        self._metrics[mode]["entropy"].append(global_mean(entropies))
        for key, value in loss_metrics.items():
            if torch.is_tensor(value) and value.numel() == 1:
                reduced = self.accelerator.reduce(value.detach().float().reshape(1), reduction="mean")
                self._metrics[mode][f"rlentropy/{self._rl_control}/{key}"].append(reduced.item())
        return loss


_STAT_FIELDS = ("logp", "entropy", "s", "s_bar", "sum_p2")


class _ForwardRecorded(Exception):
    """Raised inside TRL's `_compute_loss` once its forward call has been recorded (never escapes)."""
