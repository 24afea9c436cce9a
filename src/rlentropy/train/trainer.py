"""The GRPO-family training loop (setup → train → save_checkpoint → cleanup).

One training step reads top to bottom (`Trainer.train_step`):

    rollout → rewards → old-policy statistics → advantages → controls → loss weights
    → probes (before) → update (`rlentropy.train.update`) → probes (after) → metrics → controller

Every method — advantage estimator, policy loss, control, controller — is a registry entry of
`rlentropy.algorithms`, resolved once by `MethodSet`; the step dispatches through it and knows no
method by name. The old-policy statistics come from one interface (`OldStats`) whether they are
computed by a separate no-grad forward or supplied by the first update forward (when nothing reads
them before the loss: `train.fuse_old_stats`).

Several processes (`accelerate launch`): each process samples its share of the prompts; whole-batch
quantities (advantages, old-stage controls, metrics) are computed on rows gathered from every
process; every loss term is normalised by counts summed over processes, and DDP (through
`accelerate.prepare`) sums the gradients during backward, so N processes compute the same update as
one process with the same global batch. Mini-batches are whole prompt groups (group index modulo
`mini_batches`), which keeps that true for every number of processes.
"""

from __future__ import annotations

import random
import shlex
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from rlentropy.algorithms import aggregation_weights
from rlentropy.algorithms.dispatch import logged_metrics
from rlentropy.data import build_task
from rlentropy.data.lengths import WithEvalExamples, check_prompt_lengths, prompt_token_limit
from rlentropy.errors import ConfigError, DataError, Interrupted, writing
from rlentropy.evaluate.run import eval_settings, evaluate_with_settings, save_eval_result
from rlentropy.models.forward import PolicyForward, policy_token_stats, policy_token_stats_chunked
from rlentropy.models.loading import (
    load_policy,
    load_reference,
    load_tokenizer,
    num_parameters,
    resolve_model_source,
)
from rlentropy.rollout.base import RolloutBatch, concat_batches
from rlentropy.rollout.hf import HFGenerator
from rlentropy.runs import checkpoints as ckpt_io
from rlentropy.runs.config import RunConfig, dump_config
from rlentropy.tokenstats import TokenStats
from rlentropy.train.batch import StepBatch
from rlentropy.train.dist import Dist, full_parameters, no_gradient_sync, shard_fsdp, sum_gradients_hook
from rlentropy.train.methods import MethodSet
from rlentropy.train.metrics import batch_metrics, removal_metrics, to_floats
from rlentropy.train.old_stats import OldStats
from rlentropy.train.probes import DynamicsProbe
from rlentropy.train.sinks import (
    MetricsSink,
    Progress,
    RunInfo,
    notify,
    set_aside,
    truncate_metrics,
    write_rollouts,
)
from rlentropy.train.state import DataCursor, StopFlag, derive_seed, make_lr_lambda, set_threads
from rlentropy.train.update import Updater, UpdateSettings

__all__ = ["DataCursor", "StepHook", "Trainer", "derive_seed", "make_lr_lambda"]

StepHook = Callable[["Trainer", int, dict[str, Any]], None]

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)  # gathered whole on the main process
_FULL_IN = StateDictOptions(full_state_dict=True)  # every process loads the whole state and keeps its shard


