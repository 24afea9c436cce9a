"""A new method is one registered entry: registered here, in the test file, it runs in our trainer and
through the TRL adapter with no edit to `src/`.

The control reads the CURRENT policy's entropy (stage "current", per micro-batch on the training
forward) and drops the most confident tokens of a micro-batch from the loss. The test checks that
each runtime called it with the training forward's entropy (a tensor that carries a gradient), that
it changed the update, and that its metrics reached the logs.
"""

from __future__ import annotations

import copy

import pytest
import torch

from _helpers import reward_len, trl_trainer
from rlentropy.algorithms import CONTROLS
from rlentropy.algorithms._util import drop_fractions

NAME = "test_drop_confident"
CALLS: list[dict] = []


def drop_confident(
    entropy: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor, *, h_min: float = 0.5
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Drop valid tokens whose entropy is below `h_min` (the policy is already confident there)."""
    CALLS.append({"requires_grad": entropy.requires_grad, "shape": tuple(entropy.shape)})
    keep = (mask > 0) & (entropy.detach() >= h_min)  # [B, T]
    new_mask = keep.to(mask.dtype)  # [B, T]
    metrics = drop_fractions(mask, new_mask, advantages)
    metrics["entropy_floor"] = torch.tensor(float(h_min))
    return new_mask, metrics


@pytest.fixture()
def registered():
    CALLS.clear()
    CONTROLS.register(
        NAME,
        kind="mask",
        inputs=("entropy", "mask", "advantages"),
        stage="current",
        paper="a test",
        summary="drop confident tokens",
    )(drop_confident)
    yield
    CONTROLS.remove(NAME)


def test_runs_in_our_trainer(registered, fast_cfg, tmp_path):
    from rlentropy.train.run import run_training

    def run(algorithm, tag):
        cfg = fast_cfg(
            algorithm=algorithm,
            data={"task": "parity_test"},
            train={"steps": 2, "micro_batch_size": 4},
            run_dir=str(tmp_path / tag),
        )
        tr = run_training(cfg)
        return tr.history, {n: p.detach().clone() for n, p in tr.model.named_parameters()}

    h_base, w_base = run({}, "base")
    assert not CALLS
    h_min = h_base[0]["entropy/mean"]  # about half the tokens of a random policy sit below its mean entropy
    h, w = run({"control": NAME, "control_params": {"h_min": h_min}}, "new")
    assert CALLS[0]["shape"] == (4, 3)  # the parameter check at setup: a dummy group of the run's 4 samples
    calls = CALLS[1:]
    assert calls and all(c["requires_grad"] for c in calls)  # the training forward's entropy, per micro-batch
    assert {c["shape"][0] for c in calls} == {4}  # micro-batches of 4 rows
    assert all(0 < r["control/frac_removed"] < 1 for r in h)
    assert all(r["control/entropy_floor"] == pytest.approx(h_min) for r in h)
    assert any(not torch.equal(w[n], w_base[n]) for n in w)  # the update changed
    assert h[0]["reward/mean"] == h_base[0]["reward/mean"]  # same rollouts on the first step


def test_runs_through_the_trl_adapter(registered, tmp_path):
    pytest.importorskip("trl")
    from rlentropy.integrations.trl import EntropyGRPOConfig, EntropyGRPOTrainer
    from rlentropy.models.tiny import make_random_tiny_policy

    model, tok = make_random_tiny_policy(seed=0)

    def trainer(**kw):
        return trl_trainer(
            EntropyGRPOTrainer,
            EntropyGRPOConfig,
            copy.deepcopy(model),
            tok,
            tmp_path,
            reward_len,
            temperature=0.9,
            **kw,
        )

    g = torch.Generator().manual_seed(0)
    inputs = {
        "prompt_ids": torch.randint(4, 100, (4, 5), generator=g),
        "prompt_mask": torch.ones(4, 5, dtype=torch.long),
        "completion_ids": torch.randint(4, 100, (4, 6), generator=g),
        "completion_mask": torch.ones(4, 6, dtype=torch.long),
        "advantages": torch.tensor([1.0, -1.0, 0.5, -0.5]),
    }
    inputs["num_items_in_batch"] = inputs["completion_mask"].sum()
    plain = trainer()
    plain._compute_loss(plain.model, dict(inputs)).backward()
    h_mean = plain._metrics["train"]["entropy"][-1]  # TRL's own mean entropy of this forward
    ours = trainer(entropy_control=NAME, entropy_control_params={"h_min": h_mean})
    ours._compute_loss(ours.model, dict(inputs)).backward()
    assert CALLS and CALLS[-1]["shape"] == (4, 6)
    grads = [(p.grad, q.grad) for p, q in zip(plain.model.parameters(), ours.model.parameters()) if p.grad is not None]
    assert grads and any(not torch.equal(a, b) for a, b in grads)  # the control changed the gradient
    removed = ours._metrics["train"][f"rlentropy/{NAME}/frac_dropped"][-1]
    assert 0 < removed < 1
    CALLS.clear()
    ours.train()  # a real short run: generation, rewards, the control inside TRL's loop
    assert CALLS
