"""`rlentropy train CONFIG [key=value ...]` and `rlentropy train --resume RUN_DIR [key=value ...]`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlentropy.errors import ConfigError, find_disk_full
from rlentropy.runs.checkpoints import latest_checkpoint
from rlentropy.runs.config import RunConfig, apply_overrides, config_from_dict, load_config, read_yaml
from rlentropy.train.trainer import StepHook, Trainer


def resume_config(run_dir: str | Path, overrides: list[str]) -> RunConfig:
    """The resolved config.yaml of `run_dir` (+ overrides, e.g. a larger train.steps), run_dir pinned."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"--resume: {str(run_dir)!r} is not a run directory (no config.yaml)")
    data = apply_overrides(read_yaml(run_dir / "config.yaml"), overrides)
    data["run_dir"] = str(run_dir)
    return config_from_dict(data)


def run_training(
    cfg: RunConfig, *, resume: bool = False, quiet: bool = True, step_hook: StepHook | None = None
) -> Trainer:
    """Set up, train and clean up; returns the trainer (its `history` holds every step's metrics).

    Raises:
        Interrupted: Ctrl-C (the message says after which step, which checkpoint, how to resume).
        DiskFullError: a full disk; the message names the path that failed, the last good checkpoint
            and the command that resumes. Nothing written before is damaged.
    """
    trainer = Trainer(cfg, resume=resume, quiet=quiet, step_hook=step_hook)
    try:
        try:
            trainer.setup()
            trainer.train()
        except BaseException:
            trainer.cleanup(after_error=True)  # a sink that cannot close (full disk) does not hide the error
            raise
        trainer.cleanup()
    except Exception as err:
        full = find_disk_full(err, trainer.run_dir)
        if full is None:
            raise
        raise full.with_hint(trainer.recovery_hint()) from err
    return trainer


def finished_message(cfg: RunConfig) -> str | None:
    """For `--resume`: a line saying the run is already finished (its newest checkpoint is at or past
    train.steps, and its final evaluation, when asked for, is written), else None."""
    run_dir = cfg.resolved_run_dir()
    found = latest_checkpoint(run_dir)
    if found is None or found[0] < cfg.train.steps:
        return None
    step = found[0]
    if cfg.eval.at_end and not (run_dir / "eval" / f"step_{step}" / "metrics.json").is_file():
        return None  # stopped during its final evaluation: the trainer runs it
    return (
        f"{run_dir}: already finished at step {step} (train.steps is {cfg.train.steps}); nothing to train. "
        f"To train further: rlentropy train --resume {run_dir} train.steps={step + cfg.train.steps}"
    )


def train_command(config: Path | None, overrides: list[str], resume: Path | None, quiet: bool) -> Any:
    """CLI entry: either a config (+ overrides) or `--resume RUN_DIR` (+ overrides)."""
    if resume is not None:
        if config is not None:
            # typer puts the first positional into `config`; with --resume it is an override
            overrides = [str(config), *overrides]
        cfg = resume_config(resume, overrides)
        done = finished_message(cfg)
        if done is not None:  # nothing to train: say so instead of a summary of no steps
            print(done)
            return None
        trainer = run_training(cfg, resume=True, quiet=quiet)
    else:
        if config is None:
            raise ConfigError("train: give a config file (see configs/) or --resume RUN_DIR")
        if "=" in str(config) and not Path(config).exists():
            raise ConfigError(f"train: the first argument must be a YAML config file, got override {str(config)!r}")
        cfg = load_config(config, overrides)
        trainer = run_training(cfg, resume=False, quiet=quiet)
    if not quiet:
        from rich.console import Console

        if trainer.history:
            last = trainer.history[-1]
            Console().print(
                f"[bold]done[/]: {trainer.step} steps in {trainer.run_dir} — "
                f"reward {last['reward/mean']:.3f}, entropy {last['entropy/mean']:.3f}"
            )
        else:  # resumed at its last step only to write the final evaluation
            Console().print(f"[bold]done[/]: {trainer.run_dir} at step {trainer.step}; no step left to train")
    return trainer
