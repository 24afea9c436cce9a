"""One (method, seed) run of a study: resumable training, the final evaluation, a summary row.

A job is a plain dict (it crosses a process boundary): the config file, the overrides that make it
this method and seed, its run directory; torch threads come from the config (`train.threads`).
`run_job(job)`:

* a run whose `study_result.json` (`demo_result.json` for the demo) belongs to its resolved config is
  finished: its saved row is returned with `reused: True`, nothing reruns;
* otherwise `rlentropy.studies.runs.train_to_end` brings it to its last step: resumed from its newest
  checkpoint (exact continuation), started again when it has none, or — trained to the end but not
  evaluated — only evaluated, from its final checkpoint;

then the final policy is evaluated on the eval split (the config's `eval:` settings, `EVAL_SEED`) and
saved as `eval/step_<N>`, and the summary row is written to `study_result.json`.
"""

from __future__ import annotations

import gzip
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from rlentropy.data import build_task
from rlentropy.dynamics import prediction_agreement
from rlentropy.evaluate.run import (
    eval_settings,
    evaluate_with_settings,
    fit_eval_prompts,
    read_eval_result,
    save_eval_result,
)
from rlentropy.models.loading import context_length, load_policy, unwrap_causal_lm
from rlentropy.runs.checkpoints import latest_checkpoint
from rlentropy.runs.config import load_config
from rlentropy.studies.runs import read_history, same_config, train_to_end
from rlentropy.train.state import set_threads

EVAL_SEED = 1234
"""Sampling seed of every study evaluation (base and final policies: the same prompts and seed)."""
RESULT = "study_result.json"
FINAL_WINDOW = 5
"""'Final' entropy / reward: the mean over the last FINAL_WINDOW steps (one step is too noisy)."""


