"""User code through `plugins:`: a reward, a task and an entropy control registered from a file the config
names, found from anywhere once resolved, imported once, and every failure one line naming the plugin."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from rlentropy.data import build_task
from rlentropy.data.tasks import Example
from rlentropy.errors import ConfigError
from rlentropy.runs.config import dump_config, load_config, yaml_load
from rlentropy.runs.plugins import load_plugins

PLUGIN = textwrap.dedent(
    '''
    import torch

    from rlentropy.algorithms import CONTROLS
    from rlentropy.data import Example, register_task
    from rlentropy.rewards import register_reward


    @register_reward("plug_len")
    def short_answers(completion: str, example, *, target: int = 3) -> float:
        """1 for a completion of at most `target` characters."""
        return 1.0 if len(completion) <= target else 0.0


    class Echo:
        name = "plug_echo"
        stop_strings = []

        def train_examples(self):
            return [Example(f"t{i}", f"say {i}", str(i)) for i in range(8)]

        def eval_examples(self):
            return [Example(f"e{i}", f"say {i}", str(i)) for i in range(2)]

        def render_prompt(self, example, tokenizer):
            return example.question

        def score(self, completions, examples):
            return [float(c.strip() == e.answer) for c, e in zip(completions, examples)]


    @register_task("plug_echo")
    def make_echo(cfg):
        return Echo()


    @CONTROLS.register("plug_keep_all", kind="mask", inputs=("mask",), stage="old", summary="changes nothing")
    def keep_all(mask, *, scale: float = 1.0):
        return mask, {"kept": mask.sum() * scale}
    '''
)


@pytest.fixture()
def plugin_dir(tmp_path, restore_registries, monkeypatch):
    d = tmp_path / "project"
    d.mkdir()
    (d / "my_plugin.py").write_text(PLUGIN)
    (d / "run.yaml").write_text(
        "plugins: [my_plugin.py]\ndata:\n  task: plug_echo\n  reward: plug_len\n  reward_params: {target: 2}\n"
        "algorithm:\n  control: plug_keep_all\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # files are found next to the config when not in the working directory
    return d


def test_a_plugin_registers_a_reward_a_task_and_a_control(plugin_dir):
    cfg = load_config(plugin_dir / "run.yaml")
    assert cfg.plugins == [str((plugin_dir / "my_plugin.py").resolve())]  # recorded resolved
    assert cfg.data.reward == "plug_len" and cfg.algorithm.control == "plug_keep_all"
    task = build_task(cfg.data)
    ex = task.train_examples()[:2]
    assert task.name == "plug_echo" and task.render_prompt(ex[0], None) == "say 0"
    assert task.score(["ab", "abc"], ex) == [1.0, 0.0]  # data.reward replaces the task's own score
    # the resolved config (a run's config.yaml) loads from any directory, and the plugin is imported once
    again = load_config(None, [f"plugins={yaml_load(dump_config(cfg))['plugins']}", "data.task=plug_echo"])
    assert again.plugins == cfg.plugins
    assert sum(1 for m in sys.modules if m.startswith("_rlentropy_plugin_my_plugin_")) == 1


def test_a_plugin_trains(plugin_dir, tiny_model_dir, tmp_path):
    from rlentropy.train.run import run_training

    overrides = [f"model.path={tiny_model_dir}", f"run_dir={tmp_path / 'run'}", "train.steps=1"]
    overrides += ["train.prompts_per_step=2", "train.group_size=2", "rollout.max_new_tokens=4", "train.device=cpu"]
    trainer = run_training(load_config(plugin_dir / "run.yaml", [*overrides, "logging.tensorboard=false"]))
    h = trainer.history[0]
    assert h["control/kept"] > 0 and 0.0 <= h["reward/mean"] <= 1.0


def test_the_same_file_imported_twice_is_no_duplicate(plugin_dir):
    load_plugins(["my_plugin.py"], base_dir=plugin_dir)
    sys.path.insert(0, str(plugin_dir))
    import my_plugin  # noqa: F401 - the user's own import of the same file registers the same definitions

    sys.modules.pop("my_plugin")


@pytest.mark.parametrize(
    ("entries", "files", "message"),
    [
        (["nope.py"], {}, "plugins: 'nope.py': no such file (looked in "),
        (["bad.py"], {"bad.py": "x = 1\ndef f(:\n"}, "plugins: importing 'bad.py' failed: SyntaxError: "),
        (["boom.py"], {"boom.py": "import os\n\n1 / 0\n"}, "plugins: importing 'boom.py' failed: ZeroDivisionError"),
        (["no_such_module_xyz"], {}, "plugins: cannot import module 'no_such_module_xyz': it is not installed"),
        (["needs.py"], {"needs.py": "import no_such_dependency_xyz\n"}, "ModuleNotFoundError: No module named"),
        (["a b"], {}, "plugins: 'a b' is neither a Python file (*.py) nor a module name"),
        ([3], {}, "plugins: must be a list of Python files or module names, got [3]"),
    ],
)
def test_plugin_errors_are_one_line_naming_the_plugin(entries, files, message, tmp_path, restore_registries):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_plugins(entries, base_dir=tmp_path)
    text = str(exc.value)
    assert message in text and "\n" not in text
    if entries[0] in ("bad.py", "boom.py"):  # the plugin's own file and line
        assert f"{tmp_path / entries[0]}:{2 if entries[0] == 'bad.py' else 3})" in text


def test_a_plugin_that_registers_a_taken_name_is_named(tmp_path, restore_registries):
    (tmp_path / "dup.py").write_text(
        "from rlentropy.rewards import register_reward\n\n"
        "@register_reward('exact_match')\ndef mine(c, e):\n    return 0.0\n"
    )
    with pytest.raises(ConfigError, match=r"plugins: importing '.*dup.py' failed: ValueError: reward 'exact_match' is"):
        load_config(None, [f"plugins=[{tmp_path / 'dup.py'}]"])


def test_reward_names_and_parameters_are_checked():
    with pytest.raises(ConfigError, match=r"data.reward: 'nope' is not allowed; allowed: exact_match"):
        load_config(None, ["data.reward=nope"])
    with pytest.raises(ConfigError, match="data.reward_params: unknown parameter 'x' of reward 'exact_match'"):
        load_config(None, ["data.reward=exact_match", "data.reward_params.x=1"])
    with pytest.raises(ConfigError, match="data.reward_params: set data.reward"):
        load_config(None, ["data.reward_params.strip=false"])
    cfg = load_config(None, ["data.reward=exact_match", "data.reward_params.case_sensitive=false"])
    task = build_task(cfg.data)
    ex = task.train_examples()[0]
    assert task.score([f" {ex.answer.upper()} ", "nope"], [ex, ex]) == [1.0, 0.0]


def test_a_reward_must_return_a_number_per_completion(restore_registries):
    from rlentropy.rewards import get_reward, register_reward

    @register_reward("bad_count", batched=True)
    def bad_count(completions, examples):
        return [1.0]

    @register_reward("bad_value")
    def bad_value(completion, example):
        return "yes"

    ex = Example("1", "q", "a")
    with pytest.raises(ValueError, match="reward 'bad_count' returned 1 values for 2 completions"):
        get_reward("bad_count").score(["a", "b"], [ex, ex], {})
    with pytest.raises(ValueError, match="reward 'bad_value' returned 'yes'; a reward is a finite number"):
        get_reward("bad_value").score(["a"], [ex], {})


def test_raw_templates_pass_the_question_unchanged(tiny_model_dir):
    from transformers import AutoTokenizer

    from rlentropy.data.templates import get_template

    assert get_template("raw").render("Reverse: abc", None) == "Reverse: abc"
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    with pytest.raises(ConfigError, match="chat template"):
        get_template("raw_chat").render("x", tok)  # the character tokenizer has none
    assert Path(tiny_model_dir).is_dir()
