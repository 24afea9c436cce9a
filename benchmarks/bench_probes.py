"""Step-time overhead of the entropy-dynamics probes (not a test).

Trains the shipped tiny policy on countdown (the CPU demo geometry) with:
  off        probes.every = 0
  pressure   per-token pressure only, on every step (pressure + quadrants, nothing else)
  full@10    the default probe settings at the recommended frequency (every = 10): pressure,
             covariance, step-level ∇H·Δθ with an independent probe batch, logit-space check, GNS
  full@1     the same on every step (the cost of one probed step)
and prints the mean step time of each (first step excluded: warm-up), its ratio to `off`, and the
within-run overhead Σ time/probe / Σ (time/step − time/probe), which is insensitive to run-to-run
noise (the trajectories of a busy shared CPU differ in step time by more than the probe costs).

    .venv/bin/python benchmarks/bench_probes.py [--steps 20] [--model PATH] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

CONFIGS = {
    "off": {"every": 0},
    "pressure": {
        "every": 1,
        "pressure": True,
        "covariance": False,
        "step_probe": False,
        "logit_check": False,
        "gns": False,
        "save_arrays": False,
    },
    "full@10": {"every": 10},
    "full@1": {"every": 1},
}


def run(name: str, probes: dict, *, steps: int, model: str, device: str, task: str, out: Path) -> dict:
    from rlentropy.train import RunConfig, run_training  # public API (benchmarks also run on older trees)

    cfg = RunConfig.model_validate(
        {
            "name": f"bench-{name}",
            "run_dir": str(out / name),
            "model": {"path": model},
            "data": {"task": task},
            "rollout": {"max_new_tokens": 24, "temperature": 1.0},
            "optim": {"lr": 1e-3, "weight_decay": 0.0},
            "train": {
                "steps": steps,
                "prompts_per_step": 8,
                "group_size": 8,
                "micro_batch_size": 16,
                "seed": 0,
                "device": device,
            },
            "checkpoint": {"every": 0, "save_final": False},
            "logging": {"tensorboard": False},
            "probes": probes,
        }
    )
    t0 = time.perf_counter()
    trainer = run_training(cfg, quiet=True)
    wall = time.perf_counter() - t0
    times = [float(h["time/step"]) for h in trainer.history[1:]]
    probe_times = [float(h.get("time/probe", 0.0)) for h in trainer.history[1:]]
    rest = sum(times) - sum(probe_times)
    return {
        "config": name,
        "steps": steps,
        "wall_s": wall,
        "step_s": statistics.fmean(times),
        "step_s_median": statistics.median(times),
        "probe_s_mean": statistics.fmean(probe_times),
        "overhead": sum(probe_times) / rest if rest > 0 else float("nan"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=21, help="training steps per configuration (>= 11 for every=10)")
    ap.add_argument("--model", default=None, help="HF model directory (default: the shipped tiny policy)")
    ap.add_argument("--task", default="countdown")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", nargs="*", default=list(CONFIGS), help="configurations to run")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.model is None:
        from rlentropy.models.tiny import shipped_policy_path

        args.model = str(shipped_policy_path())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            rows.append(
                run(
                    name,
                    CONFIGS[name],
                    steps=args.steps,
                    model=args.model,
                    device=args.device,
                    task=args.task,
                    out=Path(tmp),
                )
            )
            print(json.dumps(rows[-1]), flush=True)
    base = next((r["step_s"] for r in rows if r["config"] == "off"), None)
    print(f"\n{'config':<10} {'step s (mean)':>14} {'probe s (mean)':>15} {'ratio to off':>13} {'overhead':>9}")
    for r in rows:
        ratio = f"{r['step_s'] / base:.3f}" if base else "n/a"
        print(
            f"{r['config']:<10} {r['step_s']:>14.4f} {r['probe_s_mean']:>15.4f} {ratio:>13} "
            f"{100 * r['overhead']:>8.1f}%"
        )


if __name__ == "__main__":
    main()
