"""The `rlentropy` command line.

Each sub-command is a thin wrapper: it parses options with typer and imports its implementation
lazily, so `rlentropy --help` stays fast. User errors (`rlentropy.errors.UserError`) are printed as
one line on stderr and exit with status 2; a `TrainingError` (a full disk among them) likewise with
status 1; Ctrl-C prints where the command stopped and how to go on, and exits with status 130.
Nothing else is caught here.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from rlentropy.errors import TrainingError, UserError


class _Stopped(Exception):
    """Ctrl-C inside a command, carried past typer (which turns a KeyboardInterrupt into a bare exit
    status and drops its message)."""


def _interruptible(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt as err:
            raise _Stopped(str(err) or "interrupted") from None

    return wrapper


app = typer.Typer(
    name="rlentropy",
    help="Measure, predict and control the entropy dynamics of RL fine-tuning of language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
@_interruptible
def train(
    config: Path | None = typer.Argument(None, help="YAML config file (see configs/)."),
    overrides: list[str] | None = typer.Argument(None, help="Overrides as key.sub=value."),
    resume: Path | None = typer.Option(
        None, "--resume", help="Run directory to resume from its newest complete checkpoint."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Run GRPO-family RL training from a YAML config (or resume a run)."""
    from rlentropy.train.run import train_command

    train_command(config=config, overrides=list(overrides or []), resume=resume, quiet=quiet)


