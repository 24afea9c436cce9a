"""Our trainer on two processes (accelerate, gloo, CPU) matches one process with the same global batch.

The loss of each process carries the global token count and the gradients are summed over processes,
so N processes × (prompts / N) give the same update as one process with all prompts. We run a tiny
model for 2 steps both ways and compare the per-step metrics and the final weights.
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

WORKER = r"""
import json, sys, torch
torch.set_num_threads(1)
from rlentropy.train.config import config_from_dict
from rlentropy.train.run import run_training
cfg = config_from_dict(json.loads(sys.argv[1]))
run_training(cfg, quiet=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(model_dir: Path, run_dir: Path) -> dict:
    return {
        "name": "mp",
        "run_dir": str(run_dir),
        "model": {"path": str(model_dir)},
        "data": {"task": "countdown"},
        "rollout": {"max_new_tokens": 10, "temperature": 1.0},
        "algorithm": {},
        "optim": {"lr": 3e-3, "weight_decay": 0.0},
        "train": {"steps": 2, "prompts_per_step": 4, "group_size": 4, "seed": 0, "device": "cpu"},
        "checkpoint": {"every": 2, "keep_last": 1},
        "logging": {"tensorboard": False},
    }


def _launch(cfg: dict, world: int) -> None:
    port = _free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                   LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(cfg)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=240)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted((run_dir / "checkpoints").glob("step_*/**/*.safetensors"))
    assert files, f"no safetensors under {run_dir / 'checkpoints'}"
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


@pytest.mark.slow
def test_two_processes_match_one_process(tiny_model_dir, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _launch(_config(tiny_model_dir, one), world=1)
    _launch(_config(tiny_model_dir, two), world=2)
    m1, m2 = _metrics(one), _metrics(two)
    assert [r["step"] for r in m1] == [r["step"] for r in m2]
    keys = ("reward/mean", "entropy/mean", "loss/total", "optim/grad_norm")
    for r1, r2 in zip(m1, m2):
        for key in keys:
            if key in r1:
                assert r2[key] == pytest.approx(r1[key], rel=1e-4, abs=1e-6), (r1["step"], key)
    w1, w2 = _weights(one), _weights(two)
    assert w1.keys() == w2.keys()
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-5, atol=1e-6, msg=name)
