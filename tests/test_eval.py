"""Evaluation on a real tiny model: `evaluate_model` numbers, and `rlentropy eval` over a run's checkpoints."""

from __future__ import annotations

import csv
import gzip
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from rlentropy.data import DataConfig, Example, build_task
from rlentropy.errors import UserError
from rlentropy.evaluate import evaluate_model, sample_metrics
from rlentropy.evaluate.run import evaluate_run, write_metrics_csv
from rlentropy.rollout.hf import HFGenerator, position_ids_from_mask


class FirstCharTask:
    """A task a random model half-solves: the answer is the completion's first character, and it is
    correct when that character is a lowercase letter or a digit (36 of the 100 tokens)."""

    name = "first_char"
    stop_strings: list[str] = []

    def __init__(self, prompts: int):
        self._eval = [Example(id=f"p{i}", question=f"{i}+{i}", answer="?") for i in range(prompts)]

    def train_examples(self) -> list[Example]:
        return []

    def eval_examples(self) -> list[Example]:
        return list(self._eval)

    def render_prompt(self, example: Example, tokenizer: Any) -> str:
        return example.question + "="

    def extract_answer(self, completion: str) -> str | None:
        return completion[:1] or None

    def normalize_answer(self, answer: str) -> str:
        return answer.lower()

    def score(self, completions: Sequence[str], examples: Sequence[Example]) -> list[float]:
        return [1.0 if c[:1].islower() or c[:1].isdigit() else 0.0 for c in completions]


@pytest.fixture(scope="module")
def tiny():
    from rlentropy.models.tiny import make_random_tiny_policy

    torch.set_num_threads(2)
    # a sharper random model than the default init, so that completions are not all unique noise
    model, tok = make_random_tiny_policy(seed=3, hidden=32, layers=2, initializer_range=0.2)
    return model, tok


def _reference_entropy(model, batch, temperature: float) -> tuple[float, float]:
    """Token-mean entropy and surprisal from full logits in float64 (independent of TokenStats)."""
    with torch.no_grad():
        ids, att = batch.input_ids, batch.attention_mask  # [B, L]
        logits = model(input_ids=ids, attention_mask=att, position_ids=position_ids_from_mask(att)).logits  # [B, L, V]
        P = batch.prompt_len
        z = logits[:, P - 1 : -1].double() / temperature  # [B, T, V]
        logp = torch.log_softmax(z, dim=-1)  # [B, T, V]
        ent = -(logp.exp() * logp).sum(-1)  # [B, T]
        tok_logp = logp.gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1)  # [B, T]
        m = batch.response_mask.double()  # [B, T]
        return float((ent * m).sum() / m.sum()), float((-tok_logp * m).sum() / m.sum())


