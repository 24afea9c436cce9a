"""The GPU validation suite of rlentropy (GitHub issue #15). Start it with `benchmarks/gpu/run.sh`.

    python benchmarks/gpu/suite.py OUT [--dry-run] [--work DIR] [--only a,b] [--total-budget S]
                                       [--start-method auto|fork|spawn]

Sections run one after the other, each in its own forked process (torch, transformers, peft and
accelerate are imported once, before CUDA is touched, so a fork costs nothing; if a one-tensor probe
shows that CUDA does not work in a forked child, sections are spawned instead): a section that
raises, crashes the CUDA context or hangs records FAIL and the suite goes on. Each section has a
wall-clock budget; it skips what no longer fits (rows `SKIP(budget)`), and is killed at budget +
grace. The whole suite has a total budget (default 450 s: run.sh's 8 minutes minus start-up).

Output in OUT: `<section>.json` (rows + raw data) and `<section>.log` per section, `suite.log`,
`summary.json` and `summary.md` (the table printed at the end). `--dry-run` runs the same code at toy
sizes on the CPU (tests/test_gpu_suite.py runs it). docs/gpu.md explains every figure.
"""

from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing as mp
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from suite_util import (
    CARRIED_DISTS,
    FAIL,
    MACHINE_DISTS,
    PASS,
    SKIP,
    Ctx,
    Recorder,
    canon,
    requirement_closure,
    third_party_dists,
)

# name -> (module:function, budget in seconds on the GPU). Order = priority.
SECTIONS: dict[str, tuple[str, float]] = {
    "env": ("suite:run_env", 25.0),
    "correctness": ("sec_correctness:run", 75.0),
    "speed": ("sec_speed:run", 140.0),
    "trainer": ("sec_trainer:run_trainer", 120.0),
    "fused": ("sec_trainer:run_fused", 45.0),
    "throughput": ("sec_trainer:run_throughput", 45.0),
    "fourbit": ("sec_trainer:run_fourbit", 30.0),
}
GRACE_S = 30.0  # a section is killed this long after its budget
HEAVY = ("torch", "numpy", "transformers", "peft", "accelerate")

# rlentropy's runtime dependencies (pyproject.toml) -> import name, and whether the suite needs them
RUNTIME_DEPS = {
    "torch": ("torch", True),
    "numpy": ("numpy", True),
    "transformers": ("transformers", True),
    "peft": ("peft", True),
    "accelerate": ("accelerate", True),
    "safetensors": ("safetensors", True),
    "pydantic": ("pydantic", True),
    "pyyaml": ("yaml", True),
    "typer": ("typer", False),
    "rich": ("rich", False),
    "tensorboard": ("tensorboard", False),
    "matplotlib": ("matplotlib", False),
    "math-verify": ("math_verify", False),
    "gguf": ("gguf", False),
    "pyarrow": ("pyarrow", False),
}
SUITE_MODULES = (
    "rlentropy.tokenstats",
    "rlentropy.tokenstats.reference",
    "rlentropy.train",
    "rlentropy.models.forward",
    "rlentropy.models.loading",
    "rlentropy.data",
    "rlentropy.rollout.hf",
)


