"""Calibrate Clip_B's and Clip_V's μ to act on a chosen fraction of the response tokens of a config.

    python benchmarks/calibrate_controls.py configs/smollm2-135m_arithmetic_cpu.yaml --batches 4

Samples `--batches` training batches (train.prompts_per_step × train.group_size, the config's rollout
settings) from the base policy, computes the old-policy TokenStats and GRPO advantages of each, and
prints, per μ, the mean fraction of response tokens each control removes per step (`frac_dropped` of
`clip_b_mask` / `clip_v_mask`; Clip_V with max_frac `--clip-v-max-frac`), and the part of it with a
negative advantage (Clip_V also drops failing A = 0 tokens, which carry no gradient). This is the
demo's rule (docs/training.md, "Method parameters: one rule"): choose the μ that removes about 2 %.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from rlentropy.algorithms import clip_b_mask, clip_v_mask, grpo_advantages
from rlentropy.data.tasks import build_task
from rlentropy.models.forward import policy_token_stats
from rlentropy.models.loading import load_policy
from rlentropy.rollout.hf import HFGenerator
from rlentropy.runs.config import load_config

MUS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--clip-v-max-frac", type=float, default=0.02)
    ap.add_argument("--mus", type=float, nargs="+", default=list(MUS))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, [])
    task = build_task(cfg.data)
    policy = load_policy(cfg.model, device="cpu")
    model, tok = policy.model.eval(), policy.tokenizer
    gen = HFGenerator.from_rollout(model, tok, cfg.rollout, task.stop_strings)
    t = cfg.train
    examples = task.train_examples()
    fracs: dict[tuple[str, float], list[float]] = {}
    tokens, rewards = [], []
    for i in range(args.batches):
        exs = examples[i * t.prompts_per_step : (i + 1) * t.prompts_per_step]
        batch = gen.generate([task.render_prompt(e, tok) for e in exs], exs, t.group_size, seed=1000 + i)
        r = torch.tensor(task.score(batch.completions, batch.examples), dtype=torch.float32)  # [B]
        adv = grpo_advantages(r, batch.group_ids)[:, None].expand_as(batch.response_mask)  # [B, T]
        st = policy_token_stats(model, batch, temperature=cfg.rollout.temperature, share_prompts=True)
        mask = batch.response_mask  # [B, T]
        tokens.append(float(mask.sum()))
        rewards.append(float(r.mean()))
        for mu in args.mus:
            _, mb = clip_b_mask(st.s, adv, mask, mu=mu)
            _, mv = clip_v_mask(st.s, st.s_bar, adv, mask, mu=mu, max_frac=args.clip_v_max_frac)
            n_tok = float(mask.sum())
            for name, m in (("clip_b", mb), ("clip_v", mv)):
                fracs.setdefault((name, mu), []).append(float(m["frac_dropped"]))
                neg = float(m["frac_dropped_neg_adv"]) * float(((adv < 0) & (mask > 0)).sum()) / n_tok
                fracs.setdefault((name + "_neg", mu), []).append(neg)
    print(
        f"{args.batches} batches of {t.prompts_per_step} prompts × {t.group_size}: "
        f"{statistics.fmean(tokens):.0f} response tokens per batch, reward {statistics.fmean(rewards):.3f}"
    )
    print(f"| μ | Clip_B removed (A < 0) | Clip_V removed (A < 0), max_frac {args.clip_v_max_frac} |")
    print("|---|---|---|")
    for mu in args.mus:
        b, bn, v, vn = (statistics.fmean(fracs[(k, mu)]) for k in ("clip_b", "clip_b_neg", "clip_v", "clip_v_neg"))
        print(f"| {mu} | {100 * b:.2f} % ({100 * bn:.2f} %) | {100 * v:.2f} % ({100 * vn:.2f} %) |")


if __name__ == "__main__":
    main()
