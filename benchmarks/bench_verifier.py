"""Verifier storms: 200 adversarial answers through a `VerifierPool`, in one batch and back to back (not a test).

    .venv/bin/python benchmarks/bench_verifier.py                   # forked vs plain workers, batch + calls
    .venv/bin/python benchmarks/bench_verifier.py --configs screen  # only the shipped settings
    .venv/bin/python benchmarks/bench_verifier.py --configs screen noscreen  # pre-screen on vs off
    # The same batch on another version of the code (e.g. before the zygote):
    git archive <commit> src | tar -x -C /tmp/old && .venv/bin/python benchmarks/bench_verifier.py --src /tmp/old/src

The batch (fixed seed) mixes exponent towers, huge powers, deep nesting, huge factorials /
binomials / literals, 1 MB strings, sympy bombs (`\\frac{1}{0}^{...}`, `0^{-1}`, ...), long sums,
and 10 answers that pass the pre-screen but that sympy cannot compare with the gold "1" within any
sensible limit (`(x+y+z+w)^{40}`: over 20 s), so the kill path is exercised.

Configs: `screen` is the shipped pool (pre-screen on, warm spares: one per worker unless `--spares`,
workers forked from the zygote); `plain` is the same pool with `zygote=False` (plain worker
subprocesses, as before the zygote); `noscreen` is the shipped pool with `screen=None`. With `--src`
the pool is built with only the arguments every version has (`num_workers`, `timeout_s`): label `src`.

Modes: `batch` sends the 200 pairs in one `verify_many` call; `calls` sends them one at a time, back
to back, and reports the slowest call. Each (config, mode) starts from a fresh, warm pool. After the
storm, 8 correct (gold, prediction) pairs are verified at once ("right after": k/8 must be 8/8);
if any scores 0 the run waits until a worker is warm and verifies them again ("once warm", with the
wait).

Restart latency (per config, `--kills` times, 0 to skip): a pool of 1 worker and no spare verifies
an answer that hangs sympy with a 0.3 s limit; the worker is killed and replaced, and the time from
the end of that call until `workers_ready()` reports the successor warm is one restart.
"""

from __future__ import annotations

import argparse
import inspect
import platform
import random
import statistics
import sys
import time

CATEGORIES = {  # name: how many answers of the 200
    "tower": 30,
    "huge power": 25,
    "nesting": 35,
    "factorial/literal": 30,
    "1 MB string": 10,
    "sympy bomb": 25,
    "long sum": 35,
    "slow (passes screen)": 10,
}

CORRECT = [
    ("\\frac{1}{2}", "0.5"),
    ("x+1", "1+x"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)"),
    ("2\\sqrt{3}", "\\sqrt{12}"),
    ("[-2, 7)", "[-2,7)"),
    ("x^2+2x+1", "(x+1)^2"),
    ("\\frac{\\sqrt{3}}{2}", "\\sin(\\pi/3)"),
    ("10^\\circ", "10"),
]


