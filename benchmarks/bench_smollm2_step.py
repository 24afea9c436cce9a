"""Time the training step of the SmolLM2 study config, phase by phase, under several settings.

    python benchmarks/bench_smollm2_step.py --steps 4 \
        --set "" --set train.share_prompts=false --set train.threads=2 --set train.micro_batch_size=16

Each `--set` (repeatable; keys joined by commas) is one row: configs/smollm2-135m_arithmetic_cpu.yaml
(or `--config`) with those overrides plus `train.steps=--steps`, probes off (`--probes` keeps them),
no checkpoints, run in this process. The first step is dropped (warm-up); the table gives the median
seconds per phase over the rest (the trainer's own `time/*` metrics, wall clock), the CPU seconds of the
process per step (all threads; steps 2..N, the measure to compare on a busy machine), and the
response tokens per step.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from rlentropy.runs.config import load_config
from rlentropy.train.run import run_training

REPO = Path(__file__).resolve().parents[1]
PHASES = ("time/rollout", "time/reward", "time/stats", "time/update", "time/probe", "time/step")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "configs" / "smollm2-135m_arithmetic_cpu.yaml"))
    ap.add_argument("--set", action="append", default=[], help="overrides of one row, comma-separated")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--probes", action="store_true", help="keep the config's probes (default: off)")
    args = ap.parse_args()
    rows = args.set or [""]
    print(f"| overrides | {' | '.join(p.removeprefix('time/') for p in PHASES)} | cpu s/step | resp tokens/step |")
    print(f"|---|{'---|' * len(PHASES)}---|---|")
    for row in rows:
        extra = [o for o in row.split(",") if o]
        with tempfile.TemporaryDirectory() as tmp:
            base = [f"train.steps={args.steps}", "checkpoint.every=0", "checkpoint.save_final=false"]
            base += ["logging.tensorboard=false", "logging.rollouts_every=0", "eval.at_end=false", f"run_dir={tmp}/r"]
            if not args.probes:
                base.append("probes.every=0")
            cfg = load_config(args.config, base + extra)
            ends: list[float] = []
            trainer = run_training(cfg, quiet=True, step_hook=lambda _t, _s, _m, e=ends: e.append(time.process_time()))
        cpu = (ends[-1] - ends[0]) / max(1, len(ends) - 1)  # CPU seconds per step after the first
        hist = trainer.history[1:] or trainer.history
        med = {p: statistics.median(float(h.get(p, 0.0)) for h in hist) for p in PHASES}
        rows = cfg.train.prompts_per_step * cfg.train.group_size
        toks = statistics.median(float(h["response/length_mean"]) * rows for h in hist)
        label = ", ".join(extra) or "(as shipped)"
        cells = " | ".join(f"{med[p]:.2f}" for p in PHASES)
        print(f"| {label} | {cells} | {cpu:.1f} | {toks:.1f} |", flush=True)
        del trainer
        torch.set_num_threads(1)


if __name__ == "__main__":
    main()
