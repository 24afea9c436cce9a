"""The demo study end to end on a tiny random model (1 step, 2 methods, in process), and its table."""

from __future__ import annotations

import json
import math

import pytest

from rlentropy.errors import ConfigError
from rlentropy.train.demo import METHODS, demo_command, run_demo, summary_markdown


def test_demo_runs_and_writes_summary_and_report(tiny_model_dir, tmp_path):
    out = tmp_path / "demo"
    path = run_demo(out, quiet=True, workers=1, methods=["grpo", "clip_b"], overrides=[
        f"model.path={tiny_model_dir}", "train.steps=1", "train.prompts_per_step=2", "train.group_size=4",
        "train.mini_batches=1", "rollout.max_new_tokens=8", "eval.n=2", "eval.max_prompts=2", "logging.tensorboard=false",
    ])
    text = path.read_text()
    assert "| grpo | 0 |" in text and "| clip_b | 0 |" in text and "| base (step 0) |" in text
    data = json.loads((out / "summary.json").read_text())
    assert [r["method"] for r in data["runs"]] == ["grpo", "clip_b"]
    for r in data["runs"]:
        assert math.isfinite(r["entropy_final"]) and 0.0 <= r["pass@1"] <= r["pass@2"] <= 1.0
        assert (out / f"{r['method']}-s0" / "metrics.jsonl").is_file()
    assert (out / "report.html").is_file()


def test_summary_table_mean_and_std():
    rows = [
        {"method": "grpo", "seed": s, "entropy_first": 1.0, "entropy_final": 0.5 + 0.1 * s, "entropy_min": 0.4,
         "reward_final": 0.5, "pass@1": 0.2, "pass@4": 0.5, "frac_controlled": 0.0, "wall_s": 10.0}
        for s in range(2)
    ]
    text = summary_markdown(rows, None, n=4, steps=10, seeds=2)
    # H final over the two seeds: mean (0.5 + 0.6) / 2 = 0.55, sample std 0.1 / √2 = 0.0707
    assert "| grpo | 0.550 ± 0.071 |" in text
    assert set(METHODS) == {"grpo", "clip_b", "clip_v", "clip_cov", "kl_cov"}


def test_demo_bad_arguments():
    with pytest.raises(ConfigError, match="--study"):
        demo_command(seeds=1, study="nope", out=None, quiet=True)
    with pytest.raises(ConfigError, match="--seeds"):
        demo_command(seeds=0, study="controls", out=None, quiet=True)
