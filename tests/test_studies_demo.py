"""The demo study end to end on a tiny random model (1 step, 2 methods, in process), and its table."""

from __future__ import annotations

import json
import math

import pytest

from rlentropy.errors import ConfigError
from rlentropy.studies.demo import METHODS, _library_defaults, demo_command, run_demo, summary_markdown
from rlentropy.studies.jobs import EVAL_SEED, _controlled


def test_demo_runs_and_writes_summary_and_report(tiny_model_dir, tmp_path):
    out = tmp_path / "demo"
    overrides = [
        f"model.path={tiny_model_dir}",
        "train.steps=2",
        "train.prompts_per_step=2",
        "train.group_size=4",
        "train.mini_batches=1",
        "rollout.max_new_tokens=8",
        "eval.n=2",
        "eval.max_prompts=2",
        "logging.tensorboard=false",
        "probes.every=1",
        "probes.probe_prompts=1",
        "probes.logit_check=false",
    ]
    path = run_demo(out, quiet=True, workers=1, methods=["grpo", "clip_b"], overrides=overrides)
    text = path.read_text()
    assert "| grpo | 0 |" in text and "| clip_b | 0 |" in text and "| base (step 0) |" in text
    # the method parameters come from the config's demo.methods, listed with the upstream defaults
    assert "* clip_b: algorithm.control=clip_b; mu 1.5 (library/upstream default 2.5)" in text
    assert "ΔH corr" in text and "ΔH sign agree" in text
    data = json.loads((out / "summary.json").read_text())
    assert [r["method"] for r in data["runs"]] == ["grpo", "clip_b"]
    for r in data["runs"]:
        run = out / f"{r['method']}-s0"
        assert math.isfinite(r["entropy_final"]) and 0.0 <= r["pass@1"] <= r["pass@2"] <= 1.0
        assert (run / "metrics.jsonl").is_file()
        # both probed steps enter the predicted-vs-measured agreement
        assert r["probe_n"] == 2 and 0.0 <= r["probe_sign_agree"] <= 1.0
        # base policy = eval step 0 and final policy = eval step 2 of every run, with the settings record
        for step in (0, 2):
            rec = json.loads((run / "eval" / f"step_{step}" / "metrics.json").read_text())
            assert (
                rec["settings"]["seed"] == EVAL_SEED
                and rec["settings"]["n"] == 2
                and rec["settings"]["max_prompts"] == 2
            )
        assert json.loads((run / "eval" / "step_2" / "metrics.json").read_text())["pass@1"] == r["pass@1"]
        assert [line.split(",")[0] for line in (run / "eval" / "metrics.csv").read_text().splitlines()] == [
            "step",
            "0",
            "2",
        ]
    assert (
        data["base"]["pass@1"]
        == json.loads((out / "grpo-s0" / "eval" / "step_0" / "metrics.json").read_text())["pass@1"]
    )
    assert (out / "report.html").is_file()
    # a second demo with the same config reuses the finished runs; a changed config reruns them
    stamp = (out / "grpo-s0" / "metrics.jsonl").stat().st_mtime_ns
    run_demo(out, quiet=True, workers=1, methods=["grpo"], overrides=overrides)
    assert (out / "grpo-s0" / "metrics.jsonl").stat().st_mtime_ns == stamp
    # a run killed after its training, before its evaluation: evaluated from its final checkpoint, not retrained
    (out / "grpo-s0" / "demo_result.json").unlink()
    run_demo(out, quiet=True, workers=1, methods=["grpo"], overrides=overrides)
    assert (out / "grpo-s0" / "metrics.jsonl").stat().st_mtime_ns == stamp
    assert json.loads((out / "grpo-s0" / "demo_result.json").read_text())["pass@1"] == data["runs"][0]["pass@1"]
    run_demo(out, quiet=True, workers=1, methods=["grpo"], overrides=[*overrides, "train.steps=1"])
    assert len((out / "grpo-s0" / "metrics.jsonl").read_text().splitlines()) == 1
    with pytest.raises(ConfigError, match="demo methods: unknown nope"):
        run_demo(out, quiet=True, workers=1, methods=["nope"], overrides=overrides)


