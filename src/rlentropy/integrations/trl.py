"""rlentropy inside TRL: a `GRPOTrainer` that runs any registered control, policy loss or advantage
estimator of `rlentropy.algorithms`, and logs rlentropy's TokenStats metrics.

Install with `pip install 'rlentropy[trl]'` (tested against TRL `SUPPORTED_TRL`). Usage::

    from rlentropy.integrations.trl import EntropyGRPOConfig, EntropyGRPOTrainer
    args = EntropyGRPOConfig(output_dir="out", entropy_control="clip_b", entropy_control_params={"mu": 2.0}, ...)
    trainer = EntropyGRPOTrainer(model=..., reward_funcs=..., args=args, train_dataset=...)
    trainer.train()

Everything is dispatched through the registries: the adapter knows a method only by what its entry
declares (kind, inputs, stage). How each kind plugs into TRL's loop, through overridable methods only:

- **Old-stage controls** (Clip_B, Clip_V, quadrant, …) and stats-reading advantage estimators run on
  the old policy's statistics of the *whole* generation batch, gathered over processes, like our own
  trainer. After `_generate_and_score_completions` one no-grad pass of the transformer body gives the
  last hidden states at the completion positions, and `rlentropy.tokenstats.token_stats_from_hidden`
  turns them into S, E_p[S], H, … without `[B, T, V]` logits and without turning TRL's fused LM head
  off. A mask control removes tokens through TRL's `tool_mask` (which only enters the loss mask) and
  `num_items_in_batch`; an advantage control replaces `advantages` with `[B, T]` ones. When the step
  is on-policy and the generation batch is one loss call (`fuse_old_stats`), the extra pass is skipped:
  `_compute_loss` runs TRL's own forward first (the weights have not moved, so it IS the old policy),
  computes the statistics from its hidden states, applies the controls, then hands the same forward to
  TRL's loss through `_get_per_token_logps_and_entropies`.
- **Current-stage controls** (high_entropy, …) run per `_compute_loss` call on the statistics of that
  forward: a mask control zeroes the advantages of the dropped tokens (their loss vanishes, the
  denominators keep them — TRL's `top_entropy_quantile` semantics), an advantage control replaces them,
  a loss term is added to the loss (divided by the gradient-accumulation steps, like TRL's bonus).
- **A policy loss** (`entropy_loss`, e.g. clip_cov, kl_cov, gmpo): the per-token loss of our registry,
  plus TRL's KL and vLLM importance weights, aggregated with `rlentropy.algorithms.aggregate_loss` in
  the mode `TRL_AGGREGATION[loss_type]` — TRL exposes no aggregation seam, and for every `loss_type` this
  mode equals TRL's own reduction (tested against TRL's `_compute_loss` on the same tensors).
- **An advantage estimator** (`entropy_advantage`): recomputed from the gathered rewards that
  `_calculate_rewards` returns, with groups of `num_generations` consecutive completions.
- **Metrics** (`rlentropy/...` in TRL's logs, `rlentropy.integrations.common`; each method's own under
  `rlentropy/<method>/...`): from the old-policy
  pass when there is one, else from a read-only forward hook on the body during TRL's own loss
  forward, summed over the micro-batches of an optimizer step and all-reduced over processes.

With `entropy_control="none"` and no loss / advantage the loss and its gradients are exactly TRL's.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from rlentropy.algorithms import ADVANTAGES, POLICY_LOSSES, aggregate_loss
from rlentropy.algorithms.dispatch import (
    Active,
    check_values,
    configure_controls,
    control_names,
    run_controls,
)
from rlentropy.data.tasks import Example
from rlentropy.errors import ConfigError
from rlentropy.evaluate import evaluate_model
from rlentropy.integrations.common import summary_metrics, summary_sums
from rlentropy.tokenstats import STAT_FIELDS, TokenStats, token_stats_from_hidden

try:
    import trl
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from trl.trainer.utils import maybe_gather_lm_head_ctx
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("rlentropy.integrations.trl needs TRL: pip install 'rlentropy[trl]'") from err

__all__ = [
    "EntropyGRPOConfig",
    "EntropyGRPOTrainer",
    "PassAtKCallback",
    "RewardTask",
    "SUPPORTED_TRL",
    "TRL_AGGREGATION",
]

SUPPORTED_TRL: tuple[str, ...] = ("1.16",)
"""TRL minor versions the adapter is tested against (it overrides TRL methods whose signatures move)."""

if ".".join(trl.__version__.split(".")[:2]) not in SUPPORTED_TRL:  # pragma: no cover - depends on the install
    raise ImportError(
        f"rlentropy.integrations.trl is tested against TRL {', '.join(v + '.x' for v in SUPPORTED_TRL)} and overrides "
        f"methods whose signatures change between TRL releases; found TRL {trl.__version__}. Install a supported "
        "version: pip install 'rlentropy[trl]'"
    )

TRL_AGGREGATION: dict[str, str] = {
    "grpo": "seq-mean-token-mean",
    "sapo": "seq-mean-token-mean",
    "luspo": "seq-mean-token-sum",
    "bnpo": "token-mean",
    "dr_grpo": "seq-mean-token-sum-norm",
    "dapo": "token-mean",
    "cispo": "token-mean",
    "vespo": "token-mean",
}
"""The `aggregate_loss` mode equal to each TRL `loss_type`'s reduction (with the counts `_aggregate` passes)."""

