"""`rlentropy eval`: evaluate one checkpoint, or every checkpoint of a run, and write the results.

Layout written under the run directory:

    eval/step_N/samples.jsonl.gz   one JSON object per sample (prompt, completion, answer, reward, ...)
    eval/step_N/metrics.json       the metrics of `evaluate_model` + step, checkpoint, task and settings
    eval/metrics.csv               one row per evaluated step (rebuilt from every metrics.json)

for the run's own eval set, and the same under `eval/<dataset>/` for another dataset (`--dataset
aime24` -> eval/aime24/step_N/..., `--dataset path/q.jsonl` -> eval/q/step_N/...).

`metrics.json` is written last and atomically, so its presence means the step is finished: a second
`rlentropy eval` skips it when it was computed with the same settings (task, n, temperature, top-p,
max_new_tokens, max_prompts, seed) and recomputes it when the settings differ or `--force` is given.
Evaluating a whole run also evaluates the base model as step 0 (unless the run has a step_0
checkpoint or `include_base=False`), so the curves start where training started.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rlentropy.data import DataConfig, build_task
from rlentropy.data.lengths import WithEvalExamples, check_prompt_lengths, prompt_token_limit
from rlentropy.errors import ConfigError, UserError
from rlentropy.evaluate.core import evaluate_model
from rlentropy.models.loading import load_policy, load_tokenizer
from rlentropy.runs.checkpoints import checkpoint_problem, scan_checkpoints
from rlentropy.runs.config import config_from_dict, read_yaml

# Defaults of the Clip_B / Clip_V recipes (their papers' evaluation; docs/recipes.md): T = 0.7, 32 samples
# on real data; fewer on the synthetic tasks, whose prompts are many and short.
DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 1.0
DEFAULT_N_REAL = 32
DEFAULT_N_SYNTHETIC = 8

SETTING_KEYS = ("task", "dataset", "n", "temperature", "top_p", "max_new_tokens", "max_prompts", "seed")
_STEP_RE = re.compile(r"^step_(\d+)$")


# ------------------------------------------------------------------------------------------ files
def eval_settings(cfg: Any, task: Any, *, seed: int) -> dict[str, Any]:
    """The settings record of an evaluation with the `eval:` section of `cfg` on the run's eval set.

    The same keys as `rlentropy.evaluate.run.SETTING_KEYS` (what `rlentropy eval` compares to decide
    whether a step is already evaluated with the settings it was asked for).
    """
    e = cfg.eval
    return {
        "task": getattr(task, "name", cfg.data.eval_task or cfg.data.task),
        "dataset": None,
        "n": int(e.n),
        "temperature": float(e.temperature),
        "top_p": float(e.top_p),
        "max_new_tokens": int(e.max_new_tokens or cfg.rollout.max_new_tokens),
        "max_prompts": e.max_prompts,
        "seed": int(seed),
        **engine_setting(cfg),
    }


def engine_setting(cfg: Any) -> dict[str, str]:
    """{"engine": ...} when the run chose a sampling engine other than "auto" (the samples depend on it),
    else {} (so the settings of results written before the key existed still match)."""
    engine = getattr(cfg.rollout, "engine", "auto")
    return {} if engine == "auto" else {"engine": engine}


def evaluate_with_settings(
    model: Any,
    tokenizer: Any,
    task: Any,
    settings: dict[str, Any],
    *,
    batch_size: int | None = None,
    engine: str = "auto",
    progress: bool = False,
    share_prompts: bool = False,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """`evaluate_model` with the sampling settings of an `eval_settings` record (n, temperature, top_p,
    max_new_tokens, max_prompts, seed)."""
    return evaluate_model(
        model,
        tokenizer,
        task,
        n=settings["n"],
        temperature=settings["temperature"],
        top_p=settings["top_p"],
        max_new_tokens=settings["max_new_tokens"],
        max_prompts=settings["max_prompts"],
        seed=settings["seed"],
        batch_size=batch_size,
        progress=progress,
        engine=engine,
        share_prompts=share_prompts,
    )


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def eval_root(run_dir: Path | str, subdir: str | None = None) -> Path:
    """``RUN/eval`` (the run's own eval set) or ``RUN/eval/<subdir>`` (another dataset)."""
    root = Path(run_dir) / "eval"
    return root if subdir is None else root / subdir


def save_eval_result(
    run_dir: Path | str,
    step: int,
    metrics: dict[str, Any],
    samples: list[dict[str, Any]],
    *,
    settings: dict[str, Any],
    checkpoint: str | None = None,
    subdir: str | None = None,
) -> Path:
    """Write ``eval/step_N/{samples.jsonl.gz, metrics.json}`` and refresh ``eval/metrics.csv``.

    The trainer's periodic eval may call this too, so that `rlentropy eval` and `rlentropy report`
    see its results.

    Args:
        run_dir: the run directory.
        step: training step of the evaluated weights.
        metrics: scalar metrics from `evaluate_model`.
        samples: sample records from `evaluate_model`.
        settings: the values of `SETTING_KEYS` used (compared on resume).
        checkpoint: where the weights came from (recorded only).
        subdir: None for the run's own eval set; a dataset label for another dataset
            (written under ``eval/<subdir>/``).

    Returns:
        The eval/step_N directory.
    """
    out = eval_root(run_dir, subdir) / f"step_{step}"
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "samples.jsonl.gz.tmp"
    with gzip.open(tmp, "wt", encoding="utf-8") as fh:
        for s in samples:
            fh.write(json.dumps({k: _json_safe(v) for k, v in s.items()}) + "\n")
    os.replace(tmp, out / "samples.jsonl.gz")
    record = {
        "step": step,
        **{k: _json_safe(v) for k, v in metrics.items()},
        "checkpoint": checkpoint,
        "settings": settings,
    }
    _atomic_write_text(out / "metrics.json", json.dumps(record, indent=1))
    write_metrics_csv(run_dir, subdir)
    return out


def read_eval_result(run_dir: Path | str, step: int, subdir: str | None = None) -> dict[str, Any] | None:
    """The saved eval/[subdir/]step_N/metrics.json, or None when the step is not (completely) evaluated."""
    path = eval_root(run_dir, subdir) / f"step_{step}" / "metrics.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None


def _metric_order(key: str) -> tuple[int, float, str]:
    for rank, prefix in enumerate(("pass@", "avg@", "maj@")):
        if key.startswith(prefix):
            try:
                return rank, float(key[len(prefix) :]), key
            except ValueError:
                break
    return 3, 0.0, key


def write_metrics_csv(run_dir: Path | str, subdir: str | None = None) -> Path | None:
    """Rebuild eval/[subdir/]metrics.csv from every step_N/metrics.json there (one row per step, sorted)."""
    eval_dir = eval_root(run_dir, subdir)
    rows = []
    if eval_dir.is_dir():
        for sub in eval_dir.iterdir():
            m = _STEP_RE.match(sub.name)
            if not m:
                continue
            rec = read_eval_result(run_dir, int(m.group(1)), subdir)
            if rec is None:
                continue
            row: dict[str, Any] = {"step": int(m.group(1))}
            for k, v in rec.items():
                if k in ("step", "checkpoint", "settings"):
                    continue
                if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)):
                    row[k] = v
            rows.append(row)
    if not rows:
        return None
    rows.sort(key=lambda r: int(r["step"]))
    keys = sorted({k for r in rows for k in r if k != "step"}, key=_metric_order)
    path = eval_dir / "metrics.csv"
    tmp = path.with_name("metrics.csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["step", *keys])
        for r in rows:
            w.writerow([r["step"], *["" if r.get(k) is None else r.get(k) for k in keys]])
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------ discovery
def _is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file()


def resolve_target(target: Path | str) -> tuple[Path, list[tuple[int, Path | None]], list[tuple[int, Path, str]]]:
    """(run directory, [(step, checkpoint dir)], [(step, broken checkpoint dir, problem)]) for a run
    directory or one of its checkpoints.

    A run directory yields every checkpoint with its weights (``None`` as the directory means the base
    model, added by `evaluate_run`) and, apart, the broken ones (a prune or a copy interrupted half-way:
    weights or config missing), which are skipped. A checkpoint directory yields just itself, and is an
    error when broken.

    Raises:
        UserError: the path does not exist, is not a run / checkpoint directory, or is a broken
            checkpoint.
    """
    p = Path(target)
    if not p.exists():
        raise UserError(f"{p}: does not exist")
    if not p.is_dir():
        raise UserError(f"{p}: not a run directory or checkpoint directory")
    m = _STEP_RE.match(p.name)
    if m and p.parent.name == "checkpoints" and _is_run_dir(p.parent.parent):
        check_checkpoint_files(p)
        return p.parent.parent, [(int(m.group(1)), p)], []
    if _is_run_dir(p):
        complete, broken = scan_checkpoints(p)
        evaluable: list[tuple[int, Path | None]] = list(complete)
        skipped = []
        for step, ck, problem in broken:
            if checkpoint_problem(ck, need_state=False) is None:  # weights intact, only the trainer state gone
                evaluable.append((step, ck))
            else:
                skipped.append((step, ck, problem))
        return p, sorted(evaluable, key=lambda sc: sc[0]), skipped
    if m:
        raise UserError(f"{p}: a checkpoint directory must live in <run>/checkpoints/ next to <run>/config.yaml")
    raise UserError(f"{p}: not a run directory (no config.yaml) or checkpoint directory (checkpoints/step_N)")


def check_checkpoint_files(ckpt: Path) -> None:
    """Raise a UserError naming the missing file when a checkpoint lacks its weights."""
    problem = checkpoint_problem(ckpt, need_state=False)
    if problem is not None:
        raise UserError(f"{ckpt}: {problem}")


def dataset_label(dataset: str) -> str:
    """Directory name for results on another dataset: the task name, or a file's stem."""
    p = Path(dataset)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", p.stem if p.suffix else p.name) or "dataset"
    return f"data_{name}" if _STEP_RE.match(name) else name


def _is_synthetic(task: Any) -> bool:
    flag = getattr(task, "synthetic", None)
    if flag is not None:
        return bool(flag)
    return type(task).__module__.startswith("rlentropy.data.synthetic")


def _resolve_device(name: str) -> Any:
    import torch

    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("train.device: 'cuda' requested but no CUDA GPU is available")
        return torch.device("cuda")
    return torch.device("cpu")


FIELD_OPTIONS = ("question_field", "answer_field", "id_field", "answer_format")
"""The file task's field mapping (`data.params.<key>`), which `rlentropy eval --question-field …` sets."""


def build_eval_task(cfg: Any, dataset: str | None, fields: dict[str, str] | None = None) -> Any:
    """The eval task of a run config, or of ``dataset`` (a task name, or a dataset file).

    A dataset file (jsonl / parquet) is read with the "file" task, every row an eval prompt, with the
    run's template, seed, `data.skip_bad_rows` and `data.reward`; its field mapping is the run's when
    the run trained on a file, with ``fields`` (keys of `FIELD_OPTIONS`) on top. A task name keeps the
    run's template and seed, and scores with that task's own scorer.

    Raises:
        UserError: ``fields`` without a dataset file.
    """
    data = cfg.data
    fields = {k: v for k, v in (fields or {}).items() if v is not None}
    is_file = dataset is not None and Path(dataset).is_file()
    if fields and not is_file:
        flags = ", ".join("--" + k.replace("_", "-") for k in fields)
        raise UserError(f"{flags}: the field mapping applies to a dataset file (--dataset my.jsonl)")
    if dataset is None:
        return build_task(data, for_eval=True)
    if is_file:
        # the "file" task (rlentropy.data.math) with every row of the file as the eval set; a run that
        # trained on a file keeps its field names / answer format
        params = {k: v for k, v in data.params.items() if k not in ("eval_size",)} if data.task == "file" else {}
        params.update(fields)
        params["eval_path"] = str(dataset)
        dc = DataConfig(
            task="file",
            path=str(dataset),
            template=data.template,
            seed=data.seed,
            skip_bad_rows=data.skip_bad_rows,
            reward=data.reward,
            reward_params=dict(data.reward_params),
            params=params,
        )
        return build_task(dc, for_eval=True)
    return build_task(DataConfig(task=dataset, template=data.template, seed=data.seed))


# ------------------------------------------------------------------------------------ evaluation
def evaluate_run(
    target: Path | str,
    *,
    dataset: str | None = None,
    n: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    max_new_tokens: int | None = None,
    max_prompts: int | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    force: bool = False,
    include_base: bool = True,
    progress: bool = False,
    log: Callable[[str], None] = print,
    warn: Callable[[str], None] | None = None,
    threads: int | str | None = None,
    fields: dict[str, str] | None = None,
) -> Path:
    """Evaluate a checkpoint or every checkpoint of a run; write eval/ files; return the eval dir.

    Args:
        target: a run directory (every complete checkpoint, plus the base model as step 0 when
            ``include_base``) or a checkpoint directory ``<run>/checkpoints/step_N``.
        dataset: a task name (e.g. "countdown", "math500") or a dataset file; None = the run's eval set.
        n: samples per prompt (default 32 on real data, 8 on synthetic tasks).
        temperature / top_p: sampling (default 0.7 / 1.0).
        max_new_tokens: default ``eval.max_new_tokens`` of the run, else ``rollout.max_new_tokens``.
        max_prompts: evaluate the first N eval prompts (None = the run's ``eval.max_prompts``).
        seed: sampling seed (the same for every checkpoint, so differences are not sampling noise).
        batch_size: sequences per generate call (default: the run's ``rollout.batch_size``).
        force: recompute checkpoints that already have results.
        include_base: with a run directory, also evaluate the base model as step 0.
        progress: rich progress bar per checkpoint.
        log: where one line per checkpoint goes.
        warn: where skipped (broken) checkpoints and skipped over-long prompts are named (default: log).
        threads: torch threads, a number or "auto" (default: the run's ``train.threads``); restored after.
        fields: the field mapping of a dataset file (question_field, answer_field, id_field,
            answer_format), on top of the run's when it trained on a file.

    Prompts longer than the run's ``data.max_prompt_tokens`` (default: the model's context less
    ``max_new_tokens``) fail or are skipped as ``data.over_long`` says, before any checkpoint is loaded.

    Raises:
        UserError: bad target, missing checkpoint files, bad settings.
    """
    run_dir, ckpts, broken = resolve_target(target)
    is_run = Path(target).resolve() == run_dir.resolve()
    cfg = config_from_dict(read_yaml(run_dir / "config.yaml"))
    warn = warn or log
    for step, _ck, problem in broken:
        warn(f"step_{step}: skipped, broken checkpoint ({problem})")
    if not ckpts:  # the base model alone is not what `eval RUN` was asked for: say so, evaluate nothing
        raise UserError(
            f"{run_dir}: no complete checkpoint under {run_dir / 'checkpoints'} to evaluate (the run saved none: "
            "it stopped before its first checkpoint, or checkpoint.every is 0 and checkpoint.save_final false); "
            "nothing was evaluated"
        )
    if is_run and include_base and not any(s == 0 for s, _ in ckpts):
        ckpts = [(0, None), *ckpts]

    task = build_eval_task(cfg, dataset, fields)
    synthetic = _is_synthetic(task)
    default_name = cfg.data.eval_task or cfg.data.task
    subdir = None if dataset is None or dataset == default_name else dataset_label(dataset)
    settings = {
        "task": getattr(task, "name", str(dataset or cfg.data.task)),
        "dataset": None if dataset is None else str(dataset),
        "n": int(n if n is not None else (DEFAULT_N_SYNTHETIC if synthetic else DEFAULT_N_REAL)),
        "temperature": float(temperature if temperature is not None else DEFAULT_TEMPERATURE),
        "top_p": float(top_p if top_p is not None else DEFAULT_TOP_P),
        "max_new_tokens": int(
            max_new_tokens if max_new_tokens is not None else (cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens)
        ),
        "max_prompts": max_prompts if max_prompts is not None else cfg.eval.max_prompts,
        "seed": int(seed),
        **engine_setting(cfg),
    }
    for key, ok, need in (
        ("n", settings["n"] >= 1, ">= 1"),
        ("temperature", settings["temperature"] > 0, "> 0"),
        ("top_p", 0 < settings["top_p"] <= 1, "in (0, 1]"),
        ("max_new_tokens", settings["max_new_tokens"] >= 1, ">= 1"),
        ("max_prompts", settings["max_prompts"] is None or settings["max_prompts"] >= 1, ">= 1"),
    ):
        if not ok:
            raise UserError(f"--{key.replace('_', '-')}: must be {need}, got {settings[key]!r}")
    device = _resolve_device(cfg.train.device)
    bsz = batch_size if batch_size is not None else cfg.rollout.batch_size
    task = _fitting_prompts(cfg, task, ckpts[-1][1], settings["max_new_tokens"], warn)
    before = torch.get_num_threads()
    try:
        _set_eval_threads(threads if threads is not None else cfg.train.threads, device)
        _evaluate_checkpoints(run_dir, cfg, task, ckpts, settings, subdir, device, bsz, force, progress, log)
    finally:
        torch.set_num_threads(before)
    write_metrics_csv(run_dir, subdir)
    return eval_root(run_dir, subdir)


def _set_eval_threads(setting: int | str, device: Any) -> None:
    """`--threads` / train.threads: a number, or "auto" = 1 on CPU (as the trainer), torch's own on a GPU."""
    if setting == "auto":
        if device.type == "cpu":
            torch.set_num_threads(1)
        return
    try:
        n = int(setting)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise UserError(f"--threads: must be a number >= 1 or auto, got {setting!r}")
    torch.set_num_threads(n)


def _fitting_prompts(cfg: Any, task: Any, ckpt: Path | None, max_new_tokens: int, warn: Callable[[str], None]) -> Any:
    """The task with its eval prompts checked against the prompt limit (data.over_long: error or skip)."""
    tokenizer, context = load_tokenizer(cfg.model, checkpoint=ckpt)
    return fit_eval_prompts(cfg, task, tokenizer, context=context, max_new_tokens=max_new_tokens, warn=warn)


def fit_eval_prompts(
    cfg: Any, task: Any, tokenizer: Any, *, context: int | None, max_new_tokens: int, warn: Callable[[str], None]
) -> Any:
    """`task` with only the eval prompts that fit `data.max_prompt_tokens` (default: `context` less
    `max_new_tokens`): a longer one is an error naming file:line (`data.over_long: error`) or skipped
    and counted through `warn` (`skip`). Never silent: `rlentropy eval`, the demo and the studies call it.

    Raises:
        DataError: an over-long prompt with `data.over_long: error`.
        UserError: every eval prompt is over-long.
    """
    limit = prompt_token_limit(cfg.data, context=context, max_new_tokens=max_new_tokens)
    kept, report = check_prompt_lengths(
        task.eval_examples(), task, tokenizer, limit=limit, policy=cfg.data.over_long, split="eval"
    )
    if report.skipped:
        warn(
            f"skipped {report.skipped} of {report.checked} eval prompts longer than {limit} tokens "
            f"(data.over_long=skip); the first: {report.examples[0]}"
        )
    if not kept:
        raise UserError(f"every eval prompt is longer than {limit} tokens ({report.skipped} skipped)")
    return WithEvalExamples(task, kept)


def _evaluate_checkpoints(
    run_dir: Path,
    cfg: Any,
    task: Any,
    ckpts: list[tuple[int, Path | None]],
    settings: dict[str, Any],
    subdir: str | None,
    device: Any,
    bsz: int | None,
    force: bool,
    progress: bool,
    log: Callable[[str], None],
) -> None:
    for step, ck in ckpts:
        prev = read_eval_result(run_dir, step, subdir)
        if prev is not None and not force:
            if prev.get("settings") == settings:
                log(f"step_{step}: already evaluated, skipped (use --force to recompute)")
                continue
            log(f"step_{step}: earlier results used other settings ({prev.get('settings')}); recomputing")
        t0 = time.perf_counter()
        loaded = load_policy(cfg.model, device=device, checkpoint=ck)
        model = loaded.model.to(device)
        model.eval()
        metrics, samples = evaluate_with_settings(
            model,
            loaded.tokenizer,
            task,
            settings,
            batch_size=bsz,
            engine=cfg.rollout.engine,
            progress=progress,
            share_prompts=cfg.train.share_prompts,
        )
        save_eval_result(
            run_dir,
            step,
            metrics,
            samples,
            settings=settings,
            subdir=subdir,
            checkpoint=str(ck) if ck is not None else f"base:{cfg.model.path or 'tiny'}",
        )
        del model, loaded
        n_ = settings["n"]
        log(
            f"step_{step}: pass@1={metrics['pass@1']:.4f} pass@{n_}={metrics[f'pass@{n_}']:.4f} "
            f"maj@{n_}={metrics[f'maj@{n_}']:.4f} entropy={metrics['entropy']:.4f} "
            f"len={metrics['response_len']:.1f} ({time.perf_counter() - t0:.1f} s)"
        )


def _threads_arg(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UserError(f"--threads: must be a number >= 1 or auto, got {value!r}") from None


def eval_command(
    target: Path,
    dataset: str | None = None,
    n: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    max_new_tokens: int | None = None,
    max_prompts: int | None = None,
    force: bool = False,
    quiet: bool = False,
    include_base: bool = True,
    seed: int = 0,
    batch_size: int | None = None,
    threads: str | None = None,
    fields: dict[str, str] | None = None,
) -> None:
    """CLI body of `rlentropy eval`."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one line per checkpoint is ours; no weight-loading bars
    out = evaluate_run(
        target,
        dataset=dataset,
        n=n,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        max_prompts=max_prompts,
        seed=seed,
        batch_size=batch_size,
        force=force,
        include_base=include_base,
        progress=not quiet,
        log=(lambda _msg: None) if quiet else print,
        warn=lambda msg: print(msg, file=sys.stderr),
        threads=threads if threads in (None, "auto") else _threads_arg(threads),
        fields=fields,
    )
    if not quiet:
        print(f"results in {out} (metrics.csv)")