class Trainer:
    """GRPO-family RL on a causal LM with entropy controls, probes, checkpoints and logging.

    Args:
        cfg: the validated run config.
        resume: continue from the newest complete checkpoint in `cfg.run_dir`.
        quiet: no progress bar.
        step_hook: called as `hook(trainer, step, metrics)` after each step's metrics are final
            (tests use it to inject failures and snapshot weights).
    """

    def __init__(
        self, cfg: RunConfig, *, resume: bool = False, quiet: bool = False, step_hook: StepHook | None = None
    ) -> None:
        self.cfg = cfg
        self.run_dir = cfg.resolved_run_dir()
        self.resume = resume
        self.quiet = quiet
        self.step_hook = step_hook
        self.step = 0
        self.cursor = DataCursor()
        self.elapsed = 0.0
        self.history: list[dict[str, Any]] = []
        self.final_eval: dict[str, float] | None = None
        self._eval_task: Any = None
        self._stop = StopFlag()
        self._dropout: bool | None = None
        self._restart = False  # --resume of a run without a checkpoint: start again from step 0
        self._saving = False
        self._threads_before: int | None = None
        self.run_info = RunInfo()

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Validate inputs, build everything, restore a checkpoint when resuming. No training yet."""
        self._start_processes()
        self._threads_before, self.run_info.threads = set_threads(self.cfg.train.threads, self.device)
        ckpt_path = self._check_inputs()
        self._build_models(ckpt_path)
        self._build_optimizer()
        self.methods = MethodSet.from_config(self.cfg.algorithm)
        self.methods.validate(group_size=self.cfg.train.group_size)
        self._build_loop_parts()
        self._prepare_run_dir()
        if ckpt_path is not None:
            self._restore(ckpt_path)
        self.sink = None
        if self.is_main:
            c = self.cfg
            self.sink = MetricsSink(
                self.run_dir,
                tensorboard=c.logging.tensorboard,
                wandb=c.logging.wandb,
                wandb_project=c.logging.wandb_project,
                run_name=c.name,
                config=c.model_dump(mode="json"),
                purge_step=self.step + 1 if self.resume else None,
            )

    def _start_processes(self) -> None:
        want = self.cfg.train.device
        if want == "cuda" and not torch.cuda.is_available():
            raise ConfigError("train.device: 'cuda' requested but no CUDA GPU is available")
        ddp = DistributedDataParallelKwargs(find_unused_parameters=False)
        self.acc = Accelerator(cpu=(want == "cpu"), mixed_precision="no", kwargs_handlers=[ddp])
        self.dist = Dist(self.acc)
        self.device, self.world, self.rank, self.is_main = (
            self.dist.device,
            self.dist.world,
            self.dist.rank,
            self.dist.is_main,
        )
        prompts = self.cfg.train.prompts_per_step
        if prompts % self.world:
            raise ConfigError(
                f"train.prompts_per_step: {prompts} must be divisible by the number of processes ({self.world})"
            )
        self.local_prompts = prompts // self.world

    def _check_inputs(self) -> Path | None:
        """Task, examples, model path, prompt lengths and run directory, before any heavy work; the
        checkpoint to resume from."""
        cfg = self.cfg
        self.task = build_task(cfg.data)
        self.train_examples = list(self.task.train_examples())
        if not self.train_examples:
            raise DataError(f"data: task {cfg.data.task!r} has no training examples")
        self.eval_examples = list(self.task.eval_examples())
        self._note_bad_rows()
        resolve_model_source(cfg.model.path, allow_download=cfg.model.allow_download)
        ckpt_path = self._find_checkpoint()
        self._check_lengths(ckpt_path)
        return ckpt_path

    def _find_checkpoint(self) -> Path | None:
        if self.resume:
            found = ckpt_io.latest_checkpoint(self.run_dir)
            if found is None:  # killed before its first checkpoint: start it again
                self._restart = True
                return None
            self.step, path = found
            return path
        if self.run_dir.exists() and (
            ckpt_io.list_checkpoints(self.run_dir) or (self.run_dir / "metrics.jsonl").exists()
        ):
            raise ConfigError(
                f"run_dir: {str(self.run_dir)!r} already holds a run; use --resume (it continues from the "
                "newest checkpoint, or starts again a run that has none) or a new run_dir"
            )
        return None

    def _note_bad_rows(self) -> None:
        """data.skip_bad_rows: how many rows the loaders skipped, printed and kept for run_info.json."""
        reports = list(getattr(self.task, "load_reports", []) or [])
        skipped = sum(r.skipped for r in reports)
        self.run_info.data["bad_rows_skipped"] = skipped
        if skipped:
            first = next(r.reasons[0] for r in reports if r.reasons)
            files = ", ".join(sorted({r.path for r in reports if r.skipped}))
            self._notice(f"data: skipped {skipped} bad rows of {files} (data.skip_bad_rows); the first: {first}")
            self.run_info.data["bad_rows_first"] = [x for r in reports for x in r.reasons][:10]

    def _check_lengths(self, ckpt_path: Path | None) -> None:
        """Every prompt fits data.max_prompt_tokens (default: the context less the new tokens): error or skip."""
        cfg = self.cfg
        tokenizer, context = load_tokenizer(cfg.model, checkpoint=ckpt_path)
        limit = prompt_token_limit(cfg.data, context=context, max_new_tokens=cfg.rollout.max_new_tokens)
        check = dict(tokenizer=tokenizer, policy=cfg.data.over_long)
        train, rep = check_prompt_lengths(self.train_examples, self.task, limit=limit, split="train", **check)
        ev, rep_ev = check_prompt_lengths(self.eval_examples, self.task, limit=limit, split="eval", **check)
        reports = [rep, rep_ev]
        if cfg.eval.every or cfg.eval.at_end:  # the in-training evaluation's own task and budget
            task = build_task(cfg.data, for_eval=True)
            new = cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens
            lim = prompt_token_limit(cfg.data, context=context, max_new_tokens=new)
            kept, r = check_prompt_lengths(task.eval_examples(), task, limit=lim, split="evaluation", **check)
            self._eval_task, reports = WithEvalExamples(task, kept), [*reports, r]
        self.run_info.data.update(
            {"prompt_token_limit": limit, "context": context, "over_long": [r.as_dict() for r in reports]}
        )
        for r in reports:
            if r.skipped:
                self._notice(
                    f"data: skipped {r.skipped} of {r.checked} {r.split} prompts longer than {r.limit} "
                    f"tokens (data.over_long=skip); the first: {r.examples[0]}"
                )
        if not train:
            raise DataError(f"data: every training prompt is longer than {limit} tokens ({rep.skipped} skipped)")
        self.train_examples, self.eval_examples = train, ev
        self.run_info.data.update({"train_examples": len(train), "eval_examples": len(ev)})

    def _notice(self, message: str) -> None:
        """A line the user must see (printed on stderr by the main process) and keep (run_info.json)."""
        self.run_info.notices.append(message)
        if self.is_main:
            notify(message)

    def _prepare_run_dir(self) -> None:
        """config.yaml, run_info.json; leftovers of an interrupted save or prune removed; on a restart
        (--resume without a checkpoint) the earlier metrics set aside."""
        if not self.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        ckpt_io.remove_leftovers(self.run_dir)
        if self._restart and (self.run_dir / "config.yaml").is_file():
            moved = set_aside(self.run_dir / "metrics.jsonl")
            self._notice(
                f"--resume: {self.run_dir} has no complete checkpoint (stopped before its first one); starting "
                "it again from step 0" + (f"; its earlier metrics are in {moved.name}" if moved else "")
            )
        with writing(self.run_dir / "config.yaml"):
            (self.run_dir / "config.yaml").write_text(dump_config(self.cfg), encoding="utf-8")
        self.run_info.write(
            self.run_dir,
            resumed_from_step=self.step if self.resume else None,
            device=str(self.device),
            processes=self.world,
            **self.info,
        )

    def _build_models(self, ckpt_path: Path | None) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.train.seed)
        random.seed(cfg.train.seed)
        np.random.seed(cfg.train.seed % 2**32)
        loaded = load_policy(cfg.model, device=self.device, checkpoint=ckpt_path)
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        if not cfg.model.load_in_4bit:
            self.model.to(self.device)
        self.ref_model = None
        if cfg.algorithm.kl.coef > 0:
            self.ref_model = load_reference(cfg.model, device=self.device)
            if self.ref_model is not None:
                self.ref_model.to(self.device)
        self.autocast_on = self.device.type == "cuda" and cfg.model.bf16_autocast
        if not any(p.requires_grad for p in self.model.parameters()):
            raise ConfigError("model: no trainable parameters")
        self.fsdp = cfg.train.distributed == "fsdp" and self.world > 1
        if self.fsdp:  # parameters, gradients and optimizer states sharded (FSDP2)
            self.forward = shard_fsdp(PolicyForward(self.model, share_prompts=cfg.train.share_prompts), self.model)
        else:  # DDP when several processes, summing gradients
            self.forward = self.acc.prepare(PolicyForward(self.model, share_prompts=cfg.train.share_prompts))
            if self.world > 1 and hasattr(self.forward, "register_comm_hook"):
                self.forward.register_comm_hook(state=None, hook=sum_gradients_hook)
        self.params = [p for p in self.model.parameters() if p.requires_grad]  # after sharding
        trainable, total = num_parameters(self.model)
        self.info = {"model_source": loaded.source, "trainable_params": trainable, "total_params": total}

    def _build_optimizer(self) -> None:
        o, t = self.cfg.optim, self.cfg.train
        self.optimizer = torch.optim.AdamW(
            self.params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            make_lr_lambda(
                warmup_steps=o.warmup_steps,
                total_steps=t.steps,
                schedule=o.schedule,
                min_lr_ratio=o.min_lr_ratio,
            ),
        )

    def _build_loop_parts(self) -> None:
        cfg = self.cfg
        r = cfg.rollout
        self.generator = HFGenerator.from_rollout(self.model, self.tokenizer, r, self.task.stop_strings)
        probe_stats = partial(policy_token_stats, share_prompts=True) if cfg.train.share_prompts else None
        self.probe = DynamicsProbe(cfg.probes, run_dir=self.run_dir if self.is_main else None, stats_fn=probe_stats)
        t, kl = cfg.train, cfg.algorithm.kl
        self.max_len = cfg.algorithm.max_len or r.max_new_tokens
        settings = UpdateSettings(
            ppo_epochs=t.ppo_epochs,
            micro_batch_size=t.micro_batch_size,
            grad_clip=t.grad_clip,
            max_nonfinite=t.max_nonfinite,
            temperature=r.temperature,
            kl_coef=kl.coef,
            kl_estimator=kl.estimator,
            max_len=self.max_len,
            seed=t.seed,
        )
        self.updater = Updater(
            forward=self.forward,
            params=self.params,
            optimizer=self.optimizer,
            methods=self.methods,
            dist=self.dist,
            settings=settings,
            probe=self.probe,
            autocast=self._autocast,
            no_sync=no_gradient_sync,
            seed_of=derive_seed,
            last_checkpoint=self._last_good_checkpoint,
        )

    def _restore(self, ckpt_path: Path) -> None:
        state = ckpt_io.load_state(ckpt_path)
        saved = state.get("distributed", "ddp")
        if saved != ("fsdp" if self.fsdp else "ddp"):
            raise ConfigError(f"--resume: {ckpt_path} was written with train.distributed={saved}; resume it with that")
        if self.fsdp:
            set_optimizer_state_dict(self.model, self.optimizer, optim_state_dict=state["optimizer"], options=_FULL_IN)
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.methods.load_state_dict(state)
        self.cursor = DataCursor(**state["cursor"])
        self.updater.consecutive_nonfinite = int(state.get("consecutive_nonfinite", 0))
        self.elapsed = float(state.get("elapsed", 0.0))
        ckpt_io.set_rng_state(state["rng"])
        if self.is_main:
            truncate_metrics(self.run_dir / "metrics.jsonl", self.step)

    # ------------------------------------------------------------------ helpers
    def _autocast(self) -> Any:
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.autocast_on else nullcontext()

    @contextmanager
    def _eval_mode(self, model: torch.nn.Module | None = None) -> Iterator[None]:
        model = self.model if model is None else model
        was_training = model.training
        model.eval()
        try:
            yield
        finally:
            model.train(was_training)

    def _stats_rows(self) -> int:
        t = self.cfg.train
        return t.stats_batch_size or t.micro_batch_size or max(1, self.local_prompts * t.group_size)

    def _old_stats(self, batch: RolloutBatch) -> TokenStats:
        """No-grad statistics of `batch` under the current weights (the old policy before the update)."""
        with self._eval_mode(), self._autocast(), full_parameters(self.forward):
            return policy_token_stats_chunked(
                self.model,
                batch,
                rows_per_chunk=self._stats_rows(),
                temperature=self.cfg.rollout.temperature,
                share_prompts=self.cfg.train.share_prompts,
            )

    def _has_dropout(self) -> bool:
        """True when the policy's train-mode forward is stochastic (a dropout with p > 0 anywhere)."""
        if self._dropout is None:
            mods = any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 for m in self.model.modules())
            conf = getattr(self.model, "config", None)
            attrs = [
                v
                for k, v in (vars(conf).items() if conf is not None else ())
                if ("dropout" in k or "pdrop" in k) and isinstance(v, (int, float)) and not isinstance(v, bool)
            ]
            self._dropout = mods or any(v > 0 for v in attrs)
        return self._dropout

    def _fuse_old_stats(self, step: int) -> bool:
        """Whether the first mini-batch takes its old-policy statistics from its own update forward.

        Allowed when nothing reads them before the loss (no stats-reading advantage, old-stage control
        or whole-batch selection, no probe this step) and the forward is deterministic (no dropout:
        old statistics are taken in eval mode, the loss forward in train mode).
        """
        return bool(
            self.cfg.train.fuse_old_stats
            and not self.methods.reads_old_stats()
            and not self.probe.active(step)
            and not self._has_dropout()
        )

    def _last_good_checkpoint(self) -> str:
        last = ckpt_io.latest_checkpoint(self.run_dir)
        return f"last good checkpoint: {last[1]}" if last else "no checkpoint was written"

    def resume_command(self) -> str:
        return f"rlentropy train --resume {shlex.quote(str(self.run_dir))}"

    def recovery_hint(self) -> str:
        """What is intact and the command that goes on (for the messages of a stop or a failure)."""
        if not (self.run_dir / "config.yaml").is_file():
            return "nothing of the run was written; run the command again"
        last = ckpt_io.latest_checkpoint(self.run_dir)
        where = (
            f"last good checkpoint: {last[1]}"
            if last
            else "no checkpoint yet (resuming starts the run again from step 0)"
        )
        return f"{where}; resume with: {self.resume_command()}"

    # ------------------------------------------------------------------ the stages of a step
    def _sample(self, examples: list, seed: int, n: int) -> RolloutBatch:
        prompts = [self.task.render_prompt(ex, self.tokenizer) for ex in examples]
        with self._eval_mode(), self._autocast(), full_parameters(self.forward):
            return self.generator.generate(prompts, examples, n, seed=seed)

    def rollout(self, step: int) -> RolloutBatch:
        """This process's share of the step's prompts, each sampled `group_size` times."""
        t = self.cfg.train
        idx = self.cursor.take(len(self.train_examples), t.prompts_per_step, t.seed)
        first = self.rank * self.local_prompts
        examples = [self.train_examples[i] for i in idx[first : first + self.local_prompts]]
        if not self.cfg.rollout.per_prompt_seeds:
            return self._sample(examples, derive_seed(t.seed, "rollout", step, self.rank), t.group_size)
        parts = [
            self._sample([ex], derive_seed(t.seed, "rollout-prompt", step, first + i), t.group_size)
            for i, ex in enumerate(examples)
        ]
        return concat_batches(parts, pad_id=self.generator.pad_id)

    def score(self, step: int, batch: RolloutBatch) -> StepBatch:
        """Rewards of the rollouts, gathered with the global group ids."""
        rewards = torch.tensor(self.task.score(batch.completions, batch.examples), dtype=torch.float32)  # [b]
        gid = batch.group_ids.long() + self.rank * self.local_prompts  # [b]
        return StepBatch(
            step=step,
            batch=batch,
            rewards=rewards,
            group_ids=gid,
            rewards_all=self.dist.gather_rows(rewards.to(self.device)).cpu(),  # [B]
            group_ids_all=self.dist.gather_rows(gid.to(self.device)).cpu(),  # [B]
            mask=batch.response_mask.to(torch.float32).to(self.device),  # [b, T]
            mini_batches=[
                torch.nonzero(gid % self.cfg.train.mini_batches == j).flatten().tolist()
                for j in range(self.cfg.train.mini_batches)
            ],
        )

    def old_statistics(self, sb: StepBatch) -> None:
        """The old policy's statistics (deferred to the update forward for the first mini-batch when fused)."""
        deferred = sb.mini_batches[0] if self._fuse_old_stats(sb.step) else []
        sb.old = OldStats(self._old_stats, sb.batch, deferred)
        sb.ref_logp = self._ref_logp(sb.batch)

    def _gathered_stats(self, sb: StepBatch, fields: tuple[str, ...]) -> dict[str, torch.Tensor]:
        if not fields:
            return {}
        st = sb.old.result()
        return {f: self.dist.gather_rows(getattr(st, f).float()) for f in fields}  # each [B, T*]

    def advantages(self, sb: StepBatch) -> None:
        """The advantage estimator over the whole batch; this process's rows as [b, T] token advantages."""
        inputs = {
            "rewards": sb.rewards_all,
            "group_ids": sb.group_ids_all,
            "mask": self.dist.gather_rows(sb.mask),
            **self._gathered_stats(sb, self.methods.advantage.reads_stats()),
        }
        adv_all, adv_metrics = self.methods.advantages(inputs)  # [B] or [B, T*]
        sb.advantages_all = adv_all
        local = self.dist.local_rows(adv_all, sb.rows, sb.width).to(torch.float32).to(self.device)
        if local.dim() == 1:
            sb.adv_seq = local.cpu()  # [b]
            sb.advantages = local[:, None] * sb.mask  # [b, T]
        else:
            sb.advantages = local * sb.mask  # [b, T]
            sb.adv_seq = (sb.advantages.sum(-1) / sb.mask.sum(-1).clamp_min(1)).cpu()  # [b]
        frac = adv_metrics.get("frac_zero_std")
        sb.metrics["reward/zero_var_group_frac"] = frac if frac is not None else float("nan")

    def controls(self, sb: StepBatch) -> None:
        """Old-stage controls and the whole-batch selection, on the gathered batch; this process's slice."""
        g_mask, g_adv = self.dist.gather_rows(sb.mask), self.dist.gather_rows(sb.advantages)  # [B, T*]
        stats = self._gathered_stats(sb, self.methods.reads_old_stats())
        seed = self.cfg.train.seed
        gen = torch.Generator(device=g_mask.device).manual_seed(derive_seed(seed, "controls", sb.step))
        out = self.methods.old_stage(
            {
                **stats,
                "mask": g_mask,
                "advantages": g_adv,
                "rewards": sb.rewards_all,
                "group_ids": sb.group_ids_all,
                "generator": gen,
            }
        )
        m = sb.metrics
        if any(c.stage == "old" and c.spec.kind == "mask" for c in self.methods.step_controls()):
            m.update(self._control_metrics(out.metrics))
            m.update(removal_metrics(g_mask, out.mask, g_adv))
        else:
            m.update(
                {
                    k: 0.0
                    for k in (
                        "control/frac_removed",
                        "control/frac_removed_pos",
                        "control/frac_removed_neg",
                        "control/frac_removed_active",
                    )
                }
            )
            m.update(self._control_metrics(out.metrics))
        m.update(self.methods.logged_parameters())
        sb.loss_mask = self.dist.local_rows(out.mask, sb.rows, sb.width)  # [b, T]
        sb.advantages = self.dist.local_rows(out.advantages, sb.rows, sb.width) * sb.mask  # [b, T]
        if self.methods.batch_select:
            gen = torch.Generator(device=g_mask.device).manual_seed(derive_seed(seed, "cov_select", sb.step))
            sel, sel_m = self.methods.select(
                {"logp": stats["logp"], "advantages": g_adv, "mask": out.mask, "generator": gen}
            )
            m["control/frac_selected"] = sel.float().sum() / out.mask.sum().clamp_min(1)
            m.update({f"control/{k}": v for k, v in sel_m.items()})
            sb.selected = self.dist.local_rows(sel, sb.rows, sb.width)  # [b, T] bool

    def _control_metrics(self, metrics: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return logged_metrics(self.methods.step_controls(), metrics)

    def loss_weights(self, sb: StepBatch) -> None:
        """Global token / sequence counts of each mini-batch and every token's weight in the loss."""
        sb.token_weights = torch.zeros_like(sb.mask)  # [b, T]
        for rows in sb.mini_batches:
            sub = sb.loss_mask[rows] if rows else sb.loss_mask[:0]  # [m, T]
            n_tok = self.dist.all_sum(sub.sum().double()).cpu()
            n_seq = self.dist.all_sum((sub.sum(-1) > 0).sum().double()).cpu()
            sb.counts.append((n_tok, n_seq))
            if rows:
                sb.token_weights[rows] = aggregation_weights(
                    sub, self.methods.agg_mode, global_tokens=n_tok, global_seqs=n_seq, max_len=self.max_len
                ).to(sb.token_weights.dtype)

    def _ref_logp(self, batch: RolloutBatch) -> torch.Tensor | None:
        if self.cfg.algorithm.kl.coef <= 0:
            return None
        ref = self.ref_model if self.ref_model is not None else self.model
        adapters_off = (
            self.model.disable_adapter() if self.ref_model is None else nullcontext()
        )  # LoRA: base = policy without adapters
        with self._eval_mode(ref), adapters_off, self._autocast(), full_parameters(self.forward):
            st = policy_token_stats_chunked(
                ref, batch, rows_per_chunk=self._stats_rows(), temperature=self.cfg.rollout.temperature
            )
        return st.logp  # [b, T]

    def sample_probe_batch(self) -> RolloutBatch:
        """An independent rollout batch for the probes: held-out prompts, a seed of its own."""
        pool = self.eval_examples or self.train_examples
        k = min(len(pool), self.cfg.probes.probe_prompts)
        rng = random.Random(derive_seed(self.cfg.train.seed, "probe", self.step, self.rank))
        picks = [pool[i] for i in rng.sample(range(len(pool)), k)]
        return self._sample(
            picks, derive_seed(self.cfg.train.seed, "probe-rollout", self.step, self.rank), self.cfg.train.group_size
        )

    def _probe_before(self, sb: StepBatch, lr: float) -> dict[str, float]:
        return self.probe.before_update(
            sb.step,
            model=self.model,
            batch=sb.batch,
            old_stats=sb.old.result(),
            advantages=sb.advantages,
            loss_mask=sb.loss_mask,
            token_weights=sb.token_weights,
            lr=lr,
            optimizer=self.optimizer,
            sample_probe_batch=self.sample_probe_batch,
            temperature=self.cfg.rollout.temperature,
        )

    # ------------------------------------------------------------------ one step
    def train_step(self, step: int) -> dict[str, Any]:
        """Run training step `step` (1-based) and return its metrics (Python scalars)."""
        timings: dict[str, float] = {}
        t_step = time.perf_counter()
        with _timed(timings, "time/rollout"):
            batch = self.rollout(step)
        with _timed(timings, "time/reward"):
            sb = self.score(step, batch)
        with _timed(timings, "time/stats"):
            self.old_statistics(sb)
            self.advantages(sb)
            self.controls(sb)
        self.loss_weights(sb)
        lr = float(self.optimizer.param_groups[0]["lr"])
        probe_on = self.probe.active(step)
        with _timed(timings, "time/probe"):
            probe = self._probe_before(sb, lr) if probe_on else {}
        with _timed(timings, "time/update"):
            upd = self.updater.run(sb, probe_on=probe_on)
        with _timed(timings, "time/probe", add=True):
            probe.update(self.probe.after_update(step, model=self.model, optimizer=self.optimizer) if probe_on else {})
        self.scheduler.step()
        metrics = self.step_metrics(sb, upd, lr)
        metrics.update(probe)
        metrics.update(self.methods.after_step(metrics["entropy/mean"]))
        timings["time/step"] = time.perf_counter() - t_step
        metrics.update(timings)
        every = self.cfg.logging.rollouts_every
        if every and step % every == 0:
            self._dump_rollouts(step, sb)
        return metrics

    def step_metrics(self, sb: StepBatch, upd: dict[str, torch.Tensor], lr: float) -> dict[str, float]:
        """Every metric of the step, as Python floats (one host transfer)."""
        st = self._gathered_stats(sb, ("entropy", "logp", "s", "s_bar"))
        trunc = sb.batch.truncated if sb.batch.truncated is not None else torch.zeros(sb.rows, dtype=torch.bool)
        m: dict[str, Any] = batch_metrics(
            rewards=sb.rewards_all,
            group_ids=sb.group_ids_all,
            advantages=sb.advantages_all,
            mask=self.dist.gather_rows(sb.mask),
            **st,
            lengths=self.dist.gather_rows(sb.batch.response_mask.sum(-1).float().to(self.device)),  # [B]
            truncated=self.dist.gather_rows(trunc.float().to(self.device)),  # [B]
        )
        m["optim/lr"] = lr
        m.update(sb.metrics)
        m.update(upd)
        if "loss/frac_selected" in m and "control/frac_selected" not in m:
            m["control/frac_selected"] = m["loss/frac_selected"]
        if "control/frac_selected" in m and not self.methods.controls:
            m["control/frac_controlled"] = m["control/frac_selected"]
        else:
            m["control/frac_controlled"] = m.get("control/frac_removed", 0.0)
        return to_floats(m)

    def _dump_rollouts(self, step: int, sb: StepBatch) -> None:
        batch, rows = sb.batch, []
        for i in range(len(batch)):
            ex = batch.examples[i] if batch.examples else None
            rows.append(
                {
                    "group": int(sb.group_ids[i]),
                    "example_id": getattr(ex, "id", None),
                    "prompt": batch.prompts[i] if batch.prompts else None,
                    "completion": batch.completions[i] if batch.completions else None,
                    "answer": getattr(ex, "answer", None),
                    "reward": float(sb.rewards[i]),
                    "advantage": float(sb.adv_seq[i]),
                    "length": int(batch.response_mask[i].sum()),
                    "truncated": bool(batch.truncated[i]) if batch.truncated is not None else None,
                }
            )
        name = f"step_{step}.jsonl.gz" if self.world == 1 else f"step_{step}.rank{self.rank}.jsonl.gz"
        write_rollouts(self.run_dir / "rollouts" / name, rows)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything but the weights; collective under FSDP (the optimizer state is gathered whole)."""
        if self.fsdp:
            opt = get_optimizer_state_dict(self.model, self.optimizer, options=_FULL)
        else:
            opt = self.optimizer.state_dict()
        return {
            "optimizer": opt,
            "distributed": "fsdp" if self.fsdp else "ddp",
            "scheduler": self.scheduler.state_dict(),
            **self.methods.state_dict(),
            "cursor": {"epoch": self.cursor.epoch, "pos": self.cursor.pos},
            "consecutive_nonfinite": self.updater.consecutive_nonfinite,
            "elapsed": self.elapsed,
        }

    def _full_weights(self) -> dict[str, torch.Tensor]:
        """The whole state dict of a sharded model (collective), without the aliases of tied weights
        (`save_pretrained` writes a tied head once, as it does for an unsharded model)."""
        full = get_model_state_dict(self.model, options=_FULL)
        unique = {n for n, _ in self.model.named_parameters()}
        aliases = {n for n, _ in self.model.named_parameters(remove_duplicate=False)} - unique
        return {k: v for k, v in full.items() if k not in aliases}

    def save_checkpoint(self) -> Path | None:
        """Write checkpoints/step_<step> atomically (main process) and prune old ones."""
        path = None
        self._saving = True
        state = self.state_dict()  # collective under FSDP: every process takes part
        weights = self._full_weights() if self.fsdp else None
        if self.is_main:
            path = ckpt_io.save_checkpoint(
                self.run_dir,
                self.step,
                model=self.model,
                tokenizer=self.tokenizer,
                state=state,
                keep_last=self.cfg.checkpoint.keep_last,
                weights=weights,
            )
        self.dist.barrier()
        self._saving = False
        return path

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, step: int) -> dict[str, float]:
        """pass@k etc. on the eval split (`data.eval_task` when set) with `rlentropy.evaluate.evaluate_model`.

        Writes eval/step_N/{metrics.json, samples.jsonl.gz} and refreshes eval/metrics.csv through
        `save_eval_result`, with the settings record, so `rlentropy eval` skips the step when asked for
        the same settings and `rlentropy report` reads it.
        """
        if self._eval_task is None:
            self._eval_task = build_task(self.cfg.data, for_eval=True)
        settings = eval_settings(self.cfg, self._eval_task, seed=derive_seed(self.cfg.train.seed, "eval") % (2**31))
        with self._eval_mode(), full_parameters(self.forward):
            metrics, samples = evaluate_with_settings(
                self.model,
                self.tokenizer,
                self._eval_task,
                settings,
                batch_size=self.cfg.rollout.batch_size,
                engine=self.cfg.rollout.engine,
                share_prompts=self.cfg.train.share_prompts,
            )
        save_eval_result(self.run_dir, step, metrics, samples, settings=settings, checkpoint=f"in-training step {step}")
        return {f"eval/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}

    # ------------------------------------------------------------------ loop
    def train(self) -> list[dict[str, Any]]:
        """Run from `self.step` to `train.steps`; returns the metrics of the steps run here."""
        cfg = self.cfg
        progress = Progress(
            cfg.train.steps, start=self.step, enabled=(not self.quiet) and self.is_main, description=cfg.name
        )
        self._stop.install()
        t_start = time.time() - self.elapsed
        try:
            while self.step < cfg.train.steps:
                self._run_one_step(progress, t_start)
            last = ckpt_io.latest_checkpoint(self.run_dir)
            if cfg.checkpoint.save_final and (last is None or last[0] != self.step):
                self.save_checkpoint()
            if cfg.eval.at_end and self.is_main:
                self.final_eval = self.evaluate(self.step)
        except KeyboardInterrupt as err:  # a second Ctrl-C (the first one stops after the step)
            if isinstance(err, Interrupted):
                raise
            what = (
                "while writing its checkpoint"
                if self._saving
                else ("during the final evaluation" if self.step >= cfg.train.steps else f"during step {self.step + 1}")
            )
            raise Interrupted(f"interrupted after step {self.step} {what}; {self.recovery_hint()}") from None
        finally:
            progress.close()
            self._stop.uninstall()
        return self.history

    def _run_one_step(self, progress: Progress, t_start: float) -> None:
        cfg = self.cfg
        step = self.step + 1
        metrics = self.train_step(step)
        self.step = step
        if cfg.eval.every and step % cfg.eval.every == 0 and self.is_main:
            with _timed(metrics, "time/eval"):
                metrics.update(self.evaluate(step))
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
            raise Interrupted(
                f"stopped after step {step}; checkpoint: {self.run_dir / 'checkpoints' / f'step_{step}'}; "
                f"resume with: {self.resume_command()}"
            )

    def cleanup(self, *, after_error: bool = False) -> None:
        """Close the sinks and give back the thread setting; `after_error`: a failure of the sinks'
        close (a full disk) does not replace the error being raised."""
        sink, self.sink = getattr(self, "sink", None), None
        try:
            if sink is not None:
                sink.close()
        except Exception:
            if not after_error:
                raise
        finally:
            if self._threads_before is not None:
                torch.set_num_threads(self._threads_before)
                self._threads_before = None


@contextmanager
def _timed(out: dict[str, Any], key: str, *, add: bool = False) -> Iterator[None]:
    """Seconds spent in the block, stored in `out[key]` (added to it with `add`)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        dt = time.perf_counter() - t0
        out[key] = out.get(key, 0.0) + dt if add else dt