_FORWARD_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "num_images",
    "pixel_attention_mask",
    "spatial_shapes",
    "num_tiles",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
    "image_position_ids",
)


def _params(name: str, value: Any) -> dict[str, Any]:
    """A parameter dict given as a dict, a JSON string (TRL's command-line parser) or None."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{name}: not a JSON object: {value!r}") from err
    if not isinstance(value, dict):
        raise ConfigError(f"{name}: must be a mapping of parameters, got {value!r}")
    return dict(value)


@dataclass
class EntropyGRPOConfig(GRPOConfig):
    """`trl.GRPOConfig` plus rlentropy's methods and statistics. Names and defaults come from the
    registries of `rlentropy.algorithms` (`rlentropy methods` lists them)."""

    entropy_control: str = field(
        default="none", metadata={"help": f"rlentropy control(s), comma-separated: {', '.join(control_names())}."}
    )
    entropy_control_params: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "Parameters of the control (JSON; keyed by name for several controls)."}
    )
    entropy_control_stage: str | None = field(
        default=None, metadata={"help": "Run the control(s) at stage 'old' or 'current' instead of their default."}
    )
    entropy_loss: str | None = field(
        default=None,
        metadata={"help": f"rlentropy policy loss replacing loss_type's: {', '.join(POLICY_LOSSES.names())}."},
    )
    entropy_loss_params: dict[str, Any] | str | None = field(default=None, metadata={"help": "Its parameters (JSON)."})
    entropy_advantage: str | None = field(
        default=None, metadata={"help": f"rlentropy advantage estimator: {', '.join(ADVANTAGES.names())}."}
    )
    entropy_advantage_params: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "Its parameters (JSON)."}
    )
    rlentropy_metrics: bool = field(
        default=True, metadata={"help": "Log rlentropy/* TokenStats metrics (S, s_bar, quadrants, pressure)."}
    )
    fuse_old_stats: bool = field(
        default=True,
        metadata={
            "help": "Old-stage controls: take the old-policy statistics from the loss forward when the step is "
            "on-policy and the generation batch is one loss call (skips the extra no-grad pass; exact)."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.entropy_control_params = _params("entropy_control_params", self.entropy_control_params)
        self.entropy_loss_params = _params("entropy_loss_params", self.entropy_loss_params)
        self.entropy_advantage_params = _params("entropy_advantage_params", self.entropy_advantage_params)
        names = [n.strip() for n in self.entropy_control.split(",") if n.strip()] or ["none"]
        if (
            len(names) == 1 and names[0] in POLICY_LOSSES and self.entropy_loss is None
        ):  # clip_cov / kl_cov as a control
            self.entropy_loss, self.entropy_loss_params = names[0], self.entropy_control_params
            self.entropy_control, self.entropy_control_params, names = "none", {}, ["none"]
        try:
            for n in names:
                if n not in control_names():
                    raise ValueError(f"{n!r} is not allowed; allowed: {', '.join(control_names())}")
            for c in configure_controls(
                names, self.entropy_control_params, stage=self.entropy_control_stage, where="entropy_control_params"
            ):
                check_values(c.spec, c.params, "entropy_control_params", group=self.num_generations or 2)
            if self.entropy_loss is not None:
                spec = POLICY_LOSSES.get(self.entropy_loss)
                check_values(
                    spec, spec.resolve(self.entropy_loss_params, where="entropy_loss_params"), "entropy_loss_params"
                )
            if self.entropy_advantage is not None:
                spec = ADVANTAGES.get(self.entropy_advantage)
                check_values(
                    spec,
                    spec.resolve(self.entropy_advantage_params, where="entropy_advantage_params"),
                    "entropy_advantage_params",
                )
        except ValueError as err:
            msg = str(err)
            raise ConfigError(msg if msg.startswith("entropy_") else f"entropy_control: {msg}") from None

    def control_names(self) -> list[str]:
        return [n.strip() for n in self.entropy_control.split(",") if n.strip() and n.strip() != "none"]


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
    """`trl.GRPOTrainer` running rlentropy's registered methods (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cfg = self.args
        if not isinstance(cfg, EntropyGRPOConfig):
            raise ConfigError("EntropyGRPOTrainer needs args=EntropyGRPOConfig(...)")
        self._rl_controls: list[Active] = configure_controls(
            cfg.control_names(), cfg.entropy_control_params, stage=cfg.entropy_control_stage
        )
        self._rl_loss = POLICY_LOSSES.get(cfg.entropy_loss) if cfg.entropy_loss else None
        self._rl_loss_params = self._rl_loss.resolve(cfg.entropy_loss_params) if self._rl_loss else {}
        self._rl_adv = ADVANTAGES.get(cfg.entropy_advantage) if cfg.entropy_advantage else None
        self._rl_adv_params = self._rl_adv.resolve(cfg.entropy_advantage_params) if self._rl_adv else {}
        self._rl_check_loss()
        if self._rl_controls or self._rl_loss or self._rl_adv or cfg.rlentropy_metrics:
            _check_plain_head(self.accelerator.unwrap_model(self.model))
        self._rl_generator = torch.Generator(device="cpu")
        self._rl_generator.manual_seed(int(cfg.seed) * 1000003 + self.accelerator.process_index)
        self._rl_sums: torch.Tensor | None = None
        self._rl_dropout: bool | None = None
        self._rl_rewards: torch.Tensor | None = None
        self._rl_cached: Any = None

    def _rl_check_loss(self) -> None:
        if self._rl_loss is None:
            return
        name = self._rl_loss.name
        if self.loss_type not in TRL_AGGREGATION:
            raise ConfigError(
                f"entropy_loss={name!r} supports loss_type in {list(TRL_AGGREGATION)}, got {self.loss_type!r}"
            )
        if self.importance_sampling_level != "token":
            raise ConfigError(f"entropy_loss={name!r} needs importance_sampling_level='token'")
        if self.top_entropy_quantile < 1.0 or self._entropy_bonus_enabled or self.off_policy_mask_threshold:
            raise ConfigError(
                f"entropy_loss={name!r} cannot be combined with top_entropy_quantile, the entropy bonus "
                "or off_policy_mask_threshold (use rlentropy's high_entropy / entropy_bonus controls)"
            )

    # ------------------------------------------------------------------ what runs when
    def _rl_stage(self, stage: str) -> list[Active]:
        return [c for c in self._rl_controls if c.stage == stage and c.enabled()]

    def _rl_old_fields(self) -> tuple[str, ...]:
        fields = set(self._rl_adv.reads_stats()) if self._rl_adv else set()
        for c in self._rl_stage("old"):
            fields |= set(c.spec.reads_stats())
        return tuple(f for f in STAT_FIELDS if f in fields)

    def _rl_has_dropout(self) -> bool:
        """True when the policy's forward is stochastic (a dropout with p > 0 in a module or the config)."""
        if self._rl_dropout is None:
            model = self.accelerator.unwrap_model(self.model)
            mods = any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            conf = getattr(base, "config", None)
            attrs = [
                v
                for k, v in (vars(conf).items() if conf is not None else ())
                if ("dropout" in k or "pdrop" in k) and isinstance(v, (int, float)) and not isinstance(v, bool)
            ]
            self._rl_dropout = mods or any(v > 0 for v in attrs)
        return self._rl_dropout

    def _rl_fuse(self, batch: dict[str, Any]) -> bool:
        """Whether the old-stage controls of this batch run on the statistics of TRL's own loss forward.

        True when that forward sees exactly the old policy over the whole generation batch: TRL computed
        no `old_per_token_logps` (on-policy: no weight change since generation, no vLLM importance
        correction), the generation batch reaches one `_compute_loss` call on each process (training:
        `steps_per_generation == 1` and `num_iterations == 1`; evaluation always), the forward is
        deterministic (no dropout), and no advantage estimator reads statistics (it needs the groups,
        which TRL shuffles before the loss). `fuse_old_stats=False` always takes the extra pass.
        """
        if not self._rl_stage("old") or not self.args.fuse_old_stats:
            return False
        if self._rl_adv is not None and self._rl_adv.reads_stats():
            return False
        if batch.get("old_per_token_logps") is not None:
            return False
        if self.model.training and (self.args.steps_per_generation != 1 or self.num_iterations != 1):
            return False
        return not self._rl_has_dropout()

    # ------------------------------------------------------------------ helpers
    def _rl_mode(self) -> str:
        return "train" if self.model.training else "eval"

    def _rl_lr(self) -> float:
        sched = getattr(self, "lr_scheduler", None)
        if sched is not None:
            return float(sched.get_last_lr()[0])
        return float(self.args.learning_rate)

    def _rl_loss_mask(self, inputs: dict[str, Any]) -> torch.Tensor:
        mask = inputs["completion_mask"]  # [B, T]
        return mask if inputs.get("tool_mask") is None else mask * inputs["tool_mask"]  # [B, T]

    def _rl_token_adv(self, inputs: dict[str, Any]) -> torch.Tensor:
        adv = inputs["advantages"]
        b, t = inputs["completion_ids"].shape
        return (adv.unsqueeze(1).expand(b, t) if adv.dim() == 1 else adv).float()  # [B, T]

    def _rl_token_weights(self, loss_mask: torch.Tensor, num_items: torch.Tensor, global_rows: int) -> torch.Tensor:
        """Each token's weight in the aggregated loss of one optimizer step, for `loss_type`."""
        lm = loss_mask.to(torch.float64)  # [B, T]
        if self.loss_type in ("grpo", "sapo", "luspo"):
            return lm / lm.sum(-1, keepdim=True).clamp_min(1.0) / global_rows  # [B, T]
        if self.loss_type == "dr_grpo":
            return lm / (global_rows * self.max_completion_length)  # [B, T]
        return lm / num_items.to(torch.float64).clamp_min(1.0)  # [B, T]

    def _rl_summary_sums(
        self, stats: TokenStats, inputs: dict[str, Any], mask: torch.Tensor, loss_mask: torch.Tensor, global_rows: int
    ) -> torch.Tensor:
        """`summary_sums` of one loss call: `stats` over `mask`, the loss over `loss_mask` weighted as
        `loss_type` weights it (`global_rows` rows in the optimizer step), `inputs`' advantages."""
        weights = self._rl_token_weights(loss_mask, inputs["num_items_in_batch"], global_rows)
        return summary_sums(
            entropy=stats.entropy,
            logp=stats.logp,
            s=stats.s,
            s_bar=stats.s_bar,
            advantages=self._rl_token_adv(inputs),
            mask=mask,
            loss_mask=loss_mask,
            token_weights=weights,
            lr=self._rl_lr(),
        )

    def _rl_stats_from_hidden(
        self, hidden: torch.Tensor, completion_ids: torch.Tensor, mask: torch.Tensor, *, grad: bool = False
    ) -> TokenStats:
        """TokenStats [B, T] of the completion tokens from the last hidden states at their positions
        (log p and H differentiable when `grad`, else everything detached)."""
        _, head = _backbone_and_head(self.accelerator.unwrap_model(self.model))
        ctx = contextlib.nullcontext() if grad else torch.no_grad()
        with ctx, maybe_gather_lm_head_ctx(head.weight, head.bias):
            w, b = head.weight, head.bias
            if not grad:
                hidden, w, b = hidden.detach(), w.detach(), None if b is None else b.detach()
            return token_stats_from_hidden(hidden, w, completion_ids, temperature=self.temperature, mask=mask, bias=b)

    @contextlib.contextmanager
    def _rl_capture_hidden(self, model: torch.nn.Module, *, detach: bool = True) -> Iterator[list[torch.Tensor]]:
        """Capture the body's last hidden states during TRL's own forward (read-only forward hook)."""
        backbone, _ = _backbone_and_head(self.accelerator.unwrap_model(model))
        captured: list[torch.Tensor] = []

        def hook(_module: torch.nn.Module, _args: Any, out: Any) -> None:
            hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
            captured.append(hidden.detach() if detach else hidden)

        handle = backbone.register_forward_hook(hook)
        try:
            yield captured
        finally:
            handle.remove()

    def _rl_old_policy_stats(self, output: dict[str, Any]) -> TokenStats:
        """No-grad TokenStats of the completions under the current (= old) policy, in chunks."""
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
        return TokenStats(**{f: torch.cat([getattr(p, f) for p in parts], dim=0) for f in STAT_FIELDS})

    def _rl_gather_rows(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T] local rows → [B * P, T_max] rows of every process (padded with 0 along T)."""
        x = self.accelerator.pad_across_processes(x.contiguous(), dim=1, pad_index=0)
        return self.accelerator.gather(x)

    def _rl_log(self, mode: str, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self._metrics[mode][key].append(value)

    def _rl_log_tensors(self, mode: str, metrics: dict[str, torch.Tensor], prefix: str) -> None:
        for key, value in metrics.items():
            if torch.is_tensor(value) and value.numel() == 1:
                reduced = self.accelerator.reduce(value.detach().float().reshape(1), reduction="mean")
                self._metrics[mode][prefix + key].append(reduced.item())

    # ------------------------------------------------------------------ TRL seams
    def _calculate_rewards(self, inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any) -> torch.Tensor:
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._rl_rewards = rewards_per_func  # [N_all, F], gathered over processes by TRL
        return rewards_per_func

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        needs_stats = bool(self._rl_old_fields())
        if self._rl_adv is not None and not self._rl_adv.reads_stats():
            output = self._rl_advantages(output, None)
        if not (self._rl_stage("old") or needs_stats) or self._rl_fuse(output):
            return output
        stats = self._rl_old_policy_stats(output)
        if self._rl_adv is not None and self._rl_adv.reads_stats():
            output = self._rl_advantages(output, stats)
        return self._rl_old_stage(output, stats)

    def _get_per_token_logps_and_entropies(self, *args: Any, **kwargs: Any) -> Any:
        """TRL's forward — or, inside our `_compute_loss`, the forward it already ran (graph included)."""
        cached, self._rl_cached = self._rl_cached, None
        if cached is not None:
            return cached
        return super()._get_per_token_logps_and_entropies(*args, **kwargs)

    def _compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        fused = self._rl_fuse(inputs)
        if not (fused or self._rl_stage("current")):
            return self._rl_plain_loss(model, inputs, logged=bool(self._rl_stage("old")))
        loss_terms = any(c.spec.kind == "loss_term" for c in self._rl_stage("current"))
        ids, att, t = self._rl_ids(inputs)
        with self._rl_capture_hidden(model, detach=not loss_terms) as captured:
            result = super()._get_per_token_logps_and_entropies(
                model,
                ids,
                att,
                t,
                compute_entropy=True,
                compute_aux_loss=self.aux_loss_enabled,
                **{k: inputs.get(k) for k in _FORWARD_KEYS},
            )
        hidden = torch.cat(captured, dim=0)[:, -t - 1 : -1]  # [B, T, d]
        stats = self._rl_stats_from_hidden(hidden, inputs["completion_ids"], inputs["completion_mask"], grad=loss_terms)
        if fused:
            inputs = self._rl_old_stage(inputs, stats.detach())
        terms: list[torch.Tensor] = []
        if self._rl_stage("current"):
            inputs, terms = self._rl_current_stage(inputs, stats, result[0])
        self._rl_cached = result
        try:
            loss = (
                self._rl_policy_loss(model, inputs)
                if self._rl_loss is not None
                else super()._compute_loss(model, inputs)
            )
        finally:
            self._rl_cached = None
        accum = self.current_gradient_accumulation_steps if self.model.training else 1.0
        for term in terms:
            loss = loss + term / accum
        if self.args.rlentropy_metrics and not fused:
            self._rl_metrics(inputs, stats.detach())
        return loss

    def _rl_plain_loss(self, model: torch.nn.Module, inputs: dict[str, Any], *, logged: bool) -> torch.Tensor:
        """TRL's loss (or our policy loss) with the metrics read from its forward by the hook."""
        want = self.args.rlentropy_metrics and not logged
        with self._rl_capture_hidden(model) if want else contextlib.nullcontext([]) as captured:
            loss = (
                self._rl_policy_loss(model, inputs)
                if self._rl_loss is not None
                else super()._compute_loss(model, inputs)
            )
        if want and captured:
            t = inputs["completion_ids"].size(1)
            hidden = torch.cat(captured, dim=0)[:, -t - 1 : -1]  # [B, T, d]
            self._rl_metrics(
                inputs, self._rl_stats_from_hidden(hidden, inputs["completion_ids"], inputs["completion_mask"])
            )
        return loss

    def _rl_ids(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, int]:
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)  # [B, L]
        att = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)  # [B, L]
        return ids, att, inputs["completion_ids"].size(1)

    # ------------------------------------------------------------------ the stages
    def _rl_advantages(self, output: dict[str, Any], stats: TokenStats | None) -> dict[str, Any]:
        """Replace TRL's advantages by our estimator's, computed on the gathered rewards."""
        assert self._rl_adv is not None and self._rl_rewards is not None
        rewards = (self._rl_rewards * self.reward_weights.to(self._rl_rewards.device).unsqueeze(0)).nansum(dim=1)  # [N]
        g = self.num_generations if self.model.training else self.num_generations_eval
        inputs: dict[str, Any] = {
            "rewards": rewards.float(),
            "group_ids": torch.arange(rewards.numel(), device=rewards.device) // g,
        }
        if stats is not None or "mask" in self._rl_adv.inputs:
            inputs["mask"] = self._rl_gather_rows(output["completion_mask"].float())
        for f in self._rl_adv.reads_stats():
            inputs[f] = self._rl_gather_rows(getattr(stats, f).float())
        adv, metrics = self._rl_adv.call(inputs, self._rl_adv_params)  # [N] or [N, T*]
        b, t = output["completion_ids"].shape
        rank = self.accelerator.process_index
        local = adv[rank * b : (rank + 1) * b]
        out = dict(output)
        out["advantages"] = (local[:, :t] * output["completion_mask"] if local.dim() == 2 else local).to(
            output["advantages"].dtype
        )
        self._rl_log_tensors(self._rl_mode(), metrics, f"rlentropy/{self._rl_adv.name}/")
        return out

    def _rl_old_stage(self, batch: dict[str, Any], stats: TokenStats) -> dict[str, Any]:
        """Old-stage controls on the whole batch of every process; the batch with its new mask / advantages.

        `stats` are the old-policy TokenStats [B, T] of this process's rows. Dropped tokens leave the loss
        through `tool_mask` and `num_items_in_batch`; the batch's metrics are logged here.
        """
        out = dict(batch)
        mode = self._rl_mode()
        loss_mask = self._rl_loss_mask(out)  # [B, T]
        b, t = loss_mask.shape
        adv = self._rl_token_adv(out)  # [B, T]
        gathered = {f: self._rl_gather_rows(getattr(stats, f).float()) for f in STAT_FIELDS}
        g_adv, g_mask = self._rl_gather_rows(adv), self._rl_gather_rows(loss_mask.float())
        res = run_controls(
            self._rl_controls, "old", {**gathered, "advantages": g_adv, "mask": g_mask, "generator": self._rl_generator}
        )
        rank = self.accelerator.process_index
        keep = (res.mask * g_mask)[rank * b : (rank + 1) * b, :t]  # [B, T]
        base = torch.ones_like(out["completion_mask"]) if out.get("tool_mask") is None else out["tool_mask"]
        out["tool_mask"] = base * keep.to(base.dtype)  # [B, T]
        if res.advantages is not g_adv:
            out["advantages"] = res.advantages[rank * b : (rank + 1) * b, :t].to(out["advantages"].dtype)
        new_mask = self._rl_loss_mask(out)  # [B, T]
        out["num_items_in_batch"] = self.accelerator.gather(new_mask.sum()).sum()
        for name, values in res.metrics.items():
            self._rl_log_tensors(mode, values, f"rlentropy/{name}/")
        if self.args.rlentropy_metrics:
            sums = self._rl_summary_sums(stats, out, loss_mask, new_mask, b * self.accelerator.num_processes)
            self._rl_log(mode, summary_metrics(self.accelerator.reduce(sums, reduction="sum")))
        return out

    def _rl_current_stage(
        self, inputs: dict[str, Any], stats: TokenStats, logps: torch.Tensor
    ) -> tuple[dict[str, Any], list[torch.Tensor]]:
        """Current-stage controls on this loss call's statistics: new advantages and loss terms."""
        mask = self._rl_loss_mask(inputs).float()  # [B, T]
        adv = self._rl_token_adv(inputs)  # [B, T]
        old = inputs.get("old_per_token_logps")
        avail = {f: getattr(stats, f) for f in STAT_FIELDS}
        avail.update(
            {
                "old_logp": logps.detach() if old is None else old,
                "advantages": adv,
                "mask": mask,
                "mode": "token-mean",
                "global_tokens": None,
                "global_seqs": None,
                "max_len": None,
                "generator": self._rl_generator,
            }
        )
        res = run_controls(self._rl_controls, "current", avail)
        out = dict(inputs)
        out["advantages"] = (res.advantages * (res.mask > 0)).to(inputs["advantages"].dtype)  # [B, T]
        for name, values in res.metrics.items():
            self._rl_log_tensors(self._rl_mode(), values, f"rlentropy/{name}/")
        return out, res.terms

    def _rl_metrics(self, inputs: dict[str, Any], stats: TokenStats) -> None:
        """rlentropy/* metrics of one loss call, summed over the micro-batches of an optimizer step."""
        mode = self._rl_mode()
        b = inputs["completion_ids"].shape[0]
        mask = self._rl_loss_mask(inputs)  # [B, T]
        accum = self.current_gradient_accumulation_steps if mode == "train" else 1
        sums = self._rl_summary_sums(stats, inputs, mask, mask, b * accum * self.accelerator.num_processes)
        self._rl_sums = sums if self._rl_sums is None else self._rl_sums + sums
        if mode == "eval" or self.accelerator.sync_gradients:
            total = self.accelerator.reduce(self._rl_sums, reduction="sum")
            self._rl_sums = None
            self._rl_log(mode, summary_metrics(total))

    # ------------------------------------------------------------------ an rlentropy policy loss
    def _rl_policy_loss(self, model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        """Our registered policy loss + TRL's KL and vLLM weights, reduced like TRL reduces `loss_type`."""
        assert self._rl_loss is not None
        mode = self._rl_mode()
        ids, att, t = self._rl_ids(inputs)
        mask = self._rl_loss_mask(inputs).float()  # [B, T]
        logps, entropies, _ = self._get_per_token_logps_and_entropies(
            model,
            ids,
            att,
            t,
            compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled,
            **{k: inputs.get(k) for k in _FORWARD_KEYS},
        )  # [B, T]
        adv = self._rl_token_adv(inputs)  # [B, T]
        old = inputs.get("old_per_token_logps")
        old = logps.detach() if old is None else old  # [B, T]
        given = {"logp": logps, "old_logp": old, "advantages": adv, "mask": mask, "generator": self._rl_generator}
        per_token_loss, loss_metrics = self._rl_loss.call(given, self._rl_loss_params)  # [B, T]
        if self.use_vllm and self.vllm_importance_sampling_correction:
            per_token_loss = per_token_loss * inputs["importance_sampling_ratio"]
        if self.beta != 0.0:
            ref = inputs["ref_per_token_logps"]
            per_token_kl = torch.exp(ref - logps) - (ref - logps) - 1  # [B, T]
            if self.args.use_bias_correction_kl:
                per_token_kl = per_token_kl * torch.exp(logps - old)
            per_token_loss = per_token_loss + self.beta * per_token_kl
        loss = self._aggregate(per_token_loss, mask, inputs, mode)
        totals = self.accelerator.reduce(torch.stack([(entropies * mask).sum(), mask.sum()]), reduction="sum")
        self._metrics[mode]["entropy"].append((totals[0] / totals[1].clamp(min=1.0)).item())
        self._rl_log_tensors(mode, loss_metrics, f"rlentropy/{self._rl_loss.name}/")
        return loss

    def _aggregate(
        self, per_token_loss: torch.Tensor, mask: torch.Tensor, inputs: dict[str, Any], mode: str
    ) -> torch.Tensor:
        """`aggregate_loss` in the loss's required mode (gspo, sapo, gmpo, luspo declare one) or else the mode
        of `loss_type`, with the counts that make it TRL's reduction."""
        rows = per_token_loss.size(0)
        accum = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        assert self._rl_loss is not None
        agg = self._rl_loss.agg_mode or TRL_AGGREGATION[self.loss_type]
        if agg == "token-mean" and self.loss_type != "bnpo":  # dapo / cispo / vespo: the generation batch's count
            normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
            if mode == "train":
                normalizer = normalizer * self.current_gradient_accumulation_steps / self.args.steps_per_generation
            return aggregate_loss(per_token_loss, mask, agg, global_tokens=normalizer)
        if agg == "token-mean":  # bnpo: this call's tokens
            return aggregate_loss(per_token_loss, mask, agg) / accum
        return aggregate_loss(per_token_loss, mask, agg, global_seqs=rows, max_len=self.max_completion_length) / accum


# ---------------------------------------------------------------------------------- evaluation during training
class RewardTask:
    """A held-out dataset plus a TRL-style reward function, as the `Task` our evaluator reads.

    Args:
        dataset: rows (a `datasets.Dataset` or a list of dicts) with a `prompt` column — a string, or a
            conversation (list of {"role", "content"}) rendered with the tokenizer's chat template — and
            any other columns the reward function reads.
        reward_func: `fn(prompts, completions, **columns) -> list[float]`, as given to `GRPOTrainer`.
        success_threshold: a completion counts as correct (for pass@k / avg@n) when its reward ≥ this.
        stop_strings: generation stops at any of them (e.g. the end of an answer tag).
        name: shown in logs.
    """

    def __init__(
        self,
        dataset: Any,
        reward_func: Any,
        *,
        success_threshold: float = 1.0,
        stop_strings: list[str] | None = None,
        name: str = "reward_task",
    ) -> None:
        rows = [dict(r) for r in dataset]
        if not rows or "prompt" not in rows[0]:
            raise ConfigError("RewardTask: the dataset needs rows with a 'prompt' column")
        self.name = name
        self.stop_strings = list(stop_strings or [])
        self.reward_func = reward_func
        self.success_threshold = float(success_threshold)
        self._examples = [
            Example(id=str(i), question="", answer=str(r.get("answer", "")), meta=r) for i, r in enumerate(rows)
        ]

    def train_examples(self) -> list[Any]:
        return []

    def eval_examples(self) -> list[Any]:
        return self._examples

    def render_prompt(self, example: Any, tokenizer: Any) -> str:
        prompt = example.meta["prompt"]
        if isinstance(prompt, str):
            return prompt
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)

    def score(self, completions: list[str], examples: list[Any]) -> list[float]:
        columns = {k: [ex.meta.get(k) for ex in examples] for k in examples[0].meta if k != "prompt"}
        prompts = [ex.meta["prompt"] for ex in examples]
        rewards = self.reward_func(prompts=prompts, completions=completions, **columns)
        return [1.0 if (r is not None and float(r) >= self.success_threshold) else 0.0 for r in rewards]


