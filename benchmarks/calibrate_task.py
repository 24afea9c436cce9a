"""Calibrate a task for a model: pass@1 / pass@k of the base model at T = 1 on held-out prompts.

    python benchmarks/calibrate_task.py configs/smollm2-135m_arithmetic_cpu.yaml \
        --set data.params.max_operand=20 --set data.params.max_operand=30 --n 16 --prompts 200

Each `--set` (repeatable; several keys joined by commas) is one row of the table: the config with those
overrides, its task's first `--prompts` eval prompts, `--n` samples each at the config's
rollout.temperature, top_p, max_new_tokens and engine, scored by the task's verifier; pass@k is the
unbiased estimator (`rlentropy.algorithms.pass_at_k`) averaged over prompts. Only sampling and
scoring run (no teacher-forced entropy pass, unlike `rlentropy eval`), so a row is cheap. Prints a
markdown table (docs/recipes.md keeps the SmolLM2 one). With no `--set`, one row for the config as is.
"""

from __future__ import annotations

import argparse
import time

import torch

from rlentropy.algorithms import pass_at_k
from rlentropy.data.tasks import build_task
from rlentropy.models.loading import load_policy
from rlentropy.rollout.hf import HFGenerator
from rlentropy.runs.config import load_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--set", action="append", default=[], help="overrides of one row, comma-separated")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = args.set or [""]
    base = load_config(args.config, [])
    policy = load_policy(base.model, device="cpu")  # the base model; LoRA adapters start as the identity
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= args.n]
    print(f"| overrides | prompts | {' | '.join(f'pass@{k}' for k in ks)} | response tokens | s |")
    print(f"|---|---|{'---|' * len(ks)}---|---|")
    for row in rows:
        overrides = [o for o in row.split(",") if o]
        cfg = load_config(args.config, overrides)
        task = build_task(cfg.data, for_eval=True)
        t0 = time.perf_counter()
        examples = task.eval_examples()[: args.prompts]
        tok = policy.tokenizer
        gen = HFGenerator.from_rollout(policy.model, tok, cfg.rollout, task.stop_strings)
        policy.model.eval()
        batch = gen.generate([task.render_prompt(e, tok) for e in examples], examples, args.n, seed=args.seed)
        rewards = torch.tensor(task.score(batch.completions, batch.examples)).view(len(examples), args.n)  # [P, n]
        correct = (rewards >= 1.0).sum(-1).tolist()  # [P]
        metrics = {f"pass@{k}": sum(pass_at_k(args.n, c, k) for c in correct) / len(correct) for k in ks}
        metrics["response_len"] = float(batch.response_mask.sum(-1).mean())
        metrics["num_prompts"] = len(examples)
        secs = time.perf_counter() - t0
        cells = " | ".join(f"{metrics[f'pass@{k}']:.3f}" for k in ks)
        label = ", ".join(overrides) or "(as shipped)"
        print(f"| {label} | {int(metrics['num_prompts'])} | {cells} | {metrics['response_len']:.1f} | {secs:.0f} |")


if __name__ == "__main__":
    main()