# ------------------------------------------------------------------------------------------ env section


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def run_env(rec: Recorder, ctx: Ctx) -> None:
    """Versions, the device, what of rlentropy's dependencies is importable, and the suite's imports."""
    import importlib.util

    import torch

    rec.info("python", platform.python_version(), sys.executable)
    rec.info("torch", torch.__version__, f"CUDA {torch.version.cuda}")
    for dist in (
        "transformers",
        "peft",
        "accelerate",
        "triton",
        "numpy",
        "tokenizers",
        "safetensors",
        "pydantic",
        "pyyaml",
        "liger-kernel",
        "bitsandbytes",
    ):
        rec.info(f"version {dist}", _version(dist) or "absent")
    rec.data["carried_wheels"] = os.environ.get("RLENTROPY_GPU_WHEELS", "").split()
    rec.info("carried wheels installed", len(rec.data["carried_wheels"]), " ".join(rec.data["carried_wheels"])[:200])
    if not ctx.dry:
        ok = torch.cuda.is_available()
        rec.check("CUDA available", ok, ok, "True")
        if ok:
            props = torch.cuda.get_device_properties(0)
            rec.info(
                "device",
                props.name,
                f"{props.total_memory / 2**30:.1f} GiB, sm_{props.major}{props.minor}, "
                f"{torch.cuda.device_count()} visible",
            )
            rec.info("TF32 for float32 matmul (torch default False)", torch.backends.cuda.matmul.allow_tf32)
            rec.data["device"] = {
                "name": props.name,
                "memory": props.total_memory,
                "capability": [props.major, props.minor],
                "count": torch.cuda.device_count(),
            }
            if torch.cuda.device_count() < 2:
                rec.skip("multi-GPU", f"{torch.cuda.device_count()} GPU visible")
            else:
                rec.skip("multi-GPU", "not part of this suite: accelerate launch, see docs/training.md")
    missing_needed = []
    for dist, (mod, needed) in RUNTIME_DEPS.items():
        present = importlib.util.find_spec(mod) is not None
        if needed and not present:
            missing_needed.append(dist)
        rec.data.setdefault("runtime_deps", {})[dist] = {
            "present": present,
            "version": _version(dist),
            "needed_by_suite": needed,
        }
    absent = [d for d, v in rec.data["runtime_deps"].items() if not v["present"]]
    rec.info("rlentropy runtime deps absent here", len(absent), ", ".join(absent) or "none")
    rec.check(
        "runtime deps the suite needs are importable",
        not missing_needed,
        ", ".join(missing_needed) or "all",
        ", ".join(d for d, (_, n) in RUNTIME_DEPS.items() if n),
        "run benchmarks/gpu/fetch_wheels.sh and carry .whl/" if missing_needed else "",
    )
    for mod in SUITE_MODULES:
        try:
            importlib.import_module(mod)
            rec.check(f"import {mod}", True, "ok")
        except Exception as err:  # noqa: BLE001
            rec.check(f"import {mod}", False, f"{type(err).__name__}: {err}"[:200])


# ------------------------------------------------------------------------------------------ orchestration


def _resolve(spec: str) -> Callable[[Recorder, Ctx], None]:
    mod, fn = spec.split(":")
    if mod == "suite":
        return globals()[fn]
    return getattr(importlib.import_module(mod), fn)


