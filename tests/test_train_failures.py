"""Failure paths a user hits (issue #16): Ctrl-C, a run killed before its first checkpoint, a full disk,
over-long rows, counts and messages, pruning, TensorBoard after a resume, torch threads.

Each test names the item it covers. Every message is one line; nothing written before a failure is
damaged, and the run goes on with the command the message prints.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import rlentropy
from rlentropy.errors import ConfigError, DataError
from rlentropy.runs import checkpoints as ck
from rlentropy.runs.checkpoints import latest_checkpoint, list_checkpoints
from rlentropy.runs.config import load_config
from rlentropy.train.run import resume_config, run_training

SRC = Path(rlentropy.__file__).resolve().parents[1]  # the sources under test, for the subprocesses


def _steps(run_dir: Path, name: str = "metrics.jsonl") -> list[int]:
    return [json.loads(x)["step"] for x in (run_dir / name).read_text().splitlines()]


def _write_config(cfg, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")), encoding="utf-8")
    return path


class Kill(Exception):
    """Stands for a kill -9 in the middle of a step (the run dies without saving)."""


def _kill_at(step: int):
    def hook(tr, s, metrics):
        if s == step:
            raise Kill

    return hook


# ------------------------------------------------------------------------------------------ 1. Ctrl-C
def test_cli_ctrl_c_prints_where_it_stopped_and_exits_130(monkeypatch, capsys):
    import rlentropy.cli as cli

    Interrupted = type("Interrupted", (KeyboardInterrupt,), {})  # what the trainer raises

    def stopped(**_kw):
        raise Interrupted("stopped after step 3; checkpoint: runs/x/checkpoints/step_3; resume with: X")

    monkeypatch.setitem(sys.modules, "rlentropy.train.run", type(sys)("fake_run"))
    sys.modules["rlentropy.train.run"].train_command = stopped
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "cfg.yaml"])
    assert exc.value.code == 130
    assert capsys.readouterr().err == "stopped after step 3; checkpoint: runs/x/checkpoints/step_3; resume with: X\n"


_DRIVER = """
import os, sys, time
import rlentropy.runs.checkpoints as ck

real = ck.torch.save
slow_from = int(os.environ["SLOW_FROM"])


def slow(obj, f, *a, **kw):
    if isinstance(obj, dict) and obj.get("step", 0) >= slow_from:  # the save the second Ctrl-C lands in
        open(os.environ["MARK"], "w").close()
        for _ in range(1200):
            time.sleep(0.05)
    return real(obj, f, *a, **kw)


ck.torch.save = slow
from rlentropy.cli import main

