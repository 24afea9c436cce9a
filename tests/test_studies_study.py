"""`rlentropy study`: the interval arithmetic on hand-computed cases, and a 2-method × 2-seed study of 2
steps end to end, including the resume of an interrupted study and the report's band panels."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from rlentropy.studies.stats import bootstrap_interval, paired_difference, t_interval


def test_t_interval_hand_computed():
    # values 1, 2, 3, 4: mean 2.5, s = sqrt(5/3) = 1.290994, t_{0.975, 3} = 3.182446 →
    # half-width 3.182446 · 1.290994 / 2 = 2.054260
    iv = t_interval([1.0, 2.0, 3.0, 4.0])
    assert iv.mean == 2.5 and iv.n == 4 and iv.method == "t"
    assert iv.half_width == pytest.approx(2.054260, abs=1e-6)
    assert (iv.low, iv.high) == pytest.approx((2.5 - 2.054260, 2.5 + 2.054260), abs=1e-6)
    # n = 3 (the studies' seeds): values 0.1, 0.2, 0.6: mean 0.3, s = 0.264575, t_{0.975, 2} = 4.302653
    # → half-width 4.302653 · 0.264575 / sqrt(3) = 0.657241
    assert t_interval([0.1, 0.2, 0.6]).half_width == pytest.approx(0.657241, abs=1e-6)
    # 90 %: t_{0.95, 3} = 2.353363 → 2.353363 · 1.290994 / 2 = 1.519090
    assert t_interval([1, 2, 3, 4], confidence=0.9).half_width == pytest.approx(1.519090, abs=1e-6)
    one = t_interval([0.7, float("nan")])
    assert one.mean == 0.7 and one.n == 1 and math.isnan(one.low) and not one.excludes_zero
    assert one.fmt() == "0.700"
    with pytest.raises(ValueError, match="confidence"):
        t_interval([1.0, 2.0], confidence=1.5)


def test_bootstrap_interval_fixed_seed():
    # Two values 0 and 1: every resample mean is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4, so the
    # 2.5 % and 97.5 % quantiles of 10,000 draws are 0 and 1 exactly.
    iv = bootstrap_interval([0.0, 1.0], seed=0)
    assert (iv.mean, iv.low, iv.high) == (0.5, 0.0, 1.0) and iv.method == "bootstrap"
    # reproducible with the seed, and narrower than the t-interval on a larger sample
    x = list(np.linspace(0.0, 1.0, 20))
    assert bootstrap_interval(x, seed=3) == bootstrap_interval(x, seed=3)
    assert bootstrap_interval(x).half_width < t_interval(x).half_width * 1.2


def test_paired_difference_uses_common_seeds():
    # differences on seeds 0, 1, 2: 0.1, 0.3, 0.2 (seed 3 has no baseline): mean 0.2, s 0.1,
    # half-width 4.302653 · 0.1 / sqrt(3) = 0.248414 → interval (−0.048, 0.448) contains 0
    d = paired_difference({0: 1.1, 1: 1.3, 2: 1.2, 3: 9.0}, {0: 1.0, 1: 1.0, 2: 1.0})
    assert d.n == 3 and d.mean == pytest.approx(0.2) and d.half_width == pytest.approx(0.248414, abs=1e-6)
    assert not d.excludes_zero
    tight = paired_difference({0: 1.20, 1: 1.21, 2: 1.19}, {0: 1.0, 1: 1.0, 2: 1.0})
    assert tight.excludes_zero and tight.low > 0
    with pytest.raises(ValueError, match="method"):
        paired_difference({0: 1.0}, {0: 1.0}, method="z")


def _study_config(tmp_path, tiny_model_dir):
    cfg = {
        "name": "mini-study",
        "model": {"path": str(tiny_model_dir)},
        "data": {"task": "countdown"},
        "rollout": {"max_new_tokens": 8},
        "optim": {"lr": 1e-3, "weight_decay": 0.0},
        "train": {"steps": 2, "prompts_per_step": 4, "group_size": 4, "device": "cpu"},
        "checkpoint": {"every": 1, "keep_last": 2},
        "logging": {"tensorboard": False},
        "probes": {"every": 2, "probe_prompts": 2, "logit_check": False, "gns": False, "save_arrays": False},
        "eval": {"n": 2, "max_prompts": 2},
        "study": {
            "seeds": 2,
            "baseline": "grpo",
            "methods": {"grpo": [], "clip_b": ["algorithm.control=clip_b", "algorithm.control_params.mu=0.5"]},
        },
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_a_figure_the_baseline_lacks_has_no_paired_difference():
    from rlentropy.studies.study import summarise, summary_markdown

    def row(method, seed, h, target_err=None):
        r = {
            "method": method,
            "seed": seed,
            "entropy_final": h,
            "entropy_min": h,
            "entropy_auc": h,
            "reward_final": 0.2,
            "pass@1": 0.3,
            "pass@2": 0.4,
        }
        if target_err is not None:
            r["target_abs_error"] = target_err
        return r

    rows = [row("grpo", 0, 0.1), row("grpo", 1, 0.2), row("ctl", 0, 0.5, 0.02), row("ctl", 1, 0.6, 0.04)]
    s = summarise(rows, baseline="grpo", k_max=2)
    ctl = s["methods"]["ctl"]
    assert "target_abs_error" not in ctl["diff"]  # grpo has no target: nothing to pair with
    assert ctl["mean"]["target_abs_error"]["mean"] == pytest.approx(0.03)
    assert ctl["diff"]["entropy_final"]["mean"] == pytest.approx(0.4)  # (0.4 + 0.4) / 2
    text = summary_markdown(s, {"metrics": {}}, title="t", setting="s", baseline="grpo", rule=None, wall_s=60.0)
    assert "nan" not in text


def test_two_methods_two_seeds_end_to_end_and_resume(tmp_path, tiny_model_dir):
    from rlentropy.studies.study import run_study

    config = _study_config(tmp_path, tiny_model_dir)
    out = tmp_path / "out"
    run_study(config, out, workers=1, quiet=True)
    summary = json.loads((out / "summary.json").read_text())
    assert {(r["method"], r["seed"]) for r in summary["runs"]} == {
        ("grpo", 0),
        ("grpo", 1),
        ("clip_b", 0),
        ("clip_b", 1),
    }
    m = summary["summary"]["methods"]
    assert m["clip_b"]["mean"]["entropy_final"]["n"] == 2 and "entropy_final" in m["clip_b"]["diff"]
    assert "diff" in m["grpo"] and not m["grpo"]["diff"]  # no difference against itself
    text = (out / "summary.md").read_text()
    assert "95 % Student-t interval over 2 seeds" in text and "| clip_b |" in text
    html = (out / "report.html").read_text()
    for stem in ("study_entropy", "study_reward", "study_pass_at_k", "study_delta_h"):
        assert f'id="img-{stem}"' in html and (out / "plots" / f"{stem}.png").stat().st_size > 1000
    # every run has the base policy as eval step 0 and its final policy as step 2
    for r in summary["runs"]:
        steps = sorted(int(p.name.split("_")[1]) for p in (out / r["run_dir"].split("/")[-1] / "eval").glob("step_*"))
        assert steps == [0, 2]

    # interrupt one run after step 1: its result and last checkpoint are gone, its metrics end at step 1
    victim = out / "clip_b-s1"
    (victim / "study_result.json").unlink()
    import shutil

    shutil.rmtree(victim / "checkpoints" / "step_2")
    lines = (victim / "metrics.jsonl").read_text().splitlines()
    (victim / "metrics.jsonl").write_text(lines[0] + "\n")
    untouched = {p: p.stat().st_mtime_ns for p in out.glob("*-s*/study_result.json")}
    run_study(config, out, workers=1, quiet=True)
    rows = {(r["method"], r["seed"]): r for r in json.loads((out / "summary.json").read_text())["runs"]}
    assert rows[("clip_b", 1)]["resumed"] is True and rows[("clip_b", 1)]["steps"] == 2
    assert all(p.stat().st_mtime_ns == t for p, t in untouched.items())  # finished runs were not rerun
    assert not rows[("clip_b", 1)].get("reused") and all(r.get("reused") for k, r in rows.items() if k != ("clip_b", 1))
    assert "3 of 4 runs had finished before it and were reused" in (out / "summary.md").read_text()
    assert len((victim / "metrics.jsonl").read_text().splitlines()) == 2


def test_progress_in_a_log_file_is_a_plain_line_with_an_eta(tmp_path):
    """Under nohup (no terminal) the study prints `study steps N/M … ETA` lines; steps done before the
    study started (a resume) count as done but not toward the speed."""
    import io

    from rich.console import Console

    from rlentropy.studies.study import _StudyProgress

    jobs = [{"run_dir": str(tmp_path / f"r{i}")} for i in range(2)]
    for j in jobs:
        Path(j["run_dir"]).mkdir()
    (tmp_path / "r0" / "metrics.jsonl").write_text('{"step": 1}\n' * 4, encoding="utf-8")  # resumed: 4 done
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, width=200)
    with _StudyProgress(jobs, 10, console=console, quiet=False, every_s=0.0) as progress:
        assert progress.bar is None and progress.first == 4
        (tmp_path / "r1" / "metrics.jsonl").write_text('{"step": 1}\n' * 12, encoding="utf-8")  # capped at 10
        progress.t0 -= 60.0  # 10 new steps in one minute: 6 left → ETA 1 min
        progress.poll()
    line = buf.getvalue().strip()
    assert line.startswith("study steps 14/20, 1 min elapsed, ETA 1 min"), line
    quiet = io.StringIO()
    with _StudyProgress(jobs, 10, console=Console(file=quiet), quiet=True, every_s=0.0) as progress:
        progress.poll()
    assert quiet.getvalue() == ""


def test_step_counter_reads_appended_lines_and_notices_a_replaced_file(tmp_path):
    from rlentropy.studies.study import _StepCounter

    count, run = _StepCounter(), tmp_path / "run"
    assert count(run) == 0  # no run directory yet
    run.mkdir()
    path = run / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"st')  # the third line is still being written
    assert count(run) == 2
    with path.open("a") as f:
        f.write('ep": 3}\n{"step": 4}\n')
    assert count(run) == 4
    assert count(run) == 4  # nothing new
    path.rename(run / "metrics.old.jsonl")  # a restarted run sets its metrics aside and starts again
    path.write_text('{"step": 1}\n')
    assert count(run) == 1