def _child(name: str, spec: str, dry: bool, out: str, work: str, budget: float) -> None:
    """Body of a section's process: output to `<out>/<name>.log`, rows to `<out>/<name>.json`."""
    log_path = Path(out) / f"{name}.log"
    console = os.fdopen(os.dup(2), "w", buffering=1)
    sys.stdout.flush()
    sys.stderr.flush()
    log = open(log_path, "w", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives until os._exit
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    ctx = Ctx(dry=dry, out=Path(out), work=Path(work), budget_s=budget, console=console, log_file=sys.stdout)
    rec = Recorder(name, ctx)
    try:
        import torch

        if dry:
            torch.set_num_threads(1)
        ctx.log(f"{name}: start (budget {budget:.0f} s, {'dry run, cpu' if dry else 'cuda'})")
        _resolve(spec)(rec, ctx)
        rec.status = "done"
    except BaseException as err:  # noqa: BLE001 - record anything, then leave
        traceback.print_exc()
        rec.fail("section error", err)
        rec.status = "error"
    finally:
        rec.modules = sorted({m.split(".")[0] for m in list(sys.modules)})
        rec.save()
        ctx.log(f"{name}: {rec.status} in {time.monotonic() - ctx.started:.1f} s")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _append_row(path: Path, name: str, row: dict[str, Any], status: str) -> None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        doc = {"section": name, "rows": [], "data": {}, "modules": []}
    doc["rows"].append(row)
    doc["status"] = status
    path.write_text(json.dumps(doc, indent=1, default=str), encoding="utf-8")


def _probe_cuda() -> None:
    try:
        import torch

        torch.zeros(1, device="cuda").add_(1).sum().item()
    except BaseException:  # noqa: BLE001
        os._exit(3)
    os._exit(0)


def start_method(dry: bool, say: Callable[[str], None]) -> str:
    """'fork' when a forked child can use CUDA (always on the CPU dry run), else 'spawn'."""
    if dry:
        return "fork"
    import torch

    if torch.cuda.is_initialized():
        say("CUDA was initialised while importing: sections are spawned (slower start-up)")
        return "spawn"
    proc = mp.get_context("fork").Process(target=_probe_cuda, name="suite-cuda-probe")
    proc.start()
    proc.join(120)
    if proc.is_alive():
        proc.kill()
        proc.join()
    if proc.exitcode != 0:
        say(f"CUDA does not work in a forked child (probe exit {proc.exitcode}): sections are spawned")
        return "spawn"
    return "fork"


def run_section(name: str, spec: str, args: argparse.Namespace, budget: float, say: Callable[[str], None]) -> None:
    """Start the section's process, wait at most budget + grace, record a FAIL row if it was killed or died."""
    path = args.out / f"{name}.json"
    ctx = mp.get_context(args.start_method)
    proc = ctx.Process(
        target=_child, args=(name, spec, args.dry_run, str(args.out), str(args.work), budget), name=f"suite-{name}"
    )
    t0 = time.monotonic()
    proc.start()
    proc.join(budget + GRACE_S)
    if proc.is_alive():
        proc.kill()
        proc.join()
        _append_row(
            path,
            name,
            {
                "item": "section killed",
                "status": FAIL,
                "value": "timeout",
                "target": "",
                "detail": f"still running {budget + GRACE_S:.0f} s after its start",
                "number": None,
            },
            "timeout",
        )
    else:
        try:
            status = json.loads(path.read_text(encoding="utf-8")).get("status")
        except (OSError, ValueError):
            status = None
        if status not in ("done", "error"):
            _append_row(
                path,
                name,
                {
                    "item": "section process died",
                    "status": FAIL,
                    "value": "crash",
                    "target": "",
                    "detail": f"exit code {proc.exitcode}",
                    "number": None,
                },
                "crashed",
            )
    say(f"section {name}: {time.monotonic() - t0:.1f} s")


def imports_audit(args: argparse.Namespace, docs: dict[str, dict], baseline: set[str]) -> dict[str, Any]:
    """Third-party distributions the sections imported beyond torch/numpy/transformers/peft/accelerate."""
    mods: set[str] = set()
    for doc in docs.values():
        mods |= set(doc.get("modules", []))
    new = third_party_dists(sorted(mods - baseline))
    dists = sorted(set(new.values()) - {"rlentropy"})
    allowed = requirement_closure(MACHINE_DISTS) | {canon(d) for d in CARRIED_DISTS}
    unexpected = [d for d in dists if d not in allowed]
    status = PASS if not unexpected else FAIL
    rows = [
        {
            "item": "third-party distributions imported beyond torch/numpy/transformers/peft/accelerate",
            "status": "INFO",
            "value": ", ".join(dists) or "none",
            "target": "",
            "detail": "",
            "number": float(len(dists)),
        },
        {
            "item": "all of them provided by the machine's packages or the carried wheels",
            "status": status,
            "value": ", ".join(unexpected) or "yes",
            "target": "subset of the machine's closure + .whl/",
            "detail": "",
            "number": float(len(unexpected)),
        },
    ]
    return {"section": "imports", "status": "done", "rows": rows, "data": {"imported": dists, "unexpected": unexpected}}


def table(docs: dict[str, dict]) -> str:
    """The Markdown summary table: every row of every section."""
    lines = ["| section | item | value | target | status |", "|---|---|---|---|---|"]
    for name, doc in docs.items():
        for r in doc.get("rows", []):
            status = r["status"] if r["status"] != SKIP else f"SKIP({r['detail']})"
            value = str(r["value"]).replace("|", "/")
            if r["status"] == FAIL and r.get("detail"):
                value += f" [{r['detail']}]"
            lines.append(f"| {name} | {r['item']} | {value} | {r['target']} | {status} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="output folder (created)")
    ap.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU (well under a minute)")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder for models and runs (default: a temp dir)")
    ap.add_argument("--only", default="", help="comma-separated sections to run (default: all)")
    ap.add_argument("--total-budget", type=float, default=450.0, help="seconds for the whole suite")
    ap.add_argument(
        "--start-method",
        choices=("auto", "fork", "spawn"),
        default="auto",
        help="how sections are started (auto: fork unless CUDA fails in a forked child)",
    )
    args = ap.parse_args(argv)
    t_start = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    own_work = args.work is None
    args.work = Path(tempfile.mkdtemp(prefix="rlentropy-gpu-")) if own_work else args.work
    args.work.mkdir(parents=True, exist_ok=True)
    names = [s for s in args.only.split(",") if s] or list(SECTIONS)
    unknown = [s for s in names if s not in SECTIONS]
    if unknown:
        ap.error(f"--only: unknown sections {unknown}; allowed: {', '.join(SECTIONS)}")
    log = open(args.out / "suite.log", "w", encoding="utf-8", buffering=1)  # noqa: SIM115

    def say(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        print(line, file=log)

    say(
        f"rlentropy GPU suite: {'DRY RUN (cpu, toy sizes)' if args.dry_run else 'cuda'}; out {args.out}; "
        f"sections {', '.join(names)}; total budget {args.total_budget:.0f} s"
    )
    baseline = {m.split(".")[0] for m in sys.modules}
    for mod in HEAVY:  # once, here: every forked section inherits them (CUDA is not initialised here)
        importlib.import_module(mod)
    baseline |= {m.split(".")[0] for m in sys.modules}
    say(f"imported {', '.join(HEAVY)} in {time.monotonic() - t_start:.1f} s")
    if args.start_method == "auto":
        args.start_method = start_method(args.dry_run, say)
    say(f"sections start by {args.start_method}")
    for name in names:
        spec, budget = SECTIONS[name]
        left = args.total_budget - (time.monotonic() - t_start)
        if left < 10.0:
            ctx = Ctx(dry=args.dry_run, out=args.out, work=args.work, budget_s=0.0)
            rec = Recorder(name, ctx)
            rec.skip(f"{name} (whole section)", "budget")
            rec.status = "done"
            rec.save()
            continue
        run_section(name, spec, args, min(budget, left - 5.0), say)
    docs: dict[str, dict] = {}
    for name in names:
        try:
            docs[name] = json.loads((args.out / f"{name}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            docs[name] = {
                "section": name,
                "status": "missing",
                "rows": [
                    {
                        "item": "section output",
                        "status": FAIL,
                        "value": "missing",
                        "target": "",
                        "detail": str(err),
                        "number": None,
                    }
                ],
            }
    docs["imports"] = imports_audit(args, docs, baseline)
    (args.out / "imports.json").write_text(json.dumps(docs["imports"], indent=1), encoding="utf-8")
    counts: dict[str, int] = {}
    for doc in docs.values():
        for r in doc.get("rows", []):
            counts[r["status"]] = counts.get(r["status"], 0) + 1
    wall = time.monotonic() - t_start
    summary = {
        "mode": "dry-run" if args.dry_run else "gpu",
        "wall_s": round(wall, 1),
        "counts": counts,
        "sections": {
            n: {"status": d.get("status"), "wall_s": d.get("wall_s"), "rows": d.get("rows", [])}
            for n, d in docs.items()
        },
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str), encoding="utf-8")
    md = table(docs)
    head = f"## rlentropy GPU suite ({summary['mode']}), {wall:.0f} s: " + ", ".join(
        f"{v} {k}" for k, v in sorted(counts.items())
    )
    (args.out / "summary.md").write_text(head + "\n\n" + md + "\n", encoding="utf-8")
    say("summary:")
    print("\n" + head + "\n\n" + md + "\n", flush=True)
    print(head + "\n\n" + md, file=log)
    log.close()
    if own_work:
        shutil.rmtree(args.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
