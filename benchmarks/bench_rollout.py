"""Rollout speed: the lean decode loop vs Hugging Face `generate` (both `HFGenerator` engines), on CPU.

    python benchmarks/bench_rollout.py                     # 7 interleaved rounds, the cases below
    python benchmarks/bench_rollout.py --rounds 9 --record # also append the table to RESULTS.md

Cases (countdown training prompts, plain template, temperature 1, top-p 1, 24 new tokens):

- demo:   the shipped tiny policy, 8 prompts × 8 samples, stop string "\\n" (the demo's rollout);
- large:  the shipped tiny policy, 64 prompts × 8 samples, stop string "\\n";
- random: a random Llama of the shipped shape, 8 prompts × 8 samples, no stop strings (the
          `bench_vs_trl.py` setting: near-uniform samples, responses run to ~22 tokens).

Both engines run in the same process with `--threads` torch threads, after one warm-up call each.
A round times `--repeats` consecutive `generate` calls of each engine (the order alternates between
rounds, seeds differ per call and are the same for both engines); the table reports the median over
rounds of the per-round time per call and of the per-round ratio hf_generate / lean. The ratio uses
the process's CPU time by default (`--clock cpu`; with one thread it is the busy time, which other
jobs on a shared machine disturb less than wall time) or wall time (`--clock wall`).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
ENGINES = ("lean", "hf_generate")
CASES = {
    "demo": dict(model="shipped", prompts=8, n=8, stops=True),
    "large": dict(model="shipped", prompts=64, n=8, stops=True),
    "random": dict(model="random", prompts=8, n=8, stops=False),
}


def _model(kind: str):
    from rlentropy.models.tiny import build_tokenizer, load_shipped_policy, tiny_llama_config

    if kind == "shipped":
        return load_shipped_policy()
    from transformers import GenerationConfig, LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(tiny_llama_config()).eval()  # hidden 128, 4 layers, vocab 100
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return model, build_tokenizer()


def bench_case(case: dict, *, rounds: int, repeats: int, max_new_tokens: int) -> dict:
    from rlentropy.data.synthetic import CountdownTask
    from rlentropy.data.tasks import DataConfig
    from rlentropy.rollout.hf import HFGenerator

    model, tok = _model(case["model"])
    task = CountdownTask(DataConfig(task="countdown", params={"train_size": max(case["prompts"], 64)}))
    exs = task.train_examples()[: case["prompts"]]
    prompts = [task.render_prompt(e, tok) for e in exs]
    stops = list(task.stop_strings) if case["stops"] else []
    gens = {e: HFGenerator(model, tok, max_new_tokens=max_new_tokens, stop_strings=stops, engine=e) for e in ENGINES}
    for g in gens.values():
        g.generate(prompts, exs, case["n"], seed=0)  # warm-up
    cpu = {e: [] for e in ENGINES}
    wall = {e: [] for e in ENGINES}
    tokens = {e: 0.0 for e in ENGINES}
    reward = {e: [] for e in ENGINES}
    for r in range(rounds):
        order = ENGINES if r % 2 == 0 else ENGINES[::-1]
        for e in order:
            c0, w0 = time.process_time(), time.perf_counter()
            for k in range(repeats):
                batch = gens[e].generate(prompts, exs, case["n"], seed=1 + r * repeats + k)
                tokens[e] += float(batch.response_mask.sum())
                reward[e] += task.score(batch.completions, batch.examples)
            cpu[e].append((time.process_time() - c0) / repeats)
            wall[e].append((time.perf_counter() - w0) / repeats)
    rows = case["prompts"] * case["n"]
    out = {"rows": rows}
    for e in ENGINES:
        out[e] = {
            "cpu": statistics.median(cpu[e]),
            "wall": statistics.median(wall[e]),
            "tokens": tokens[e] / (rounds * repeats),
            "reward": statistics.fmean(reward[e]),
        }
    out["ratio_cpu"] = [h / lean for h, lean in zip(cpu["hf_generate"], cpu["lean"])]
    out["ratio_wall"] = [h / lean for h, lean in zip(wall["hf_generate"], wall["lean"])]
    return out


def table(results: dict, *, clock: str, threads: int, rounds: int, repeats: int, max_new_tokens: int) -> str:
    lines = [
        f"{max_new_tokens} new tokens, temperature 1, torch threads {threads}, {rounds} interleaved rounds × "
        f"{repeats} calls, {platform.processor() or platform.machine()}; ratio = hf_generate / lean "
        f"({clock} time, median of per-round ratios)",
        "",
        "| case | rows | engine | CPU s/call | wall s/call | response tokens/call | mean reward | speed-up (rounds) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, res in results.items():
        ratios = res[f"ratio_{clock}"]
        desc = CASES[name]
        stop = "stop `\\n`" if desc["stops"] else "no stop"
        label = f"{name} ({desc['model']}, {desc['prompts']}×{desc['n']}, {stop})"
        for e in ENGINES:
            m = res[e]
            speed = (
                f"**{statistics.median(ratios):.2f}×** ({', '.join(f'{x:.2f}' for x in ratios)})"
                if e == "lean"
                else "1.00×"
            )
            lines.append(
                f"| {label} | {res['rows']} | {e} | {m['cpu']:.4f} | {m['wall']:.4f} | {m['tokens']:.0f} | "
                f"{m['reward']:.3f} | {speed} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    ap.add_argument("--record", action="store_true", help="append the table to benchmarks/RESULTS.md")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    results = {}
    for name in a.cases:
        results[name] = bench_case(CASES[name], rounds=a.rounds, repeats=a.repeats, max_new_tokens=a.max_new_tokens)
        print(f"{name}: speed-up {statistics.median(results[name][f'ratio_{a.clock}']):.2f}×", flush=True)
    text = table(
        results, clock=a.clock, threads=a.threads, rounds=a.rounds, repeats=a.repeats, max_new_tokens=a.max_new_tokens
    )
    print(text)
    if a.record:
        args = [x for x in sys.argv[1:] if x != "--record"]
        cmd = " ".join([".venv/bin/python", "benchmarks/bench_rollout.py", *args])
        record(f"Command: `{cmd}`\n\n{text}")


def record(section: str) -> None:
    """Append `section` at the end of the "## bench_rollout" section of RESULTS.md (created if missing)."""
    path = REPO / "benchmarks" / "RESULTS.md"
    body = path.read_text(encoding="utf-8")
    head = "## bench_rollout\n"
    if head not in body:
        body = body.rstrip("\n") + "\n\n" + head
    start = body.index(head) + len(head)
    nxt = body.find("\n## ", start)
    end = len(body) if nxt < 0 else nxt + 1
    body = body[:end].rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n" + ("\n" + body[end:] if nxt >= 0 else "")
    path.write_text(body, encoding="utf-8")


if __name__ == "__main__":
    main()
