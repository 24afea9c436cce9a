"""Supervised warm-up of the tiny base policy on countdown solutions (`rlentropy pretrain`).

The shipped weights in `rlentropy/assets/tiny-countdown/` are the output of

    rlentropy pretrain --out src/rlentropy/assets/tiny-countdown --seed 0

which trains `tiny_llama_config()` (hidden 128, 4 layers, about 0.8M parameters) with next-token
cross-entropy on the answer tokens (the generator's expression, then <eos>) of countdown train
problems (`data.seed` 0, default task parameters), then evaluates pass@1 and pass@16 at temperature
1.0 on the 200 eval prompts. Everything is seeded from `--seed` (a local fork of the torch RNG and a
local generator for the data order), so the same command on CPU with the same torch version and
thread count gives the same weights.

The recipe is tuned to stop early on purpose: RL needs a policy that solves some problems (pass@1
between 0.1 and 0.6) and whose samples differ (pass@16 well above pass@1, high token entropy).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from rlentropy.data.tasks import DataConfig, Example
from rlentropy.errors import ConfigError

__all__ = ["PretrainConfig", "pretrain", "pretrain_command", "recipe_with", "evaluate_pass_at_k", "encode_sft_batch"]


@dataclass(frozen=True)
class PretrainConfig:
    """The warm-up recipe (defaults = how the shipped weights were made).

    Attributes:
        steps: optimizer steps. batch_size: sequences per step.
        lr: peak AdamW learning rate (linear warm-up over `warmup` steps, cosine decay to 10 %).
        weight_decay: AdamW weight decay. train_size: countdown train problems drawn.
        eval_samples: samples per eval prompt (pass@1 and pass@eval_samples are reported).
        eval_prompts: how many of the (200) eval prompts the final evaluation uses.
        max_new_tokens: response budget at evaluation.
        threads: torch intra-op threads while pretraining (restored afterwards). Fixed so that the
            result does not depend on the machine's core count; one thread is also the fastest for a
            model this small on a busy machine.
    """

    steps: int = 1500
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.01
    train_size: int = 40000
    eval_samples: int = 16
    max_new_tokens: int = 24
    eval_prompts: int = 200
    threads: int = 1


def encode_sft_batch(
    tokenizer: Any, prompts: Sequence[str], answers: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids `<bos> prompt answer <eos>` (right-padded) and labels that keep only answer + <eos>.

    Returns:
        input_ids [B, L] long, labels [B, L] long (-100 on the <bos>, prompt and padding positions).
    """
    eos = tokenizer.eos_token_id
    rows, labels = [], []
    for p, a in zip(prompts, answers):
        p_ids = tokenizer(p)["input_ids"]  # <bos> + prompt
        a_ids = tokenizer(a, add_special_tokens=False)["input_ids"] + [eos]
        rows.append(p_ids + a_ids)
        labels.append([-100] * len(p_ids) + a_ids)
    L = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([r + [pad] * (L - len(r)) for r in rows], dtype=torch.long)  # [B, L]
    label_ids = torch.tensor([r + [-100] * (L - len(r)) for r in labels], dtype=torch.long)  # [B, L]
    return input_ids, label_ids


@torch.no_grad()
def evaluate_pass_at_k(
    model: Any,
    tokenizer: Any,
    task: Any,
    examples: Sequence[Example],
    *,
    n: int = 16,
    temperature: float = 1.0,
    max_new_tokens: int = 24,
    seed: int = 0,
    batch_size: int = 1024,
) -> dict[str, float]:
    """pass@1 and pass@n (with exactly n samples: pass@1 = mean c/n, pass@n = share of prompts with
    c > 0), the token-mean entropy of the sampled responses and their mean length in tokens.

    Returns:
        {"pass@1", f"pass@{n}", "entropy", "response_len"} as floats.
    """
    from rlentropy.rollout.hf import HFGenerator, position_ids_from_mask

    gen = HFGenerator(
        model,
        tokenizer,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        stop_strings=task.stop_strings,
        batch_size=batch_size,
    )
    prompts = [task.render_prompt(ex, tokenizer) for ex in examples]
    batch = gen.generate(prompts, list(examples), n, seed=seed)
    rewards = torch.tensor(task.score(batch.completions, batch.examples)).view(len(examples), n)  # [P, n]
    correct = (rewards > 0.5).double()  # [P, n]

    # Entropy of the sampling distribution at the sampled responses' positions (teacher-forced).
    ent_sum, tok_sum = 0.0, 0.0
    P = batch.prompt_len
    for start in range(0, len(batch), batch_size):
        sub = batch.select(list(range(start, min(start + batch_size, len(batch)))))
        logits = model(
            input_ids=sub.input_ids,
            attention_mask=sub.attention_mask,
            position_ids=position_ids_from_mask(sub.attention_mask),
        ).logits  # [b, L, V]
        logp = torch.log_softmax(logits[:, P - 1 : -1].float() / temperature, dim=-1)  # [b, T, V]
        ent = -(logp.exp() * logp).sum(-1)  # [b, T]
        ent_sum += float((ent * sub.response_mask).sum())
        tok_sum += float(sub.response_mask.sum())
    return {
        "pass@1": float(correct.mean()),
        f"pass@{n}": float((correct.sum(1) > 0).double().mean()),
        "entropy": ent_sum / max(tok_sum, 1.0),
        "response_len": tok_sum / len(batch),
    }


