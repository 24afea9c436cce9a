"""rlentropy inside verl (>= 0.9): registered policy losses, advantage estimators, and the actor-side
piece that supplies per-token entropy and s_bar to them.

Install with `pip install 'rlentropy[verl]'`. Importing this module (on the driver, or inside Ray
workers through `actor_rollout_ref.model.external_lib=rlentropy.integrations.verl`) does three things:

1. Registers our policy losses with `verl.trainer.ppo.core_algos.register_policy_loss`:
   `rlentropy_ppo` (clip-higher + dual clip), `rlentropy_gspo`, `rlentropy_clip_cov`,
   `rlentropy_kl_cov`, `rlentropy_clip_b`, `rlentropy_clip_v`. Select one with
   `actor_rollout_ref.actor.policy_loss.loss_mode=rlentropy_clip_b`.
2. Registers our advantage estimators with `register_adv_est`: `rlentropy_grpo`, `rlentropy_dr_grpo`,
   `rlentropy_rloo`, `rlentropy_reinforce_pp` (`algorithm.adv_estimator=rlentropy_grpo`).
3. Installs the actor-side piece (`install_actor_stats`). verl's loss functions receive only
   log-probs, never logits or entropy, so Clip_B (needs H) and Clip_V (needs H and
   s_bar = E_p[S]) cannot be written as plain registered losses:
   - `rlentropy_ppo_loss` replaces verl's `ppo_loss` dispatcher (`verl.workers.utils.losses`) for the
     actor. For our two mask controls it reads the entropy verl computed in the same forward
     (`actor.calculate_entropy=True`) and our s_bar from the model output, and hands them to the
     registered loss through a context variable; every other loss mode goes to verl's dispatcher
     untouched.
   - The FSDP engine's `prepare_model_outputs` is wrapped so that, when the actor's loss is
     `rlentropy_clip_v`, it also computes s_bar from the logits of that forward with
     `rlentropy.tokenstats.token_stats` (chunked, fp32) and returns it as `rlentropy_s_bar`.
     Supported layout: `use_remove_padding=True`, `use_fused_kernels=False` (the fused kernel never
     materialises logits); anything else raises a clear error.

Scope of the statistics: the policy at the loss forward, which is the old policy on the first
update of a batch (the upstream Clip_B / Clip_V recipes use `ppo_epochs=1` and one mini-batch per
step). Clip_B's mean / std of S and Clip_V's std of xD and its cap are computed over the micro-batch
gathered from every data-parallel rank; with `ppo_micro_batch_size_per_gpu` equal to the per-GPU
mini-batch (no gradient accumulation) this is the whole training batch, as in our own trainer.
Dropped tokens leave the token-mean denominator: the global token count verl passes
(`batch_num_tokens`) is reduced by the number of tokens dropped on all ranks.

Our hyper-parameters live in `RLEntropyPolicyLossConfig`, a subclass of verl's `PolicyLossConfig`:
set `actor_rollout_ref.actor.policy_loss._target_=rlentropy.integrations.verl.RLEntropyPolicyLossConfig`
and add keys with Hydra's `+` (see docs/scaling.md for the full command).
"""

from __future__ import annotations

import contextvars
import functools
import sys
from dataclasses import dataclass
from typing import Any, Optional

import torch

try:
    from verl.trainer.ppo import core_algos
    from verl.workers.config import PolicyLossConfig
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("rlentropy.integrations.verl needs verl >= 0.9: pip install 'rlentropy[verl]'") from err

from rlentropy.integrations.common import control_keep_mask

__all__ = [
    "ADV_ESTIMATORS",
    "POLICY_LOSSES",
    "ActorStats",
    "RLEntropyPolicyLossConfig",
    "actor_stats",
    "install_actor_stats",
    "register_all",
    "rlentropy_ppo_loss",
]


@dataclass
class RLEntropyPolicyLossConfig(PolicyLossConfig):
    """verl's `PolicyLossConfig` plus the parameters of rlentropy's losses (upstream defaults)."""

    clip_b_mu: float = 2.5
    clip_v_mu: float = 8.5
    clip_v_max_frac: float = 1e-4
    clip_v_clip_zero_adv: bool = True
    cov_seed: int = 0


@dataclass
class ActorStats:
    """Per-token statistics of the actor's current forward, padded to [bs, response_len].

    Attributes:
        entropy: [bs, T] entropy H at each response position (detached).
        s_bar: [bs, T] E_p[S] (detached), or None when the loss does not need it.
        dp_group: the data-parallel process group (None: no gathering).
    """

    entropy: torch.Tensor
    s_bar: torch.Tensor | None = None
    dp_group: Any = None