main(sys.argv[1:])
"""


def _start(tmp_path: Path, cfg_path: Path, slow_from: int) -> tuple[subprocess.Popen, Path]:
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER, encoding="utf-8")
    mark = tmp_path / "saving"
    env = {**os.environ, "PYTHONPATH": str(SRC), "MARK": str(mark), "SLOW_FROM": str(slow_from)}
    proc = subprocess.Popen(
        [sys.executable, str(driver), "train", str(cfg_path), "--quiet"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, mark


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    t0 = time.time()
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early: {proc.communicate()}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("every", [0, 1])
def test_second_ctrl_c_during_the_save_leaves_a_resumable_run(fast_cfg, tmp_path, every):
    # every=0 (the demo's old setting): the first save is the one at the end, so the interrupted run has
    # no checkpoint and --resume starts it again; every=1: the save of step 2 is cut, it resumes from step_1.
    run_dir = tmp_path / "run"
    cfg = fast_cfg(
        train={"steps": 4},
        checkpoint={"every": every, "keep_last": 2},
        logging={"tensorboard": True},
        run_dir=str(run_dir),
    )
    proc, mark = _start(tmp_path, _write_config(cfg, tmp_path / "c.yaml"), slow_from=2 if every else 1)
    _wait_for(mark.exists, proc)
    proc.send_signal(signal.SIGINT)  # first Ctrl-C: finish the step, save, stop
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)  # second Ctrl-C: stop now, in the middle of the save
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    line = err.strip().splitlines()[-1]
    cut = 2 if every else 4  # the step whose checkpoint the second Ctrl-C cut
    assert line.startswith(f"interrupted after step {cut} while writing its checkpoint; "), err
    assert f"resume with: rlentropy train --resume {run_dir}" in line
    assert "Traceback" not in err
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir()) if (run_dir / "checkpoints").exists() else []
    assert names == (["step_1"] if every else []), names  # the interrupted save left nothing behind
    assert _steps(run_dir)[-1] == cut  # logged before the save

    resumed = run_training(resume_config(run_dir, []), resume=True)
    assert resumed.step == 4
    assert _steps(run_dir) == [1, 2, 3, 4]
    if not every:
        aside = list(run_dir.glob("metrics.jsonl.aborted-*"))
        assert len(aside) == 1 and _steps(run_dir, aside[0].name) == [1, 2, 3, 4]
    assert _tensorboard_steps(run_dir, "reward/mean") == [1, 2, 3, 4]


@pytest.mark.slow
def test_ctrl_c_stops_after_the_step_with_a_checkpoint_and_the_resume_command(fast_cfg, tmp_path):
    run_dir = tmp_path / "run"
    cfg = fast_cfg(train={"steps": 50}, run_dir=str(run_dir))
    proc, _ = _start(tmp_path, _write_config(cfg, tmp_path / "c.yaml"), slow_from=10**9)
    _wait_for(lambda: (run_dir / "metrics.jsonl").is_file() and (run_dir / "metrics.jsonl").read_text(), proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    step, path = latest_checkpoint(run_dir)
    assert err.strip().splitlines()[-1] == (
        f"stopped after step {step}; checkpoint: {path}; resume with: rlentropy train --resume {run_dir}"
    )
    assert _steps(run_dir)[-1] == step


# --------------------------------------------------------------- 2. killed before its first checkpoint
def test_resume_of_a_run_without_checkpoint_starts_it_again(fast_cfg, tmp_path, capsys):
    run_dir = tmp_path / "run"
    cfg = fast_cfg(train={"steps": 3}, checkpoint={"every": 0}, run_dir=str(run_dir))
    with pytest.raises(Kill):
        run_training(cfg, step_hook=_kill_at(3))
    assert latest_checkpoint(run_dir) is None and _steps(run_dir) == [1, 2]
    capsys.readouterr()
    resumed = run_training(resume_config(run_dir, []), resume=True)
    assert resumed.step == 3 and len(resumed.history) == 3
    assert _steps(run_dir) == [1, 2, 3]
    (aside,) = run_dir.glob("metrics.jsonl.aborted-*")
    assert _steps(run_dir, aside.name) == [1, 2]
    err = capsys.readouterr().err
    assert "has no complete checkpoint" in err and "starting it again from step 0" in err and aside.name in err
    info = json.loads((run_dir / "run_info.json").read_text())
    assert any("starting it again from step 0" in n for n in info["sessions"][-1]["notices"])


def test_study_runs_resume_and_a_finished_run_is_never_trained_again(fast_cfg, tmp_path):
    from rlentropy.studies.runs import read_history, train_to_end

    cfg = fast_cfg(train={"steps": 3}, checkpoint={"every": 1, "keep_last": 1}, run_dir=str(tmp_path / "r"))
    with pytest.raises(Kill):
        train_to_end(cfg, train_fn=lambda c, **kw: run_training(c, step_hook=_kill_at(3), **kw))
    trainer = train_to_end(cfg)
    assert trainer is not None and trainer.step == 3 and len(trainer.history) == 1  # resumed from step_2
    assert [h["step"] for h in read_history(tmp_path / "r")] == [1, 2, 3]
    stamp = (tmp_path / "r" / "metrics.jsonl").stat().st_mtime_ns
    assert train_to_end(cfg) is None  # finished: nothing to do
    # the thread setting does not make it another run
    threads = fast_cfg(
        train={"steps": 3, "threads": 2}, checkpoint={"every": 1, "keep_last": 1}, run_dir=str(tmp_path / "r")
    )
    assert train_to_end(threads) is None
    assert (tmp_path / "r" / "metrics.jsonl").stat().st_mtime_ns == stamp


def test_demo_config_checkpoints_during_the_run():
    from rlentropy.studies.demo import demo_config_path

    cfg = load_config(demo_config_path())
    assert 0 < cfg.checkpoint.every < cfg.train.steps and cfg.checkpoint.save_final


# ------------------------------------------------------------------------------------- 3. full disk
class _FullAfter:
    """A text file whose writes fail with ENOSPC after `n` of them (what a full disk does)."""

    def __init__(self, fh, n: int) -> None:
        self._fh, self._n = fh, n

    def write(self, text: str) -> int:
        self._n -= 1
        if self._n < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self._fh.write(text)

    def __getattr__(self, name):
        return getattr(self._fh, name)


def test_full_disk_in_the_metrics_is_one_line_naming_path_and_last_checkpoint(fast_cfg, tmp_path, monkeypatch, capsys):
    from rlentropy.cli import main
    from rlentropy.train import sinks

    run_dir = tmp_path / "run"
    cfg = fast_cfg(train={"steps": 3}, checkpoint={"every": 1, "keep_last": 3}, run_dir=str(run_dir))

    def full_open(path, *a, **kw):
        fh = open(path, *a, **kw)
        return _FullAfter(fh, 2) if str(path).endswith("metrics.jsonl") else fh

    monkeypatch.setattr(sinks, "open", full_open, raising=False)
    with pytest.raises(SystemExit) as exc:
        main(["train", str(_write_config(cfg, tmp_path / "c.yaml")), "--quiet"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err == (
        f"error: disk full: cannot write {run_dir / 'metrics.jsonl'} (no space left on the device); "
        f"last good checkpoint: {run_dir / 'checkpoints' / 'step_2'}; resume with: rlentropy train --resume {run_dir}\n"
    )
    monkeypatch.undo()
    assert _steps(run_dir) == [1, 2]
    assert run_training(resume_config(run_dir, []), resume=True).step == 3
    assert _steps(run_dir) == [1, 2, 3]


def test_full_disk_in_a_checkpoint_keeps_the_previous_one(fast_cfg, tmp_path, monkeypatch):
    from rlentropy.errors import DiskFullError

    run_dir = tmp_path / "run"
    real = ck.torch.save
    calls = {"n": 0}

    def full(obj, fh, *a, **kw):  # what torch.save does on a full disk, writing to a file object
        calls["n"] += 1
        if calls["n"] < 2:
            return real(obj, fh, *a, **kw)
        fh.write(b"PK\x03\x04")
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None

    monkeypatch.setattr(ck.torch, "save", full)
    cfg = fast_cfg(train={"steps": 3}, checkpoint={"every": 1, "keep_last": 3}, run_dir=str(run_dir))
    with pytest.raises(DiskFullError) as exc:
        run_training(cfg)
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"disk full: cannot write checkpoint {run_dir / 'checkpoints' / 'step_2'} ")
    assert f"last good checkpoint: {run_dir / 'checkpoints' / 'step_1'}" in msg
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_1"]


@pytest.fixture()
def small_tmpfs(tmp_path):
    """A 4 MiB tmpfs (needs root and CAP_SYS_ADMIN; skipped where mounting is not permitted)."""
    where = tmp_path / "tmpfs"
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_full_tmpfs_during_a_checkpoint(fast_cfg, small_tmpfs):
    from rlentropy.errors import DiskFullError

    run_dir = small_tmpfs / "run"
    filler = small_tmpfs / "filler"

    def fill(tr, step, metrics):  # after step 1: leave room for the metrics line, not for a checkpoint
        st = os.statvfs(small_tmpfs)
        with open(filler, "wb") as fh:
            fh.write(b"\0" * max(0, st.f_bavail * st.f_frsize - 64 * 1024))

    cfg = fast_cfg(train={"steps": 2}, checkpoint={"every": 1, "keep_last": 1}, run_dir=str(run_dir))
    with pytest.raises(DiskFullError) as exc:
        run_training(cfg, step_hook=lambda tr, s, m: fill(tr, s, m) if s == 1 else None)
    msg = str(exc.value)
    assert msg.startswith("disk full: cannot write ") and "\n" not in msg, msg
    assert "no checkpoint yet" in msg and f"resume with: rlentropy train --resume {run_dir}" in msg
    assert not any((run_dir / "checkpoints").glob("*step_*"))  # no partial step_1 and no .tmp
    filler.unlink()
    assert run_training(resume_config(run_dir, []), resume=True).step == 2
    assert _steps(run_dir) == [1, 2]


# --------------------------------------------------------------------------------- 4. over-long rows
def _rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _file_cfg(fast_cfg, path: Path, **data):
    return fast_cfg(
        data={"task": "file", "path": str(path), "params": {"eval_size": 2}, **data},
        rollout={"max_new_tokens": 12},
        train={"steps": 1, "prompts_per_step": 2, "group_size": 2},
    )


def _math_rows(n: int) -> list[dict]:
    return [{"question": f"{i}+{i}=", "answer": str(2 * i)} for i in range(n)]


def test_over_long_prompt_is_an_error_naming_file_and_line(fast_cfg, tmp_path):
    rows = _math_rows(8)
    rows[4] = {"question": "7" * 500, "answer": "1"}  # 500 tokens > 128 context − 12 new tokens
    path = _rows(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=rf"^{path}:5: the (train|eval) prompt has \d+ tokens, more than the 116"):
        run_training(_file_cfg(fast_cfg, path))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_huge_row_is_rejected_before_tokenising(fast_cfg, tmp_path):
    rows = _math_rows(8)
    rows[2] = {"question": "9" * 1_000_000, "answer": "1"}  # 1 MB: crashed with a 1.1 TB allocation
    path = _rows(tmp_path / "d.jsonl", rows)
    t0 = time.perf_counter()
    with pytest.raises(DataError, match=rf"^{path}:3: the (train|eval) question has 1000000 characters"):
        run_training(_file_cfg(fast_cfg, path))
    assert time.perf_counter() - t0 < 60


def test_over_long_skip_counts_prints_and_records(fast_cfg, tmp_path, capsys):
    rows = _math_rows(10)
    rows[1] = {"question": "7" * 500, "answer": "1"}
    rows[6] = {"question": "8" * 10_000, "answer": "1"}
    path = _rows(tmp_path / "d.jsonl", rows)
    cfg = _file_cfg(fast_cfg, path, over_long="skip", params={"eval_path": str(_rows(tmp_path / "e.jsonl", rows[:4]))})
    tr = run_training(cfg)
    assert len(tr.train_examples) == 8 and len(tr.eval_examples) == 3
    err = capsys.readouterr().err
    assert (
        f"data: skipped 2 of 10 train prompts longer than 116 tokens (data.over_long=skip); the first: {path}:2" in err
    )
    assert "skipped 1 of 4 eval prompts" in err
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())["sessions"][-1]["data"]
    assert [(r["split"], r["skipped"]) for r in info["over_long"]] == [("train", 2), ("eval", 1)]
    assert info["prompt_token_limit"] == 116 and info["train_examples"] == 8


def test_max_prompt_tokens_cannot_exceed_the_context(fast_cfg, tmp_path):
    with pytest.raises(ConfigError, match="data.max_prompt_tokens: 200 \\+ 12 new tokens exceed the model's context"):
        run_training(fast_cfg(data={"max_prompt_tokens": 200}))
    with pytest.raises(ConfigError, match="rollout.max_new_tokens: 128 new tokens leave no room"):
        run_training(fast_cfg(rollout={"max_new_tokens": 128}))


def test_lengths_never_tokenise_a_huge_question_and_count_skips():
    from rlentropy.data.lengths import check_prompt_lengths
    from rlentropy.data.tasks import Example

    class Tok:
        def __init__(self):
            self.longest = 0

        def __call__(self, text):
            self.longest = max(self.longest, len(text))
            return {"input_ids": [0] * (len(text) + 1)}

    class Task:
        def render_prompt(self, ex, tok):
            return "Q: " + ex.question

    tok = Tok()
    exs = [Example(str(i), "x" * n, "1", {"source": "f.jsonl", "line": i + 1}) for i, n in enumerate([5, 50, 10**6])]
    kept, rep = check_prompt_lengths(exs, Task(), tok, limit=20, policy="skip")
    assert [e.id for e in kept] == ["0"] and rep.skipped == 2 and tok.longest < 100
    assert rep.examples == [
        "f.jsonl:2: the train prompt has 54 tokens > 20",
        "f.jsonl:3: the train question has 1000000 characters (not tokenised) > 20",
    ]
    with pytest.raises(DataError, match="^f.jsonl:2: the train prompt has 54 tokens, more than the 20 allowed"):
        check_prompt_lengths(exs, Task(), tok, limit=20, policy="error")


def test_eval_applies_the_same_length_check(fast_cfg, tmp_path, capsys):
    from rlentropy.evaluate.run import evaluate_run

    run_dir = tmp_path / "run"
    run_training(fast_cfg(train={"steps": 1}, run_dir=str(run_dir)))
    rows = _math_rows(4)
    rows[3] = {"question": "5" * 400, "answer": "1"}
    qfile = _rows(tmp_path / "q.jsonl", rows)
    with pytest.raises(DataError, match=rf"^{qfile}:4: the eval prompt has \d+ tokens"):
        evaluate_run(run_dir, dataset=str(qfile), n=1, include_base=False, log=lambda _m: None)
    warnings: list[str] = []
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    cfg["data"]["over_long"] = "skip"
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    evaluate_run(run_dir, dataset=str(qfile), n=1, include_base=False, log=lambda _m: None, warn=warnings.append)
    assert warnings and warnings[0].startswith("skipped 1 of 4 eval prompts longer than 116 tokens")
    rec = json.loads((run_dir / "eval" / "q" / "step_1" / "metrics.json").read_text())
    assert rec["num_prompts"] == 3


# --------------------------------------------------------------------------- 5. counts and messages
def test_skip_bad_rows_says_how_many(fast_cfg, tmp_path, capsys):
    lines = [json.dumps(r) for r in _math_rows(10)]
    lines[2] = "{not json"
    lines[5] = json.dumps({"question": "no answer"})
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")
    run_training(_file_cfg(fast_cfg, path, skip_bad_rows=True))
    err = capsys.readouterr().err
    assert f"data: skipped 2 bad rows of {path} (data.skip_bad_rows); the first: {path}:3: invalid JSON" in err
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())["sessions"][-1]["data"]
    assert info["bad_rows_skipped"] == 2 and len(info["bad_rows_first"]) == 2


def test_empty_config_and_directory_config_are_errors(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match="is empty: it needs at least the sections model, data and train"):
        load_config(empty)
    with pytest.raises(ConfigError, match="is a directory, not a YAML file"):
        load_config(tmp_path)


def test_cli_empty_config_starts_nothing(tmp_path, monkeypatch, capsys):
    from rlentropy.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(SystemExit) as exc:
        main(["train", "empty.yaml"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith("error: config file 'empty.yaml' is empty")
    assert not (tmp_path / "runs").exists()


def test_model_path_that_is_a_file_says_so(fast_cfg, tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"\0")
    with pytest.raises(ConfigError, match=r"model.path: '.*weights.bin' is a file, not a model directory"):
        run_training(fast_cfg(model={"path": str(f)}))


def test_all_training_questions_held_out_says_why(fast_cfg, tmp_path):
    path = _rows(tmp_path / "d.jsonl", [{"question": "1+1=", "answer": "2"}] * 6)
    with pytest.raises(DataError, match="no training examples left: 2 of its 6 usable rows are held out .* repeats"):
        run_training(_file_cfg(fast_cfg, path))


@pytest.mark.parametrize(
    "override, allowed",
    [
        (["algorithm.control=clip_b", "algorithm.control_params.nope=1"], "mu"),
        (["algorithm.loss_params.nope=1"], "eps_low"),
    ],
)
def test_cli_unknown_method_parameter_is_one_line_exit_2(fast_cfg, tmp_path, capsys, override, allowed):
    from rlentropy.cli import main

    cfg = _write_config(fast_cfg(), tmp_path / "c.yaml")
    with pytest.raises(SystemExit) as exc:
        main(["train", str(cfg), *override])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: algorithm.") and "nope" in err and allowed in err


# ------------------------------------------------------------------------------ 7. pruning and eval
def test_a_kill_mid_prune_leaves_no_half_deleted_checkpoint(fast_cfg, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    real = ck.shutil.rmtree

    def killed(path, *a, **kw):  # deletes one file of the pruned checkpoint, then the process dies
        p = Path(path)
        if p.is_dir() and ck._STEP_RE.match(p.name.removeprefix(".trash-")) and (p / "config.json").exists():
            (p / "model.safetensors").unlink()
            raise Kill
        return real(path, *a, **kw)

    monkeypatch.setattr(ck.shutil, "rmtree", killed)
    with pytest.raises(Kill):
        run_training(fast_cfg(train={"steps": 2}, checkpoint={"every": 1, "keep_last": 1}, run_dir=str(run_dir)))
    monkeypatch.undo()
    root = run_dir / "checkpoints"
    assert not (root / "step_1").exists()  # renamed before deleting
    assert [s for s, _ in list_checkpoints(run_dir)] == [2]
    resumed = run_training(resume_config(run_dir, ["train.steps=3"]), resume=True)
    assert resumed.step == 3
    assert sorted(p.name for p in root.iterdir()) == ["step_3"]  # the leftover is gone


def test_a_checkpoint_without_weights_is_not_complete(fast_cfg, tmp_path):
    run_dir = tmp_path / "run"
    run_training(fast_cfg(train={"steps": 2}, checkpoint={"every": 1, "keep_last": 2}, run_dir=str(run_dir)))
    (run_dir / "checkpoints" / "step_2" / "model.safetensors").unlink()  # an older version's half prune
    assert [s for s, _ in list_checkpoints(run_dir)] == [1]
    complete, broken = ck.scan_checkpoints(run_dir)
    assert [s for s, _ in complete] == [1] and broken[0][0] == 2 and "model.safetensors" in broken[0][2]


# ------------------------------------------------------------------------- 8. TensorBoard after resume
def _tensorboard_steps(run_dir: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def test_tensorboard_holds_each_step_once_after_a_resume(fast_cfg, tmp_path):
    run_dir = tmp_path / "run"
    cfg = fast_cfg(train={"steps": 4}, checkpoint={"every": 2}, logging={"tensorboard": True}, run_dir=str(run_dir))
    with pytest.raises(Kill):
        run_training(cfg, step_hook=_kill_at(4))  # steps 1-3 logged, checkpoint at 2
    time.sleep(1.1)  # a new event file name (its timestamp has one-second resolution)
    run_training(resume_config(run_dir, []), resume=True)
    assert _steps(run_dir) == [1, 2, 3, 4]
    assert _tensorboard_steps(run_dir, "reward/mean") == [1, 2, 3, 4]


# ----------------------------------------------------------------------------------------- 9. threads
def test_train_threads_applied_logged_and_restored(fast_cfg, tmp_path):
    seen = []
    torch.set_num_threads(2)
    cfg = fast_cfg(train={"steps": 1, "threads": 1}, run_dir=str(tmp_path / "a"))
    run_training(cfg, step_hook=lambda tr, s, m: seen.append(torch.get_num_threads()))
    assert seen == [1] and torch.get_num_threads() == 2
    info = json.loads((tmp_path / "a" / "run_info.json").read_text())["sessions"][-1]
    assert info["torch_threads"] == 1
    assert yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())["train"]["threads"] == 1
    auto = run_training(fast_cfg(train={"steps": 1}, run_dir=str(tmp_path / "b")))  # "auto": 1 on CPU
    assert auto.cfg.train.threads == "auto" and auto.run_info.threads == 1
    with pytest.raises(ConfigError, match="train.threads: must be an integer >= 1 or 'auto', got 0"):
        fast_cfg(train={"threads": 0})


def test_eval_threads_option(tmp_path, capsys):
    from rlentropy.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["eval", str(tmp_path), "--threads", "two"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith("error: --threads: must be a number >= 1 or auto")


def test_resume_of_a_finished_run_says_so(fast_cfg, capsys):
    # issue #17: `--resume` of a finished run printed "done: 4 steps — reward nan, entropy nan"
    from rlentropy.cli import main

    cfg = fast_cfg(train={"steps": 2})
    run_training(cfg)
    run = cfg.resolved_run_dir()
    metrics = (run / "metrics.jsonl").read_text()
    capsys.readouterr()
    main(["train", "--resume", str(run)])
    out = capsys.readouterr().out
    assert out == (
        f"{run}: already finished at step 2 (train.steps is 2); nothing to train. "
        f"To train further: rlentropy train --resume {run} train.steps=4\n"
    )
    assert (run / "metrics.jsonl").read_text() == metrics  # nothing touched
    main(["train", "--resume", str(run), "train.steps=3", "--quiet"])  # the printed remedy trains on
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
