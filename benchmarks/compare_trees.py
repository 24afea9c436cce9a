"""Compare two source trees of rlentropy on the same benchmark, interleaved, in one run.

    python benchmarks/compare_trees.py --base /path/to/old/checkout --rounds 3 bench_step
    python benchmarks/compare_trees.py --base /path/to/old/checkout --rounds 3 bench_vs_trl

Each round runs the benchmark once with `PYTHONPATH=<base>/src` and once with this checkout's `src`
(alternating which goes first), each in a fresh process, and the table reports the median of each
figure over the rounds and the ratio new / base. Interleaving makes the drift of a shared, noisy
machine hit both trees alike; the ratio is what to read, not the seconds. Each tree runs its own copy of
the benchmark script (`<tree>/benchmarks/`, written against that tree's API and configs: the measured
setting is the same), so an older tree is measured as it was shipped.

Benchmarks: `bench_step` (seconds per step by phase, demo setting: `bench_step.bench`) and
`bench_vs_trl` (our trainer's seconds per step: `bench_vs_trl` worker "ours").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

SNIPPETS = {
    "bench_step": (
        "import json, sys, time; sys.path.insert(0, {bench!r}); import bench_step; t0 = time.process_time(); "
        "r = bench_step.bench({steps}, 1, []); r['cpu_s_total'] = time.process_time() - t0; "
        "print('RESULT ' + json.dumps(r))"
    ),
    # bench_vs_trl's own worker (our trainer, or TRL with our adapter) on a fixed model directory
    "bench_vs_trl": (
        "import argparse, json, sys; from pathlib import Path; sys.path.insert(0, {bench!r}); "
        "import bench_vs_trl as b; "
        "a = argparse.Namespace(steps={steps}, warmup=1, prompts=8, group=8, max_new_tokens=24, lr=3e-4, threads=1, "
        "clock='cpu'); r = b._spawn({kind!r}, a, Path({model!r})); "
        "print('RESULT ' + json.dumps({{k: r[k] for k in ('cpu_per_step', 'wall_per_step', 'gen_per_step')}}))"
    ),
}


def run_once(name: str, src: Path, steps: int, *, kind: str = "ours", model: str = "") -> dict[str, float]:
    """One benchmark run against the package in `src`; its figures."""
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1")
    code = SNIPPETS[name].format(bench=str(src.parent / "benchmarks"), steps=steps, kind=kind, model=model)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed on {src}:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def make_model_dir(path: Path) -> str:
    """The random shipped-shape policy of bench_vs_trl, built once (with this checkout) for both trees."""
    code = (
        f"import sys; sys.path.insert(0, {str(HERE)!r}); import bench_vs_trl as b; from pathlib import Path; "
        f"b._make_model_dir(Path({str(path)!r}))"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
    return str(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("benchmark", choices=("bench_step", "bench_vs_trl"))
    ap.add_argument("--base", type=Path, required=True, help="the other checkout (its src/ is used)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--kind", choices=("ours", "adapter"), default="ours", help="bench_vs_trl: which worker")
    args = ap.parse_args()
    model = ""
    if args.benchmark == "bench_vs_trl":
        model = make_model_dir(Path(tempfile.mkdtemp()) / "model")
    trees = {"base": args.base.resolve() / "src", "new": REPO / "src"}
    results: dict[str, list[dict[str, float]]] = {"base": [], "new": []}
    for r in range(args.rounds):
        order = ("base", "new") if r % 2 == 0 else ("new", "base")
        for tree in order:
            results[tree].append(run_once(args.benchmark, trees[tree], args.steps, kind=args.kind, model=model))
            print(f"round {r + 1} {tree}: {json.dumps(results[tree][-1])}", flush=True)
    keys = [k for k in results["base"][0] if all(k in x for x in results["base"] + results["new"])]
    print(f"\n{args.benchmark}, {args.rounds} interleaved rounds, median per figure\n")
    print("| figure | base | new | new / base |\n|---|---|---|---|")
    for k in keys:
        b = statistics.median(x[k] for x in results["base"])
        n = statistics.median(x[k] for x in results["new"])
        print(f"| {k} | {b:.4f} | {n:.4f} | {n / b if b else float('nan'):.3f} |")


if __name__ == "__main__":
    main()