def _variants(cat: str, rng: random.Random) -> str:
    """One answer of category `cat`."""

    def d() -> int:
        return rng.randint(2, 9)

    if cat == "tower":
        a, b, c, e = d(), d(), d(), d()
        return rng.choice(
            [
                f"{a}^{{{b}^{{{c}^{{{e}}}}}}}",
                f"{a}^{b}^{c}^{e}",
                f"{a}^{{{b}^{{{c}^{{{e}^{{{a}}}}}}}}}",
                "e^{e^{e^{e}}}",
                f"\\left({a}^{{{b}^{{{c}^{{{e}}}}}}}\\right)+1",
            ]
        )
    if cat == "huge power":
        return rng.choice(
            [
                f"{rng.randint(5, 9)}^{{{rng.randint(7, 9)}^{{{rng.randint(8, 9)}}}}}",
                f"10^{{10^{{{rng.randint(6, 12)}}}}}",
                f"10^{{-10^{{{rng.randint(7, 9)}}}}}",
                f"\\left(\\frac{{3}}{{7}}\\right)^{{{rng.randint(2, 9)}000000}}",
                "(9^9)^{9^9}",
                f"{rng.randint(5, 9)}**{rng.randint(8, 9)}**{rng.randint(8, 9)}",
                f"(x+1)^{{{rng.randint(7, 9)}^{{9}}}}",
            ]
        )
    if cat == "nesting":
        k = rng.randint(9, 40)
        return rng.choice(
            [
                "{" * k + "x" + "}" * k,
                "(" * k + "1" + ")" * k,
                "\\sin(" * k + "x" + ")" * k,
                "\\frac{" * k + "1" + "}{2}" * k,
                "[" * k + "x" + "]" * k,
                "\\sqrt{" * k + "2" + "}" * k,
            ]
        )
    if cat == "factorial/literal":
        n = rng.randint(10**5, 10**6)
        return rng.choice(
            [
                f"{n}!",
                f"({rng.randint(50, 99)}!)!",
                f"(({n}!)!)!",
                f"{n}!!",
                f"\\Gamma(10^{{{rng.randint(7, 12)}}})",
                f"\\binom{{10^{{{rng.randint(8, 10)}}}}}{{10^{{{rng.randint(6, 7)}}}}}",
                f"\\prod_{{k=1}}^{{10^{{{rng.randint(6, 9)}}}}} k",
                "".join(rng.choice("123456789") for _ in range(100_000)),  # a 100,000-digit literal
            ]
        )
    if cat == "1 MB string":
        mb = 1 << 20
        return rng.choice(
            [
                "9" * mb,
                "x+" * (mb // 2) + "x",
                "{" * (mb // 2) + "}" * (mb // 2),
                "\\frac{1}{2}+" * (mb // 12),
                "".join(rng.choice("x+-*/^()0123456789") for _ in range(mb)),
            ]
        )
    if cat == "sympy bomb":
        return rng.choice(
            [
                "\\frac{1}{0}^{\\frac{1}{0}^{\\frac{1}{0}^{\\frac{1}{0}}}}",
                f"\\left(\\frac{{1}}{{0}}\\right)^{{10^{{{rng.randint(8, 12)}}}}}",
                "0^{-1}",
                "\\infty^\\infty - \\infty",
                "\\frac{0}{0}",
                "\\log(0)^{\\log(0)}",
                "\\tan(\\pi/2)",
                f"\\sin(10^{{{rng.randint(50, 100)}}})",
                "\\sqrt{-1}^{\\sqrt{-1}}",
            ]
        )
    if cat == "long sum":
        n = rng.randint(150, 400)
        return rng.choice(
            [
                "+".join(["1"] * n),
                "+".join(["x^2"] * n),
                "+".join(f"\\frac{{1}}{{{k}}}" for k in range(1, n)),
                "+".join(f"x_{{{k}}}" for k in range(n)),
            ]
        )
    if cat == "slow (passes screen)":
        return rng.choice(
            [
                f"(x+y+z+w)^{{{rng.randint(40, 45)}}}",
                f"(a+b+c+d+e)^{{{rng.randint(20, 24)}}}-1",
                f"(x+1)^{{{rng.randint(2024, 2100)}}}",
                f"\\sum_{{k=1}}^{{{rng.randint(1000, 2000)}}} k^k",
            ]
        )
    raise ValueError(cat)


def adversarial_batch(seed: int = 0) -> list[tuple[str, str]]:
    """(category, answer) × 200, shuffled with `seed`."""
    rng = random.Random(seed)
    items = [(cat, _variants(cat, rng)) for cat, k in CATEGORIES.items() for _ in range(k)]
    rng.shuffle(items)
    return items


def _stats(pool) -> dict[str, int]:
    s = pool.stats
    return {k: getattr(s, k, 0) for k in ("calls", "screened", "timeouts", "starved", "crashes", "errors", "restarts")}


def _make_pool(VerifierPool, config: str, workers: int, timeout_s: float, spares: int | None):
    params = inspect.signature(VerifierPool).parameters
    if config == "src":
        return VerifierPool(workers, timeout_s=timeout_s, **({"spares": spares} if spares == 0 else {}))
    if "screen" not in params or "zygote" not in params:
        raise SystemExit("this version of VerifierPool has no pre-screen or zygote: run it with --src")
    kw = {} if spares is None else {"spares": spares}  # None: the shipped default
    if config == "noscreen":
        kw["screen"] = None
    if config == "plain":
        kw["zygote"] = False
    return VerifierPool(workers, timeout_s=timeout_s, **kw)


def restart_latency(VerifierPool, config: str, kills: int) -> list[float]:
    """Seconds from each kill of the only worker (no spare) until its successor is warm."""
    if "spares" not in inspect.signature(VerifierPool).parameters:
        raise SystemExit("this version of VerifierPool has no spares: run it with --kills 0")
    pool = _make_pool(VerifierPool, config, 1, 0.3, 0)
    lat: list[float] = []
    try:
        pool.start()
        pool.verify_many([("1", "1")])
        for k in range(kills):
            slow = ["(x+y+z+w)^{40}", "(a+b+c+d+e)^{20}-1"][k % 2]
            pool.verify_many([("1", slow)])  # killed at 0.3 s; its successor starts at once
            t0 = time.perf_counter()
            while pool.workers_ready() < 1 and time.perf_counter() - t0 < 120:
                time.sleep(0.002)
            lat.append(time.perf_counter() - t0)
    finally:
        pool.close()
    return lat


def run(VerifierPool, config: str, mode: str, items, workers: int, timeout_s: float, spares: int | None) -> dict:
    pool = _make_pool(VerifierPool, config, workers, timeout_s, spares)
    try:
        pool.start()
        pool.verify_many([("1", "1")] * (workers + 1))  # old versions do not wait in start()
        before = _stats(pool)
        pairs = [("1", answer) for _, answer in items]
        call_walls: list[float] = []
        t0 = time.perf_counter()
        if mode == "batch":
            results = pool.verify_many(pairs)
        else:
            results = []
            for pair in pairs:
                t1 = time.perf_counter()
                results += pool.verify_many([pair])
                call_walls.append(time.perf_counter() - t1)
        wall = time.perf_counter() - t0
        after = _stats(pool)
        t1 = time.perf_counter()
        ok_now = sum(pool.verify_many(CORRECT))
        now_wall = time.perf_counter() - t1
        ok_warm, warm_wait = ok_now, 0.0
        if ok_now < len(CORRECT) and hasattr(pool, "workers_ready"):
            t1 = time.perf_counter()
            while pool.workers_ready() < 1 and time.perf_counter() - t1 < 120:
                time.sleep(0.05)
            warm_wait = time.perf_counter() - t1
            ok_warm = sum(pool.verify_many(CORRECT))
        d = {k: after[k] - before[k] for k in after}
        storm_restart = list(getattr(pool.stats, "last_restart_s", []))  # this version: during the storm
        return dict(
            storm_restart=storm_restart,
            config=config,
            mode=mode,
            n=len(pairs),
            wall=wall,
            max_call=max(call_walls) if call_walls else None,
            true=sum(results),
            ok_now=ok_now,
            now_wall=now_wall,
            ok_warm=ok_warm,
            warm_wait=warm_wait,
            **d,
        )
    finally:
        pool.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["screen", "plain"], choices=["screen", "plain", "noscreen", "src"])
    ap.add_argument("--modes", nargs="+", default=["batch", "calls"], choices=["batch", "calls"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=1.5)
    ap.add_argument("--spares", type=int, default=None, help="warm spares (default: the pool's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kills", type=int, default=8, help="restart-latency probe: kills per config (0: skip)")
    ap.add_argument("--src", help="import rlentropy from this src/ folder (implies --configs src)")
    args = ap.parse_args()
    if args.src:
        sys.path.insert(0, args.src)
        args.configs = ["src"]
    from rlentropy.rewards import VerifierPool

    items = adversarial_batch(args.seed)
    print(f"# rlentropy from {inspect.getsourcefile(VerifierPool)}")
    spares = args.spares
    if spares is None:
        param = inspect.signature(VerifierPool).parameters.get("spares")
        spares = 0 if param is None else args.workers if param.default is None else param.default
    print(
        f"# {len(items)} answers (gold '1'), {args.workers} workers + {spares} spares, timeout {args.timeout:g} s, "
        f"seed {args.seed}, "
        f"{platform.machine()}, {sys.version.split()[0]}"
    )
    if hasattr(sys.modules["rlentropy.rewards"], "screen_answer"):
        from rlentropy.rewards import screen_answer

        for cat in CATEGORIES:
            answers = [a for c, a in items if c == cat]
            passed = sum(screen_answer(a) is None for a in answers)
            print(f"#   {cat:22s} {len(answers):3d} answers, {passed:3d} pass the pre-screen")
    rows = []
    latency: dict[str, list[float]] = {}
    for config in args.configs:
        if args.kills > 0:
            latency[config] = restart_latency(VerifierPool, config, args.kills)
            print(f"# done {config}/restart latency: median {statistics.median(latency[config]):.3f} s", flush=True)
        for mode in args.modes:
            r = run(VerifierPool, config, mode, items, args.workers, args.timeout, args.spares)
            rows.append(r)
            print(f"# done {config}/{mode}: {r['wall']:.1f} s", flush=True)
    print()
    print(
        "| pool | mode | answers | screened | timeouts | starved | restarts | wall s | max call s "
        "| scored 1 | correct right after (wall s) | correct once warm (wait s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mc = "–" if r["max_call"] is None else f"{r['max_call']:.2f}"
        print(
            f"| {r['config']} | {r['mode']} | {r['n']} | {r['screened']} | {r['timeouts']} | {r['starved']} "
            f"| {r['restarts']} | {r['wall']:.1f} | {mc} | {r['true']} | {r['ok_now']}/{len(CORRECT)} "
            f"({r['now_wall']:.2f}) | {r['ok_warm']}/{len(CORRECT)} ({r['warm_wait']:.1f}) |"
        )
    print()
    for r in rows:
        line = f"- {r['config']}/{r['mode']}: correct answers right after the storm {r['ok_now']}/{len(CORRECT)}"
        if r["max_call"] is not None:
            line += f"; slowest call {r['max_call']:.2f} s"
        if r["storm_restart"]:
            sr = r["storm_restart"]
            line += (
                f"; replacements ready after median {statistics.median(sr) * 1e3:.1f} ms, "
                f"max {max(sr) * 1e3:.1f} ms (last {len(sr)} of the storm)"
            )
        print(line)
    for config, lat in latency.items():
        print(
            f"- {config}: restart latency (kill -> successor warm, {len(lat)} kills): "
            f"median {statistics.median(lat):.3f} s, max {max(lat):.3f} s"
        )
    by = {(r["config"], r["mode"]): r for r in rows}
    for base in ("plain", "noscreen"):
        for mode in args.modes:
            if ("screen", mode) in by and (base, mode) in by:
                a, b = by[("screen", mode)], by[(base, mode)]
                line = f"- {mode}: wall {base} / screen = {b['wall'] / a['wall']:.1f}×"
                if mode == "calls":
                    line += f"; slowest call {a['max_call']:.2f} s (screen) vs {b['max_call']:.2f} s ({base})"
                print(line)


if __name__ == "__main__":
    main()
