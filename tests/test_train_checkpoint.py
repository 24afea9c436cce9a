"""Checkpoints: resume reproduces the uninterrupted run step for step; a failed save keeps the last one."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from rlentropy.runs.checkpoints import latest_checkpoint, list_checkpoints, load_state
from rlentropy.train.run import resume_config, run_training

VOLATILE = ("time/", "wall_time")


def _stable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


def _metrics(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("lora", [False, True])
def test_resume_reproduces_straight_run(fast_cfg, tmp_path, lora):
    # Clip-Cov draws random numbers and the optimizer has state: both must survive the resume.
    common = dict(
        data={"task": "parity_test"},
        algorithm={
            "loss": "clip_cov",
            "loss_params": {"clip_cov_ratio": 0.1, "clip_cov_lb": -100.0, "clip_cov_ub": 100.0},
        },
        model={"lora": {"enabled": lora, "r": 4, "alpha": 8, "dropout": 0.1 if lora else 0.0}},
        optim={"lr": 1e-2, "warmup_steps": 2, "schedule": "cosine"},
        checkpoint={"every": 2, "keep_last": 1},
        logging={"tensorboard": False, "rollouts_every": 2},
    )
    straight = run_training(fast_cfg(**common, train={"steps": 4, "ppo_epochs": 2}, run_dir=str(tmp_path / "a")))
    # The same run, cut during step 3 (checkpoint written at step 2), then resumed to step 4. The LR
    # schedule spans train.steps, so the cut run is configured with the full length.
    cut = tmp_path / "c"

    class Cut(Exception):
        pass

    def hook(tr, step, metrics):
        if step == 3:
            raise Cut

    with pytest.raises(Cut):
        run_training(fast_cfg(**common, train={"steps": 4, "ppo_epochs": 2}, run_dir=str(cut)), step_hook=hook)
    assert latest_checkpoint(cut)[0] == 2
    resumed = run_training(resume_config(cut, []), resume=True)
    assert resumed.step == 4 and len(resumed.history) == 2
    assert _stable(_metrics(cut)) == _stable(_metrics(tmp_path / "a"))
    a = dict(straight.model.named_parameters())
    for n, p in resumed.model.named_parameters():
        assert torch.equal(p.detach(), a[n].detach()), n
    assert (cut / "rollouts" / "step_4.jsonl.gz").is_file()


def test_failed_checkpoint_write_keeps_previous_intact(fast_cfg, tmp_path, monkeypatch):
    from rlentropy.runs import checkpoints as ck

    run_dir = tmp_path / "r"
    real_save = ck.torch.save
    calls = {"n": 0}

    def flaky(obj, path, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint (step 2) dies half-way through
            raise OSError("disk full (injected)")
        return real_save(obj, path, *a, **kw)

    monkeypatch.setattr(ck.torch, "save", flaky)
    cfg = fast_cfg(train={"steps": 3}, checkpoint={"every": 1, "keep_last": 3}, run_dir=str(run_dir))
    with pytest.raises(OSError, match="injected"):
        run_training(cfg)
    monkeypatch.setattr(ck.torch, "save", real_save)
    root = run_dir / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step_1"], "no partial step_2, no .tmp left behind"
    step, path = latest_checkpoint(run_dir)
    assert step == 1
    state = load_state(path)
    assert state["step"] == 1 and state["cursor"] == {"epoch": 0, "pos": 4}
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path)
    AutoTokenizer.from_pretrained(path)
    saved = load_file(str(path / "model.safetensors"))
    for n, p in model.named_parameters():
        if n in saved:
            assert torch.equal(p.detach(), saved[n])
    # and the run resumes from it
    resumed = run_training(resume_config(run_dir, ["train.steps=2"]), resume=True)
    assert resumed.step == 2
    assert [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_keep_last_prunes_oldest(fast_cfg, tmp_path):
    run_training(fast_cfg(train={"steps": 3}, checkpoint={"every": 1, "keep_last": 2}, run_dir=str(tmp_path / "k")))
    assert [s for s, _ in list_checkpoints(tmp_path / "k")] == [2, 3]


def test_existing_run_dir_needs_resume(fast_cfg, tmp_path):
    from rlentropy.errors import ConfigError

    cfg = fast_cfg(train={"steps": 1}, run_dir=str(tmp_path / "x"))
    run_training(cfg)
    with pytest.raises(ConfigError, match="already holds a run"):
        run_training(cfg)
    with pytest.raises(ConfigError, match="no config.yaml"):
        resume_config(tmp_path / "nothing", [])
