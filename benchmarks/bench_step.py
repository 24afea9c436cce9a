"""Time per training step split by phase, in the demo setting (configs/demo_countdown.yaml).

    python benchmarks/bench_step.py                  # 12 steps of the demo config, plain GRPO
    python benchmarks/bench_step.py --threads 1 --steps 12 --set algorithm.control=clip_v

Prints a markdown table (mean seconds per step of each phase over the steps after the first, and its
ratio to the rollout phase). `--record` appends the table to benchmarks/RESULTS.md under
"## bench_step". Phases: rollout (HF generate), reward (task verifier), stats (advantages + the
no-grad old-policy TokenStats forward + controls), update (PPO forward/backward/optimizer steps).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PHASES = ("time/rollout", "time/reward", "time/stats", "time/update", "time/step")


def bench(steps: int, threads: int, overrides: list[str]) -> dict[str, float]:
    from rlentropy.train import load_config, run_training  # public API (benchmarks also run on older trees)

    torch.set_num_threads(threads)  # the trainer applies train.threads (below) for the run itself
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            REPO / "configs" / "demo_countdown.yaml",
            [
                f"train.steps={steps}",
                f"run_dir={tmp}/run",
                "logging.tensorboard=false",
                "logging.rollouts_every=0",
                "checkpoint.save_final=false",
                "checkpoint.every=0",
                f"train.threads={threads}",
                *overrides,
            ],
        )
        tr = run_training(cfg, quiet=True)
    hist = tr.history[1:] if len(tr.history) > 1 else tr.history
    out = {k: statistics.fmean(h[k] for h in hist) for k in PHASES}
    out["tokens"] = (
        statistics.fmean(h["response/length_mean"] for h in hist) * cfg.train.prompts_per_step * cfg.train.group_size
    )
    out["sequences"] = cfg.train.prompts_per_step * cfg.train.group_size
    return out


def table(res: dict[str, float], *, threads: int, steps: int, overrides: list[str]) -> str:
    roll = res["time/rollout"]
    lines = [
        f"Demo setting ({int(res['sequences'])} sequences/step, ~{res['tokens']:.0f} response tokens/step), "
        f"{steps} steps (first excluded), torch threads {threads}, {platform.processor() or platform.machine()}, "
        f"overrides: {' '.join(overrides) or 'none'}",
        "",
        "| phase | s/step | ratio to rollout |",
        "|---|---|---|",
    ]
    for k in PHASES:
        lines.append(f"| {k.split('/')[1]} | {res[k]:.3f} | {res[k] / roll:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
    ap.add_argument("--record", action="store_true", help="append to benchmarks/RESULTS.md under '## bench_step'")
    args = ap.parse_args()
    t0 = time.perf_counter()
    res = bench(args.steps, args.threads, args.set)
    text = table(res, threads=args.threads, steps=args.steps, overrides=args.set)
    print(text)
    print(f"(benchmark wall time {time.perf_counter() - t0:.0f} s)")
    if args.record:
        path = REPO / "benchmarks" / "RESULTS.md"
        body = path.read_text() if path.exists() else "# Benchmark results\n"
        if "## bench_step" not in body:
            body = (
                body.rstrip("\n")
                + "\n\n## bench_step\n\n`python benchmarks/bench_step.py` (see the script's docstring).\n"
            )
        start = body.index("## bench_step")
        nxt = body.find("\n## ", start + 1)
        end = len(body) if nxt < 0 else nxt + 1
        section = body[start:end].rstrip("\n") + "\n\n" + text + "\n"
        path.write_text(body[:start] + section + body[end:])


if __name__ == "__main__":
    main()
