"""The `rlentropy` entry point: help works, user errors exit 2 with one line and no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rlentropy.cli import main
from rlentropy.errors import ConfigError


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlentropy.cli", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_subcommands():
    proc = _run("--help")
    assert proc.returncode == 0, proc.stderr
    for name in ("train", "check", "demo", "study", "pretrain", "eval", "report", "methods"):
        assert name in proc.stdout


def test_user_error_is_one_line_and_exit_2(monkeypatch, capsys):
    import rlentropy.cli as cli

    def boom(**_kw):
        raise ConfigError("train.steps: expected an integer >= 1, got 'x'")

    monkeypatch.setitem(sys.modules, "rlentropy.train.run", type(sys)("fake_run"))
    sys.modules["rlentropy.train.run"].train_command = boom
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "cfg.yaml"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err == "error: train.steps: expected an integer >= 1, got 'x'\n"


def test_unknown_subcommand_is_usage_error():
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2