_ACTOR_STATS: contextvars.ContextVar[ActorStats | None] = contextvars.ContextVar("rlentropy_actor_stats", default=None)
_GENERATORS: dict[int, torch.Generator] = {}

MASK_LOSSES = ("rlentropy_clip_b", "rlentropy_clip_v")
S_BAR_LOSSES = ("rlentropy_clip_v",)


class actor_stats:  # noqa: N801 - used as a context manager like a function
    """Context manager that makes `stats` visible to the `rlentropy_clip_b` / `_clip_v` losses."""

    def __init__(self, stats: ActorStats) -> None:
        self._stats = stats
        self._token: contextvars.Token | None = None

    def __enter__(self) -> ActorStats:
        self._token = _ACTOR_STATS.set(self._stats)
        return self._stats

    def __exit__(self, *exc: Any) -> None:
        assert self._token is not None
        _ACTOR_STATS.reset(self._token)


# ---------------------------------------------------------------------------------- helpers
def _policy_cfg(config: Any) -> Any:
    if config is None:
        raise ValueError("rlentropy verl losses need the actor config (config=None was passed)")
    return config.policy_loss


def _get(cfg: Any, key: str, default: Any) -> Any:
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if value is None else value


def _clip_params(config: Any) -> dict[str, Any]:
    eps = config.clip_ratio
    low = config.clip_ratio_low if config.clip_ratio_low is not None else eps
    high = config.clip_ratio_high if config.clip_ratio_high is not None else eps
    return {"eps_low": float(low), "eps_high": float(high)}


def _agg(loss_mat: torch.Tensor, mask: torch.Tensor, mode: str, config: Any, dropped: float = 0.0) -> torch.Tensor:
    """verl's `agg_loss` with its global batch info; `dropped` tokens leave the global token count."""
    info = dict(getattr(config, "global_batch_info", {}) or {})
    if dropped and info.get("batch_num_tokens") is not None:
        info["batch_num_tokens"] = info["batch_num_tokens"] - dropped
    return core_algos.agg_loss(loss_mat=loss_mat, loss_mask=mask, loss_agg_mode=mode, **info)


def _generator(device: torch.device, seed: int) -> torch.Generator:
    rank = torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
    key = hash((str(device), seed, rank))
    if key not in _GENERATORS:
        gen = torch.Generator(device=device)
        gen.manual_seed(seed * 1000003 + rank)
        _GENERATORS[key] = gen
    return _GENERATORS[key]


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


def _item(x: Any) -> float:
    return float(x.detach().float().item()) if torch.is_tensor(x) else float(x)


def _metrics(prefix: str, metrics: dict[str, Any]) -> dict[str, float]:
    return {f"actor/{prefix}/{k}": _item(v) for k, v in metrics.items() if not torch.is_tensor(v) or v.numel() == 1}


# ---------------------------------------------------------------------------------- policy losses
def _loss_ppo(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean", config=None,
              rollout_is_weights=None):
    from rlentropy.algorithms import get_policy_loss

    mask = response_mask.to(log_prob.dtype)  # [bs, T]
    params = {**_clip_params(config), "clip_ratio_c": float(config.get("clip_ratio_c", 3.0))}
    loss_mat, m = get_policy_loss("ppo")(log_prob, old_log_prob, advantages, mask, **params)  # [bs, T]
    if rollout_is_weights is not None:
        loss_mat = loss_mat * rollout_is_weights
    return _agg(loss_mat, mask, loss_agg_mode, config), _metrics("rlentropy_ppo", m)


def _loss_gspo(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean", config=None,
               rollout_is_weights=None):
    from rlentropy.algorithms import get_policy_loss, get_policy_loss_spec

    mask = response_mask.to(log_prob.dtype)  # [bs, T]
    loss_mat, m = get_policy_loss("gspo")(log_prob, old_log_prob, advantages, mask, **_clip_params(config))
    if rollout_is_weights is not None:
        loss_mat = loss_mat * rollout_is_weights
    mode = get_policy_loss_spec("gspo").agg_mode or loss_agg_mode
    return _agg(loss_mat, mask, mode, config), _metrics("rlentropy_gspo", m)


