"""`rlentropy report`: panels from synthesised run directories, bad input, and a real headless Chromium."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

from rlentropy.errors import DataError, UserError
from rlentropy.evaluate.run import save_eval_result
from rlentropy.report import load_run, write_report
from rlentropy.report.plots import agreement, fit_exp_entropy
from rlentropy.report.rundata import TruncatedMetricsWarning, read_metrics_jsonl

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
ALL_PANELS = ("entropy", "reward", "pass_at_k", "controls", "delta_h", "quadrants", "s_hist", "r_vs_h", "fisher")


def make_run(
    root: Path,
    name: str,
    *,
    steps: int = 30,
    seed: int = 0,
    probes: bool = True,
    control: str = "clip_b",
    evals: bool = True,
    truncated: bool = False,
    nan_step: int | None = None,
    quad_scale: float = 0.004,
) -> Path:
    """A run directory with realistic files: config.yaml, metrics.jsonl, eval/, dynamics/."""
    rng = np.random.default_rng(seed)
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(
        f"name: {name}\nmodel:\n  path: tiny\ndata:\n  task: countdown\n"
        f"algorithm:\n  loss: ppo\n  control: {control}\nprobes:\n  every: {5 if probes else 0}\n",
        encoding="utf-8",
    )
    lines = []
    for step in range(1, steps + 1):
        h = 1.2 * math.exp(-step / 15) + 0.2 + 0.01 * rng.standard_normal()
        rec = {
            "step": step,
            "time": 0.5 * step,
            "entropy/mean": h,
            "reward/mean": -0.3 * math.exp(h) + 1.5 + 0.01 * rng.standard_normal(),
            "loss/policy": float(rng.standard_normal()),
        }
        frac = 0.002 + 0.001 * rng.random() if control != "none" else 0.0
        rec["control/frac_removed"] = frac  # the trainer logs zeros when no control is on
        rec["control/frac_controlled"] = frac
        if probes and step % 5 == 0:
            pred = -0.01 * rng.random()
            rec["probe/step_pred_dH"] = pred
            rec["probe/step_meas_dH"] = pred * (1 + 0.1 * rng.standard_normal())
            for q, sign in (("pos_high", -1), ("pos_low", 1), ("neg_high", 1), ("neg_low", -1)):
                rec[f"probe/quad_{q}/dH"] = sign * quad_scale * rng.random()
                rec[f"probe/quad_{q}/count"] = float(rng.integers(10, 100))
        if nan_step == step:
            rec["entropy/mean"] = None  # JSON has no NaN: the trainer writes null
        lines.append(json.dumps(rec))
    text = "\n".join(lines) + "\n"
    if truncated:
        text += f'{{"step": {steps + 1}, "entropy/me'
    (run / "metrics.jsonl").write_text(text, encoding="utf-8")
    if evals:
        for step in (0, 10, 20, 30):
            acc = 0.2 + 0.01 * step
            metrics = {
                "pass@1": acc,
                "pass@2": acc * 1.5,
                "pass@4": min(1.0, acc * 2),
                "avg@4": acc,
                "maj@1": acc,
                "maj@2": acc,
                "maj@4": acc * 1.1,
                "entropy": 0.8 - 0.01 * step,
                "surprisal": 0.9,
                "response_len": 7.0,
                "format_valid": 1.0,
            }
            save_eval_result(
                run, step, metrics, [{"prompt_index": 0, "completion": "1+2"}], settings={"task": "countdown", "n": 4}
            )
    if probes:
        (run / "dynamics").mkdir()
        for step in range(5, steps + 1, 5):
            B, T = 6, 9
            mask = (rng.random((B, T)) < 0.8).astype(np.float32)
            s = (rng.standard_normal((B, T)) * 0.1 - 0.05 * step / steps).astype(np.float32)
            s_bar = (rng.standard_normal((B, T)) * 0.05).astype(np.float32)
            arrays = {
                "S": s,
                "s_bar": s_bar,
                "loss_mask": mask,
                "advantages": rng.standard_normal((B, T)).astype(np.float32),
            }
            if step == steps:
                g = rng.standard_normal((8, 20))
                arrays["fisher_kernel"] = (g @ g.T).astype(np.float32)
            np.savez_compressed(run / "dynamics" / f"step_{step}.npz", **arrays)
    return run


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    a = make_run(root, "clipb", seed=1, nan_step=7)
    b = make_run(root, "baseline", seed=2, probes=False, control="none", evals=False)
    return a, b


def _panel_ids(html: str) -> set[str]:
    return set(re.findall(r'<h2 id="([a-z_]+)"', html)) - {"omitted"}


def test_report_two_runs_has_every_panel(two_runs, tmp_path):
    a, b = two_runs
    path = write_report([a, b], tmp_path / "cmp")
    html = path.read_text(encoding="utf-8")
    assert _panel_ids(html) == set(ALL_PANELS)
    assert 'id="omitted"' not in html
    pngs = sorted(p.name for p in (tmp_path / "cmp" / "plots").glob("*.png"))
    # s_hist and fisher are per run; only run a has dynamics
    assert pngs == sorted(
        [
            "entropy.png",
            "reward.png",
            "pass_at_k.png",
            "controls.png",
            "delta_h.png",
            "quadrants.png",
            "s_hist_clipb.png",
            "r_vs_h.png",
            "fisher_clipb.png",
        ]
    )
    # self-contained: every image is inline base64, nothing is fetched
    imgs = re.findall(r'<img [^>]*src="([^"]+)"', html)
    assert len(imgs) == len(pngs)
    assert all(src.startswith("data:image/png;base64,") for src in imgs)
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "<script" not in html
    # summary table lists both runs
    assert html.count('<span class="swatch"') == 2
    assert "clipb" in html and "baseline" in html


def test_report_omits_absent_panels_with_a_note(two_runs, tmp_path):
    _, b = two_runs
    path = write_report([b], tmp_path / "only_b")
    html = path.read_text(encoding="utf-8")
    # the baseline run has entropy and reward only
    assert _panel_ids(html) == {"entropy", "reward", "r_vs_h"}
    for key in ("pass_at_k", "controls", "delta_h", "quadrants", "s_hist", "fisher"):
        assert f'id="note-{key}"' in html
    assert sorted(p.name for p in (tmp_path / "only_b" / "plots").glob("*.png")) == [
        "entropy.png",
        "r_vs_h.png",
        "reward.png",
    ]


def test_default_output_is_the_first_run(tmp_path):
    run = make_run(tmp_path, "solo", steps=12, probes=False, evals=False)
    path = write_report([run])
    assert path == run / "report.html"
    assert (run / "plots" / "entropy.png").is_file()


def test_nan_values_become_gaps(two_runs):
    run = load_run(two_runs[0])
    steps, h = run.series("entropy")
    # step 7 was written as null -> NaN at that step, its neighbours finite
    i = int(np.where(steps == 7)[0][0])
    assert math.isnan(h[i]) and math.isfinite(h[i - 1]) and math.isfinite(h[i + 1])
    assert np.isfinite(np.delete(h, i)).all()


def test_truncated_last_line_warns_once_and_reads_the_rest(tmp_path):
    run = make_run(tmp_path, "killed", steps=10, probes=False, evals=False, truncated=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = read_metrics_jsonl(run / "metrics.jsonl")
        write_report([run], tmp_path / "out")
    assert len(rows) == 10 and rows[-1]["step"] == 10
    trunc = [w for w in caught if issubclass(w.category, TruncatedMetricsWarning)]
    assert len(trunc) == 2  # once per read (one direct read, one by the report), not once per line
    assert "line 11" in str(trunc[0].message)


def test_corrupt_middle_line_is_a_data_error(tmp_path):
    run = make_run(tmp_path, "corrupt", steps=5, probes=False, evals=False)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[2] = lines[2][:10]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"metrics\.jsonl:3: not valid JSON"):
        write_report([run], tmp_path / "out")


def test_not_a_run_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a run directory"):
        write_report([tmp_path / "empty"])
    with pytest.raises(UserError, match="not a run directory"):
        write_report([tmp_path / "missing"])


def test_cli_report_bad_dir_exit_2(tmp_path, capsys):
    from rlentropy.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["report", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "not a run directory" in err


def test_fit_exp_entropy_recovers_coefficients():
    # R = -a e^H + b with a = 0.3, b = 1.5, exact data: the least squares fit is exact.
    h = np.array([0.2, 0.5, 0.9, 1.3, 1.6])
    r = -0.3 * np.exp(h) + 1.5
    a, b, r2 = fit_exp_entropy(h, r)
    assert a == pytest.approx(0.3, rel=1e-12)
    assert b == pytest.approx(1.5, rel=1e-12)
    assert r2 == pytest.approx(1.0, abs=1e-12)


def test_agreement_hand_case():
    # x = (1, 2, 3), y = (2, 4, 7): centred x = (-1, 0, 1), centred y = (-7/3, -1/3, 8/3)
    # cov = 7/3 + 8/3 = 5; |x| = sqrt(2); |y| = sqrt(49/9 + 1/9 + 64/9) = sqrt(114)/3
    # r = 5 / (sqrt(2) * sqrt(114) / 3) = 15 / sqrt(228); NaN pairs are skipped
    ag = agreement(np.array([1.0, 2.0, np.nan, 3.0]), np.array([2.0, 4.0, 1.0, 7.0]))
    assert ag["n"] == 3
    assert ag["corr"] == pytest.approx(15 / math.sqrt(228), rel=1e-14)
    assert ag["sign_agree"] == 1.0


def test_all_zero_quadrants_are_a_note_not_an_empty_plot(tmp_path):
    run = make_run(tmp_path, "flat", steps=10, evals=False, quad_scale=0.0)
    html = write_report([run], tmp_path / "o").read_text(encoding="utf-8")
    assert 'id="note-quadrants"' in html and "every quadrant contribution is zero" in html
    assert 'id="quadrants"' not in html


def test_report_from_a_real_short_run(fast_cfg, tmp_path):
    """A real 3-step training run with probes (tiny random model), evaluated, then reported."""
    from rlentropy.evaluate.run import evaluate_run
    from rlentropy.train.run import run_training

    cfg = fast_cfg(
        train={"steps": 3, "prompts_per_step": 2, "group_size": 4},
        rollout={"max_new_tokens": 6},
        algorithm={"control": "clip_b"},
        checkpoint={"every": 3},
        probes={"every": 1, "fisher_every": 3, "fisher_sequences": 4, "probe_prompts": 1, "logit_check": False},
        data={"task": "countdown", "max_eval": 2},
    )
    run_training(cfg, quiet=True)
    run = Path(cfg.run_dir)
    evaluate_run(run, n=2, log=lambda _m: None)
    html = write_report([run], tmp_path / "out").read_text(encoding="utf-8")
    drawn = _panel_ids(html)
    # with a random policy every reward is 0, so the quadrant bars are all zero (noted, not drawn)
    assert {"entropy", "reward", "pass_at_k", "controls", "delta_h", "s_hist", "r_vs_h", "fisher"} <= drawn
    loaded = load_run(run)
    assert loaded.series("entropy") is not None and loaded.series("pred_dH") is not None
    assert loaded.controls() == [("clip_b", "control/frac_removed")]
    assert [int(r["step"]) for r in loaded.eval_rows] == [0, 3]


# ----------------------------------------------------------------------------- real browser
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture(scope="session")
def chromium():
    """Debian's chromium + chromium-driver, installed with apt-get when missing (never a downloaded browser)."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        apt = shutil.which("apt-get")
        if apt is None or os.geteuid() != 0:
            pytest.skip(
                "chromium is not installed and apt-get cannot install it here (needs Debian and root): "
                "run `apt-get install -y chromium chromium-driver`"
            )
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        cmd = [apt, "install", "-y", "-q", "-o", "DPkg::Lock::Timeout=300", "chromium", "chromium-driver"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if proc.returncode != 0:  # the package lists may be stale: refresh once and retry
            subprocess.run([apt, "update", "-q"], capture_output=True, text=True, env=env, timeout=600)
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        assert proc.returncode == 0, f"apt-get install chromium failed:\n{proc.stderr[-2000:]}"
    assert CHROMIUM.exists() and CHROMEDRIVER.exists()
    return CHROMIUM, CHROMEDRIVER


def test_report_opens_in_headless_chromium(two_runs, tmp_path, chromium, monkeypatch):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = chromium
    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium-manager must not download anything
    path = write_report(list(two_runs), tmp_path / "browser")
    opts = Options()
    opts.binary_location = str(browser)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1300,2000",
        "--disable-extensions",
        "--no-first-run",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=str(driver_path)), options=opts)
    try:
        driver.set_page_load_timeout(60)
        driver.get(path.resolve().as_uri())
        state = driver.execute_script(
            "return Array.from(document.images).map(i => [i.id, i.complete, i.naturalWidth, i.naturalHeight]);"
        )
        assert len(state) == 9  # every panel of test_report_two_runs_has_every_panel
        for img_id, complete, width, height in state:
            assert complete and width > 0 and height > 0, img_id
        assert driver.title.startswith("rlentropy report")
        rows = driver.execute_script("return document.querySelectorAll('#summary tr').length;")
        assert rows == 3  # header + two runs
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "report_chromium.png"
        full_height = driver.execute_script("return document.body.scrollHeight;")
        driver.set_window_size(1300, min(int(full_height) + 100, 16000))
        assert driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
    finally:
        driver.quit()


def test_cli_report_warns_in_one_line(tmp_path, capsys):
    from rlentropy.cli import main

    run = make_run(tmp_path, "killed", steps=6, probes=False, evals=False, truncated=True)
    main(["report", str(run), "--out", str(tmp_path / "o")])
    out = capsys.readouterr()
    assert out.err.startswith("warning: ") and out.err.count("\n") == 1
    assert "line 7 is incomplete" in out.err
    assert out.out.strip() == f"wrote {tmp_path / 'o' / 'report.html'}"