def test_method_parameters_against_library_defaults():
    assert _library_defaults(
        ["algorithm.control=clip_v", "algorithm.control_params.mu=2.0", "algorithm.control_params.max_frac=0.02"]
    ) == [("mu", 2.0, 8.5), ("max_frac", 0.02, 1e-4)]
    assert _library_defaults(["algorithm.loss=clip_cov", "algorithm.loss_params.clip_cov_ratio=0.02"]) == [
        ("clip_cov_ratio", 0.02, 2e-4)
    ]
    assert _library_defaults(["algorithm.loss=kl_cov", "algorithm.loss_params.kl_cov_ratio=0.02"]) == [
        ("kl_cov_ratio", 0.02, 2e-4)
    ]
    assert _library_defaults([]) == []
    # tokens controlled: the selection of the covariance losses, else removed tokens with A != 0
    assert _controlled({"control/frac_selected": 0.02, "control/frac_removed_active": 0.0}) == 0.02
    assert _controlled({"control/frac_removed": 0.05, "control/frac_removed_active": 0.018}) == 0.018


def test_summary_table_mean_and_std():
    rows = [
        {
            "method": "grpo",
            "seed": s,
            "entropy_first": 1.0,
            "entropy_final": 0.5 + 0.1 * s,
            "entropy_min": 0.4,
            "reward_final": 0.5,
            "pass@1": 0.2,
            "pass@4": 0.5,
            "frac_controlled": 0.0,
            "wall_s": 10.0,
        }
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
    with pytest.raises(ConfigError, match="--steps: must be >= 1"):
        demo_command(seeds=1, study="controls", out=None, quiet=True, steps=0)
    with pytest.raises(ConfigError, match="override 'train.steps': expected key.sub=value"):
        demo_command(seeds=1, study="controls", out=None, quiet=True, overrides=["train.steps"])
    with pytest.raises(ConfigError, match="--methods: the quadrant study"):
        demo_command(seeds=1, study="quadrants", out=None, quiet=True, methods=["grpo"])
    with pytest.raises(ConfigError, match="demo methods: unknown nope"):
        demo_command(seeds=1, study="controls", out=None, quiet=True, methods=["nope"])


def test_cli_demo_takes_overrides_steps_and_methods(tiny_model_dir, tmp_path, monkeypatch, capsys):
    # `rlentropy demo --steps N key=value …` changes every run: a smoke test of the demo in seconds
    from rlentropy.cli import main

    monkeypatch.setenv("RLENTROPY_DEMO_WORKERS", "1")
    out = tmp_path / "demo"
    toy = [f"model.path={tiny_model_dir}", "train.prompts_per_step=2", "train.group_size=2", "train.mini_batches=1"]
    toy += ["rollout.max_new_tokens=4", "eval.n=2", "eval.max_prompts=2", "logging.tensorboard=false"]
    main(["demo", *toy, "probes.every=0", "--steps", "1", "--methods", "clip_b", "--out", str(out), "--quiet"])
    data = json.loads((out / "summary.json").read_text())
    assert [(r["method"], r["steps"]) for r in data["runs"]] == [("clip_b", 1)]
    assert (out / "clip_b-s0" / "checkpoints" / "step_1").is_dir()


def test_study_evaluation_checks_prompt_lengths(tiny_model_dir, capsys):
    # the demo's and the studies' evaluations (eval.max_new_tokens may exceed the rollouts') check every
    # eval prompt against the context, as `rlentropy train` and `rlentropy eval` do: never silent
    from rlentropy.errors import DataError, UserError
    from rlentropy.models.loading import load_policy
    from rlentropy.runs.config import load_config
    from rlentropy.studies.jobs import evaluate_policy

    base = [f"model.path={tiny_model_dir}", "eval.n=1", "eval.max_prompts=2", "train.device=cpu"]
    cfg = load_config(None, [*base, "eval.max_new_tokens=120"])  # context 128: 8 tokens left for a prompt
    loaded = load_policy(cfg.model)
    with pytest.raises(DataError, match=r"the eval prompt has \d+ tokens, more than the 8 allowed"):
        evaluate_policy(loaded.model, loaded.tokenizer, cfg)
    cfg = load_config(None, [*base, "eval.max_new_tokens=120", "data.over_long=skip"])
    with pytest.raises(UserError, match="every eval prompt is longer than 8 tokens"):
        evaluate_policy(loaded.model, loaded.tokenizer, cfg)
    cfg = load_config(None, [*base, "eval.max_new_tokens=106", "data.over_long=skip"])  # 22 tokens: some fit
    metrics, _samples, _settings = evaluate_policy(loaded.model, loaded.tokenizer, cfg)
    err = capsys.readouterr().err
    assert "data: skipped " in err and "eval prompts longer than 22 tokens (data.over_long=skip)" in err
    assert metrics["num_prompts"] == 2