class PassAtKCallback(TrainerCallback):
    """Evaluate the policy during TRL training: unbiased pass@k, avg@n, maj@k and the entropy of samples.

    TRL's `GRPOTrainer` has no `compute_metrics` (trl#2959, #3729). Every `every` optimizer steps (and at
    step 0 with `at_start`), the main process samples `n` completions for each prompt of `task` with
    rlentropy's evaluator (the same one as `rlentropy eval`) and records the metrics as
    `rlentropy_eval/<metric>` in the trainer's own metrics, so TRL logs them at its next logging step
    to every `report_to` sink. Usage::

        cb = PassAtKCallback(RewardTask(heldout, my_reward), every=50, n=8)
        trainer = GRPOTrainer(..., callbacks=[cb])   # or EntropyGRPOTrainer
        cb.attach(trainer)

    Args:
        task: a `rlentropy.data.Task` (e.g. `RewardTask`) whose `eval_examples()` are the prompts.
        every: evaluate every this many optimizer steps (≥ 1).
        n: samples per prompt. max_prompts: the first N prompts (None: all).
        temperature, top_p, max_new_tokens: sampling (max_new_tokens None: the trainer's
            `max_completion_length`). seed: the same sampling seed at every evaluation.
    """

    def __init__(
        self,
        task: Any,
        *,
        every: int = 50,
        n: int = 8,
        max_prompts: int | None = None,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int | None = None,
        seed: int = 1234,
        at_start: bool = False,
    ) -> None:
        if every < 1:
            raise ConfigError(f"PassAtKCallback: every must be >= 1, got {every}")
        self.task, self.every, self.n, self.max_prompts = task, int(every), int(n), max_prompts
        self.temperature, self.top_p, self.max_new_tokens, self.seed = temperature, top_p, max_new_tokens, seed
        self.at_start = at_start
        self.trainer: Any = None
        self.history: list[dict[str, float]] = []

    def attach(self, trainer: Any) -> PassAtKCallback:
        """Bind to `trainer` (needed for its model, tokenizer and metrics); adds itself if missing."""
        self.trainer = trainer
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        return self

    def evaluate(self, step: int) -> dict[str, float]:
        """Run the evaluation now (main process); returns and records the metrics."""
        tr = self.trainer
        if tr is None:
            raise ConfigError("PassAtKCallback: call attach(trainer) before training")
        model = tr.accelerator.unwrap_model(tr.model)
        metrics, _ = evaluate_model(
            model,
            tr.processing_class,
            self.task,
            n=self.n,
            temperature=self.temperature,
            top_p=self.top_p,
            max_new_tokens=self.max_new_tokens or tr.max_completion_length,
            max_prompts=self.max_prompts,
            seed=self.seed,
        )
        out = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for key, value in out.items():
            tr._metrics["train"][f"rlentropy_eval/{key}"].append(value)
        self.history.append({"step": step, **out})
        return out

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.at_start and self.trainer is not None and state.is_world_process_zero:
            self.evaluate(0)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.trainer is None or not state.is_world_process_zero or state.global_step % self.every:
            return
        self.evaluate(state.global_step)
        control.should_log = True