def _loss_clip_cov(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean", config=None,
                   rollout_is_weights=None):
    from rlentropy.algorithms import get_policy_loss

    pl = _policy_cfg(config)
    mask = response_mask.to(log_prob.dtype)  # [bs, T]
    loss_mat, m = get_policy_loss("clip_cov")(
        log_prob, old_log_prob, advantages, mask, **_clip_params(config),
        clip_cov_ratio=float(_get(pl, "clip_cov_ratio", 2e-4)), clip_cov_lb=float(_get(pl, "clip_cov_lb", 1.0)),
        clip_cov_ub=float(_get(pl, "clip_cov_ub", 5.0)),
        generator=_generator(log_prob.device, int(_get(pl, "cov_seed", 0))),
    )  # [bs, T]
    if rollout_is_weights is not None:
        loss_mat = loss_mat * rollout_is_weights
    return _agg(loss_mat, mask, loss_agg_mode, config), _metrics("rlentropy_clip_cov", m)


def _loss_kl_cov(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean", config=None,
                 rollout_is_weights=None):
    from rlentropy.algorithms import get_policy_loss

    pl = _policy_cfg(config)
    mask = response_mask.to(log_prob.dtype)  # [bs, T]
    loss_mat, m = get_policy_loss("kl_cov")(
        log_prob, old_log_prob, advantages, mask,
        kl_cov_ratio=float(_get(pl, "kl_cov_ratio", 2e-4)), ppo_kl_coef=float(_get(pl, "ppo_kl_coef", 1.0)),
    )  # [bs, T]
    if rollout_is_weights is not None:
        loss_mat = loss_mat * rollout_is_weights
    return _agg(loss_mat, mask, loss_agg_mode, config), _metrics("rlentropy_kl_cov", m)


def _mask_control_loss(control: str, old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config,
                       rollout_is_weights):
    from rlentropy.algorithms import get_policy_loss

    stats = _ACTOR_STATS.get()
    name = f"rlentropy_{control}"
    if stats is None:
        raise RuntimeError(
            f"loss_mode={name} needs rlentropy's actor-side statistics: set "
            "actor_rollout_ref.model.external_lib=rlentropy.integrations.verl and "
            "actor_rollout_ref.actor.calculate_entropy=True (see docs/scaling.md)"
        )
    if control == "clip_v" and stats.s_bar is None:
        raise RuntimeError("loss_mode=rlentropy_clip_v needs s_bar from the actor forward (see docs/scaling.md)")
    pl = _policy_cfg(config)
    mask = response_mask.to(torch.float32)  # [bs, T]
    logp = log_prob.detach().float()  # [bs, T]
    h = stats.entropy.float()  # [bs, T]
    s = torch.exp(logp) * (h + logp) * mask  # [bs, T]
    adv = advantages.float()  # [bs, T]
    g_s, off, _ = _gather_rows(s, stats.dp_group)
    g_a, _, _ = _gather_rows(adv, stats.dp_group)
    g_m, _, _ = _gather_rows(mask, stats.dp_group)
    if control == "clip_b":
        params: dict[str, Any] = {"mu": float(_get(pl, "clip_b_mu", 2.5))}
        g_sb = None
    else:
        g_sb, _, _ = _gather_rows(stats.s_bar.float() * mask, stats.dp_group)
        params = {
            "mu": float(_get(pl, "clip_v_mu", 8.5)), "max_frac": float(_get(pl, "clip_v_max_frac", 1e-4)),
            "clip_zero_adv": bool(_get(pl, "clip_v_clip_zero_adv", True)),
        }
    g_keep, cm = control_keep_mask(control, s=g_s, s_bar=g_sb, advantages=g_a, mask=g_m, params=params)
    b, t = mask.shape
    keep = g_keep[off : off + b, :t].to(log_prob.dtype)  # [bs, T]
    dropped_global = float((g_m - g_keep).sum().item())
    ppo_params = {**_clip_params(config), "clip_ratio_c": float(config.get("clip_ratio_c", 3.0))}
    loss_mat, m = get_policy_loss("ppo")(log_prob, old_log_prob, advantages, keep, **ppo_params)  # [bs, T]
    if rollout_is_weights is not None:
        loss_mat = loss_mat * rollout_is_weights
    loss = _agg(loss_mat, keep, loss_agg_mode, config, dropped=dropped_global)
    out = _metrics(name, m)
    out.update(_metrics(name, cm))
    return loss, out


def _loss_clip_b(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean", config=None,
                 rollout_is_weights=None):
    return _mask_control_loss("clip_b", old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config,
                              rollout_is_weights)


def _loss_clip_v(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean", config=None,
                 rollout_is_weights=None):
    return _mask_control_loss("clip_v", old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config,
                              rollout_is_weights)


