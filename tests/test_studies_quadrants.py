"""The quadrant study end to end on a tiny random model (2 steps per arm), and its summary."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlentropy.dynamics import THEOREM_SIGN
from rlentropy.studies.quadrants import ARMS, quadrant_study_config, run_quadrant_study, summarise_quadrant_study


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_config_per_arm_sets_the_quadrant_mask(tmp_path):
    cfg = quadrant_study_config("neg_low", seed=3, run_dir=tmp_path / "x", steps=5, base={"optim": {"lr": 0.1}})
    assert cfg["algorithm"]["control"] == "quadrant"
    assert cfg["algorithm"]["control_params"] == {"keep": ["neg_low"]}
    assert cfg["train"]["seed"] == 3 and cfg["train"]["steps"] == 5
    assert cfg["optim"] == {"lr": 0.1, "weight_decay": 0.0}
    assert cfg["probes"]["every"] == 1 and cfg["probes"]["step_probe"]
    assert quadrant_study_config("all", seed=0, run_dir=tmp_path)["algorithm"]["control"] == "none"
    with pytest.raises(ValueError, match="arm"):
        quadrant_study_config("pos", seed=0, run_dir=tmp_path)


def test_summary_table_signs_hand_made():
    recs = [
        {
            "arm": "pos_high",
            "seed": 0,
            "meas_dH_total": -0.02,
            "pred_dH_total": -0.01,
            "sampled_entropy_first": 2.0,
            "sampled_entropy_last": 1.5,
        },
        {
            "arm": "pos_high",
            "seed": 1,
            "meas_dH_total": -0.04,
            "pred_dH_total": -0.03,
            "sampled_entropy_first": 2.0,
            "sampled_entropy_last": 1.9,
        },
        {
            "arm": "neg_high",
            "seed": 0,
            "meas_dH_total": -0.01,
            "pred_dH_total": 0.01,
            "sampled_entropy_first": 2.0,
            "sampled_entropy_last": 2.1,
        },
    ]
    text, table = summarise_quadrant_study(recs)
    assert table["pos_high"]["mean_meas_dH"] == pytest.approx(-0.03)
    assert table["pos_high"]["sd_meas_dH"] == pytest.approx(math.sqrt(2) * 0.01)  # stdev of (−0.02, −0.04)
    assert table["pos_high"]["mean_sampled_entropy_change"] == pytest.approx(-0.3)  # (−0.5 − 0.1) / 2
    assert table["pos_high"]["agrees"] is True and table["pos_high"]["seeds_agreeing"] == 2
    assert table["neg_high"]["predicted_sign"] == 1 and table["neg_high"]["agrees"] is False
    assert "| `neg_high` |" in text and "**no**" in text
    assert "all" not in table


def test_quadrant_study_runs_every_arm(tiny_model_dir, tmp_path):
    base = {
        "model": {"path": str(tiny_model_dir)},
        "data": {"task": "parity_test"},
        "rollout": {"max_new_tokens": 6, "temperature": 1.0},
        "train": {"prompts_per_step": 4, "group_size": 4, "micro_batch_size": 16},
        "probes": {"probe_prompts": 2},
    }
    path = run_quadrant_study(tmp_path / "q", seeds=1, quiet=True, steps=2, base=base)
    assert path == tmp_path / "q" / "summary.md"
    assert set(json.loads((tmp_path / "q" / "summary.json").read_text())["arms"]) == set(ARMS)
    text = path.read_text()
    for arm in ARMS:
        assert f"| `{arm}` |" in text
    runs = json.loads((tmp_path / "q" / "summary.json").read_text())["runs"]
    assert len(runs) == len(ARMS)
    for r in runs:
        assert r["steps"] == 2 and math.isfinite(r["meas_dH_total"]) and math.isfinite(r["pred_dH_total"])
        # with a single-quadrant mask, the first-order pressure of the trained tokens has the theorem's sign
        if r["arm"] in THEOREM_SIGN:
            assert r["pressure_dH_total"] * THEOREM_SIGN[r["arm"]] > 0.0
    assert (tmp_path / "q" / "pos_high-s0" / "metrics.jsonl").is_file()
    # run again into the same directory: every finished arm is reused, none is trained again
    stamp = (tmp_path / "q" / "pos_high-s0" / "metrics.jsonl").stat().st_mtime_ns
    run_quadrant_study(tmp_path / "q", seeds=1, quiet=True, steps=2, base=base)
    assert (tmp_path / "q" / "pos_high-s0" / "metrics.jsonl").stat().st_mtime_ns == stamp
    again = json.loads((tmp_path / "q" / "summary.json").read_text())["runs"]
    assert json.dumps(again) == json.dumps(runs)  # (as text: NaN == NaN)
