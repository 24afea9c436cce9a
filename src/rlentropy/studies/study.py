"""`rlentropy study CONFIG`: methods × seeds from one config, in parallel, resumable, with intervals.

The config's `study:` section names the methods (each: the `key=value` overrides that turn the config
into that method's run), the seeds, the baseline method of the paired comparisons, and the rule by
which the method parameters were chosen. Every (method, seed) is one job of `rlentropy.studies.jobs`
(resumable: a finished run is never rerun, an interrupted one resumes from its checkpoint), run in
worker processes sized to the machine (one torch thread each). A progress bar counts the training
steps of the whole study, with an ETA.

Outputs in `<out>/`: one run directory per job, `summary.md` and `summary.json` (per method the mean
and 95 % Student-t interval over seeds of every figure, paired differences against the baseline, a
sentence per method only where the interval excludes 0), and `report.html` with the study panels.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from rlentropy.errors import ConfigError
from rlentropy.evaluate.run import save_eval_result
from rlentropy.report.study import write_study_report
from rlentropy.runs.config import load_config
from rlentropy.studies.jobs import base_job, run_job
from rlentropy.studies.stats import Interval, paired_difference, t_interval

FIGURES: tuple[tuple[str, str], ...] = (
    ("entropy_final", "H final"),
    ("entropy_min", "H min"),
    ("entropy_auc", "H mean over steps"),
    ("reward_final", "reward last 20 %"),
    ("pass@1", "pass@1"),
)
"""Per-run figures summarised over seeds (pass@k for the largest k is added per study)."""


def plan_jobs(
    config: Path,
    out: Path,
    *,
    seeds: list[int],
    methods: dict[str, list[str]],
    overrides: list[str],
) -> list[dict[str, Any]]:
    """One job per (seed, method), in that order (so every method's first seed finishes early). Each run
    sets its torch threads from its config (`train.threads`; "auto" is one thread on CPU)."""
    jobs = []
    for seed in seeds:
        for m, ovs in methods.items():
            run_dir = out / f"{m}-s{seed}"
            job: dict[str, Any] = {"method": m, "seed": seed, "run_dir": str(run_dir), "config": str(config)}
            job["overrides"] = [*overrides, *ovs, f"train.seed={seed}", f"run_dir={run_dir}", f"name={m}-s{seed}"]
            jobs.append(job)
    return jobs


def choose_methods(
    config: Path, table: dict[str, list[str]], methods: list[str] | None, overrides: list[str], *, what: str
) -> list[str]:
    """`methods` (default: every method of `table`, in its order), each a name of `table` whose config
    (`overrides`, then the method's own) is valid, checked before any run starts; `what` names the
    setting in the error."""
    chosen = methods or list(table)
    unknown = [m for m in chosen if m not in table]
    if unknown:
        raise ConfigError(f"{what}: unknown {', '.join(unknown)}; allowed: {', '.join(table)}")
    for m in chosen:
        load_config(config, [*overrides, *table[m]])
    return chosen


def default_workers(env: str) -> int:
    """Worker processes: the environment variable `env` when set (and not 0), else 2 (1 on one CPU)."""
    return int(os.environ.get(env, "0")) or max(1, min(2, os.cpu_count() or 1))


def save_base_evals(rows: list[dict[str, Any]], base: dict[str, Any]) -> None:
    """Save the starting policy's evaluation (`base_job`'s result) as eval/step_0 of every run: step 0
    of every run's eval curve."""
    for r in rows:
        save_eval_result(
            r["run_dir"], 0, base["metrics"], base["samples"], settings=base["settings"], checkpoint=base["source"]
        )


class _StepCounter:
    """Steps logged by each run: the complete lines of its metrics.jsonl, reading only the bytes appended
    since the last call (the progress polls twice a second; whole files would be re-read each time). A
    file replaced (a run restarted from step 0 sets its old metrics aside) or shortened is counted again."""

    def __init__(self) -> None:
        self._seen: dict[Path, tuple[int, int, int]] = {}  # path → (inode, bytes counted, lines)

    def __call__(self, run_dir: Path) -> int:
        path = run_dir / "metrics.jsonl"
        try:
            st = path.stat()
        except OSError:
            return 0
        ino, offset, lines = self._seen.get(path, (st.st_ino, 0, 0))
        if ino != st.st_ino or st.st_size < offset:
            offset, lines = 0, 0
        if st.st_size > offset:
            try:
                with path.open("rb") as f:
                    f.seek(offset)
                    chunk = f.read(st.st_size - offset)
            except OSError:
                return lines
            complete = chunk.rfind(b"\n") + 1  # a line still being written counts once it ends
            lines += chunk.count(b"\n")
            offset += complete
        self._seen[path] = (st.st_ino, offset, lines)
        return lines


class _StudyProgress:
    """Training steps of the whole study: a rich bar with an ETA on a terminal; on anything else (a log
    file under nohup) a plain line every `every_s` seconds. Steps already done when the study starts (a
    resumed study) count as done but not toward the speed behind the ETA."""

    def __init__(self, jobs: list[dict[str, Any]], steps: int, *, console: Console, quiet: bool, every_s: float = 60.0):
        self.dirs = [Path(j["run_dir"]) for j in jobs]
        self.steps, self.total = steps, len(jobs) * steps
        self.console, self.quiet, self.every_s = console, quiet, every_s
        self._count = _StepCounter()
        self.first = self.done()
        self.t0 = self.last_line = time.monotonic()
        self.bar: Progress | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def done(self) -> int:
        return sum(min(self.steps, self._count(d)) for d in self.dirs)

    def __enter__(self) -> _StudyProgress:
        if not self.quiet and self.console.is_terminal:
            cols = (
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
            )
            self.bar = Progress(*cols, console=self.console)
            self.bar.__enter__()
            self.task = self.bar.add_task("study steps", total=self.total, completed=self.first)
        return self

    def poll(self) -> None:
        """Read every run's step count and show it (the bar, or a line when `every_s` has passed)."""
        n = self.done()
        if self.bar is not None:
            self.bar.update(self.task, completed=n)
            return
        now = time.monotonic()
        if self.quiet or now - self.last_line < self.every_s:
            return
        self.last_line = now
        rate = (n - self.first) / max(now - self.t0, 1e-9)
        eta = f"{(self.total - n) / rate / 60:.0f} min" if rate > 0 else "?"
        self.console.print(f"study steps {n}/{self.total}, {(now - self.t0) / 60:.0f} min elapsed, ETA {eta}")

    def poll_in_background(self) -> None:
        """Poll every half second from a daemon thread (the runs go in this process's main thread)."""

        def loop() -> None:
            while not self._stop.wait(0.5):
                self.poll()

        self._thread = threading.Thread(target=loop, name="study-progress", daemon=True)
        self._thread.start()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.bar is not None:
            if exc[0] is None:
                self.bar.update(self.task, completed=self.total)
            self.bar.__exit__(*exc)


def _print_row(console: Console, job: dict[str, Any], row: dict[str, Any]) -> None:
    console.print(
        f"  {job['method']:>14} seed {job['seed']}: H {row['entropy_first']:.3f} → "
        f"{row['entropy_final']:.3f}, pass@1 {row.get('pass@1', math.nan):.3f}"
        + (" (resumed)" if row.get("resumed") else "")
    )


def execute(
    jobs: list[dict[str, Any]], base: dict[str, Any], *, workers: int, steps: int, console: Console, quiet: bool
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run the jobs (and the base evaluation) in `workers` processes, with progress over every training
    step. With one worker the runs go one after the other in this process (no worker process to start)."""
    rows: list[dict[str, Any]] = []
    with _StudyProgress(jobs, steps, console=console, quiet=quiet) as progress:
        if workers == 1:
            progress.poll_in_background()
            for job in jobs:
                row = run_job(job)
                rows.append(row)
                _print_row(console, job, row)
            return rows, base_job(base)
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            base_fut = pool.submit(base_job, base)
            futs: dict[Future[Any], dict[str, Any]] = {pool.submit(run_job, j): j for j in jobs}
            while any(not f.done() for f in futs) or not base_fut.done():
                progress.poll()
                time.sleep(0.5)
            for fut, job in futs.items():
                row = fut.result()  # a failed run raises here, naming its traceback
                rows.append(row)
                _print_row(console, job, row)
            return rows, base_fut.result()


def summarise(rows: list[dict[str, Any]], *, baseline: str, k_max: int) -> dict[str, Any]:
    """Per method: Student-t intervals of every figure, paired differences against `baseline`."""
    figures = [*FIGURES, (f"pass@{k_max}", f"pass@{k_max}")]
    if any("target_abs_error" in r for r in rows):
        figures.append(("target_abs_error", "|H − target|, last half"))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by = {m: {r["seed"]: r for r in rows if r["method"] == m} for m in methods}
    out: dict[str, Any] = {"figures": [k for k, _ in figures], "labels": dict(figures), "methods": {}}
    out["runs_time"] = {
        "runs": len(rows),
        "reused": sum(bool(r.get("reused")) for r in rows),
        "run_s": sum(float(r.get("total_s", 0.0)) for r in rows),
    }
    for m in methods:
        entry: dict[str, Any] = {"seeds": sorted(by[m]), "mean": {}, "diff": {}}
        for key, _ in figures:
            vals = {s: r[key] for s, r in by[m].items() if key in r and r[key] is not None}
            if not vals:
                continue
            entry["mean"][key] = t_interval(list(vals.values())).as_dict()
            if m != baseline and baseline in by:
                base = {s: r[key] for s, r in by[baseline].items() if r.get(key) is not None}
                if set(vals) & set(base):  # a figure the baseline lacks (a controller's target) has no difference
                    entry["diff"][key] = paired_difference(vals, base).as_dict()
        out["methods"][m] = entry
    return out


def _iv(d: dict[str, Any] | None) -> Interval | None:
    return None if d is None else Interval(**d)


def summary_markdown(
    summary: dict[str, Any],
    base: dict[str, Any],
    *,
    title: str,
    setting: str,
    baseline: str,
    rule: str | None,
    wall_s: float,
) -> str:
    """summary.md: the table (mean ± 95 % t half-width), paired differences, and the plain sentences."""
    figs, labels = summary["figures"], summary["labels"]
    seeds = max(len(e["seeds"]) for e in summary["methods"].values())
    lines = [
        f"# {title}",
        "",
        setting,
        "",
        f"Each cell: mean ± half-width of the 95 % Student-t interval over {seeds} seeds "
        "(t_{0.975, n−1}·s/√n; bootstrap intervals under-cover at this n and are not used). "
        "'H final' and 'reward' are means over the last 5 steps / last 20 % of steps.",
        "",
    ]
    if rule:
        lines += ["## Method parameters", "", rule.strip(), ""]
    lines += [
        "## Results",
        "",
        "| method | " + " | ".join(labels[k] for k in figs) + " |",
        "|---" * (len(figs) + 1) + "|",
    ]
    bm = base.get("metrics", {})
    lines.append(
        "| base policy | "
        + " | ".join(
            f"{bm[k]:.3f}" if k.startswith("pass@") and isinstance(bm.get(k), (int, float)) else "" for k in figs
        )
        + " |"
    )
    for m, e in summary["methods"].items():
        lines.append(
            f"| {m} | " + " | ".join(_iv(e["mean"].get(k)).fmt() if k in e["mean"] else "" for k in figs) + " |"
        )
    lines += [
        "",
        f"## Paired differences against {baseline} (same seed)",
        "",
        "| method | " + " | ".join(labels[k] for k in figs) + " |",
        "|---" * (len(figs) + 1) + "|",
    ]
    for m, e in summary["methods"].items():
        if m == baseline:
            continue
        cells = []
        for k in figs:
            iv = _iv(e["diff"].get(k))
            cells.append(
                ""
                if iv is None
                else f"{iv.mean:+.3f} [{iv.low:+.3f}, {iv.high:+.3f}]" + (" *" if iv.excludes_zero else "")
            )
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "`*`: the 95 % interval excludes 0.", "", "## What the evidence supports", ""]
    lines += sentences(summary, baseline) or [f"* No method differs from {baseline} beyond seed noise on any figure."]
    lines += ["", wall_time_line(summary.get("runs_time", {}), wall_s)]
    return "\n".join(lines) + "\n"


def wall_time_line(runs_time: dict[str, Any], wall_s: float) -> str:
    """The study's time: this invocation's wall time, how many runs it reused (finished before), and the
    runs' own time (training + evaluation, summed over runs: worker time, not wall time)."""
    n, reused, run_s = runs_time.get("runs", 0), runs_time.get("reused", 0), runs_time.get("run_s", 0.0)
    line = f"Total wall time {wall_s / 60:.1f} min"
    if reused:
        line += f" (this invocation; {reused} of {n} runs had finished before it and were reused, not rerun)"
    return line + f". The runs' own time, summed: {run_s / 60:.1f} min of worker time."


def sentences(summary: dict[str, Any], baseline: str) -> list[str]:
    """One plain sentence per (method, figure) whose paired interval excludes 0, and only those."""
    out = []
    for m, e in summary["methods"].items():
        for k in summary["figures"]:
            iv = _iv(e["diff"].get(k))
            if iv is None or not iv.excludes_zero:
                continue
            word = "higher" if iv.mean > 0 else "lower"
            out.append(
                f"* {m}: {summary['labels'][k]} is {word} than {baseline} by {abs(iv.mean):.3f} "
                f"(95 % interval {iv.low:+.3f} to {iv.high:+.3f}, paired over {iv.n} seeds)."
            )
    return out


def _methods(cfg: Any) -> dict[str, list[str]]:
    table = cfg.study.methods or cfg.demo.methods
    if not table:
        raise ConfigError("study.methods: the config names no methods (a mapping name → list of overrides)")
    return {m: list(o) for m, o in table.items()}


def run_study(
    config: Path,
    out: Path,
    *,
    seeds: int | None = None,
    methods: list[str] | None = None,
    overrides: list[str] | None = None,
    workers: int | None = None,
    quiet: bool = False,
) -> Path:
    """Run (or resume) a study; returns the path of summary.md (see the module docstring)."""
    console = Console(quiet=quiet)
    extra = list(overrides or [])
    cfg = load_config(config, extra)
    table = _methods(cfg)
    chosen = choose_methods(config, table, methods, extra, what="--methods")
    n_seeds = seeds or cfg.study.seeds
    workers = workers or default_workers("RLENTROPY_STUDY_WORKERS")
    out.mkdir(parents=True, exist_ok=True)
    jobs = plan_jobs(config, out, seeds=list(range(n_seeds)), methods={m: table[m] for m in chosen}, overrides=extra)
    console.print(
        f"[bold]rlentropy study[/]: {len(chosen)} methods × {n_seeds} seeds × {cfg.train.steps} steps "
        f"({workers} worker{'s' if workers > 1 else ''}) → {out}"
    )
    t0 = time.perf_counter()
    rows, base = execute(
        jobs,
        {"config": str(config), "overrides": extra, "out": str(out)},
        workers=workers,
        steps=cfg.train.steps,
        console=console,
        quiet=quiet,
    )
    save_base_evals(rows, base)
    baseline = cfg.study.baseline if cfg.study.baseline in chosen else chosen[0]
    summary = summarise(rows, baseline=baseline, k_max=cfg.eval.n)
    text = summary_markdown(
        summary,
        base,
        title=cfg.study.title or f"rlentropy study: {cfg.name}",
        setting=_setting_line(cfg),
        baseline=baseline,
        rule=cfg.study.rule or cfg.demo.rule or None,
        wall_s=time.perf_counter() - t0,
    )
    (out / "summary.md").write_text(text, encoding="utf-8")
    (out / "summary.json").write_text(
        json.dumps(
            {"base": {k: v for k, v in base.items() if k != "samples"}, "runs": rows, "summary": summary},
            indent=1,
            default=str,
        )
    )
    groups = {
        m: [Path(r["run_dir"]) for r in sorted(rows, key=lambda r: r["seed"]) if r["method"] == m] for m in chosen
    }
    report = write_study_report(
        groups, out, base_metrics=base["metrics"], title=cfg.study.title or cfg.name, summary_md=text, ema=cfg.study.ema
    )
    console.print(text, markup=False, soft_wrap=True, highlight=False)
    console.print(f"report: {report}")
    return out / "summary.md"


def _setting_line(cfg: Any) -> str:
    t, o = cfg.train, cfg.optim
    probes = f"probes every {cfg.probes.every} steps" if cfg.probes.every else "probes off"
    return (
        f"{t.steps} steps per run on `{cfg.data.task}`; lr {o.lr:g} ({o.schedule}, AdamW), {t.prompts_per_step} "
        f"prompts × {t.group_size} samples per step, {t.mini_batches} mini-batches × {t.ppo_epochs} PPO epoch(s), "
        f"{cfg.rollout.max_new_tokens} new tokens at T = {cfg.rollout.temperature:g}, {probes}; final evaluation "
        f"on {cfg.eval.max_prompts or 'all'} eval prompts × {cfg.eval.n} samples."
    )