def test_evaluate_model_numbers(tiny):
    model, tok = tiny
    task = FirstCharTask(prompts=3)
    n, T = 6, 0.9
    metrics, samples = evaluate_model(model, tok, task, n=n, temperature=T, top_p=1.0, max_new_tokens=5, seed=7)
    assert len(samples) == 3 * n
    assert [(s["prompt_index"], s["sample_index"]) for s in samples] == [(p, i) for p in range(3) for i in range(n)]
    for key in (
        "pass@1",
        "pass@2",
        "pass@4",
        "pass@6",
        "avg@6",
        "maj@1",
        "maj@2",
        "maj@4",
        "maj@6",
        "entropy",
        "surprisal",
        "response_len",
        "format_valid",
        "truncated",
        "reward_mean",
    ):
        assert key in metrics, key
    # a mix of right and wrong samples, so the metrics below are not trivially 0 or 1
    assert 0 < sum(s["correct"] for s in samples) < len(samples)

    # pass@k / avg / maj recomputed from the sample records with the task's own answer normalisation
    answers = [
        [samples[p * n + i]["answer"].lower() if samples[p * n + i]["answer"] else None for i in range(n)]
        for p in range(3)
    ]
    correct = [[1.0 if samples[p * n + i]["correct"] else 0.0 for i in range(n)] for p in range(3)]
    ref = sample_metrics(answers, correct)
    for k, v in ref.items():
        assert metrics[k] == pytest.approx(v, abs=1e-12), k
    assert metrics["avg@6"] == pytest.approx(sum(s["correct"] for s in samples) / len(samples), abs=1e-12)

    # entropy / surprisal against a float64 full-logits reference on the very same samples
    # (one chunk of 18 sequences, seed + 0: the generator reproduces it)
    gen = HFGenerator(model, tok, max_new_tokens=5, temperature=T, top_p=1.0, stop_strings=[])
    prompts = [task.render_prompt(ex, tok) for ex in task.eval_examples()]
    batch = gen.generate(prompts, task.eval_examples(), n, seed=7)
    assert batch.completions == [s["completion"] for s in samples]
    h_ref, s_ref = _reference_entropy(model, batch, T)
    assert metrics["entropy"] == pytest.approx(h_ref, rel=1e-5)
    assert metrics["surprisal"] == pytest.approx(s_ref, rel=1e-5)
    lengths = batch.response_mask.sum(1)
    assert metrics["response_len"] == pytest.approx(float(lengths.double().mean()), abs=1e-12)
    assert [s["length"] for s in samples] == [int(x) for x in lengths]
    # format-valid = an answer was extracted (the task has an extractor and no format_valid)
    assert metrics["format_valid"] == pytest.approx(sum(1 for s in samples if s["answer"]) / len(samples), abs=1e-12)

    # same seed -> same result; model mode restored
    model.train()
    again, _ = evaluate_model(model, tok, task, n=n, temperature=T, top_p=1.0, max_new_tokens=5, seed=7)
    assert model.training
    model.eval()
    assert again == metrics


def test_evaluate_model_bad_input(tiny):
    model, tok = tiny
    task = FirstCharTask(prompts=2)
    kw = dict(temperature=1.0, top_p=1.0, max_new_tokens=4)
    with pytest.raises(ValueError, match="n must be"):
        evaluate_model(model, tok, task, n=0, **kw)
    with pytest.raises(ValueError, match="top_p"):
        evaluate_model(model, tok, task, n=2, temperature=1.0, top_p=0.0, max_new_tokens=4)
    with pytest.raises(ValueError, match="max_prompts"):
        evaluate_model(model, tok, task, n=2, max_prompts=0, **kw)


def test_evaluate_model_on_countdown_chunks(tiny):
    """A registered task, max_prompts, several generate chunks (batch_size 4 -> 2 prompts per chunk)."""
    model, tok = tiny
    task = build_task(DataConfig(task="countdown"), for_eval=True)
    metrics, samples = evaluate_model(
        model, tok, task, n=2, temperature=1.0, top_p=1.0, max_new_tokens=6, max_prompts=5, batch_size=4
    )
    assert metrics["num_prompts"] == 5 and len(samples) == 10
    assert {s["example_id"] for s in samples} == {ex.id for ex in task.eval_examples()[:5]}
    assert all(s["gold"] == task.eval_examples()[s["prompt_index"]].answer for s in samples)
    assert 0.0 <= metrics["pass@2"] <= 1.0 and metrics["entropy"] > 0


