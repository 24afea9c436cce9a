"""The GPU validation suite (benchmarks/gpu, docs/gpu.md) must not rot between the rare GPU loans.

`bash benchmarks/gpu/run.sh --dry-run OUT` runs the same code as the GPU run at toy sizes on the CPU
(tiny V and d, a 2-layer Qwen2, 2 trainer steps). It runs once per module here (one torch thread);
the tests read its JSON, logs and summary table and check the numbers, not just the exit code.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("env", "correctness", "speed", "trainer", "fused", "throughput", "fourbit")
RTOL = 1e-4  # the suite's forward tolerance (benchmarks/gpu/sec_correctness.py)


@pytest.fixture(scope="module")
def dry(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("gpu-suite")
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t0 = time.monotonic()
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu" / "run.sh"), "--dry-run", str(out)],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    wall = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    docs = {name: json.loads((out / f"{name}.json").read_text(encoding="utf-8")) for name in SECTIONS}
    return {"out": out, "stdout": proc.stdout, "docs": docs, "wall": wall}


def _rows(dry: dict, section: str) -> list[dict]:
    return dry["docs"][section]["rows"]


def _row(dry: dict, section: str, startswith: str) -> dict:
    found = [r for r in _rows(dry, section) if r["item"].startswith(startswith)]
    assert len(found) == 1, (startswith, [r["item"] for r in _rows(dry, section)])
    return found[0]


def test_every_section_ran_and_wrote_json_log_and_table(dry):
    out = dry["out"]
    for name in SECTIONS:
        doc = dry["docs"][name]
        assert doc["status"] == "done", (name, doc["status"], doc["rows"][-3:])
        assert doc["mode"] == "dry-run" and doc["rows"], name
        assert (out / f"{name}.log").read_text(encoding="utf-8").strip(), name
        assert not [r for r in doc["rows"] if r["status"] == "SKIP" and r["detail"] == "budget"], name
        assert not [r for r in doc["rows"] if r["item"] in ("section error", "section killed")], name
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["mode"] == "dry-run"
    n_rows = sum(len(s["rows"]) for s in summary["sections"].values())
    assert n_rows == sum(summary["counts"].values()) > 60
    table = (out / "summary.md").read_text(encoding="utf-8")
    lines = [x for x in table.splitlines() if x.startswith("| ") and not x.startswith("| section")]
    assert len(lines) == n_rows
    for name in (*SECTIONS, "imports"):
        assert f"| {name} | " in table and f"| {name} | " in dry["stdout"], name
    assert all(x.rstrip().endswith(("| PASS |", "| FAIL |", "| INFO |")) or "| SKIP(" in x for x in lines)
    # the dry run's own clock is recorded (its duration is measured, not asserted: benchmarks/RESULTS.md)
    assert 0 < summary["wall_s"] <= dry["wall"] + 1, (summary["wall_s"], dry["wall"])


def test_env_finds_what_the_suite_imports(dry):
    assert _row(dry, "env", "runtime deps the suite needs are importable")["status"] == "PASS"
    imports = [r for r in _rows(dry, "env") if r["item"].startswith("import rlentropy")]
    assert len(imports) >= 5 and all(r["status"] == "PASS" for r in imports)
    audit = json.loads((dry["out"] / "imports.json").read_text(encoding="utf-8"))
    assert audit["rows"][1]["status"] == "PASS", audit
    assert not {"tensorboard", "matplotlib", "pyarrow", "gguf", "math-verify"} & set(audit["data"]["imported"])


def test_correctness_rows_pass_with_numbers(dry):
    rows = [r for r in _rows(dry, "correctness") if "autocast" not in r["item"]]
    forward = [r for r in rows if r["item"].endswith(": forward") and r["status"] != "SKIP"]
    grads = [r for r in rows if r["item"].endswith(": grad")]
    assert len(forward) == 6 and len(grads) == 6  # 2 paths x (bf16, fp16, fp32)
    for r in forward:
        assert r["status"] == "PASS" and 0.0 <= r["number"] <= RTOL, r
    for r in grads:
        assert r["status"] == "PASS" and 0.0 <= r["number"] < 5e-3, r
    fp32 = [r for r in grads if "float32" in r["item"]]
    assert fp32 and all(r["number"] < 1e-5 for r in fp32)  # float32 gradients: float32-level agreement
    theorem = [r for r in rows if r["item"].startswith("Theorem 3.2")]
    assert len(theorem) == 2 and all(r["status"] == "PASS" and r["number"] <= RTOL for r in theorem)
    diag = [r for r in rows if r["item"].startswith("diagnostic:")]
    assert len(diag) == 2 and all(r["status"] == "INFO" and 0.0 <= r["number"] < 1e-5 for r in diag)


def test_autocast_rows_run_and_report_a_number(dry):
    rows = [r for r in _rows(dry, "correctness") if "autocast" in r["item"]]
    assert len(rows) == 4
    for r in rows:
        assert r["status"] in ("PASS", "FAIL") and math.isfinite(r["number"]), r


def test_autocast_forward_rows_pass(dry):
    # The statistics' block loops run with autocast disabled (tokenstats/core.py), so bf16 autocast no
    # longer costs H / E_p[S] their float32 accuracy.
    rows = [r for r in _rows(dry, "correctness") if "autocast" in r["item"] and r["item"].endswith("forward")]
    assert rows and all(r["status"] == "PASS" for r in rows), [(r["item"], r["value"]) for r in rows]


def test_speed_measures_every_method_and_evaluates_the_targets(dry):
    data = dry["docs"]["speed"]["data"]
    sizes = {(r["dtype"], r["d"], r["N"]) for r in data["rows"]}
    assert len(sizes) == 2
    for size in sizes:
        got = {(r["method"], r["backward"]) for r in data["rows"] if (r["dtype"], r["d"], r["N"]) == size}
        want = {(m, False) for m in ("matmul", "naive", "verl", "hidden", "hidden_ws4g")}
        want |= {(m, True) for m in ("naive", "verl", "hidden", "hidden_ws4g")}
        assert got == want, size
    for r in data["rows"]:
        assert r["seconds"] > 0 and r["gemm_tflops"] > 0 and r["time_vs_naive"] > 0, r
    targets = [r for r in _rows(dry, "speed") if " target: " in r["item"]]
    assert len(targets) == 2 * 2 * 3  # sizes x our two variants x three targets; SKIP in the dry run
    assert all(r["status"] == "SKIP" for r in targets)
    assert any(r["detail"].startswith("dry run") and "ratio" in r["detail"] for r in targets)
    assert _row(dry, "speed", "liger")["status"] == "SKIP"


def test_trainer_sections_pass_exactly_on_cpu(dry):
    for section in ("trainer", "fused"):
        checks = [r for r in _rows(dry, section) if r["status"] in ("PASS", "FAIL")]
        assert checks and all(r["status"] == "PASS" for r in checks), [(r["item"], r["value"]) for r in checks]
    resume = [r for r in _rows(dry, "trainer") if "resume: final weights" in r["item"]]
    assert len(resume) == 2 and all(r["number"] == 0.0 and r["value"].startswith("bitwise True") for r in resume)
    finite = [r for r in _rows(dry, "trainer") if "core metrics finite" in r["item"]]
    assert len(finite) == 2 and all(r["status"] == "PASS" for r in finite)
    for r in _rows(dry, "trainer"):
        if r["item"].startswith("trainer") and "entropy/mean at step 1" in r["item"]:
            assert abs(r["number"] - math.log(128)) < 0.1  # a random policy is near-uniform over V = 128
    assert (
        _row(dry, "fused", "fused vs unfused old-policy stats (LoRA, bf16 autocast, 2 mini-batches): metrics")["number"]
        == 0.0
    )
    for item in ("rollout response tokens/s", "update response tokens/s"):
        r = _row(dry, "throughput", f"throughput full bf16-autocast: {item}")
        assert r["status"] == "INFO" and r["number"] > 0
    assert _row(dry, "fourbit", "4-bit")["status"] == "SKIP"