def evaluate_policy(
    model: Any, tokenizer: Any, cfg: Any
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """(metrics, samples, settings) of the study evaluation of `model` (the config's `eval:`, EVAL_SEED).

    The eval prompts are checked against the model's context less the eval's new tokens first
    (`data.over_long`: an error, or skipped with a line on stderr), as `rlentropy eval` does.
    """
    task = build_task(cfg.data, for_eval=True)
    st = eval_settings(cfg, task, seed=EVAL_SEED)
    context = context_length(getattr(unwrap_causal_lm(model), "config", None))
    task = fit_eval_prompts(cfg, task, tokenizer, context=context, max_new_tokens=st["max_new_tokens"], warn=_notice)
    m, samples = evaluate_with_settings(
        model,
        tokenizer,
        task,
        st,
        batch_size=cfg.rollout.batch_size,
        engine=cfg.rollout.engine,
        share_prompts=cfg.train.share_prompts,
    )
    return m, samples, st


def _notice(message: str) -> None:
    print(f"data: {message}", file=sys.stderr, flush=True)


def _target(cfg: Any) -> float | None:
    """The target entropy of the run's controller, if it has one."""
    if cfg.algorithm.controller == "none":
        return None
    t = cfg.algorithm.controller_params.get("target")
    return float(t) if t is not None else None


def summarise_run(history: list[dict[str, Any]], eval_metrics: dict[str, Any], cfg: Any) -> dict[str, Any]:
    """The per-run figures a study compares (definitions in docs/studies.md)."""
    ent = [float(h["entropy/mean"]) for h in history]
    rew = [float(h["reward/mean"]) for h in history]
    w = min(FINAL_WINDOW, len(ent))
    tail = max(1, len(history) // 5)
    agree = prediction_agreement(history)
    row: dict[str, Any] = {
        "entropy_first": ent[0],
        "entropy_final": statistics.fmean(ent[-w:]),
        "entropy_min": min(ent),
        "entropy_auc": statistics.fmean(ent),
        "reward_first20": statistics.fmean(rew[:tail]),
        "reward_final": statistics.fmean(rew[-tail:]),
        "frac_controlled": statistics.fmean(_controlled(h) for h in history),
        "probe_n": int(agree["n"]),
        "probe_corr": agree["corr"],
        "probe_sign_agree": agree["sign_agree"],
        "steps": len(history),
        "wall_s": float(history[-1].get("wall_time", math.nan)),
    }
    for k, v in eval_metrics.items():
        if k.startswith("pass@") or k in ("entropy", "avg@n"):
            row[k if k.startswith("pass@") else f"eval_{k}"] = float(v) if v is not None else math.nan
    target = _target(cfg)
    if target is not None:
        half = ent[len(ent) // 2 :]
        row["target"] = target
        row["target_abs_error"] = statistics.fmean(abs(h - target) for h in half)
    return row


def _controlled(h: dict[str, Any]) -> float:
    """Fraction of the step's response tokens whose loss term the control changed (selected tokens of
    Clip-Cov / KL-Cov; removed tokens with a non-zero advantage of the mask controls)."""
    if "control/frac_selected" in h:
        return float(h["control/frac_selected"] or 0.0)
    return float(h.get("control/frac_removed_active", h.get("control/frac_controlled", 0.0)) or 0.0)


def summarise_demo_run(history: list[dict[str, Any]], eval_metrics: dict[str, Any], cfg: Any) -> dict[str, Any]:
    """The demo's per-run figures (its summary.md table: the entropy of the last step, as printed since
    the first release)."""
    n = cfg.eval.n
    ent = [h["entropy/mean"] for h in history]
    rew = [h["reward/mean"] for h in history]
    tail = max(1, len(history) // 5)
    agree = prediction_agreement(history)
    return {
        "entropy_first": ent[0],
        "entropy_final": ent[-1],
        "entropy_min": min(ent),
        "reward_first20": statistics.fmean(rew[:tail]),
        "reward_final": statistics.fmean(rew[-tail:]),
        "frac_controlled": statistics.fmean(_controlled(h) for h in history),
        "frac_removed_all": statistics.fmean(float(h.get("control/frac_removed", 0.0) or 0.0) for h in history),
        "pass@1": eval_metrics.get("pass@1", math.nan),
        f"pass@{n}": eval_metrics.get(f"pass@{n}", math.nan),
        "eval_entropy": eval_metrics.get("entropy", math.nan),
        "probe_n": int(agree["n"]),
        "probe_corr": agree["corr"],
        "probe_sign_agree": agree["sign_agree"],
        "probe_median_ratio": agree["median_ratio"],
        "steps": len(history),
        "wall_s": history[-1].get("wall_time", math.nan),
    }


SUMMARIES = {"study": summarise_run, "demo": summarise_demo_run}
"""Job kind → its per-run summary; the row is saved as `<kind>_result.json` in the run directory."""


def _finished(run_dir: Path, cfg: Any, result: str) -> dict[str, Any] | None:
    """The saved row of this config's finished and evaluated run, else None."""
    path = run_dir / result
    if not path.is_file() or not same_config(run_dir, cfg):
        return None
    history = read_history(run_dir)
    if not history or history[-1].get("step") != cfg.train.steps:
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Train (or resume, or skip) + evaluate one (method, seed); returns its summary row.

    `job["kind"]` ("study" by default, or "demo") picks the summary and the result file.
    """
    kind = job.get("kind", "study")
    result = f"{kind}_result.json"
    run_dir = Path(job["run_dir"])
    cfg = load_config(job["config"], job["overrides"])
    done = _finished(run_dir, cfg, result)
    if done is not None:
        return {**done, "reused": True}
    set_threads(cfg.train.threads, torch.device("cpu"))
    t0 = time.perf_counter()
    trainer = train_to_end(cfg, quiet=True)
    if trainer is not None:
        model, tokenizer, step, resumed = trainer.model, trainer.tokenizer, trainer.step, trainer.resume
    else:  # trained to the end before, stopped before its evaluation
        step, path = latest_checkpoint(run_dir)
        loaded = load_policy(cfg.model, checkpoint=path)
        model, tokenizer, resumed = loaded.model, loaded.tokenizer, True
    eval_metrics, samples, settings = evaluate_policy(model, tokenizer, cfg)
    ckpt = run_dir / "checkpoints" / f"step_{step}"
    save_eval_result(
        run_dir,
        step,
        eval_metrics,
        samples,
        settings=settings,
        checkpoint=str(ckpt) if ckpt.is_dir() else f"in-training step {step}",
    )
    row = {
        "method": job["method"],
        "seed": job["seed"],
        "run_dir": str(run_dir),
        **SUMMARIES[kind](read_history(run_dir), eval_metrics, cfg),
        "total_s": time.perf_counter() - t0,
    }
    if kind == "study":
        row["resumed"] = bool(resumed)
    tmp = run_dir / f"{result}.tmp"
    tmp.write_text(json.dumps(row, indent=1), encoding="utf-8")
    tmp.replace(run_dir / result)
    return row


def base_job(job: dict[str, Any]) -> dict[str, Any]:
    """The starting policy's evaluation (the same settings as every final one), cached in `<out>/base`.

    Returns {"metrics", "samples", "settings", "source"}; the study saves it as eval/step_0 of every run.
    """
    cfg = load_config(job["config"], job["overrides"])
    set_threads(cfg.train.threads, torch.device("cpu"))
    cache = Path(job["out"]) / "base"
    source = f"base:{cfg.model.path or 'tiny'}"
    prev = read_eval_result(cache, 0)
    settings = eval_settings(cfg, build_task(cfg.data, for_eval=True), seed=EVAL_SEED)
    if prev is not None and prev.get("checkpoint") == source and prev.get("settings") == settings:
        with gzip.open(cache / "eval" / "step_0" / "samples.jsonl.gz", "rt", encoding="utf-8") as fh:
            samples = [json.loads(line) for line in fh if line.strip()]
        m = {k: v for k, v in prev.items() if k not in ("step", "checkpoint", "settings")}
        return {"metrics": m, "samples": samples, "settings": prev["settings"], "source": source}
    loaded = load_policy(cfg.model)
    m, samples, settings = evaluate_policy(loaded.model, loaded.tokenizer, cfg)
    save_eval_result(cache, 0, m, samples, settings=settings, checkpoint=source)
    return {"metrics": m, "samples": samples, "settings": settings, "source": source}
