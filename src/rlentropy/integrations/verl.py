"""rlentropy inside verl (>= 0.9): every registered policy loss, control and advantage estimator of
`rlentropy.algorithms` as a verl loss / estimator, and the actor-side piece that supplies the per-token
statistics the controls read.

Install with `pip install 'rlentropy[verl]'`. Importing this module (on the driver, or inside Ray
workers through `actor_rollout_ref.model.external_lib=rlentropy.integrations.verl`) does three things:

1. Registers, with `verl.trainer.ppo.core_algos.register_policy_loss`, one loss per registry entry —
   nothing here names a method:
   - `rlentropy_<loss>` for every policy loss (`rlentropy_ppo`, `rlentropy_gspo`, `rlentropy_clip_cov`, …);
   - `rlentropy_<control>` for every mask / advantage control (`rlentropy_clip_b`, `rlentropy_clip_v`, …):
     the control runs on the statistics of the actor's forward, then the base loss
     (`policy_loss.rlentropy_base_loss`, default `ppo`) runs with its mask / advantages.
   Select one with `actor_rollout_ref.actor.policy_loss.loss_mode=rlentropy_clip_b`.
2. Registers `rlentropy_<estimator>` with `register_adv_est` for every advantage estimator
   (`algorithm.adv_estimator=rlentropy_grpo`).
3. Installs the actor-side piece (`install_actor_stats`). verl's loss functions receive only
   log-probs, never logits or entropy, so a control that reads H, E_p[S] or Σp² cannot be a plain
   registered loss:
   - `rlentropy_ppo_loss` replaces verl's `ppo_loss` dispatcher (`verl.workers.utils.losses`) for the
     actor. For our control losses it reads the entropy verl computed in the same forward
     (`actor.calculate_entropy=True`), Σp² (`actor.calculate_sum_pi_squared=True`) and our s_bar from
     the model output, and hands them to the registered loss through a context variable; every other
     loss mode goes to verl's dispatcher untouched.
   - The FSDP engine's `prepare_model_outputs` is wrapped so that, when the control reads s_bar, it
     also computes s_bar from the logits of that forward with `rlentropy.tokenstats.token_stats`
     (chunked, fp32) and returns it as `rlentropy_s_bar`. Supported layout: `use_remove_padding=True`,
     `use_fused_kernels=False` (the fused kernel never materialises logits); anything else raises a
     clear error.

Parameters: a method's parameter takes, in order, `policy_loss.rlentropy_params[<name>]` (or
`algorithm.rlentropy_params` for estimators), then verl's own key of the same meaning (`VERL_KEYS`:
eps_low ← clip_ratio_low, eps_high ← clip_ratio_high, clip_ratio_c, tau_pos / tau_neg, the
PolicyLossConfig keys clip_cov_ratio, kl_cov_ratio, …; scale ← norm_adv_by_std_in_grpo), then the
registry default (the upstream default written in the method's signature).

Scope of the statistics: the policy at the loss forward, which is the old policy on the first update
of a batch (the upstream Clip_B / Clip_V recipes use `ppo_epochs=1` and one mini-batch per step).
Old-stage controls see the micro-batch gathered from every data-parallel rank; with
`ppo_micro_batch_size_per_gpu` equal to the per-GPU mini-batch (no gradient accumulation) this is the
whole training batch, as in our own trainer. Tokens an old-stage mask control drops leave the
token-mean denominator: the global token count verl passes (`batch_num_tokens`) is reduced by the
tokens dropped on all ranks. Current-stage mask controls zero the dropped tokens' loss and keep the
denominators. Loss-term controls (the entropy bonus) are verl's own `entropy_coeff` and are not
registered here.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

try:
    from verl.trainer.ppo import core_algos
    from verl.workers.config import PolicyLossConfig
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("rlentropy.integrations.verl needs verl >= 0.9: pip install 'rlentropy[verl]'") from err

from rlentropy.algorithms import ADVANTAGES, CONTROLS, POLICY_LOSSES
from rlentropy.algorithms.dispatch import Active, logged_metrics, run_controls
from rlentropy.tokenstats import token_stats

__all__ = [
    "ADV_ESTIMATORS",
    "VERL_LOSSES",
    "ActorStats",
    "RLEntropyPolicyLossConfig",
    "actor_stats",
    "install_actor_stats",
    "register_all",
    "rlentropy_ppo_loss",
]


@dataclass
class RLEntropyPolicyLossConfig(PolicyLossConfig):
    """verl's `PolicyLossConfig` plus rlentropy's parameters.

    Attributes:
        rlentropy_params: parameters of the selected method (defaults: the registry's).
        rlentropy_base_loss: the policy loss a control loss runs after the control (default ppo).
        rlentropy_base_params: that loss's parameters.
        cov_seed: seed of the generator of random losses (clip_cov), per rank.
    """

    rlentropy_params: dict[str, Any] = field(default_factory=dict)
    rlentropy_base_loss: str = "ppo"
    rlentropy_base_params: dict[str, Any] = field(default_factory=dict)
    cov_seed: int = 0


@dataclass
class ActorStats:
    """Per-token statistics of the actor's current forward, padded to [bs, response_len].

    Attributes:
        entropy: [bs, T] entropy H at each response position (detached).
        s_bar: [bs, T] E_p[S] (detached), or None when the loss does not need it.
        sum_p2: [bs, T] Σp² (detached), or None.
        dp_group: the data-parallel process group (None: no gathering).
    """

    entropy: torch.Tensor
    s_bar: torch.Tensor | None = None
    sum_p2: torch.Tensor | None = None
    dp_group: Any = None


_ACTOR_STATS: contextvars.ContextVar[ActorStats | None] = contextvars.ContextVar("rlentropy_actor_stats", default=None)
_GENERATORS: dict[int, torch.Generator] = {}


class actor_stats:  # noqa: N801 - used as a context manager like a function
    """Context manager that makes `stats` visible to the `rlentropy_<control>` losses."""

    def __init__(self, stats: ActorStats) -> None:
        self._stats = stats
        self._token: contextvars.Token | None = None

    def __enter__(self) -> ActorStats:
        self._token = _ACTOR_STATS.set(self._stats)
        return self._stats

    def __exit__(self, *exc: Any) -> None:
        assert self._token is not None
        _ACTOR_STATS.reset(self._token)


# ---------------------------------------------------------------------------------- parameters
_POLICY_KEYS = {f.name for f in dataclasses.fields(PolicyLossConfig)} - {"_target_", "loss_mode", "rollout_correction"}


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if cfg is None:
        return default
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if value is None else value


def _verl_value(name: str, config: Any) -> Any:
    """verl's own config value for a parameter of ours with the same meaning (None: verl has none)."""
    if name == "eps_low":
        return _get(config, "clip_ratio_low", _get(config, "clip_ratio"))
    if name == "eps_high":
        return _get(config, "clip_ratio_high", _get(config, "clip_ratio"))
    if name in ("clip_ratio_c", "tau_pos", "tau_neg"):
        return _get(config, name)
    if name in _POLICY_KEYS:
        return _get(_get(config, "policy_loss"), name)
    return None


VERL_KEYS = ("eps_low", "eps_high", "clip_ratio_c", "tau_pos", "tau_neg", *sorted(_POLICY_KEYS), "scale")
"""Parameter names read from verl's own config (see the module docstring)."""


def _loss_params(spec: Any, config: Any, explicit: dict[str, Any]) -> dict[str, Any]:
    if config is None:
        raise ValueError("rlentropy verl losses need the actor config (config=None was passed)")
    params = {}
    for name in spec.parameters:
        value = _verl_value(name, config)
        if value is not None:
            params[name] = value
    params.update(explicit)
    return spec.resolve(params)


def _generator(device: torch.device, seed: int) -> torch.Generator:
    rank = (
        torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
    )
    key = hash((str(device), seed, rank))
    if key not in _GENERATORS:
        gen = torch.Generator(device=device)
        gen.manual_seed(seed * 1000003 + rank)
        _GENERATORS[key] = gen
    return _GENERATORS[key]


def _agg(loss_mat: torch.Tensor, mask: torch.Tensor, mode: str, config: Any, dropped: float = 0.0) -> torch.Tensor:
    """verl's `agg_loss` with its global batch info; `dropped` tokens leave the global token count."""
    info = dict(getattr(config, "global_batch_info", {}) or {})
    if dropped and info.get("batch_num_tokens") is not None:
        info["batch_num_tokens"] = info["batch_num_tokens"] - dropped
    return core_algos.agg_loss(loss_mat=loss_mat, loss_mask=mask, loss_agg_mode=mode, **info)


def _gather_rows(x: torch.Tensor, group: Any) -> tuple[torch.Tensor, int, int]:
    """All-gather [b, T] rows over `group` (padding b and T); returns (rows, my offset, world)."""
    if group is None or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return x, 0, 1
    world = torch.distributed.get_world_size(group)
    if world == 1:
        return x, 0, 1
    rank = torch.distributed.get_rank(group)
    shape = torch.tensor([x.shape[0], x.shape[1]], device=x.device)
    shapes = [torch.zeros_like(shape) for _ in range(world)]
    torch.distributed.all_gather(shapes, shape, group=group)
    bmax = max(int(s[0]) for s in shapes)
    tmax = max(int(s[1]) for s in shapes)
    padded = x.new_zeros(bmax, tmax)
    padded[: x.shape[0], : x.shape[1]] = x
    parts = [torch.zeros_like(padded) for _ in range(world)]
    torch.distributed.all_gather(parts, padded, group=group)
    rows = torch.cat([p[: int(s[0])] for p, s in zip(parts, shapes)], dim=0)  # [Σb, tmax]
    offset = sum(int(s[0]) for s in shapes[:rank])
    return rows, offset, world


def _metrics(prefix: str, metrics: dict[str, Any]) -> dict[str, float]:
    return {
        f"actor/{prefix}/{k}": float(v.detach().float().item()) if torch.is_tensor(v) else float(v)
        for k, v in metrics.items()
        if not torch.is_tensor(v) or v.numel() == 1
    }


# ---------------------------------------------------------------------------------- policy losses
def _run_loss(
    spec: Any,
    params: dict[str, Any],
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    config: Any,
) -> tuple[torch.Tensor, dict[str, Any]]:
    pl = _get(config, "policy_loss")
    inputs = {
        "logp": log_prob,
        "old_logp": old_log_prob,
        "advantages": advantages,
        "mask": mask,
        "generator": _generator(log_prob.device, int(_get(pl, "cov_seed", 0))),
    }
    return spec.call(inputs, params)


def _as_verl_loss(name: str, doc: str, compute: Callable[..., Any]) -> Any:
    """`compute(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config,
    rollout_is_weights)` as a verl policy loss: verl's signature and defaults, named `rlentropy_<name>`."""

    def loss_fn(
        old_log_prob,
        log_prob,
        advantages,
        response_mask,
        loss_agg_mode="token-mean",
        config=None,
        rollout_is_weights=None,
    ):
        return compute(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config, rollout_is_weights)

    loss_fn.__name__ = loss_fn.__qualname__ = f"rlentropy_{name}"
    loss_fn.__doc__ = doc
    return loss_fn


def _make_loss(name: str) -> Any:
    spec = POLICY_LOSSES.get(name)

    def compute(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config, rollout_is_weights):
        params = _loss_params(spec, config, dict(_get(_get(config, "policy_loss"), "rlentropy_params", {}) or {}))
        mask = response_mask.to(log_prob.dtype)  # [bs, T]
        loss_mat, m = _run_loss(spec, params, old_log_prob, log_prob, advantages, mask, config)  # [bs, T]
        if rollout_is_weights is not None:
            loss_mat = loss_mat * rollout_is_weights
        # verl's own mask (bool): its agg_loss adds 1e-8 to float-mask token counts only
        return _agg(loss_mat, response_mask, spec.agg_mode or loss_agg_mode, config), _metrics(f"rlentropy_{name}", m)

    return _as_verl_loss(name, f"rlentropy policy loss {name!r} ({spec.summary}); {spec.paper}.", compute)


def _control_inputs(control: Any, log_prob: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The per-token statistics a control reads, from the actor-side piece (padded [bs, T], detached)."""
    reads = control.reads_stats()
    need_actor = [f for f in reads if f != "logp"]
    stats = _ACTOR_STATS.get()
    name = f"rlentropy_{control.name}"
    if need_actor and stats is None:
        raise RuntimeError(
            f"loss_mode={name} needs rlentropy's actor-side statistics: set "
            "actor_rollout_ref.model.external_lib=rlentropy.integrations.verl and "
            "actor_rollout_ref.actor.calculate_entropy=True (see docs/scaling.md)"
        )
    logp = log_prob.detach().float() * mask  # [bs, T]
    out = {"logp": logp}
    if need_actor:
        h = stats.entropy.float() * mask  # [bs, T]
        out.update(entropy=h, s=torch.exp(logp) * (h + logp) * mask)  # [bs, T]
    if "s_bar" in reads:
        if stats.s_bar is None:
            raise RuntimeError(f"loss_mode={name} needs s_bar from the actor forward (see docs/scaling.md)")
        out["s_bar"] = stats.s_bar.float() * mask
    if "sum_p2" in reads:
        if stats.sum_p2 is None:
            raise RuntimeError(f"loss_mode={name} needs Σp²: set actor_rollout_ref.actor.calculate_sum_pi_squared=True")
        out["sum_p2"] = stats.sum_p2.float() * mask
    return out


def _make_control_loss(name: str) -> Any:
    control = CONTROLS.get(name)

    def compute(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config, rollout_is_weights):
        pl = _get(config, "policy_loss")
        active = [Active(control, control.resolve(dict(_get(pl, "rlentropy_params", {}) or {})), control.stage)]
        base = POLICY_LOSSES.get(str(_get(pl, "rlentropy_base_loss", "ppo")))
        mask = response_mask.to(torch.float32)  # [bs, T]
        stats = _control_inputs(control, log_prob, mask)
        group = getattr(_ACTOR_STATS.get(), "dp_group", None)
        gathered = {k: _gather_rows(v, group)[0] for k, v in stats.items()}
        g_adv, off, _ = _gather_rows(advantages * mask.to(advantages.dtype), group)
        g_mask, _, _ = _gather_rows(mask, group)
        res = run_controls(active, control.stage, {**gathered, "advantages": g_adv, "mask": g_mask})
        b, t = mask.shape
        keep = res.mask[off : off + b, :t].to(log_prob.dtype)  # [bs, T]
        adv = (
            advantages if res.advantages is g_adv else res.advantages[off : off + b, :t].to(advantages.dtype)
        )  # [bs, T]
        old_stage = control.stage == "old"
        loss_mask = keep if old_stage else mask.to(log_prob.dtype)
        params = _loss_params(base, config, dict(_get(pl, "rlentropy_base_params", {}) or {}))
        loss_mat, m = _run_loss(base, params, old_log_prob, log_prob, adv, keep, config)  # [bs, T]
        if rollout_is_weights is not None:
            loss_mat = loss_mat * rollout_is_weights
        dropped = float((g_mask - res.mask * g_mask).sum().item()) if old_stage else 0.0
        loss = _agg(loss_mat, loss_mask, base.agg_mode or loss_agg_mode, config, dropped=dropped)
        out = _metrics(f"rlentropy_{name}", m)
        out.update(_metrics(f"rlentropy_{name}", logged_metrics(active, res.metrics, prefix="")))
        out.update(_metrics(f"rlentropy_{name}", res.metrics.get(name, {})))
        return loss, out

    doc = f"rlentropy control {name!r} ({control.summary}) then the base policy loss; {control.paper}."
    return _as_verl_loss(name, doc, compute)


VERL_LOSSES: dict[str, Any] = {
    **{f"rlentropy_{n}": _make_loss(n) for n in POLICY_LOSSES.names()},
    **{f"rlentropy_{c.name}": _make_control_loss(c.name) for c in CONTROLS.specs() if c.kind in ("mask", "advantage")},
}
"""Every loss this module registers in verl, by verl name."""


def _control_of(loss_mode: str) -> Any:
    """The control behind a verl loss mode `rlentropy_<control>` (None for any other mode)."""
    name = loss_mode.removeprefix("rlentropy_")
    return CONTROLS.get(name) if loss_mode.startswith("rlentropy_") and name in CONTROLS else None


# ---------------------------------------------------------------------------------- advantages
def _group_ids(index: Any, n: int, device: torch.device) -> torch.Tensor:
    if index is None:
        return torch.arange(n, device=device)
    mapping: dict[Any, int] = {}
    ids = [mapping.setdefault(u, len(mapping)) for u in list(index)]
    return torch.tensor(ids, dtype=torch.long, device=device)


def _adv_params(spec: Any, config: Any) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if "scale" in spec.parameters and _get(config, "norm_adv_by_std_in_grpo") is not None:
        params["scale"] = "group" if _get(config, "norm_adv_by_std_in_grpo", True) else "none"
    params.update(dict(_get(config, "rlentropy_params", {}) or {}))
    return spec.resolve(params)


def _make_adv(name: str) -> Any:
    spec = ADVANTAGES.get(name)

    def estimator(
        token_level_rewards: torch.Tensor,
        response_mask: torch.Tensor,
        index: Any = None,
        config: Any | None = None,
        old_log_probs: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rewards = token_level_rewards.sum(dim=-1)  # [bs]
        inputs: dict[str, Any] = {
            "rewards": rewards,
            "group_ids": _group_ids(index, rewards.shape[0], rewards.device),
            "mask": response_mask.to(token_level_rewards.dtype),
        }
        reads = spec.reads_stats()
        if reads and (reads != ("logp",) or old_log_probs is None):
            raise RuntimeError(
                f"adv_estimator=rlentropy_{name} reads {', '.join(reads)} of the old policy, which "
                "verl's compute_advantage does not pass to advantage estimators"
            )
        if reads:
            inputs["logp"] = old_log_probs
        adv, _ = spec.call(inputs, _adv_params(spec, config))  # [bs] or [bs, T]
        adv_tok = (adv.unsqueeze(-1) if adv.dim() == 1 else adv).to(
            token_level_rewards.dtype
        ) * response_mask  # [bs, T]
        return adv_tok, adv_tok

    estimator.__name__ = estimator.__qualname__ = f"rlentropy_{name}"
    estimator.__doc__ = f"rlentropy advantage estimator {name!r} ({spec.summary}); {spec.paper}."
    return estimator


ADV_ESTIMATORS: dict[str, Any] = {f"rlentropy_{n}": _make_adv(n) for n in ADVANTAGES.names()}


def register_all() -> None:
    """Register our losses and advantage estimators in verl's registries (idempotent)."""
    for name, fn in VERL_LOSSES.items():
        core_algos.register_policy_loss(name)(fn)
    for name, fn in ADV_ESTIMATORS.items():
        existing = core_algos.ADV_ESTIMATOR_REGISTRY.get(name)
        if existing is not None and getattr(existing, "__module__", None) == __name__:
            core_algos.ADV_ESTIMATOR_REGISTRY[name] = fn  # a re-import of this module: replace our own
            continue
        core_algos.register_adv_est(name)(fn)


# ---------------------------------------------------------------------------------- actor-side piece
_VERL_PPO_LOSS: Any = None
_ORIG_PREPARE: Any = None


def _loss_mode(config: Any) -> str:
    return str(config.policy_loss.get("loss_mode", "vanilla"))


def rlentropy_ppo_loss(config: Any, model_output: dict[str, Any], data: Any, dp_group: Any = None):
    """Drop-in for verl's `ppo_loss`: supplies entropy / s_bar / Σp² to the `rlentropy_<control>` losses.

    For every other loss mode it calls verl's dispatcher unchanged.
    """
    mode = _loss_mode(config)
    control = _control_of(mode)
    if control is None or not [f for f in control.reads_stats() if f != "logp"]:
        return _VERL_PPO_LOSS(config, model_output, data, dp_group)
    from verl.workers.utils.padding import no_padding_2_padding  # needs the worker's deps (not on every driver)

    def padded(key: str, needed: bool, hint: str) -> torch.Tensor | None:
        value = model_output.get(key)
        if value is None and needed:
            raise RuntimeError(f"loss_mode={mode} needs {hint}")
        return None if value is None else no_padding_2_padding(value, data).detach()

    reads = control.reads_stats()
    stats = ActorStats(
        entropy=padded(
            "entropy", True, "the entropy of the actor forward: set actor_rollout_ref.actor.calculate_entropy=True"
        ),
        s_bar=padded(
            "rlentropy_s_bar",
            "s_bar" in reads,
            "s_bar from the actor forward; the FSDP engine patch of rlentropy.integrations.verl is not installed "
            "in this worker (set actor_rollout_ref.model.external_lib=rlentropy.integrations.verl)",
        ),
        sum_p2=padded(
            "sum_pi_squared", "sum_p2" in reads, "Σp²: set actor_rollout_ref.actor.calculate_sum_pi_squared=True"
        ),
        dp_group=dp_group,
    )
    with actor_stats(stats):
        return _VERL_PPO_LOSS(config, model_output, data, dp_group)


def _wants_s_bar(loss_function: Any) -> bool:
    if not isinstance(loss_function, functools.partial) or loss_function.func is not rlentropy_ppo_loss:
        return False
    config = loss_function.keywords.get("config")
    control = _control_of(_loss_mode(config)) if config is not None else None
    return control is not None and "s_bar" in control.inputs


def s_bar_from_packed_logits(logits: torch.Tensor, labels: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """s_bar of each packed position from its logits (no grad).

    Args:
        logits: [N, V] logits of the packed (remove-padding) sequence.
        labels: [N] next-token ids (verl's `input_ids_rmpad_rolled`).
        temperature: [N] per-token sampling temperature.

    Returns:
        [N] float32 s_bar = E_p[S] under softmax(logits / temperature).
    """
    with torch.no_grad():
        scaled = logits.float() / temperature.clamp(min=1e-8).float().unsqueeze(-1)  # [N, V]
        return token_stats(scaled, labels.long()).s_bar  # [N]


def _prepare_model_outputs_with_s_bar(self, output, output_args, micro_batch, logits_processor_func):
    model_output = _ORIG_PREPARE(self, output, output_args, micro_batch, logits_processor_func)
    if not _wants_s_bar(logits_processor_func):
        return model_output
    from verl.utils import tensordict_utils as tu

    use_rmpad = tu.get_non_tensor_data(data=micro_batch, key="use_remove_padding", default=True)
    fused = tu.get_non_tensor_data(data=micro_batch, key="use_fused_kernels", default=False)
    if fused or not use_rmpad or getattr(output, "logits", None) is None:
        raise RuntimeError(
            "rlentropy controls that read s_bar compute it from the actor's logits: set "
            "actor_rollout_ref.model.use_remove_padding=True and actor_rollout_ref.model.use_fused_kernels=False"
        )
    logits = output.logits.squeeze(0)  # [nnz_local, V]
    if hasattr(logits, "full_tensor"):
        logits = logits.full_tensor()
    s_bar = s_bar_from_packed_logits(logits, output_args["input_ids_rmpad_rolled"], output_args["temperature_rmpad"])
    s_bar = self._gather_and_unpad_packed(s_bar, output_args["pad_size"])  # [nnz]
    model_output["rlentropy_s_bar"] = torch.nested.nested_tensor_from_jagged(s_bar, micro_batch["input_ids"].offsets())
    return model_output


def install_actor_stats() -> None:
    """Install the actor-side piece (idempotent): our `ppo_loss` and the engine's s_bar output."""
    global _VERL_PPO_LOSS, _ORIG_PREPARE
    import verl.workers.utils.losses as losses

    if _VERL_PPO_LOSS is None:
        _VERL_PPO_LOSS = losses.ppo_loss if losses.ppo_loss is not rlentropy_ppo_loss else None
    losses.ppo_loss = rlentropy_ppo_loss
    workers = sys.modules.get("verl.workers.engine_workers")
    if workers is not None and getattr(workers, "ppo_loss", None) is not None:
        workers.ppo_loss = rlentropy_ppo_loss
    try:
        from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead
    except ImportError:  # the FSDP engine is not importable here (e.g. a driver without its deps)
        return
    current = FSDPEngineWithLMHead.prepare_model_outputs
    if current is not _prepare_model_outputs_with_s_bar:
        _ORIG_PREPARE = current
        FSDPEngineWithLMHead.prepare_model_outputs = _prepare_model_outputs_with_s_bar


register_all()
install_actor_stats()
