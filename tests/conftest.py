"""Shared fixtures: a tiny random Llama saved as an HF directory, and a fast training config.

Everything is built locally in the test (no download): hidden 32, 2 layers, the character tokenizer
of the shipped tiny policy.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny Llama (hidden 32, 2 layers) + tokenizer, saved with save_pretrained."""
    from rlentropy.models.tiny import make_random_tiny_policy

    out = tmp_path_factory.mktemp("tiny-random")
    model, tok = make_random_tiny_policy(seed=0, hidden=32, layers=2)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture()
def fast_cfg(tiny_model_dir: Path, tmp_path: Path):
    """A 2-step countdown config on the tiny random model (≈1 s per step on 2 CPU cores)."""

    def make(**sections):
        from rlentropy.runs.config import config_from_dict

        data = {
            "name": "t",
            "run_dir": str(tmp_path / "run"),
            "model": {"path": str(tiny_model_dir)},
            "data": {"task": "countdown"},
            "rollout": {"max_new_tokens": 12, "temperature": 1.0},
            "algorithm": {},
            "optim": {"lr": 1e-3, "weight_decay": 0.0},
            "train": {"steps": 2, "prompts_per_step": 4, "group_size": 4, "seed": 0, "device": "cpu"},
            "checkpoint": {"every": 0, "keep_last": 2},
            "logging": {"tensorboard": False},
        }
        for key, value in sections.items():
            if isinstance(value, dict):
                data.setdefault(key, {}).update(value)
            else:
                data[key] = value
        return config_from_dict(data)

    return make


@pytest.fixture(autouse=True)
def _torch_threads():
    # Tiny matrices: one intra-op thread is several times faster than two on a loaded 2-core machine.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


class _ParityTask:
    """A test task with rewards that vary within groups: 1 when the first sampled character's code
    point is even. Prompts are short digit strings; 64 train and 16 eval examples."""

    name = "parity_test"
    stop_strings: list = []

    def __init__(self, n_train: int = 64):
        from rlentropy.data.tasks import Example

        self._train = [Example(id=f"t{i}", question=f"{i}+{i}=", answer=str(2 * i)) for i in range(n_train)]
        self._eval = [Example(id=f"e{i}", question=f"{i}*2=", answer=str(2 * i)) for i in range(16)]

    def train_examples(self):
        return self._train

    def eval_examples(self):
        return self._eval

    def render_prompt(self, example, tokenizer):
        return example.question

    def score(self, completions, examples):
        return [1.0 if (c and ord(c[0]) % 2 == 0) else 0.0 for c in completions]


def _register_test_tasks() -> None:
    from rlentropy.data.tasks import _TASKS, register_task

    if "parity_test" not in _TASKS:
        register_task("parity_test")(lambda cfg: _ParityTask(int(cfg.params.get("n_train", 64))))


_register_test_tasks()


@pytest.fixture()
def restore_registries():
    """Every registry (tasks, rewards, the method families), the imported plugins and sys.path as they
    were before the test: user code a test imports through `plugins:` registers into them."""
    import sys

    from rlentropy.algorithms import ADVANTAGES, CONTROLLERS, CONTROLS, POLICY_LOSSES
    from rlentropy.data.tasks import _TASKS, available_tasks
    from rlentropy.rewards.registry import REWARDS
    from rlentropy.runs import plugins

    available_tasks()  # the built-in tasks register lazily: before the snapshot, so they stay
    families = (ADVANTAGES, CONTROLLERS, CONTROLS, POLICY_LOSSES)
    saved = [dict(r._entries) for r in families]
    dicts = (_TASKS, REWARDS, plugins._LOADED, plugins.REGISTERED)
    saved_dicts = [dict(d) for d in dicts]
    path = list(sys.path)
    yield
    for reg, entries in zip(families, saved):
        reg._entries.clear()
        reg._entries.update(entries)
    for d, entries in zip(dicts, saved_dicts):
        d.clear()
        d.update(entries)
    sys.path[:] = path


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    # accelerate keeps process-wide singleton state; a test that builds TRL's trainer (bf16 / fp32
    # settings of its own) must not leak it into the next test's Accelerator.
    yield
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


# Property tests: random exploration on developer machines, a fixed (derandomised) example stream in
# CI so that a red CI always reproduces locally with `CI=true make test`.
import os as _os  # noqa: E402

from hypothesis import settings as _hyp_settings  # noqa: E402

_hyp_settings.register_profile("ci", derandomize=True, print_blob=True)
if _os.environ.get("CI"):
    _hyp_settings.load_profile("ci")