# ------------------------------------------------------------------------------ run directories
def _make_run(root: Path, model_dir: Path) -> Path:
    from rlentropy.models.tiny import make_random_tiny_policy
    from rlentropy.runs.checkpoints import save_checkpoint
    from rlentropy.runs.config import config_from_dict, dump_config

    run = root / "run"
    cfg = config_from_dict(
        {
            "name": "evaltest",
            "run_dir": str(run),
            "model": {"path": str(model_dir)},
            "data": {"task": "countdown", "max_eval": 3},
            "rollout": {"max_new_tokens": 5},
            "train": {"device": "cpu"},
        }
    )
    run.mkdir()
    (run / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
    for step, seed in ((2, 11), (4, 12)):
        model, tok = make_random_tiny_policy(seed=seed, hidden=32, layers=2)
        save_checkpoint(run, step, model=model, tokenizer=tok, state={"cursor": step}, keep_last=5)
    return run


def test_eval_run_writes_files_and_resumes(tiny_model_dir, tmp_path):
    run = _make_run(tmp_path, tiny_model_dir)
    logs: list[str] = []
    kw = dict(n=2, temperature=0.7, log=logs.append)
    evaluate_run(run, **kw)
    for step in (0, 2, 4):
        d = run / "eval" / f"step_{step}"
        rec = json.loads((d / "metrics.json").read_text())
        assert rec["step"] == step
        assert rec["settings"] == {
            "task": "countdown",
            "dataset": None,
            "n": 2,
            "temperature": 0.7,
            "top_p": 1.0,
            "max_new_tokens": 5,
            "max_prompts": None,
            "seed": 0,
        }
        with gzip.open(d / "samples.jsonl.gz", "rt") as fh:
            rows = [json.loads(line) for line in fh]
        assert len(rows) == 3 * 2  # max_eval 3 prompts × n 2
    assert json.loads((run / "eval/step_0/metrics.json").read_text())["checkpoint"].startswith("base:")
    with open(run / "eval" / "metrics.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["step"] for r in table] == ["0", "2", "4"]
    assert list(table[0])[:5] == ["step", "pass@1", "pass@2", "avg@2", "maj@1"]
    # different checkpoints (different random weights) -> different entropies
    assert len({r["entropy"] for r in table}) == 3

    # resumable: a second call skips every finished checkpoint
    mtimes = {p: p.stat().st_mtime_ns for p in (run / "eval").glob("step_*/metrics.json")}
    logs.clear()
    evaluate_run(run, **kw)
    assert len(logs) == 3 and all("skipped" in line for line in logs)
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    # --force recomputes one checkpoint; other settings recompute too
    logs.clear()
    evaluate_run(run / "checkpoints" / "step_4", force=True, **kw)
    assert len(logs) == 1 and logs[0].startswith("step_4: pass@1=")
    logs.clear()
    evaluate_run(run / "checkpoints" / "step_2", n=3, temperature=0.7, log=logs.append)
    assert "other settings" in logs[0]
    assert json.loads((run / "eval/step_2/metrics.json").read_text())["n"] == 3.0
    assert write_metrics_csv(run) == run / "eval" / "metrics.csv"


def test_eval_other_dataset_goes_to_its_own_directory(tiny_model_dir, tmp_path):
    run = _make_run(tmp_path, tiny_model_dir)
    qfile = tmp_path / "my questions.jsonl"
    qfile.write_text('{"question": "What is 2+3?", "answer": "5"}\n{"question": "What is 10/4?", "answer": "2.5"}\n')
    out = evaluate_run(run / "checkpoints" / "step_2", dataset=str(qfile), n=2, max_new_tokens=3, log=lambda _m: None)
    assert out == run / "eval" / "my_questions"
    rec = json.loads((out / "step_2" / "metrics.json").read_text())
    assert rec["settings"]["task"] == "file" and rec["settings"]["dataset"] == str(qfile)
    assert rec["num_prompts"] == 2  # every row of the file is an eval prompt
    assert (out / "metrics.csv").is_file()
    assert not (run / "eval" / "step_2").exists()  # the run's own eval results are untouched
    # naming the run's own task is the default location
    out2 = evaluate_run(run / "checkpoints" / "step_2", dataset="countdown", n=2, max_new_tokens=3, log=lambda _m: None)
    assert out2 == run / "eval" and (out2 / "step_2" / "metrics.json").is_file()


def test_default_normalise_votes_equal_numbers_together():
    from rlentropy.evaluate.core import default_normalise

    assert default_normalise("1,234") == default_normalise(" 1234 ") == default_normalise("$1234$")
    assert default_normalise("0.50") == default_normalise(".5")
    assert default_normalise("x + 1") == default_normalise("x+1") != default_normalise("x+2")
    assert default_normalise("\\frac{1}{2}") != default_normalise("0.5")  # symbolic answers compare as text


def test_eval_run_bad_input(tiny_model_dir, tmp_path):
    with pytest.raises(UserError, match="not a run directory"):
        evaluate_run(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        evaluate_run(tmp_path / "nope")
    run = _make_run(tmp_path, tiny_model_dir)
    (run / "checkpoints" / "step_4" / "model.safetensors").unlink()
    with pytest.raises(UserError, match=r"missing checkpoint file .*step_4/model\.safetensors"):
        evaluate_run(run / "checkpoints" / "step_4", n=2)
    # a whole run skips (and names) the broken checkpoint and evaluates the rest
    logs: list[str] = []
    evaluate_run(run, n=2, max_prompts=1, include_base=False, log=logs.append)
    assert logs[0].startswith("step_4: skipped, broken checkpoint (missing checkpoint file ")
    assert "step_4/model.safetensors" in logs[0]
    assert (run / "eval" / "step_2" / "metrics.json").is_file() and not (run / "eval" / "step_4").exists()


def test_cli_eval(tiny_model_dir, tmp_path, capsys):
    from rlentropy.cli import main

    run = _make_run(tmp_path, tiny_model_dir)
    capsys.readouterr()  # drop the progress output of saving the checkpoints
    with pytest.raises(SystemExit) as exc:
        main(["eval", str(tmp_path / "missing")])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().startswith("error: ")
    main(["eval", str(run / "checkpoints" / "step_2"), "--n", "2", "--max-prompts", "2", "--quiet"])
    rec = json.loads((run / "eval/step_2/metrics.json").read_text())
    assert rec["num_prompts"] == 2 and rec["n"] == 2
    assert not (run / "eval/step_0").exists()  # a single checkpoint: no base evaluation


def test_eval_run_without_checkpoints_is_an_error(tiny_model_dir, tmp_path, capsys):
    # a run that saved no checkpoint: nothing is evaluated (not the base model alone), exit 2
    from rlentropy.cli import main

    run = _make_run(tmp_path, tiny_model_dir)
    shutil.rmtree(run / "checkpoints")
    with pytest.raises(UserError, match="no complete checkpoint under .* to evaluate .*nothing was evaluated"):
        evaluate_run(run, n=2)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["eval", str(run), "--n", "2"])
    assert exc.value.code == 2 and capsys.readouterr().err.startswith("error: ")
    assert not (run / "eval").exists()


def test_eval_dataset_file_with_other_field_names(tiny_model_dir, tmp_path, capsys):
    # `rlentropy eval RUN --dataset my.jsonl` on a file whose fields are not question / answer
    from rlentropy.cli import main

    run = _make_run(tmp_path, tiny_model_dir)
    qfile = tmp_path / "mine.jsonl"
    qfile.write_text('{"problem": "2+3", "solution": {"value": "5"}}\n{"problem": "9-4", "solution": {"value": "5"}}\n')
    ck = str(run / "checkpoints" / "step_2")
    base = ["eval", ck, "--dataset", str(qfile), "--n", "2", "--max-new-tokens", "3", "--quiet"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:  # the default field names: one line naming the option to set
        main(base)
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert (
        "mine.jsonl:1: missing field 'question' (data.params.question_field; with rlentropy eval: --question-field)"
        in err
    )
    main([*base, "--question-field", "problem", "--answer-field", "solution.value"])
    rec = json.loads((run / "eval" / "mine" / "step_2" / "metrics.json").read_text())
    assert rec["num_prompts"] == 2
    with pytest.raises(UserError, match="--question-field: the field mapping applies to a dataset file"):
        evaluate_run(ck, n=2, fields={"question_field": "problem"})
