"""The tiny model: tokenizer, config, random policies, the pretrain recipe and the shipped weights."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from rlentropy.models import pretrain as pretrain_mod
from rlentropy.models.pretrain import PretrainConfig, encode_sft_batch, evaluate_pass_at_k, pretrain
from rlentropy.models.tiny import (
    build_tokenizer,
    load_shipped_policy,
    make_random_tiny_policy,
    shipped_policy_path,
    tiny_llama_config,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_tokenizer_is_character_level_and_round_trips(tmp_path):
    tok = build_tokenizer()
    assert len(tok) == 100
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    text = "Make 22 from 3 5 7:(3*5)+7 = 22\n~!"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == 1 + len(text)  # one token per character
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok("é")["input_ids"] == [1, 3]  # outside printable ASCII -> <unk>
    tok.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(text)["input_ids"] == ids and again.eos_token_id == 2 and again.pad_token_id == 0


def test_config_and_random_policy_are_seeded():
    cfg = tiny_llama_config(num_hidden_layers=3)
    assert cfg.vocab_size == 100 and cfg.hidden_size == 128 and cfg.num_hidden_layers == 3
    torch.manual_seed(0)
    state = torch.random.get_rng_state()
    a, tok = make_random_tiny_policy(seed=1)
    b, _ = make_random_tiny_policy(seed=1)
    c, _ = make_random_tiny_policy(seed=2, hidden=64, layers=1)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert a.config.hidden_size == 32 and a.config.num_hidden_layers == 2 and not a.training
    assert c.config.hidden_size == 64 and c.config.num_hidden_layers == 1
    # a random init is near-uniform: next-token entropy close to log(100) = 4.605 nats
    with torch.no_grad():
        logp = torch.log_softmax(a(**tok(["Make 3 from 1 2:"], return_tensors="pt")).logits[0, -1], -1)
    assert -(logp.exp() * logp).sum() > 4.5
    with pytest.raises(ValueError, match="hidden"):
        make_random_tiny_policy(seed=0, hidden=30, heads=4)


def test_encode_sft_batch_masks_prompt_and_padding():
    tok = build_tokenizer()
    ids, labels = encode_sft_batch(tok, ["ab:", "a:"], ["1+2", "3"])
    # row 0: <bos> a b : 1 + 2 <eos>   (8 tokens); row 1: <bos> a : 3 <eos> + 3 pads
    assert ids.shape == labels.shape == (2, 8)
    assert tok.decode(ids[0]) == "<bos>ab:1+2<eos>"
    assert tok.decode(ids[1]) == "<bos>a:3<eos><pad><pad><pad>"
    assert labels[0].tolist() == [-100] * 4 + ids[0, 4:].tolist()
    assert labels[1].tolist() == [-100] * 3 + [ids[1, 3].item(), 2] + [-100] * 3


TINY_RECIPE = PretrainConfig(
    steps=3, batch_size=8, warmup=1, train_size=300, eval_samples=2, eval_prompts=4, max_new_tokens=6
)


def test_pretrain_is_deterministic_and_loadable(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m1 = pretrain(tmp_path / "a", seed=3, cfg=TINY_RECIPE, quiet=True)
    m2 = pretrain(tmp_path / "b", seed=3, cfg=TINY_RECIPE, quiet=True)
    m3 = pretrain(tmp_path / "c", seed=4, cfg=TINY_RECIPE, quiet=True)
    wa, wb, wc = (load_file(tmp_path / d / "model.safetensors") for d in "abc")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    for key in ("pass@1", "pass@2", "entropy", "response_len"):
        assert m1[key] == m2[key]
    assert m3["seed"] == 4 and 0.0 <= m1["pass@1"] <= m1["pass@2"] <= 1.0
    saved = json.loads((tmp_path / "a" / "pretrain_metrics.json").read_text())
    assert saved["pass@2"] == m1["pass@2"] and saved["recipe"]["steps"] == 3
    assert "rlentropy pretrain --out" in (tmp_path / "a" / "README.md").read_text()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    tok = AutoTokenizer.from_pretrained(tmp_path / "a")
    assert model.config.vocab_size == len(tok) == 100


def test_cli_pretrain_runs_the_recipe(tmp_path, monkeypatch, capsys):
    from rlentropy.cli import main

    monkeypatch.setattr(pretrain_mod, "DEFAULT_RECIPE", TINY_RECIPE)
    main(["pretrain", "--out", str(tmp_path / "p"), "--seed", "1", "--quiet"])
    out = capsys.readouterr().out
    assert "pass@1=" in out and "pass@2=" in out
    assert (tmp_path / "p" / "model.safetensors").is_file()


def test_cli_pretrain_takes_overrides_and_steps(tmp_path, capsys):
    from rlentropy.cli import main

    out = tmp_path / "p"
    args = ["pretrain", "--out", str(out), "--steps", "3", "train_size=64", "batch_size=8", "warmup=1"]
    main([*args, "eval_prompts=4", "eval_samples=2", "max_new_tokens=4", "--quiet"])
    recipe = json.loads((out / "pretrain_metrics.json").read_text())["recipe"]
    assert (recipe["steps"], recipe["train_size"], recipe["eval_prompts"], recipe["eval_samples"]) == (3, 64, 4, 2)
    assert "pass@2=" in capsys.readouterr().out
    for bad, message in (
        ("nope=1", "pretrain: nope: unknown key; allowed keys: steps, batch_size"),
        ("steps=x", "pretrain: steps: expected int, got 'x'"),
        ("lr=0", "pretrain: lr: must be > 0"),
        ("steps", "expected key=value"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(["pretrain", "--out", str(tmp_path / "q"), bad])
        assert exc.value.code == 2
        assert message in capsys.readouterr().err


def test_shipped_policy_files_and_loading():
    path = shipped_policy_path()
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "README.md",
        "pretrain_metrics.json",
    ):
        assert (path / name).is_file(), name
    assert (path / "model.safetensors").stat().st_size <= 20 * 2**20
    model, tok = load_shipped_policy()
    n_params = sum(p.numel() for p in model.parameters())
    assert 500_000 <= n_params <= 10_000_000
    assert model.config.model_type == "llama" and not model.training
    assert model.generation_config.eos_token_id == tok.eos_token_id == 2
    recorded = json.loads((path / "pretrain_metrics.json").read_text())
    assert recorded["parameters"] == n_params
    assert 0.1 <= recorded["pass@1"] <= 0.6 and recorded["pass@16"] >= recorded["pass@1"] + 0.2


@pytest.mark.slow
def test_shipped_policy_pass_rates_in_range():
    """pass@1 at T=1 on 100 eval prompts × 16 samples in [0.1, 0.6], pass@16 clearly higher."""
    from rlentropy.data import DataConfig
    from rlentropy.data.synthetic import CountdownTask

    model, tok = load_shipped_policy()
    task = CountdownTask(DataConfig(task="countdown", params={"train_size": 1}))
    m = evaluate_pass_at_k(model, tok, task, task.eval_examples()[:100], n=16, seed=123)
    assert 0.1 <= m["pass@1"] <= 0.6
    assert m["pass@16"] >= m["pass@1"] + 0.2
    assert m["entropy"] > 0.2  # room for RL to collapse it