@app.command()
@_interruptible
def demo(
    overrides: list[str] | None = typer.Argument(None, help="Overrides for every run, as key.sub=value."),
    seeds: int = typer.Option(1, "--seeds", help="Number of seeds per method (1 for `make demo`)."),
    study: str = typer.Option(
        "controls", "--study", help="controls (the demo) | long (the long study, 3 seeds) | quadrants"
    ),
    steps: int | None = typer.Option(None, "--steps", help="Training steps of every run (default: the config's)."),
    methods: str | None = typer.Option(None, "--methods", help="Comma-separated subset of the methods."),
    out: Path | None = typer.Option(None, "--out", help="Output directory (default runs/demo or runs/quadrants)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """The embedded CPU entropy study on the shipped tiny model and the countdown task."""
    from rlentropy.studies.demo import demo_command

    chosen = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    demo_command(
        seeds=seeds, study=study, out=out, quiet=quiet, overrides=list(overrides or []), steps=steps, methods=chosen
    )


@app.command()
@_interruptible
def study(
    config: Path = typer.Argument(..., help="YAML config with a study: section (methods, seeds, baseline)."),
    overrides: list[str] | None = typer.Argument(None, help="Overrides for every run, as key.sub=value."),
    out: Path | None = typer.Option(None, "--out", help="Output directory (default runs/study-<config name>)."),
    seeds: int | None = typer.Option(None, "--seeds", help="Seeds per method (default: study.seeds)."),
    methods: str | None = typer.Option(None, "--methods", help="Comma-separated subset of study.methods."),
    workers: int | None = typer.Option(None, "--workers", help="Parallel runs (default: min(2, CPU cores))."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Methods × seeds from one config, in parallel and resumable; means with 95 % intervals over seeds."""
    from rlentropy.studies.study import run_study

    if seeds is not None and seeds < 1:
        raise UserError(f"--seeds: must be >= 1, got {seeds}")
    if workers is not None and workers < 1:
        raise UserError(f"--workers: must be >= 1, got {workers}")
    chosen = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    run_study(
        config,
        out or Path("runs") / f"study-{config.stem}",
        seeds=seeds,
        methods=chosen,
        overrides=list(overrides or []),
        workers=workers,
        quiet=quiet,
    )


@app.command()
@_interruptible
def check(
    config: Path = typer.Argument(..., help="YAML config file (see configs/)."),
    overrides: list[str] | None = typer.Argument(None, help="Overrides as key.sub=value."),
) -> None:
    """Validate a config without training: model, data, prompt lengths, methods, device, memory (exit 2 on FAIL)."""
    from rlentropy.check import check_command

    code = check_command(config, list(overrides or []))
    if code:
        raise typer.Exit(code)


@app.command()
@_interruptible
def pretrain(
    overrides: list[str] | None = typer.Argument(
        None, help="Recipe overrides as key=value (fields of rlentropy.models.pretrain.PretrainConfig)."
    ),
    out: Path = typer.Option(Path("runs/pretrain"), "--out", help="Where to write the model and tokenizer."),
    seed: int = typer.Option(0, "--seed"),
    steps: int | None = typer.Option(None, "--steps", help="Optimizer steps (default: the recipe's 1500)."),
    quiet: bool = typer.Option(False, "--quiet"),
) -> None:
    """Supervised warm-up of the tiny base policy on the synthetic task (rebuilds the shipped weights)."""
    from rlentropy.models.pretrain import pretrain_command

    pretrain_command(out=out, seed=seed, quiet=quiet, overrides=list(overrides or []), steps=steps)


@app.command("eval")
@_interruptible
def eval_(
    target: Path = typer.Argument(..., help="A checkpoint directory, or a run directory (every checkpoint)."),
    dataset: str | None = typer.Option(
        None, "--dataset", help="Benchmark name or dataset file (default: the run's eval set)."
    ),
    n: int | None = typer.Option(
        None, "--n", help="Samples per prompt (default 32 on real data, 8 on synthetic tasks)."
    ),
    temperature: float | None = typer.Option(None, "--temperature", help="Sampling temperature (default 0.7)."),
    top_p: float | None = typer.Option(None, "--top-p", help="Nucleus sampling (default 1.0)."),
    max_new_tokens: int | None = typer.Option(
        None, "--max-new-tokens", help="Default: the run's eval / rollout max_new_tokens."
    ),
    max_prompts: int | None = typer.Option(
        None, "--max-prompts", help="Evaluate the first N prompts (default: the run's eval.max_prompts)."
    ),
    force: bool = typer.Option(False, "--force", help="Re-evaluate checkpoints that already have results."),
    quiet: bool = typer.Option(False, "--quiet"),
    base: bool = typer.Option(
        True, "--base/--no-base", help="With a run directory, also evaluate the base model as step 0."
    ),
    seed: int = typer.Option(0, "--seed", help="Sampling seed (the same for every checkpoint)."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="Sequences per generate call (default: the run's rollout.batch_size)."
    ),
    threads: str | None = typer.Option(
        None, "--threads", help="torch threads: a number or auto (default: the run's train.threads; auto = 1 on CPU)."
    ),
    question_field: str | None = typer.Option(
        None, "--question-field", help="With a dataset file: the field (dotted path) holding the question."
    ),
    answer_field: str | None = typer.Option(
        None, "--answer-field", help="With a dataset file: the field (dotted path) holding the gold answer."
    ),
    id_field: str | None = typer.Option(None, "--id-field", help="With a dataset file: the field of a row's id."),
    answer_format: str | None = typer.Option(
        None, "--answer-format", help="With a dataset file: raw | int | gsm8k | boxed (how to read the gold)."
    ),
) -> None:
    """pass@k, avg@n, maj@k, entropy and length of samples, for one checkpoint or all of a run."""
    from rlentropy.evaluate.run import eval_command

    eval_command(
        target=target,
        dataset=dataset,
        n=n,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        max_prompts=max_prompts,
        force=force,
        quiet=quiet,
        include_base=base,
        seed=seed,
        batch_size=batch_size,
        threads=threads,
        fields={
            "question_field": question_field,
            "answer_field": answer_field,
            "id_field": id_field,
            "answer_format": answer_format,
        },
    )


@app.command()
@_interruptible
def report(
    runs: list[Path] = typer.Argument(..., help="One or more run directories."),
    out: Path | None = typer.Option(None, "--out", help="Output directory (default: the first run's directory)."),
) -> None:
    """Write a self-contained report.html and plots/*.png for one or more runs."""
    from rlentropy.report.html import report_command

    report_command(runs=runs, out=out)


@app.command()
def methods(
    family: str | None = typer.Option(None, "--family", help="advantage | loss | control | controller"),
    markdown: bool = typer.Option(False, "--markdown", help="Print the markdown table of docs/algorithms.md."),
) -> None:
    """Every registered method: family, what it changes, stage, defaults, paper, where else it ships."""
    from rlentropy.algorithms.catalog import FAMILIES, HEADERS, markdown_table, rows

    if family is not None and family not in FAMILIES:
        raise UserError(f"--family: {family!r} is not allowed; allowed: {', '.join(FAMILIES)}")
    if markdown:
        print(markdown_table(family), end="")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(*HEADERS, show_lines=False)
    for r in rows(family):
        table.add_row(r.name, r.family, r.changes, r.stage, r.reads, r.defaults, r.also_in, r.paper)
    Console().print(table)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the typer app, turning user errors into one line and exit 2."""
    try:
        code = app(args=argv, standalone_mode=False)
    except _Stopped as err:
        print(err, file=sys.stderr)
        sys.exit(130)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except TrainingError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as ex:
        sys.exit(ex.exit_code)
    except typer.Abort:
        sys.exit(1)
    except typer.TyperException as ex:  # usage errors (unknown option, bad value): exit 2
        show = getattr(ex, "show", None)
        if show is not None:
            show()
        else:
            print(f"error: {ex}", file=sys.stderr)
        sys.exit(getattr(ex, "exit_code", 2))
    # typer (standalone_mode=False) returns the status of a typer.Exit, and 130 for a Ctrl-C it caught
    # outside a command body, instead of raising
    if isinstance(code, int) and not isinstance(code, bool) and code != 0:
        if code == 130:
            print("interrupted", file=sys.stderr)
        sys.exit(code)


if __name__ == "__main__":
    main()
