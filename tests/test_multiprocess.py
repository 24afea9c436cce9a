"""Our trainer on two processes (accelerate, gloo, CPU) matches one process with the same global batch.

Each process's loss carries the global token / sequence counts, advantages and Clip_B are computed on
the gathered batch, and the gradients are summed over processes before the step, so N processes ×
(prompts / N) give the same update as one process with all the prompts. We train a tiny model for 2
steps both ways and compare every per-step metric and the final weights.

The one thing that legitimately differs between world sizes is the sampling: each process draws its
own rollouts with a seed of its own (docs/scaling.md), so a 2-process run is a different (equally
valid) sample from a 1-process run. To compare updates, `SameRolloutsTrainer` makes every process
generate the step's whole global batch with one seed and keep its own rows (trimmed to its own
response length, so padding across processes is exercised). Everything after the rollout is the
production code path.

The task rewards the fraction of characters with an even code point, so rewards vary within every
group and the advantages, the loss and the gradients are far from zero (a random model scores 0 on
countdown, which would make the comparison vacuous); the test asserts that.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TASK = "mp_even_chars"
WORLD = 2

# The worker loads this file by path (so the task and the trainer subclass are the same code in
# every process) and trains with the config given as JSON.
WORKER = r"""
import importlib.util, json, sys, torch
torch.set_num_threads(1)
spec = importlib.util.spec_from_file_location("mp_test_module", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
mod.train(json.loads(sys.argv[2]))
"""


class _EvenCharsTask:
    """Digit-string prompts; reward = fraction of response characters with an even code point."""

    name = TASK
    stop_strings: list = []

    def __init__(self) -> None:
        from rlentropy.data.tasks import Example

        self._train = [Example(id=f"t{i}", question=f"{i * 7}+{i}=", answer="") for i in range(32)]
        self._eval = [Example(id=f"e{i}", question=f"{i}*3=", answer="") for i in range(4)]

    def train_examples(self):
        return self._train

    def eval_examples(self):
        return self._eval

    def render_prompt(self, example, tokenizer):
        return example.question

    def score(self, completions, examples):
        return [sum(ord(c) % 2 == 0 for c in text) / max(1, len(text)) for text in completions]


def register_task() -> None:
    from rlentropy.data.tasks import _TASKS
    from rlentropy.data.tasks import register_task as reg

    if TASK not in _TASKS:
        reg(TASK)(lambda cfg: _EvenCharsTask())


def _trainer_class():
    from rlentropy.rollout.base import RolloutBatch
    from rlentropy.train.trainer import DataCursor, Trainer, derive_seed

    class SameRolloutsTrainer(Trainer):
        """Every process samples the step's global batch with one seed and keeps its own rows."""

        def train_step(self, step):
            t = self.cfg.train
            peek = DataCursor(self.cursor.epoch, self.cursor.pos)  # the prompts train_step will take
            idx = peek.take(len(self.train_examples), t.prompts_per_step, t.seed)
            self._step_examples = [self.train_examples[i] for i in idx]
            self._rollout_seed = derive_seed(t.seed, "rollout", step, self.rank)
            self._shared_seed = derive_seed(t.seed, "shared-rollout", step)
            return super().train_step(step)

        def _sample(self, examples, seed, n):
            if seed != getattr(self, "_rollout_seed", None):  # not the step's rollout
                return super()._sample(examples, seed, n)
            full = super()._sample(self._step_examples, self._shared_seed, n)  # [P_all * n rows]
            lo, hi = self.rank * self.local_prompts * n, (self.rank + 1) * self.local_prompts * n
            part = full.select(list(range(lo, hi)))
            t_own = max(1, int(part.response_mask.sum(-1).max()))
            p = part.prompt_len
            return RolloutBatch(
                input_ids=part.input_ids[:, : p + t_own],
                attention_mask=part.attention_mask[:, : p + t_own],
                response_mask=part.response_mask[:, :t_own],
                prompt_len=p,
                sampler_logp=part.sampler_logp[:, :t_own],
                group_ids=part.group_ids - self.rank * self.local_prompts,
                prompts=part.prompts,
                completions=part.completions,
                examples=part.examples,
                truncated=part.truncated,
            )

    return SameRolloutsTrainer


def train(cfg_dict: dict) -> None:
    """Run the whole training (what each launched process does); `"resume": true` resumes the run."""
    from rlentropy.runs.config import config_from_dict

    cfg_dict = dict(cfg_dict)
    resume = bool(cfg_dict.pop("resume", False))
    register_task()
    trainer = _trainer_class()(config_from_dict(cfg_dict), quiet=True, resume=resume)
    try:
        trainer.setup()
        trainer.train()
    finally:
        trainer.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(model_dir: Path, run_dir: Path, distributed: str = "ddp") -> dict:
    # 4 prompts × 4 samples; 2 mini-batches (groups split by index mod 2) of micro-batches of 2 rows;
    # Clip_B with a low threshold so that it removes tokens on the gathered batch; grad-norm clipping.
    return {
        "name": "mp",
        "run_dir": str(run_dir),
        "model": {"path": str(model_dir)},
        "data": {"task": TASK},
        "rollout": {"max_new_tokens": 8, "temperature": 1.0},
        "algorithm": {"control": "clip_b", "control_params": {"mu": 1.0}},
        "optim": {"lr": 1e-2, "weight_decay": 0.0},
        "train": {
            "steps": 2,
            "prompts_per_step": 4,
            "group_size": 4,
            "mini_batches": 2,
            "micro_batch_size": 2,
            "grad_clip": 1.0,
            "seed": 0,
            "device": "cpu",
            "distributed": distributed,
        },
        "checkpoint": {"every": 0, "keep_last": 1},
        "logging": {"tensorboard": False},
    }


def _launch(cfg: dict, world: int) -> None:
    port = _free_port()
    procs = []
    for rank in range(world):
        env = dict(
            os.environ,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(world),
            LOCAL_WORLD_SIZE=str(world),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            ACCELERATE_USE_CPU="true",
            OMP_NUM_THREADS="1",
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", WORKER, __file__, json.dumps(cfg)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    try:
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(path.glob("**/*.safetensors"))
    assert files, f"no safetensors under {path}"
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("distributed", ["ddp", "fsdp"])
def test_two_processes_match_one_process(tiny_model_dir, tmp_path, distributed):
    one, two = tmp_path / "one", tmp_path / "two"
    # One process runs here (no launcher variables: accelerate sees a single process); two are launched,
    # with DDP (whole model on each, gradients summed) or FSDP2 (parameters, gradients, optimizer sharded).
    train(_config(tiny_model_dir, one))
    _launch(_config(tiny_model_dir, two, distributed), world=WORLD)
    m1, m2 = _metrics(one), _metrics(two)
    assert [r["step"] for r in m1] == [r["step"] for r in m2] == [1, 2]

    # Not vacuous: rewards vary, Clip_B removes tokens, the loss and gradients are non-zero.
    for r in m1:
        assert r["adv/std"] > 0.1 and r["optim/grad_norm"] > 1e-3 and abs(r["loss/total"]) > 1e-6
        assert r["control/frac_removed"] > 0 and r["optim/updates"] == 2.0

    # Every metric that is not a timing agrees (the rollouts are the same, so the sampling metrics
    # agree exactly and the update metrics to float rounding: the sums run in a different order).
    skip = ("time/", "wall_time")
    keys = [k for k in m1[0] if not k.startswith(skip)]
    assert {
        "reward/mean",
        "entropy/mean",
        "loss/total",
        "optim/grad_norm",
        "policy/kl_old",
        "control/frac_removed",
    } <= set(keys)
    for r1, r2 in zip(m1, m2):
        assert set(k for k in r2 if not k.startswith(skip)) == set(keys)
        for key in keys:
            assert r2[key] == pytest.approx(r1[key], rel=1e-4, abs=1e-6, nan_ok=True), (r1["step"], key)

    # The weights moved, and identically.
    w0 = _weights(tiny_model_dir)
    w1, w2 = _weights(one / "checkpoints"), _weights(two / "checkpoints")
    assert w1.keys() == w2.keys() and w1.keys() <= w0.keys()
    moved = max(float((w1[n] - w0[n]).abs().max()) for n in w1)
    assert moved > 1e-3
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
def test_fsdp_resume_continues_exactly(tiny_model_dir, tmp_path):
    """Two FSDP processes: 3 steps straight equal 2 steps, a checkpoint, and a resumed third step (the
    sharded optimizer state is saved whole and re-sharded on resume)."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    cfg = _config(tiny_model_dir, straight, "fsdp")
    cfg["train"]["steps"] = 3
    _launch(cfg, world=WORLD)
    cfg = _config(tiny_model_dir, split, "fsdp")
    cfg["checkpoint"] = {"every": 1, "keep_last": 1}
    _launch(cfg, world=WORLD)
    _launch({**cfg, "train": {**cfg["train"], "steps": 3}, "resume": True}, world=WORLD)
    a = _metrics(straight)
    b = _metrics(split)
    assert [r["step"] for r in b] == [1, 2, 3]
    for key in ("loss/total", "optim/grad_norm", "entropy/mean"):
        assert b[2][key] == pytest.approx(a[2][key], rel=1e-6), key
    w_a = _weights(straight / "checkpoints" / "step_3")
    w_b = _weights(split / "checkpoints" / "step_3")
    assert w_a.keys() == w_b.keys()
    for name in w_a:
        torch.testing.assert_close(w_b[name], w_a[name], rtol=1e-6, atol=1e-7, msg=name)
