"""Evaluate one policy on a task: sample n completions per prompt, score them, measure their entropy.

`evaluate_model` is the single entry point used by `rlentropy eval`, the trainer's periodic eval and
the demo. It returns the scalar metrics and one record per sample; it writes nothing.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Hashable
from typing import Any

import torch

from rlentropy.evaluate.metrics import sample_metrics
from rlentropy.models.forward import policy_token_stats
from rlentropy.rewards.extract import as_plain_number
from rlentropy.rollout.hf import HFGenerator

# How many sequences (prompts × n) one generate call handles when the caller gives no batch size.
DEFAULT_SEQUENCES_PER_CHUNK = 64

_WS = re.compile(r"\s+")


def default_normalise(answer: str) -> Hashable:
    """Answer key for majority voting when the task has no normaliser.

    Whitespace is removed and surrounding ``$`` dropped; a plain decimal number ("1,234", "-3.50",
    "$5") becomes its exact value, so "0.50" and ".5" vote together. Symbolic answers ("\\frac{1}{2}")
    are compared as text (a symbolic equivalence check per pair would be too slow for a vote).
    """
    text = _WS.sub("", answer)
    if len(text) > 1 and text.startswith("$") and text.endswith("$"):
        text = text[1:-1]
    num = as_plain_number(text)
    return ("num", num) if num is not None else ("text", text)


def _answer_functions(
    task: Any,
) -> tuple[Callable[[str], str | None], Callable[[str], Hashable], Callable[[str, str | None, bool], bool]]:
    """The task's answer extractor, normaliser and format check, with documented fallbacks.

    * extractor: ``task.extract_answer(completion)``, else ``task.scorer.extract(completion)`` (the
      math tasks' verifier); fallback: the completion itself, whitespace collapsed (so maj@k votes
      over whole completions).
    * normaliser: ``task.normalize_answer(answer)`` (or ``normalise_answer``); fallback:
      `default_normalise`.
    * format check: ``task.format_valid(completion)``; fallback: an answer was extracted (when the task
      has an extractor) or the completion ended by itself (not truncated).
    """
    extract = getattr(task, "extract_answer", None)
    if extract is None:
        extract = getattr(getattr(task, "scorer", None), "extract", None)
    normalise = getattr(task, "normalize_answer", None) or getattr(task, "normalise_answer", None)
    fmt = getattr(task, "format_valid", None)

    def _extract(completion: str) -> str | None:
        if extract is None:
            text = _WS.sub(" ", completion).strip()
            return text or None
        ans = extract(completion)
        return None if ans is None else str(ans)

    def _normalise(answer: str) -> Hashable:
        return default_normalise(answer) if normalise is None else normalise(answer)

    def _format(completion: str, answer: str | None, truncated: bool) -> bool:
        if fmt is not None:
            return bool(fmt(completion))
        if extract is not None:
            return answer is not None
        return not truncated

    return _extract, _normalise, _format


def _make_generator(
    model: Any,
    tokenizer: Any,
    task: Any,
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    batch_size: int | None,
    engine: str = "auto",
) -> Any:
    kwargs: dict[str, Any] = dict(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        stop_strings=list(getattr(task, "stop_strings", []) or []),
        engine=engine,
    )
    if batch_size is not None:
        kwargs["batch_size"] = batch_size
    return HFGenerator(model, tokenizer, **kwargs)


def _on_device(batch: Any, device: torch.device) -> Any:
    """The batch with its id / mask tensors on `device` (the generator returns them on the CPU)."""
    if batch.input_ids.device == device:
        return batch
    return dataclasses.replace(
        batch,
        input_ids=batch.input_ids.to(device),  # [B, L]
        attention_mask=batch.attention_mask.to(device),  # [B, L]
        response_mask=batch.response_mask.to(device),  # [B, T]
    )


def evaluate_model(
    model: Any,
    tokenizer: Any,
    task: Any,
    *,
    n: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    max_prompts: int | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool = False,
    engine: str = "auto",
    share_prompts: bool = False,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Sample ``n`` completions for each eval prompt of ``task`` and compute the eval metrics.

    Args:
        model: a causal LM (HF model or peft model); put in eval mode for the call, restored after.
        tokenizer: its tokenizer.
        task: a `rlentropy.data.Task`; its ``eval_examples()`` are the prompts.
        n: samples per prompt (≥ 1).
        temperature: sampling temperature (> 0); entropies are measured at the same temperature.
        top_p: nucleus sampling threshold in (0, 1].
        max_new_tokens: response length limit.
        max_prompts: evaluate only the first N eval examples (None = all).
        seed: sampling seed; the same seed on the same device gives the same samples.
        batch_size: sequences per generate / statistics call (None: 64 sequences per chunk and the
            generator's own default micro-batch).
        progress: show a rich progress bar over prompts.
        engine: the sampling engine of `rlentropy.rollout.hf.HFGenerator` ("auto", "lean", "hf_generate";
            the run's `rollout.engine`).
        share_prompts: the teacher-forced statistics pass runs each prompt once for its n samples
            (`rlentropy.models.forward.response_hidden_of`; the run's `train.share_prompts`).

    Returns:
        ``(metrics, samples)``. ``metrics`` holds ``pass@k`` and ``maj@k`` for k = 1, 2, 4, … ≤ n (and
        n), ``avg@n``, ``reward_mean``, ``entropy`` and ``surprisal`` (token-means over every response
        token of every sample, teacher-forced at ``temperature``), ``response_len`` (mean tokens),
        ``format_valid`` and ``truncated`` (rates), and the settings (``n``, ``num_prompts``,
        ``temperature``, ``top_p``, ``max_new_tokens``, ``seed``). ``samples`` has one dict per sample
        (prompt, completion, gold and extracted answer, reward, correct, length, per-sample mean
        entropy and surprisal).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if max_prompts is not None and max_prompts < 1:
        raise ValueError(f"max_prompts must be >= 1, got {max_prompts}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    examples = list(task.eval_examples())
    if max_prompts is not None:
        examples = examples[:max_prompts]
    if not examples:
        raise ValueError(f"task {getattr(task, 'name', task)!r} has no eval examples")
    prompts = [task.render_prompt(ex, tokenizer) for ex in examples]

    extract, normalise, format_ok = _answer_functions(task)
    generator = _make_generator(
        model,
        tokenizer,
        task,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        batch_size=batch_size,
        engine=engine,
    )
    per_chunk = max(1, (batch_size or DEFAULT_SEQUENCES_PER_CHUNK) // n)

    answers: list[list[Hashable | None]] = [[] for _ in examples]
    correct: list[list[float]] = [[] for _ in examples]
    samples: list[dict[str, Any]] = []
    tok_entropy = tok_surprisal = 0.0
    n_tokens = 0.0

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    device = next(model.parameters()).device
    was_training = bool(getattr(model, "training", False))
    model.eval()
    from rich.console import Console

    bar = Progress(
        TextColumn("eval"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not progress,
        transient=True,
        console=Console(stderr=True),
    )
    try:
        with bar, torch.no_grad():
            job = bar.add_task("eval", total=len(examples))
            for chunk_idx, start in enumerate(range(0, len(examples), per_chunk)):
                ex_chunk = examples[start : start + per_chunk]
                batch = generator.generate(prompts[start : start + per_chunk], ex_chunk, n, seed=seed + chunk_idx)
                stats = policy_token_stats(
                    model, _on_device(batch, device), temperature=temperature, share_prompts=share_prompts
                )
                mask = batch.response_mask.to(torch.float64)  # [B, T]
                ent = stats.entropy.detach().cpu().to(torch.float64) * mask  # [B, T]
                sur = -stats.logp.detach().cpu().to(torch.float64) * mask  # [B, T]
                lengths = mask.sum(dim=1)  # [B]
                tok_entropy += float(ent.sum())
                tok_surprisal += float(sur.sum())
                n_tokens += float(lengths.sum())
                seq_ent = (ent.sum(dim=1) / lengths.clamp(min=1)).tolist()  # [B]
                seq_sur = (sur.sum(dim=1) / lengths.clamp(min=1)).tolist()  # [B]
                rewards = [float(r) for r in task.score(batch.completions, batch.examples)]
                truncated = (
                    [False] * len(batch) if batch.truncated is None else [bool(t) for t in batch.truncated.tolist()]
                )
                groups = batch.group_ids.tolist()
                for b in range(len(batch)):
                    p = start + int(groups[b])
                    completion = batch.completions[b]
                    answer = extract(completion)
                    key = None if answer is None else normalise(answer)
                    is_correct = rewards[b] >= 1.0 - 1e-6
                    answers[p].append(key)
                    correct[p].append(1.0 if is_correct else 0.0)
                    samples.append(
                        {
                            "prompt_index": p,
                            "example_id": examples[p].id,
                            "sample_index": len(correct[p]) - 1,
                            "prompt": prompts[p],
                            "completion": completion,
                            "gold": examples[p].answer,
                            "answer": answer,
                            "reward": rewards[b],
                            "correct": is_correct,
                            "format_valid": format_ok(completion, answer, truncated[b]),
                            "truncated": truncated[b],
                            "length": int(lengths[b]),
                            "entropy": seq_ent[b],
                            "surprisal": seq_sur[b],
                        }
                    )
                bar.update(job, advance=len(ex_chunk))
    finally:
        if was_training:
            model.train()

    bad = [i for i, row in enumerate(correct) if len(row) != n]
    if bad:
        raise RuntimeError(f"generator returned {len(correct[bad[0]])} samples for prompt {bad[0]}, expected n={n}")
    samples.sort(key=lambda s: (s["prompt_index"], s["sample_index"]))

    metrics: dict[str, float] = dict(sample_metrics(answers, correct))
    num = len(samples)
    metrics["reward_mean"] = sum(s["reward"] for s in samples) / num
    metrics["entropy"] = tok_entropy / n_tokens if n_tokens > 0 else math.nan
    metrics["surprisal"] = tok_surprisal / n_tokens if n_tokens > 0 else math.nan
    metrics["response_len"] = sum(s["length"] for s in samples) / num
    metrics["format_valid"] = sum(1.0 for s in samples if s["format_valid"]) / num
    metrics["truncated"] = sum(1.0 for s in samples if s["truncated"]) / num
    metrics["num_prompts"] = float(len(examples))
    metrics["n"] = float(n)
    metrics["temperature"] = float(temperature)
    metrics["top_p"] = float(top_p)
    metrics["max_new_tokens"] = float(max_new_tokens)
    metrics["seed"] = float(seed)
    return metrics, samples