POLICY_LOSSES: dict[str, Any] = {
    "rlentropy_ppo": _loss_ppo,
    "rlentropy_gspo": _loss_gspo,
    "rlentropy_clip_cov": _loss_clip_cov,
    "rlentropy_kl_cov": _loss_kl_cov,
    "rlentropy_clip_b": _loss_clip_b,
    "rlentropy_clip_v": _loss_clip_v,
}


# ---------------------------------------------------------------------------------- advantages
def _group_ids(index: Any, n: int, device: torch.device) -> torch.Tensor:
    if index is None:
        return torch.arange(n, device=device)
    mapping: dict[Any, int] = {}
    ids = [mapping.setdefault(u, len(mapping)) for u in list(index)]
    return torch.tensor(ids, dtype=torch.long, device=device)


def _make_adv(name: str):
    def estimator(token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index: Any = None,
                  config: Optional[Any] = None, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """rlentropy advantage `name` on scalar rewards (sum of token-level rewards), broadcast over T."""
        from rlentropy.algorithms import get_advantage

        rewards = token_level_rewards.sum(dim=-1)  # [bs]
        groups = _group_ids(index, rewards.shape[0], rewards.device)  # [bs]
        params: dict[str, Any] = {}
        if name == "grpo" and config is not None:
            params["scale"] = "group" if _get(config, "norm_adv_by_std_in_grpo", True) else "none"
        adv, _ = get_advantage(name)(rewards, groups, **params)  # [bs]
        adv_tok = adv.unsqueeze(-1).to(token_level_rewards.dtype) * response_mask  # [bs, T]
        return adv_tok, adv_tok

    estimator.__name__ = f"rlentropy_{name}"
    estimator.__qualname__ = estimator.__name__
    return estimator


ADV_ESTIMATORS: dict[str, Any] = {f"rlentropy_{n}": _make_adv(n) for n in ("grpo", "dr_grpo", "rloo", "reinforce_pp")}


def register_all() -> None:
    """Register our losses and advantage estimators in verl's registries (idempotent)."""
    for name, fn in POLICY_LOSSES.items():
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
    """Drop-in for verl's `ppo_loss`: supplies entropy / s_bar to `rlentropy_clip_b` / `_clip_v`.

    For every other loss mode it calls verl's dispatcher unchanged.
    """
    mode = _loss_mode(config)
    if mode not in MASK_LOSSES:
        return _VERL_PPO_LOSS(config, model_output, data, dp_group)
    from verl.workers.utils.padding import no_padding_2_padding

    entropy = model_output.get("entropy")
    if entropy is None:
        raise RuntimeError(f"loss_mode={mode} needs the entropy of the actor forward: set "
                           "actor_rollout_ref.actor.calculate_entropy=True")
    s_bar = model_output.get("rlentropy_s_bar")
    if mode in S_BAR_LOSSES and s_bar is None:
        raise RuntimeError(f"loss_mode={mode}: the actor forward produced no s_bar; the FSDP engine patch of "
                           "rlentropy.integrations.verl is not installed in this worker (set "
                           "actor_rollout_ref.model.external_lib=rlentropy.integrations.verl)")
    stats = ActorStats(
        entropy=no_padding_2_padding(entropy, data).detach(),
        s_bar=None if s_bar is None else no_padding_2_padding(s_bar, data).detach(),
        dp_group=dp_group,
    )
    with actor_stats(stats):
        return _VERL_PPO_LOSS(config, model_output, data, dp_group)


def _wants_s_bar(loss_function: Any) -> bool:
    if not isinstance(loss_function, functools.partial) or loss_function.func is not rlentropy_ppo_loss:
        return False
    config = loss_function.keywords.get("config")
    return config is not None and _loss_mode(config) in S_BAR_LOSSES


def s_bar_from_packed_logits(logits: torch.Tensor, labels: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """s_bar of each packed position from its logits (no grad).

    Args:
        logits: [N, V] logits of the packed (remove-padding) sequence.
        labels: [N] next-token ids (verl's `input_ids_rmpad_rolled`).
        temperature: [N] per-token sampling temperature.

    Returns:
        [N] float32 s_bar = E_p[S] under softmax(logits / temperature).
    """
    from rlentropy.tokenstats import token_stats

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
            "rlentropy_clip_v computes s_bar from the actor's logits: set actor_rollout_ref.model.use_remove_padding=True "
            "and actor_rollout_ref.model.use_fused_kernels=False"
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
