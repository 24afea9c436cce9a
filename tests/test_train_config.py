"""Config loading, overrides and one-line errors (in process and through the CLI in a subprocess)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rlentropy.algorithms.dispatch import control_names
from rlentropy.errors import ConfigError
from rlentropy.runs.config import RunConfig, apply_overrides, dump_config, load_config, parse_override

REPO = Path(__file__).resolve().parents[1]
# Every registered control, in registration order (the config's allowed values come from the registry).
CONTROL_LIST = ", ".join(control_names())


def test_overrides_are_yaml_scalars(tmp_path):
    assert parse_override("train.steps=5") == (["train", "steps"], 5)
    assert parse_override("optim.lr=1e-5") == (["optim", "lr"], 1e-5)
    assert parse_override("model.path=null") == (["model", "path"], None)
    assert parse_override("algorithm.loss_params={eps_high: 0.28}") == (
        ["algorithm", "loss_params"],
        {"eps_high": 0.28},
    )
    assert parse_override("logging.wandb=true") == (["logging", "wandb"], True)
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("train:\n  steps: 3\nalgorithm:\n  control: clip_b\n")
    cfg = load_config(cfg_file, ["train.steps=7", "algorithm.control_params.mu=1.5", "name=x"])
    assert cfg.train.steps == 7 and cfg.algorithm.control_params == {"mu": 1.5} and cfg.name == "x"
    assert cfg.resolved_run_dir() == Path("runs/x")
    # the resolved config round-trips
    again = tmp_path / "again.yaml"
    again.write_text(dump_config(cfg))
    assert load_config(again) == cfg


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "algorithm.contrl=clip_b",
            "algorithm.contrl: unknown key; allowed keys here: advantage, advantage_params, loss,",
        ),
        ("algorithm.control=clipb", f"algorithm.control: 'clipb' is not allowed; allowed: {CONTROL_LIST}"),
        ("algorithm.control_params.muu=1", "algorithm.control_params: muu given, but no control is configured"),
        ("train.steps=abc", "train.steps: input should be a valid integer"),
        ("train.steps=0", "train.steps: input should be greater than or equal to 1"),
        ("optim.schedule=exp", "optim.schedule: 'exp' is not allowed; allowed: constant, linear, cosine"),
        ("bogus=1", "bogus: unknown key; allowed keys here: name, run_dir, plugins, model, data,"),
        (
            "algorithm.controller=clip_threshold",
            "algorithm.controller: 'clip_threshold' needs algorithm.control clip_b or clip_v",
        ),
        ("train.steps.x=1", "train.steps: input should be a valid integer (got {'x': 1})"),
        ("probes.every=-1", "probes.every: input should be greater than or equal to 0"),
    ],
)
def test_errors_name_the_key(override, message):
    with pytest.raises(ConfigError) as exc:
        load_config(None, [override])
    text = str(exc.value)
    assert "\n" not in text
    assert text.startswith(message), text


def test_unknown_method_parameter_names_it_and_the_allowed_ones():
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["algorithm.control=clip_b", "algorithm.control_params.muu=1"])
    assert (
        str(exc.value)
        == "algorithm.control_params: unknown parameter 'muu' of entropy control 'clip_b'; allowed: mu, sides"
    )
    with pytest.raises(
        ConfigError,
        match="algorithm.loss_params: unknown parameter 'eps' of policy loss 'ppo'; allowed: "
        "eps_low, eps_high, clip_ratio_c",
    ):
        load_config(None, ["algorithm.loss_params.eps=0.1"])


def test_cli_config_error_is_one_line_exit_2(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("algorithm:\n  control: clipb\n")
    proc = subprocess.run(
        [sys.executable, "-m", "rlentropy.cli", "train", str(cfg_file), "train.steps=2"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr == (f"error: algorithm.control: 'clipb' is not allowed; allowed: {CONTROL_LIST}\n")
    assert not (tmp_path / "runs").exists()


def test_cli_missing_model_path_exit_2(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(f"model:\n  path: {tmp_path / 'missing-model'}\ntrain:\n  device: cpu\n")
    proc = subprocess.run(
        [sys.executable, "-m", "rlentropy.cli", "train", str(cfg_file), f"run_dir={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: model.path: ") and proc.stderr.count("\n") == 1
    assert not (tmp_path / "run").exists(), "nothing may be written before the inputs are checked"


def test_shipped_demo_config_validates():
    cfg = load_config(REPO / "configs" / "demo_countdown.yaml")
    assert isinstance(cfg, RunConfig) and cfg.data.task == "countdown"
    # every demo method's overrides give a valid config that switches exactly that method on
    methods = cfg.demo.methods
    assert list(methods) == ["grpo", "clip_b", "clip_v", "clip_cov", "kl_cov"] and cfg.demo.rule
    runs = {m: load_config(REPO / "configs" / "demo_countdown.yaml", o) for m, o in methods.items()}
    assert runs["grpo"].algorithm.control == "none" and runs["grpo"].algorithm.loss == "ppo"
    assert runs["clip_b"].algorithm.control == "clip_b" and runs["clip_v"].algorithm.control == "clip_v"
    assert runs["clip_cov"].algorithm.loss == "clip_cov" and runs["kl_cov"].algorithm.loss == "kl_cov"
    with pytest.raises(ConfigError, match="demo.nope: unknown key; allowed keys here: methods, rule"):
        load_config(None, ["demo.nope=1"])
    assert apply_overrides({"a": {"b": 1}}, ["a.c=2"]) == {"a": {"b": 1, "c": 2}}
    with pytest.raises(ConfigError, match="override train.steps.x: train.steps is not a section"):
        apply_overrides({"train": {"steps": 3}}, ["train.steps.x=1"])
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        apply_overrides({}, ["train.steps"])


def test_model_source_resolution(tmp_path):
    from rlentropy.models.loading import resolve_model_source

    assert resolve_model_source(None) == ("shipped", None)
    assert resolve_model_source("tiny") == ("shipped", None)
    with pytest.raises(ConfigError, match="not in the local Hugging Face cache"):
        resolve_model_source("rlentropy-test-org/no-such-model-xyz")
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_model_source(str(tmp_path / "a" / "b" / "c"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="without config.json"):
        resolve_model_source(str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="model.path"):
        resolve_model_source(str(tmp_path / "missing.gguf"))


def test_wandb_without_package_is_config_error(tmp_path, monkeypatch):
    import builtins

    from rlentropy.train.sinks import MetricsSink

    real_import = builtins.__import__

    def no_wandb(name, *a, **kw):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(ConfigError, match="logging.wandb"):
        MetricsSink(tmp_path, tensorboard=False, wandb=True)


def test_rollout_engine_selects_the_generator(fast_cfg, tmp_path):
    from rlentropy.train.run import run_training

    assert load_config(None).rollout.engine == "auto"
    assert load_config(None, ["rollout.engine=hf"]).rollout.engine == "auto"  # the old name, in old config.yaml
    with pytest.raises(ConfigError, match="rollout.engine: 'vllm' is not allowed; allowed: auto, lean, hf_generate"):
        load_config(None, ["rollout.engine=vllm"])
    for engine in ("lean", "hf_generate"):
        trainer = run_training(fast_cfg(rollout={"engine": engine}, train={"steps": 1}, run_dir=str(tmp_path / engine)))
        assert trainer.generator.engine == engine
