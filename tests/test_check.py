"""`rlentropy check`: a config validated without training, on the tiny model and on every shipped config."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlentropy.check import check_config
from rlentropy.models.loading import ModelConfig, load_policy, num_parameters

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
# What a CPU machine without the Qwen models in its Hugging Face cache may warn about, and nothing else.
ALLOWED_WARNINGS = ("is not in the local Hugging Face cache", "its size and the prompt lengths are not checked")
ALLOWED_WARNINGS += ("has no CUDA GPU", "model.load_in_4bit needs", "prompt lengths not checked: no tokenizer")


def _yaml(tmp_path: Path, model_dir: Path, extra: str = "") -> Path:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"model:\n  path: {model_dir}\n  lora: {{enabled: true, r: 4}}\ndata:\n  task: countdown\n"
        "rollout:\n  max_new_tokens: 8\ntrain:\n  steps: 10\n  prompts_per_step: 2\n  group_size: 4\n  device: cpu\n"
        f"checkpoint:\n  every: 4\n  keep_last: 2\nrun_dir: {tmp_path / 'run'}\n{extra}"
    )
    return cfg


def test_check_on_the_tiny_model(tiny_model_dir, tmp_path):
    report = check_config(_yaml(tmp_path, tiny_model_dir))
    text = report.text()
    assert report.exit_code == 0, text
    assert [line.level for line in report.lines if line.level != "INFO"] == ["OK"] * 8, text
    # parameters counted on the meta device equal the loaded model's, LoRA included
    loaded = load_policy(ModelConfig(path=str(tiny_model_dir), lora={"enabled": True, "r": 4}))
    trainable, total = num_parameters(loaded.model)
    assert report.params == (trainable, total) and trainable < total
    assert f"{total:,} total, {trainable:,} trainable (LoRA r 4 on all-linear)" in text
    # weights in float32 + gradients + 2 AdamW states of the trainable parameters
    mem = next(line.text for line in report.lines if line.topic == "memory")
    assert mem.startswith(f"weights {total * 4 / 1024:.1f} KiB + gradients {trainable * 4 / 1024:.1f} KiB")
    assert "2 prompts × 4 samples = 8 sequences per step: ≤ 64 response tokens (8 each)" in text
    assert "every 4 steps and at the end: 3 written, the newest 2 kept" in text  # steps 4, 8 and 10
    assert text.splitlines()[-1].startswith("check: 8 OK, 0 WARN, 0 FAIL")
    assert not (tmp_path / "run").exists()  # nothing written


@pytest.mark.parametrize(
    ("override", "topic", "message"),
    [
        ("algorithm.control=clipb", "config", "algorithm.control: 'clipb' is not allowed; allowed: none"),
        ("model.path=/no/such/model", "model", "model.path: '/no/such/model' does not exist"),
        (
            "data.max_prompt_tokens=12",
            "prompts",
            "train prompts are longer than 12 tokens: `rlentropy train` would stop",
        ),
        ("algorithm.control_params={mu: -1}", "config", "algorithm.control_params"),
        ("data.task=file", "data", "data.path: the 'file' task needs data.path"),
        ("model.load_in_4bit=true", "device", "a 4-bit base cannot be trained directly"),
    ],
)
def test_check_fails_name_the_problem_and_exit_2(override, topic, message, tiny_model_dir, tmp_path, capsys):
    from rlentropy.cli import main

    cfg = _yaml(tmp_path, tiny_model_dir)
    if override.startswith("model.load_in_4bit"):  # a 4-bit base needs LoRA: turn it off to see the failure
        override_args = [override, "model.lora.enabled=false"]
    else:
        override_args = [override]
    report = check_config(cfg, override_args)
    fails = [line for line in report.lines if line.level == "FAIL"]
    assert report.exit_code == 2 and fails, report.text()
    assert fails[0].topic == topic and message in fails[0].text
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["check", str(cfg), *override_args])
    assert exc.value.code == 2 and f"FAIL  {topic:<11} " in capsys.readouterr().out


def test_check_warns_about_a_run_dir_in_use_and_skipped_prompts(tiny_model_dir, tmp_path):
    cfg = _yaml(tmp_path, tiny_model_dir)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    report = check_config(cfg, ["data.max_prompt_tokens=12", "data.over_long=skip"])
    warns = {line.topic: line.text for line in report.lines if line.level == "WARN"}
    assert report.exit_code == 0
    assert "already holds a run" in warns["run_dir"] and "would be skipped (data.over_long=skip)" in warns["prompts"]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_passes_check(path):
    report = check_config(path)
    assert report.exit_code == 0, report.text()
    unexpected = [str(x) for x in report.lines if x.level == "WARN" and not any(w in x.text for w in ALLOWED_WARNINGS)]
    assert not unexpected, report.text()
    if "qwen" not in path.name:  # the CPU configs: everything checked, nothing to warn about
        assert report.count("WARN") == 0 and report.params is not None, report.text()
