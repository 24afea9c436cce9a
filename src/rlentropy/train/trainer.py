"""The GRPO-family training loop (setup → train → save_checkpoint → cleanup).

One training step (docs/architecture.md):

    prompts → rollouts → rewards → advantages → one no-grad forward for the old-policy TokenStats
    (when nothing needs them before the loss, the first mini-batch's rows take theirs from their own
    update forward, so with one mini-batch the separate forward is skipped: `_fuse_old_stats`)
    → controls (mask edits) → PPO epochs × mini-batches × micro-batches (loss with the GLOBAL token
    count, gradient accumulation, grad-norm clip, AdamW, LR schedule) → metrics / logs / checkpoint

Several processes (`accelerate launch`): each process samples its share of the prompts; the
statistics that controls and advantages need are gathered so every process sees the whole batch;
every loss term is normalised by counts summed over processes and the gradients are summed across
processes before the step, so N processes compute the same update as one process with the same
global batch. Mini-batches are made of whole prompt groups (group index modulo `mini_batches`), which
keeps that true for every number of processes.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import random
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from rlentropy.algorithms import aggregate_loss, aggregation_weights, get_advantage, get_policy_loss, get_policy_loss_spec
from rlentropy.errors import ConfigError, DataError, TrainingError
from rlentropy.models.forward import policy_token_stats, policy_token_stats_chunked
from rlentropy.models.loading import load_policy, load_reference, num_parameters
from rlentropy.rollout.base import RolloutBatch
from rlentropy.tokenstats import TokenStats
from rlentropy.train import checkpoint as ckpt_io
from rlentropy.train.config import RunConfig, dump_config
from rlentropy.train.controls import ControlState, apply_control, build_controller, loss_spec_aggregation
from rlentropy.train.kl import kl_estimate
from rlentropy.train.probes import DynamicsProbe
from rlentropy.train.sinks import MetricsSink, Progress, truncate_metrics, write_rollouts

StepHook = Callable[["Trainer", int, dict[str, Any]], None]


def derive_seed(seed: int, *parts: Any) -> int:
    """A 63-bit seed from the run seed and a tag path (stable across processes and resumes)."""
    h = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def make_lr_lambda(*, warmup_steps: int, total_steps: int, schedule: str, min_lr_ratio: float) -> Callable[[int], float]:
    """LR multiplier at scheduler step s (s completed steps): linear warm-up, then constant/linear/cosine."""

    def fn(s: int) -> float:
        if warmup_steps > 0 and s < warmup_steps:
            return (s + 1) / (warmup_steps + 1)
        if schedule == "constant":
            return 1.0
        span = max(1, total_steps - warmup_steps)
        frac = min(1.0, max(0.0, (s - warmup_steps) / span))
        if schedule == "linear":
            return max(min_lr_ratio, 1.0 - frac)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac))

    return fn


def eval_settings(cfg: RunConfig, task: Any, *, seed: int) -> dict[str, Any]:
    """The settings record of an evaluation with the `eval:` section of `cfg` on the run's eval set.

    The same keys as `rlentropy.evaluate.run.SETTING_KEYS` (what `rlentropy eval` compares to decide
    whether a step is already evaluated with the settings it was asked for).
    """
    e = cfg.eval
    return {
        "task": getattr(task, "name", cfg.data.eval_task or cfg.data.task),
        "dataset": None,
        "n": int(e.n),
        "temperature": float(e.temperature),
        "top_p": float(e.top_p),
        "max_new_tokens": int(e.max_new_tokens or cfg.rollout.max_new_tokens),
        "max_prompts": e.max_prompts,
        "seed": int(seed),
    }


@dataclass
class DataCursor:
    """Position in the shuffled training examples: epoch e uses permutation seeded by (seed, e)."""

    epoch: int = 0
    pos: int = 0

    def take(self, n_examples: int, k: int, seed: int) -> list[int]:
        """The next k example indices (wrapping into a new epoch with a new permutation)."""
        out: list[int] = []
        while len(out) < k:
            perm = torch.randperm(n_examples, generator=torch.Generator().manual_seed(derive_seed(seed, "data", self.epoch)))
            need = k - len(out)
            chunk = perm[self.pos : self.pos + need].tolist()
            out.extend(chunk)
            self.pos += len(chunk)
            if self.pos >= n_examples:
                self.epoch += 1
                self.pos = 0
        return out


def concat_batches(parts: list[RolloutBatch], *, pad_id: int) -> RolloutBatch:
    """Stack rollout batches: prompts re-left-padded to the longest P, responses right-padded to the
    longest T, group ids renumbered consecutively."""
    P = max(b.prompt_len for b in parts)
    T = max(b.response_mask.shape[1] for b in parts)
    ids, att, rmask, slp, gids, trunc = [], [], [], [], [], []
    offset = 0
    for b in parts:
        n, p, t = len(b), b.prompt_len, b.response_mask.shape[1]
        lp, rp = P - p, T - t
        ids.append(torch.cat([torch.full((n, lp), pad_id, dtype=b.input_ids.dtype), b.input_ids[:, :p],
                              b.input_ids[:, p:], torch.full((n, rp), pad_id, dtype=b.input_ids.dtype)], 1))  # [n, P+T]
        att.append(torch.cat([torch.zeros(n, lp, dtype=b.attention_mask.dtype), b.attention_mask,
                              torch.zeros(n, rp, dtype=b.attention_mask.dtype)], 1))  # [n, P+T]
        rmask.append(torch.nn.functional.pad(b.response_mask, (0, rp)))  # [n, T]
        slp.append(torch.nn.functional.pad(b.sampler_logp, (0, rp)))  # [n, T]
        gids.append(b.group_ids - b.group_ids.min() + offset)  # [n]
        offset = int(gids[-1].max()) + 1
        trunc.append(b.truncated if b.truncated is not None else torch.zeros(n, dtype=torch.bool))
    return RolloutBatch(
        input_ids=torch.cat(ids), attention_mask=torch.cat(att), response_mask=torch.cat(rmask), prompt_len=P,
        sampler_logp=torch.cat(slp), group_ids=torch.cat(gids),
        prompts=[x for b in parts for x in b.prompts], completions=[x for b in parts for x in b.completions],
        examples=[x for b in parts for x in b.examples], truncated=torch.cat(trunc),
    )


class _StopFlag:
    """Set by the first Ctrl-C (SIGINT): the loop finishes the step, writes a checkpoint and stops."""

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, frame: Any) -> None:
            if self.requested:  # second Ctrl-C: stop now
                raise KeyboardInterrupt
            self.requested = True

        self._old = signal.signal(signal.SIGINT, handler)

    def uninstall(self) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None


class Trainer:
    """GRPO-family RL on a causal LM with entropy controls, probes, checkpoints and logging.

    Args:
        cfg: the validated run config.
        resume: continue from the newest complete checkpoint in `cfg.run_dir`.
        quiet: no progress bar.
        step_hook: called as `hook(trainer, step, metrics)` after each step's metrics are final
            (tests use it to inject failures; the demo uses it for nothing).
    """

    def __init__(self, cfg: RunConfig, *, resume: bool = False, quiet: bool = False, step_hook: StepHook | None = None) -> None:
        self.cfg = cfg
        self.run_dir = cfg.resolved_run_dir()
        self.resume = resume
        self.quiet = quiet
        self.step_hook = step_hook
        self.step = 0
        self.cursor = DataCursor()
        self.consecutive_nonfinite = 0
        self.elapsed = 0.0
        self.history: list[dict[str, Any]] = []
        self.final_eval: dict[str, float] | None = None
        self._eval_task: Any = None
        self._stop = _StopFlag()

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Validate inputs, build everything, restore a checkpoint when resuming. No training yet."""
        from accelerate import Accelerator

        cfg = self.cfg
        want = cfg.train.device
        if want == "cuda" and not torch.cuda.is_available():
            raise ConfigError("train.device: 'cuda' requested but no CUDA GPU is available")
        self.acc = Accelerator(cpu=(want == "cpu"), mixed_precision="no")
        self.device = self.acc.device
        self.world = self.acc.num_processes
        self.rank = self.acc.process_index
        self.is_main = self.acc.is_main_process
        if cfg.train.prompts_per_step % self.world:
            raise ConfigError(f"train.prompts_per_step: {cfg.train.prompts_per_step} must be divisible by the "
                              f"number of processes ({self.world})")
        self.local_prompts = cfg.train.prompts_per_step // self.world

        # Inputs are checked before any heavy work: task, examples, model path, run directory.
        from rlentropy.data import build_task
        from rlentropy.models.loading import resolve_model_source

        self.task = build_task(cfg.data)
        self.train_examples = list(self.task.train_examples())
        if not self.train_examples:
            raise DataError(f"data: task {cfg.data.task!r} has no training examples")
        self.eval_examples = list(self.task.eval_examples())
        resolve_model_source(cfg.model.path, allow_download=cfg.model.allow_download)
        ckpt_path = None
        if self.resume:
            found = ckpt_io.latest_checkpoint(self.run_dir)
            if found is None:
                raise ConfigError(f"--resume: {str(self.run_dir)!r} has no complete checkpoint to resume from")
            self.step, ckpt_path = found
        elif self.run_dir.exists() and (ckpt_io.list_checkpoints(self.run_dir) or (self.run_dir / "metrics.jsonl").exists()):
            raise ConfigError(f"run_dir: {str(self.run_dir)!r} already holds a run; use --resume or a new run_dir")

        torch.manual_seed(cfg.train.seed)
        random.seed(cfg.train.seed)
        np.random.seed(cfg.train.seed % 2**32)
        loaded = load_policy(cfg.model, device=self.device, checkpoint=ckpt_path)
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        if not cfg.model.load_in_4bit:
            self.model.to(self.device)
        self.ref_model = None
        if cfg.algorithm.kl.coef > 0:
            self.ref_model = load_reference(cfg.model, device=self.device)
            if self.ref_model is not None:
                self.ref_model.to(self.device)
        self.autocast = self.device.type == "cuda" and cfg.model.bf16_autocast
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if not self.params:
            raise ConfigError("model: no trainable parameters")
        self.optimizer = torch.optim.AdamW(
            self.params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
            weight_decay=cfg.optim.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, make_lr_lambda(
            warmup_steps=cfg.optim.warmup_steps, total_steps=cfg.train.steps, schedule=cfg.optim.schedule,
            min_lr_ratio=cfg.optim.min_lr_ratio,
        ))
        self.controller = build_controller(cfg.algorithm)
        self.ctl_state = ControlState.from_config(cfg.algorithm)
        if self.controller is not None and hasattr(self.controller, "applied_coef"):
            self.ctl_state.entropy_coef = float(self.controller.applied_coef)
        self.loss_spec = get_policy_loss_spec(cfg.algorithm.loss)
        self.loss_fn = get_policy_loss(cfg.algorithm.loss)
        self.agg_mode = loss_spec_aggregation(cfg.algorithm.loss, cfg.algorithm.aggregation)
        self.max_len = cfg.algorithm.max_len or cfg.rollout.max_new_tokens
        self._validate_algorithm_params()

        from rlentropy.rollout.hf import HFGenerator

        self.generator = HFGenerator(
            self._unwrapped(), self.tokenizer, max_new_tokens=cfg.rollout.max_new_tokens,
            temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
            stop_strings=list(self.task.stop_strings), batch_size=cfg.rollout.batch_size,
        )
        self.probe = DynamicsProbe(cfg.probes, run_dir=self.run_dir if self.is_main else None)

        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
        if ckpt_path is not None:
            state = ckpt_io.load_state(ckpt_path)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.controller is not None and state.get("controller") is not None:
                self.controller.load_state_dict(state["controller"])
            self.ctl_state.load_state_dict(state.get("control_state", {}))
            self.cursor = DataCursor(**state["cursor"])
            self.consecutive_nonfinite = int(state.get("consecutive_nonfinite", 0))
            self.elapsed = float(state.get("elapsed", 0.0))
            ckpt_io.set_rng_state(state["rng"])
            if self.is_main:
                truncate_metrics(self.run_dir / "metrics.jsonl", self.step)
        self.sink = None
        if self.is_main:
            self.sink = MetricsSink(
                self.run_dir, tensorboard=cfg.logging.tensorboard, wandb=cfg.logging.wandb,
                wandb_project=cfg.logging.wandb_project, run_name=cfg.name, config=cfg.model_dump(mode="json"),
            )
        trainable, total = num_parameters(self.model)
        self.info = {"model_source": loaded.source, "trainable_params": trainable, "total_params": total}

    def _validate_algorithm_params(self) -> None:
        """Call the configured functions once on a tiny dummy batch so bad params fail before any work."""
        a = self.cfg.algorithm
        g = torch.Generator().manual_seed(0)
        logp = -torch.rand(2, 3, generator=g) - 0.1  # [2, 3]
        mask = torch.ones(2, 3)  # [2, 3]
        adv = torch.tensor([1.0, -1.0])  # [2]
        try:
            get_advantage(a.advantage)(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), **a.advantage_params)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"algorithm.advantage_params: {err}") from None
        try:
            self._loss(logp, logp.detach(), adv[:, None] * mask, mask, step=0, tag=("validate",))
            self._select(logp, adv[:, None] * mask, mask, step=0)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"algorithm.loss_params: {err}") from None
        s = torch.rand(2, 3, generator=g)  # [2, 3]
        apply_control(self.ctl_state, s=s, s_bar=s * 0.5, entropy=s + 1, advantages=adv[:, None] * mask, mask=mask)

    # ------------------------------------------------------------------ helpers
    def _unwrapped(self) -> torch.nn.Module:
        return self.model

    def _autocast(self) -> Any:
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.autocast else nullcontext()

    def _loss(self, logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, *, step: int,
              tag: tuple, selected: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        params = dict(self.cfg.algorithm.loss_params)
        if selected is not None:
            params["selected"] = selected
        elif self.loss_spec.needs_generator:
            params["generator"] = torch.Generator(device=logp.device).manual_seed(derive_seed(self.cfg.train.seed, "clip_cov", step, self.rank, *tag))
        return self.loss_fn(logp, old_logp, adv, mask, **params)  # [b, T], metrics

    def _select(self, logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, *, step: int) -> tuple[torch.Tensor | None, dict[str, float]]:
        """Whole-batch token selection of clip_cov / kl_cov (`algorithm.cov_selection == "batch"`)."""
        select = self.loss_spec.select
        if select is None or self.cfg.algorithm.cov_selection != "batch":
            return None, {}
        accepted = set(inspect.signature(select).parameters)
        params = {k: v for k, v in self.cfg.algorithm.loss_params.items() if k in accepted}
        if "generator" in accepted:
            params["generator"] = torch.Generator(device=logp.device).manual_seed(derive_seed(self.cfg.train.seed, "cov_select", step))
        sel, m = select(logp, adv, mask, **params)  # [B, T] bool
        n = mask.sum().clamp_min(1)
        return sel, {"control/frac_selected": float(sel.float().sum() / n), **{f"control/{k}": float(v) for k, v in m.items()}}

    def _gather_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate a [b, ...] tensor over processes along dim 0 (dim 1 padded with zeros)."""
        if self.world == 1:
            return x
        if x.dim() >= 2:
            x = self.acc.pad_across_processes(x.contiguous(), dim=1, pad_index=0)
        return self.acc.gather(x.contiguous())

    def _local_rows(self, x: torch.Tensor, b_local: int, t_local: int | None = None) -> torch.Tensor:
        if self.world == 1:
            return x
        out = x[self.rank * b_local : (self.rank + 1) * b_local]
        return out[:, :t_local] if (t_local is not None and out.dim() >= 2) else out

    def _all_sum(self, x: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return x
        return self.acc.reduce(x.to(self.device).clone(), reduction="sum")

    def _stats_rows(self) -> int:
        t = self.cfg.train
        return t.stats_batch_size or t.micro_batch_size or max(1, self.local_prompts * t.group_size)

    def _sample(self, examples: list, seed: int, n: int) -> RolloutBatch:
        prompts = [self.task.render_prompt(ex, self.tokenizer) for ex in examples]
        was_training = self.model.training
        self.model.eval()
        try:
            with self._autocast():
                return self.generator.generate(prompts, examples, n, seed=seed)
        finally:
            self.model.train(was_training)

    def _old_stats_except(self, batch: RolloutBatch, skip: list[int]) -> TokenStats:
        """Old-policy statistics of every row except `skip` (left 0: the update forward fills them)."""
        if not skip:
            return self._old_stats(batch)
        fields = ("logp", "entropy", "s", "s_bar", "sum_p2")
        out = {k: torch.zeros(batch.response_mask.shape, dtype=torch.float32, device=self.device) for k in fields}  # [b, T]
        taken = set(skip)
        rest = [i for i in range(len(batch)) if i not in taken]
        if rest:
            st = self._old_stats(batch.select(rest))  # TokenStats [b - |skip|, T]
            for k in fields:
                out[k][rest] = getattr(st, k).float()
        return TokenStats(**out)

    def _old_stats(self, batch: RolloutBatch) -> Any:
        was_training = self.model.training
        self.model.eval()
        try:
            with self._autocast():
                return policy_token_stats_chunked(self.model, batch, rows_per_chunk=self._stats_rows(),
                                                  temperature=self.cfg.rollout.temperature)
        finally:
            self.model.train(was_training)

    def _has_dropout(self) -> bool:
        """True when the policy's train-mode forward is stochastic (a dropout with p > 0 anywhere)."""
        if not hasattr(self, "_dropout_cache"):
            mods = any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 for m in self.model.modules())
            conf = getattr(self._unwrapped(), "config", None)
            attrs = {k: v for k, v in (vars(conf).items() if conf is not None else ())
                     if ("dropout" in k or "pdrop" in k) and isinstance(v, (int, float)) and not isinstance(v, bool)}
            self._dropout_cache = mods or any(v > 0 for v in attrs.values())
        return self._dropout_cache

    def _fuse_old_stats(self, step: int) -> bool:
        """Whether the first mini-batch of this step takes its old-policy statistics from its update forward.

        The weights first move after the last backward of the first mini-batch of the first epoch,
        so that forward sees exactly the old policy; with one mini-batch it covers the whole batch
        and the separate no-grad forward is skipped, with M mini-batches it runs on the other
        (M − 1) / M of the rows only. Allowed only when nothing reads the statistics before the
        loss: control "none", no whole-batch Clip-Cov / KL-Cov selection, no probe on this step,
        and no dropout (the old statistics are taken in eval mode, the loss forward in train mode).
        """
        cfg = self.cfg
        a = cfg.algorithm
        return bool(
            cfg.train.fuse_old_stats
            and a.control == "none"
            and (self.loss_spec.select is None or a.cov_selection != "batch")
            and not self.probe.active(step)
            and not self._has_dropout()
        )

    def _ref_logp(self, batch: RolloutBatch) -> torch.Tensor | None:
        if self.cfg.algorithm.kl.coef <= 0:
            return None
        with self._autocast():
            if self.ref_model is not None:
                st = policy_token_stats_chunked(self.ref_model, batch, rows_per_chunk=self._stats_rows(),
                                                temperature=self.cfg.rollout.temperature)
            else:  # LoRA: the base model is the policy with its adapters switched off
                was_training = self.model.training
                self.model.eval()
                try:
                    with self.model.disable_adapter():
                        st = policy_token_stats_chunked(self.model, batch, rows_per_chunk=self._stats_rows(),
                                                        temperature=self.cfg.rollout.temperature)
                finally:
                    self.model.train(was_training)
        return st.logp  # [B, T]

    def sample_probe_batch(self) -> RolloutBatch:
        """An independent rollout batch for the probes: held-out prompts, a seed of its own."""
        pool = self.eval_examples or self.train_examples
        k = min(len(pool), self.cfg.probes.probe_prompts)
        rng = random.Random(derive_seed(self.cfg.train.seed, "probe", self.step, self.rank))
        picks = [pool[i] for i in rng.sample(range(len(pool)), k)]
        return self._sample(picks, derive_seed(self.cfg.train.seed, "probe-rollout", self.step, self.rank), self.cfg.train.group_size)

    # ------------------------------------------------------------------ one step
    def train_step(self, step: int) -> dict[str, Any]:
        """Run training step `step` (1-based) and return its metrics (Python scalars)."""
        cfg = self.cfg
        t_step = time.perf_counter()
        timings: dict[str, float] = {}
        G = cfg.train.group_size
        T_temp = cfg.rollout.temperature

        # 1. prompts → rollouts
        t0 = time.perf_counter()
        idx = self.cursor.take(len(self.train_examples), cfg.train.prompts_per_step, cfg.train.seed)
        mine = idx[self.rank * self.local_prompts : (self.rank + 1) * self.local_prompts]
        examples = [self.train_examples[i] for i in mine]
        if cfg.rollout.per_prompt_seeds:
            first = self.rank * self.local_prompts
            parts = [self._sample([ex], derive_seed(cfg.train.seed, "rollout-prompt", step, first + i), G)
                     for i, ex in enumerate(examples)]
            batch = concat_batches(parts, pad_id=self.generator.pad_id)
        else:
            batch = self._sample(examples, derive_seed(cfg.train.seed, "rollout", step, self.rank), G)
        timings["time/rollout"] = time.perf_counter() - t0

        # 2. rewards
        t0 = time.perf_counter()
        rewards = torch.tensor(self.task.score(batch.completions, batch.examples), dtype=torch.float32)  # [b]
        timings["time/reward"] = time.perf_counter() - t0

        # 3. advantages over the whole (gathered) batch
        t0 = time.perf_counter()
        b_local, t_local = len(batch), batch.response_mask.shape[1]
        global_gid = batch.group_ids.long() + self.rank * self.local_prompts  # [b]
        rewards_all = self._gather_rows(rewards.to(self.device)).cpu()  # [B]
        gid_all = self._gather_rows(global_gid.to(self.device)).cpu()  # [B]
        adv_all, adv_metrics = get_advantage(cfg.algorithm.advantage)(rewards_all, gid_all, **cfg.algorithm.advantage_params)  # [B]
        adv_seq = self._local_rows(adv_all, b_local).to(torch.float32)  # [b]

        # mini-batches: whole prompt groups, group index modulo mini_batches
        M = cfg.train.mini_batches
        mb_rows = [torch.nonzero(global_gid % M == j).flatten().tolist() for j in range(M)]

        # 4. old-policy statistics (one no-grad forward; when nothing needs them before the loss, the
        #    first mini-batch's rows come from its own update forward: see _fuse_old_stats) and the
        #    reference log-probs
        fused = self._fuse_old_stats(step)
        fill_rows = mb_rows[0] if fused else []
        old = self._old_stats_except(batch, fill_rows)  # TokenStats [b, T]; fill_rows are 0 until the update
        ref_logp = self._ref_logp(batch)  # [b, T] or None
        mask = batch.response_mask.to(torch.float32).to(self.device)  # [b, T]
        adv_tok = adv_seq.to(self.device)[:, None] * mask  # [b, T]

        # 5. controls: mask edits over the whole batch
        g_mask = self._gather_rows(mask)  # [B, T*]
        g_adv = self._gather_rows(adv_tok)  # [B, T*]
        if fused:  # control "none" reads no statistics and there is no whole-batch selection
            zero = torch.zeros_like(g_mask)  # [B, T*]
            g_loss_mask, ctl_metrics = apply_control(self.ctl_state, s=zero, s_bar=zero, entropy=zero, advantages=g_adv, mask=g_mask)
            g_sel, sel_metrics = None, {}
        else:
            g_s, g_sbar, g_h, g_logp = (self._gather_rows(getattr(old, k).float()) for k in ("s", "s_bar", "entropy", "logp"))
            g_loss_mask, ctl_metrics = apply_control(
                self.ctl_state, s=g_s, s_bar=g_sbar, entropy=g_h, advantages=g_adv, mask=g_mask,
            )  # [B, T*]
            g_sel, sel_metrics = self._select(g_logp, g_adv, g_loss_mask, step=step)  # [B, T*] bool or None
        loss_mask = self._local_rows(g_loss_mask, b_local, t_local)  # [b, T]
        ctl_metrics.update(sel_metrics)
        selected = None if g_sel is None else self._local_rows(g_sel, b_local, t_local)  # [b, T]
        timings["time/stats"] = time.perf_counter() - t0

        counts = []
        token_weights = torch.zeros_like(mask)  # [b, T]
        for rows in mb_rows:
            sub = loss_mask[rows] if rows else loss_mask[:0]
            n_tok = self._all_sum(sub.sum().double())
            n_seq = self._all_sum((sub.sum(-1) > 0).sum().double())
            counts.append((n_tok.cpu(), n_seq.cpu()))
            if rows:
                token_weights[rows] = aggregation_weights(sub, self.agg_mode, global_tokens=n_tok.cpu(), global_seqs=n_seq.cpu(),
                                                          max_len=self.max_len).to(token_weights.dtype)

        metrics: dict[str, Any] = {}
        lr = float(self.optimizer.param_groups[0]["lr"])
        probe_on = self.probe.active(step)
        t0 = time.perf_counter()
        if probe_on:
            metrics.update(self.probe.before_update(
                step, model=self.model, batch=batch, old_stats=old, advantages=adv_tok, loss_mask=loss_mask,
                token_weights=token_weights, lr=lr, optimizer=self.optimizer,
                sample_probe_batch=self.sample_probe_batch, temperature=T_temp,
            ))
        timings["time/probe"] = time.perf_counter() - t0

        # 6. updates
        t0 = time.perf_counter()
        upd = self._update(step, batch, old, adv_tok, loss_mask, ref_logp, mb_rows, counts, probe_on, token_weights,
                           selected, fill_first=bool(fill_rows))
        timings["time/update"] = time.perf_counter() - t0
        if fused:  # every row of `old` is now filled: gather it for the step's metrics
            g_s, g_sbar, g_h, g_logp = (self._gather_rows(getattr(old, k).float()) for k in ("s", "s_bar", "entropy", "logp"))
        if probe_on:
            t1 = time.perf_counter()
            metrics.update(self.probe.after_update(step, model=self.model, optimizer=self.optimizer))
            timings["time/probe"] += time.perf_counter() - t1
        self.scheduler.step()

        # 7. metrics (global: computed on gathered tensors)
        n_valid = g_mask.sum().clamp_min(1)
        lengths = self._gather_rows(batch.response_mask.sum(-1).float().to(self.device))  # [B]
        trunc = batch.truncated if batch.truncated is not None else torch.zeros(b_local, dtype=torch.bool)
        trunc_all = self._gather_rows(trunc.float().to(self.device))  # [B]
        solved = torch.zeros(int(gid_all.max()) + 1).scatter_reduce(0, gid_all, (rewards_all >= 1.0).float(), reduce="amax")  # [P]
        metrics.update({
            "reward/mean": float(rewards_all.mean()),
            "reward/std": float(rewards_all.std(correction=0)),
            "reward/pass_rate": float((rewards_all >= 1.0).float().mean()),
            "reward/group_pass_rate": float(solved.mean()),
            "reward/zero_var_group_frac": float(adv_metrics["frac_zero_std"]) if "frac_zero_std" in adv_metrics else float("nan"),
            "adv/mean": float(adv_all.mean()),
            "adv/std": float(adv_all.std(correction=0)),
            "entropy/mean": float((g_h * g_mask).sum() / n_valid),
            "entropy/surprisal": float((-g_logp * g_mask).sum() / n_valid),
            "entropy/s_mean": float((g_s * g_mask).sum() / n_valid),
            "entropy/s_bar_mean": float((g_sbar * g_mask).sum() / n_valid),
            "response/length_mean": float(lengths.mean()),
            "response/length_max": float(lengths.max()),
            "response/truncated_frac": float(trunc_all.mean()),
            "optim/lr": lr,
        })
        metrics.update(ctl_metrics)
        metrics.update(upd)
        if "loss/frac_selected" in metrics and "control/frac_selected" not in metrics:
            metrics["control/frac_selected"] = metrics["loss/frac_selected"]
        if "control/frac_selected" in metrics and cfg.algorithm.control == "none":
            metrics["control/frac_controlled"] = metrics["control/frac_selected"]
        else:
            metrics["control/frac_controlled"] = metrics.get("control/frac_removed", 0.0)
        if self.controller is not None:
            metrics.update(self.ctl_state.step_controller(self.controller, metrics["entropy/mean"]))
        timings["time/step"] = time.perf_counter() - t_step
        metrics.update(timings)

        if cfg.logging.rollouts_every and step % cfg.logging.rollouts_every == 0:
            self._dump_rollouts(step, batch, rewards, adv_seq)
        return metrics

    def _update(self, step: int, batch: RolloutBatch, old: Any, adv_tok: torch.Tensor, loss_mask: torch.Tensor,
                ref_logp: torch.Tensor | None, mb_rows: list[list[int]], counts: list, probe_on: bool,
                token_weights: torch.Tensor, selected: torch.Tensor | None, *, fill_first: bool = False) -> dict[str, Any]:
        """PPO epochs × mini-batches × micro-batches; returns the update metrics.

        `fill_first` (`_fuse_old_stats`): the rows of the first mini-batch have no old statistics yet.
        In the first epoch their old log-probs are their own detached log-probs (the weights first
        move after that mini-batch's last backward), and their detached statistics are written into
        `old` in place, for later mini-batches / epochs and the step's metrics.
        """
        cfg = self.cfg
        a = cfg.algorithm
        T_temp = cfg.rollout.temperature
        mbs = cfg.train.micro_batch_size
        sums: dict[str, float] = {}
        weight_total = 0.0
        grad_norms: list[float] = []
        losses: list[float] = []
        skipped = 0
        self.model.train()
        bonus = self.ctl_state.entropy_coef
        fields = ("logp", "entropy", "s", "s_bar", "sum_p2")
        for epoch in range(cfg.train.ppo_epochs):
            for j, rows in enumerate(mb_rows):
                n_tok, n_seq = counts[j]
                self.optimizer.zero_grad(set_to_none=True)
                bad = torch.zeros((), dtype=torch.float64)
                loss_sum = 0.0
                micro = [rows[i : i + (mbs or max(1, len(rows)))] for i in range(0, len(rows), mbs or max(1, len(rows)))]
                filling = fill_first and epoch == 0 and j == 0
                done: list[int] = []
                for k, mrows in enumerate(micro):
                    sub = batch.select(mrows)
                    m = loss_mask[mrows]  # [m, T]
                    with self._autocast():
                        st = policy_token_stats(self.model, sub, temperature=T_temp, with_grad=True, check_finite=False)
                    logp = st.logp.float()  # [m, T]
                    if filling:
                        for kk in fields:
                            getattr(old, kk)[mrows] = getattr(st, kk).detach().float()
                        done.extend(mrows)
                        old_logp = logp.detach()  # [m, T]
                    else:
                        old_logp = old.logp[mrows]  # [m, T]
                    loss_mat, lmet = self._loss(logp, old_logp, adv_tok[mrows], m, step=step, tag=(epoch, j, k),
                                                selected=None if selected is None else selected[mrows])
                    pg = aggregate_loss(loss_mat, m, self.agg_mode, global_tokens=n_tok, global_seqs=n_seq, max_len=self.max_len)
                    total = pg
                    if bonus > 0:
                        ent = aggregate_loss(st.entropy.float(), m, self.agg_mode, global_tokens=n_tok, global_seqs=n_seq, max_len=self.max_len)
                        total = total - bonus * ent
                    kl_ref = None
                    if ref_logp is not None:
                        kl_mat, _ = kl_estimate(logp, ref_logp[mrows], estimator=a.kl.estimator)  # [m, T]
                        kl_ref = aggregate_loss(kl_mat, m, self.agg_mode, global_tokens=n_tok, global_seqs=n_seq, max_len=self.max_len)
                        total = total + a.kl.coef * kl_ref
                    if not torch.isfinite(total.detach()):
                        bad = bad + 1
                        break
                    total.backward()
                    loss_sum += float(total.detach())
                    w = float(m.sum())
                    if probe_on:
                        # per-sequence loss weights [m]: the probe's exact effective sample size
                        self.probe.on_micro_batch(step, model=self.model, weight=token_weights[mrows].sum(-1))
                    # metrics, token-weighted over micro-batches
                    with torch.no_grad():
                        d = (old_logp - logp.detach())  # [m, T] log(old / new)
                        rm = batch.response_mask[mrows].to(d.device)
                        approx_kl = ((torch.expm1(-d) + d) * rm).sum() / rm.sum().clamp_min(1)  # k3 of KL(old‖new)... per token
                        ratio = (torch.exp(-d) * rm).sum() / rm.sum().clamp_min(1)
                    vals = {"policy/kl_old": approx_kl, "policy/ratio_mean": ratio, **{f"loss/{kk}": vv for kk, vv in lmet.items()}}
                    if bonus > 0:
                        vals["loss/entropy_term"] = ent.detach()
                    if kl_ref is not None:
                        vals["kl/ref"] = ((kl_mat.detach() * m).sum() / m.sum().clamp_min(1))
                    for kk, vv in vals.items():
                        if isinstance(vv, torch.Tensor) and vv.numel() == 1:
                            sums[kk] = sums.get(kk, 0.0) + float(vv) * w
                    weight_total += w
                if filling and len(done) < len(rows):  # a non-finite loss stopped the pass early
                    rest = sorted(set(rows) - set(done))
                    st = self._old_stats(batch.select(rest))  # the weights have not moved: still the old policy
                    for kk in fields:
                        getattr(old, kk)[rest] = getattr(st, kk).float()
                bad = self._all_sum(bad.to(self.device)).cpu()
                grad_norm = torch.tensor(float("nan"))
                if float(bad) == 0:
                    self._all_reduce_grads()
                    clip = cfg.train.grad_clip if cfg.train.grad_clip is not None else float("inf")
                    grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip)
                if float(bad) > 0 or not torch.isfinite(grad_norm):
                    skipped += 1
                    self.consecutive_nonfinite += 1
                    self.optimizer.zero_grad(set_to_none=True)
                    if self.consecutive_nonfinite >= cfg.train.max_nonfinite:
                        last = ckpt_io.latest_checkpoint(self.run_dir)
                        where = f"last good checkpoint: {last[1]}" if last else "no checkpoint was written"
                        raise TrainingError(
                            f"{self.consecutive_nonfinite} non-finite losses/gradients in a row (step {step}); "
                            f"stopping. {where}"
                        )
                    continue
                self.consecutive_nonfinite = 0
                grad_norms.append(float(grad_norm))
                losses.append(float(self._all_sum(torch.tensor(loss_sum, dtype=torch.float64))))
                self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.world > 1:  # token-weighted means over every process's micro-batches, not rank 0's only
            import torch.distributed as dist

            key_lists: list[Any] = [None] * self.world
            dist.all_gather_object(key_lists, sorted(sums))
            keys = sorted(set().union(*key_lists))
            vec = self._all_sum(torch.tensor([sums.get(k, 0.0) for k in keys] + [weight_total], dtype=torch.float64)).cpu()
            sums, weight_total = dict(zip(keys, vec[:-1].tolist())), float(vec[-1])
        out = {k: v / weight_total for k, v in sums.items()} if weight_total > 0 else {}
        out["optim/grad_norm"] = float(np.mean(grad_norms)) if grad_norms else float("nan")
        out["optim/updates"] = float(len(grad_norms))
        out["loss/total"] = float(np.mean(losses)) if losses else float("nan")
        out["train/skipped_updates"] = float(skipped)
        return out

    def _all_reduce_grads(self) -> None:
        """Sum gradients over processes (each process's loss already carries global normalisers)."""
        if self.world == 1:
            return
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        off = 0
        for p, g in zip(self.params, grads):
            n = g.numel()
            p.grad = flat[off : off + n].view_as(p).clone()
            off += n

    def _dump_rollouts(self, step: int, batch: RolloutBatch, rewards: torch.Tensor, adv: torch.Tensor) -> None:
        rows = []
        for i in range(len(batch)):
            ex = batch.examples[i] if batch.examples else None
            rows.append({
                "group": int(batch.group_ids[i]) + self.rank * self.local_prompts,
                "example_id": getattr(ex, "id", None),
                "prompt": batch.prompts[i] if batch.prompts else None,
                "completion": batch.completions[i] if batch.completions else None,
                "answer": getattr(ex, "answer", None),
                "reward": float(rewards[i]),
                "advantage": float(adv[i]),
                "length": int(batch.response_mask[i].sum()),
                "truncated": bool(batch.truncated[i]) if batch.truncated is not None else None,
            })
        name = f"step_{step}.jsonl.gz" if self.world == 1 else f"step_{step}.rank{self.rank}.jsonl.gz"
        write_rollouts(self.run_dir / "rollouts" / name, rows)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "controller": self.controller.state_dict() if self.controller is not None else None,
            "control_state": self.ctl_state.state_dict(),
            "cursor": {"epoch": self.cursor.epoch, "pos": self.cursor.pos},
            "consecutive_nonfinite": self.consecutive_nonfinite,
            "elapsed": self.elapsed,
        }

    def save_checkpoint(self) -> Path | None:
        """Write checkpoints/step_<step> atomically (main process) and prune old ones."""
        path = None
        if self.is_main:
            path = ckpt_io.save_checkpoint(self.run_dir, self.step, model=self.model, tokenizer=self.tokenizer,
                                           state=self.state_dict(), keep_last=self.cfg.checkpoint.keep_last)
        if self.world > 1:
            self.acc.wait_for_everyone()
        return path

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, step: int) -> dict[str, float]:
        """pass@k etc. on the eval split (`data.eval_task` when set) with `rlentropy.evaluate.evaluate_model`.

        Writes eval/step_N/{metrics.json, samples.jsonl.gz} and refreshes eval/metrics.csv through
        `rlentropy.evaluate.run.save_eval_result`, with the settings record, so `rlentropy eval` skips
        the step when asked for the same settings and `rlentropy report` reads it.
        """
        from rlentropy.data import build_task
        from rlentropy.evaluate import evaluate_model
        from rlentropy.evaluate.run import save_eval_result

        if self._eval_task is None:
            self._eval_task = build_task(self.cfg.data, for_eval=True)
        settings = eval_settings(self.cfg, self._eval_task, seed=derive_seed(self.cfg.train.seed, "eval") % (2**31))
        was_training = self.model.training
        self.model.eval()
        try:
            metrics, samples = evaluate_model(
                self.model, self.tokenizer, self._eval_task, n=settings["n"], temperature=settings["temperature"],
                top_p=settings["top_p"], max_new_tokens=settings["max_new_tokens"], max_prompts=settings["max_prompts"],
                seed=settings["seed"], batch_size=self.cfg.rollout.batch_size,
            )
        finally:
            self.model.train(was_training)
        save_eval_result(self.run_dir, step, metrics, samples, settings=settings, checkpoint=f"in-training step {step}")
        return {f"eval/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}

    # ------------------------------------------------------------------ loop
    def train(self) -> list[dict[str, Any]]:
        """Run from `self.step` to `train.steps`; returns the metrics of the steps run here."""
        cfg = self.cfg
        progress = Progress(cfg.train.steps, start=self.step, enabled=(not self.quiet) and self.is_main, description=cfg.name)
        self._stop.install()
        t_start = time.time() - self.elapsed
        try:
            while self.step < cfg.train.steps:
                step = self.step + 1
                metrics = self.train_step(step)
                self.step = step
                if cfg.eval.every and step % cfg.eval.every == 0 and self.is_main:
                    t0 = time.perf_counter()
                    metrics.update(self.evaluate(step))
                    metrics["time/eval"] = time.perf_counter() - t0
                self.elapsed = time.time() - t_start
                metrics["wall_time"] = self.elapsed
                metrics["time/unix"] = time.time()
                if self.step_hook is not None:
                    self.step_hook(self, step, metrics)
                self.history.append(metrics)
                if self.sink is not None:
                    self.sink.log(step, metrics)
                progress.update(step, metrics)
                every = cfg.checkpoint.every
                if (every and step % every == 0) or self._stop.requested:
                    self.save_checkpoint()
                if self._stop.requested:
                    progress.close()
                    raise KeyboardInterrupt(f"stopped after step {step}; checkpoint written to {self.run_dir / 'checkpoints' / f'step_{step}'}")
            last = ckpt_io.latest_checkpoint(self.run_dir)
            if cfg.checkpoint.save_final and (last is None or last[0] != self.step):
                self.save_checkpoint()
            if cfg.eval.at_end and self.is_main:
                self.final_eval = self.evaluate(self.step)
        finally:
            progress.close()
            self._stop.uninstall()
        return self.history

    def cleanup(self) -> None:
        if getattr(self, "sink", None) is not None:
            self.sink.close()
            self.sink = None