def _lr_at(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * frac)))


def pretrain(
    out: Path, *, seed: int = 0, cfg: PretrainConfig = PretrainConfig(), quiet: bool = False, eval_every: int = 0
) -> dict[str, Any]:
    """Train the tiny policy from scratch, evaluate it, and save it (HF format) under `out`.

    Args:
        out: output directory (created; existing model files are overwritten).
        seed: seeds initialisation, data order and evaluation sampling.
        cfg: the recipe. quiet: no progress bar.
        eval_every: also evaluate (on 100 eval prompts) every this many steps (0 = only at the end).

    Returns:
        the metrics written to `out/pretrain_metrics.json`.
    """
    from rlentropy.data.synthetic import CountdownTask
    from rlentropy.models.tiny import build_tokenizer

    t0 = time.time()
    out = Path(out)
    task = CountdownTask(DataConfig(task="countdown", seed=0, params={"train_size": cfg.train_size}))
    train, evals = task.train_examples(), task.eval_examples()[: cfg.eval_prompts]
    tok = build_tokenizer()
    history: list[dict[str, float]] = []
    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _pretrain_body(out, seed, cfg, quiet, eval_every, task, tok, train, evals, history, t0)
    finally:
        torch.set_num_threads(old_threads)


def _pretrain_body(out, seed, cfg, quiet, eval_every, task, tok, train, evals, history, t0) -> dict[str, Any]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from transformers import GenerationConfig, LlamaForCausalLM

    from rlentropy.models.tiny import tiny_llama_config

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(tiny_llama_config())
        model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
        n_params = sum(p.numel() for p in model.parameters())
        decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr,
            betas=(0.9, 0.98),
            eps=1e-8,
        )
        data_gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(train), generator=data_gen).tolist()
        cursor = 0
        model.train()
        progress = Progress(
            TextColumn("pretrain"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]:.3f}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            disable=quiet,
        )
        with progress:
            bar = progress.add_task("pretrain", total=cfg.steps, loss=float("nan"))
            for step in range(cfg.steps):
                if cursor + cfg.batch_size > len(order):
                    order = torch.randperm(len(train), generator=data_gen).tolist()
                    cursor = 0
                exs = [train[i] for i in order[cursor : cursor + cfg.batch_size]]
                cursor += cfg.batch_size
                ids, labels = encode_sft_batch(tok, [task.render_prompt(e, tok) for e in exs], [e.answer for e in exs])
                for group in opt.param_groups:
                    group["lr"] = _lr_at(step, cfg)
                loss = model(input_ids=ids, labels=labels).loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                progress.update(bar, advance=1, loss=float(loss.detach()))
                if eval_every and (step + 1) % eval_every == 0 and step + 1 < cfg.steps:
                    model.eval()
                    m = evaluate_pass_at_k(
                        model, tok, task, evals[:100], n=cfg.eval_samples, max_new_tokens=cfg.max_new_tokens, seed=seed
                    )
                    model.train()
                    m.update(step=step + 1, loss=float(loss.detach()), seconds=time.time() - t0)
                    history.append(m)
                    if not quiet:
                        progress.console.print(json.dumps(m))
        train_seconds = time.time() - t0
        model.eval()
        final = evaluate_pass_at_k(
            model, tok, task, evals, n=cfg.eval_samples, max_new_tokens=cfg.max_new_tokens, seed=seed
        )

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    metrics = {
        **final,
        "eval_prompts": len(evals),
        "samples_per_prompt": cfg.eval_samples,
        "temperature": 1.0,
        "parameters": n_params,
        "seed": seed,
        "recipe": asdict(cfg),
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.time() - t0, 1),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "history": history,
    }
    (out / "pretrain_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "README.md").write_text(_model_card(metrics))
    return metrics


def _model_card(m: dict[str, Any]) -> str:
    n = m["samples_per_prompt"]
    r = m["recipe"]
    return f"""# tiny-countdown: the base policy shipped with rlentropy

A {m["parameters"]:,}-parameter Llama (hidden 128, 4 layers, 4 heads, MLP 384, tied embeddings)
with a character-level tokenizer (`rlentropy.models.tiny.build_tokenizer`, vocabulary 100), trained
from scratch by supervised warm-up on countdown solutions. Load it with
`AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained`, or
`rlentropy.models.tiny.load_shipped_policy()`.

## Source (how to rebuild these files)

    rlentropy pretrain --out src/rlentropy/assets/tiny-countdown --seed {m["seed"]}

Recipe (`rlentropy.models.pretrain.PretrainConfig`): {r["steps"]} AdamW steps of {r["batch_size"]}
sequences, peak lr {r["lr"]} (warm-up {r["warmup"]} steps, cosine to 10 %), weight decay
{r["weight_decay"]}, loss on the answer tokens and <eos> only, {r["train_size"]} countdown train
problems (data.seed 0, default task parameters), torch threads {r["threads"]}. Deterministic given the
seed on CPU (same torch version). Measured with torch {m["torch_version"]}: {m["train_seconds"]:.0f} s
of training, {m["total_seconds"]:.0f} s in all.

## Evaluation (countdown eval split, {m["eval_prompts"]} prompts, {n} samples each, T = 1.0)

| pass@1 | pass@{n} | token entropy (nats) | response length (tokens) |
|---|---|---|---|
| {m["pass@1"]:.3f} | {m[f"pass@{n}"]:.3f} | {m["entropy"]:.3f} | {m["response_len"]:.1f} |

Prompt format: `Make 22 from 3 5 7:`; the model answers with an expression such as `3*5+7` and
<eos> (stop string "\\n").
"""


DEFAULT_RECIPE = PretrainConfig()


def recipe_with(overrides: Sequence[str], steps: int | None = None) -> PretrainConfig:
    """`DEFAULT_RECIPE` with `key=value` overrides of its fields (and `steps`, which wins).

    Raises:
        ConfigError: an unknown key, a malformed item, or a value of the wrong type or sign, naming it.
    """
    from dataclasses import fields, replace

    types = {f.name: type(getattr(DEFAULT_RECIPE, f.name)) for f in fields(PretrainConfig)}
    changes: dict[str, Any] = {}
    for item in [*overrides, *([f"steps={steps}"] if steps is not None else [])]:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"pretrain: override {item!r}: expected key=value")
        if key not in types:
            raise ConfigError(f"pretrain: {key}: unknown key; allowed keys: {', '.join(types)}")
        try:
            value = types[key](raw.strip())
        except ValueError:
            raise ConfigError(f"pretrain: {key}: expected {types[key].__name__}, got {raw!r}") from None
        floor_ok = key in ("weight_decay", "warmup")  # these may be 0
        if value < 0 or (value == 0 and not floor_ok):
            raise ConfigError(f"pretrain: {key}: must be {'>= 0' if floor_ok else '> 0'}, got {raw!r}")
        changes[key] = value
    return replace(DEFAULT_RECIPE, **changes)


def pretrain_command(
    out: Path, seed: int, quiet: bool, overrides: Sequence[str] = (), steps: int | None = None
) -> None:
    """`rlentropy pretrain [key=value ...] [--steps N]`: run the default recipe (`DEFAULT_RECIPE`) with the
    overrides (e.g. `--steps 5 eval_prompts=4 eval_samples=2` for a smoke test) and print the evaluation."""
    m = pretrain(Path(out), seed=seed, cfg=recipe_with(overrides, steps), quiet=quiet)
    n = m["samples_per_prompt"]
    print(
        f"pretrain: wrote {out} ({m['parameters']} parameters, {m['total_seconds']:.0f} s); "
        f"eval on {m['eval_prompts']} prompts at T=1.0: pass@1={m['pass@1']:.3f} pass@{n}={m[f'pass@{n}']:.3f} "
        f"entropy={m['entropy']:.3f} nats/token, response length {m['response_len']:.1f} tokens"
    )
