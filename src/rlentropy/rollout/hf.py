"""Rollouts for Hugging Face causal LMs: batched sampling with a KV cache, left-padded prompts.

    gen = HFGenerator(model, tokenizer, max_new_tokens=24, temperature=1.0, stop_strings=["\\n"])
    batch = gen.generate(prompts, examples, n=8, seed=0)     # RolloutBatch, B = len(prompts) * 8

Two engines produce the same kind of batch (same layout, stopping rules and sampling distribution;
different random streams):

* ``engine="lean"`` (the default for decoder-only models): our own decode loop over the model's
  forward. Each distinct prompt is prefilled once (the n samples of a prompt share its KV cache,
  expanded with ``Cache.reorder_cache``), the prefill keeps only the last position's logits, rows
  that finished (EOS or stop string) are dropped from the batch and the cache at once, and the loop
  ends when every row is done. Sampling uses a local ``torch.Generator`` seeded with ``seed``.
* ``engine="hf_generate"``: ``model.generate`` with our warper as the only logits processor and a
  stop-string stopping criterion (the default for encoder-decoder models). Sampling runs inside
  ``torch.random.fork_rng`` seeded with ``seed``.

The sampling distribution and `sampler_logp`. At each step the model's next-token logits z (fp32)
go through z / temperature, then the top-p nucleus (the smallest set of most likely tokens whose
probability reaches `top_p`, at least one token; the rest get -inf). The token is sampled from the
softmax of the result, and `sampler_logp[b, t]` is the log-softmax of exactly that result at the
sampled token. Nothing else touches the logits: with ``hf_generate`` every processor of the model's
own generation_config is neutralised explicitly (repetition penalty 1, no top-k, no min-p ...). So
with top_p = 1, `sampler_logp = log_softmax(z / temperature)[token]`, which a teacher-forced forward
reproduces when it uses the same position ids as generation (see `position_ids_from_mask`).

Stopping. A response ends at the first EOS token (kept, and in the mask) or at the end of the first
stop string (the tokens up to and including the one that completes it are kept and in the mask;
everything after is padding). `completions` are the decoded responses without special tokens and
without the stop string. Rows that hit `max_new_tokens` first are `truncated`.

Randomness. The global RNG state is left as it was. The seed is `seed`, or one draw from the
caller's `generator`, or one draw from the global RNG. The same seed, engine and `batch_size` give
the same batch on the same device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from rlentropy.rollout.base import RolloutBatch

__all__ = ["HFGenerator", "position_ids_from_mask", "top_p_filter"]


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of left-padded sequences, as `generate` assigns them: 0 at the first real token.

    Args:
        attention_mask: [B, L] 0/1.

    Returns:
        [B, L] long: cumsum(mask) - 1 on real tokens, 0 on padding.
    """
    pos = attention_mask.long().cumsum(-1) - 1  # [B, L]
    return pos.masked_fill(attention_mask == 0, 0)  # [B, L]


def top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the nucleus: the most likely tokens whose probabilities first reach `top_p` (at least one).

    Args:
        scores: [B, V] logits (already divided by the temperature).
        top_p: in (0, 1]; 1 keeps every token.

    Returns:
        [B, V] the same logits with the tokens outside the nucleus set to -inf.
    """
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p: must be in (0, 1], got {top_p}")
    if top_p >= 1.0:
        return scores
    sorted_scores, order = torch.sort(scores, dim=-1, descending=True)  # [B, V]
    probs = sorted_scores.softmax(dim=-1)  # [B, V]
    before = probs.cumsum(dim=-1) - probs  # [B, V] mass of strictly more likely tokens
    drop_sorted = before >= top_p  # [B, V] the first token always has before = 0 < top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # [B, V]
    return scores.masked_fill(drop, float("-inf"))


def _sampling_scores(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Logits of the sampling distribution: fp32 logits / temperature, then the top-p nucleus.

    Args:
        logits: [b, V] next-token logits (any float dtype).
        temperature: > 0.
        top_p: in (0, 1].

    Returns:
        [b, V] float32 scores (-inf outside the nucleus); their log-softmax is `sampler_logp`'s source.
    """
    scores = logits.float()  # [b, V]
    if temperature != 1.0:
        scores = scores / temperature  # [b, V]
    return top_p_filter(scores, top_p)  # [b, V]


def _stop_string_hits(tokenizer: Any, stop_strings: list[str], tails: list[list[int]]) -> list[bool]:
    """Whether each decoded token window (response tokens only) contains one of the stop strings."""
    texts = tokenizer.batch_decode(tails, skip_special_tokens=True)
    return [any(s in t for s in stop_strings) for t in texts]


class _SamplingWarper(LogitsProcessor):
    """Applies temperature and top-p as the last processor and records the log-prob of each sampled
    token under the resulting distribution (``hf_generate`` engine).

    `generate` calls it once per step with the ids so far; the token sampled at step t is the last id
    at step t + 1, so the log-probs of step t are kept (one [b, V] tensor) until then. `finish` reads
    the last step's.
    """

    def __init__(self, temperature: float, top_p: float, prompt_len: int):
        self.temperature = temperature
        self.top_p = top_p
        self.prompt_len = prompt_len
        self._prev: torch.Tensor | None = None  # [b, V] log-probs of the previous step
        self._logps: list[torch.Tensor] = []  # T tensors [b]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self._prev is not None:
            self._logps.append(self._prev.gather(1, input_ids[:, -1:]).squeeze(1))  # [b]
        scores = _sampling_scores(scores, self.temperature, self.top_p)  # [b, V]
        self._prev = torch.log_softmax(scores, dim=-1)  # [b, V]
        return scores

    def finish(self, sequences: torch.Tensor) -> torch.Tensor:
        """[b, T] log-probs of the sampled response tokens (`sequences` is prompt + response)."""
        if self._prev is not None and sequences.shape[1] > self.prompt_len + len(self._logps):
            self._logps.append(self._prev.gather(1, sequences[:, -1:]).squeeze(1))  # [b]
        self._prev = None
        if not self._logps:
            return torch.zeros(sequences.shape[0], 0)
        return torch.stack(self._logps, dim=1)  # [b, T]


class _StopOnStrings(StoppingCriteria):
    """Marks a row done once its *response* (never the prompt) contains one of the stop strings
    (``hf_generate`` engine; the lean loop applies the same window test to its active rows).

    Only the last `window` response tokens are decoded each step: a stop string that was not present
    one step earlier must end in the newest token, and every token decodes to at least one character
    for the tokenizers we support, so `window` = longest stop string in characters + 1 suffices.
    """

    def __init__(self, tokenizer: Any, stop_strings: list[str], prompt_len: int):
        self.tokenizer = tokenizer
        self.stop_strings = stop_strings
        self.prompt_len = prompt_len
        self.window = max(len(s) for s in stop_strings) + 1

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        tail = input_ids[:, max(self.prompt_len, input_ids.shape[1] - self.window) :]  # [b, <= window]
        hit = _stop_string_hits(self.tokenizer, self.stop_strings, tail.tolist())
        return torch.tensor(hit, dtype=torch.bool, device=input_ids.device)  # [b]


ENGINES = ("auto", "lean", "hf_generate")


def _accepts_logits_to_keep(model: Any) -> bool:
    """Whether the model's forward (under a PEFT wrapper, the base model's) takes `logits_to_keep`."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


class HFGenerator:
    """Sample n completions per prompt from a Hugging Face causal LM and return a `RolloutBatch`.

    Args:
        model: a Hugging Face causal LM, on its device (a PEFT-wrapped one works too).
        tokenizer: its tokenizer; a missing pad token falls back to EOS.
        max_new_tokens: response budget per sample.
        temperature: > 0; logits are divided by it before sampling.
        top_p: in (0, 1]; nucleus sampling after the temperature.
        stop_strings: a response also ends at the end of the first of these strings.
        batch_size: rows (prompt × sample) per decode loop / `generate` call; None = all at once. The
            samples depend on it (the RNG stream is consumed chunk by chunk), so keep it fixed to
            reproduce.
        engine: "auto" (default: "lean" for decoder-only models, "hf_generate" for encoder-decoder
            ones), "lean" (our decode loop, see the module docstring) or "hf_generate"
            (`model.generate`). Both sample the same distribution and apply the same stopping rules;
            their random streams differ.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        stop_strings: Sequence[str] = (),
        batch_size: int | None = None,
        engine: str = "auto",
    ):
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: must be a positive integer, got {max_new_tokens!r}")
        if not temperature > 0.0:
            raise ValueError(f"temperature: must be > 0, got {temperature}")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p: must be in (0, 1], got {top_p}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size: must be a positive integer or None, got {batch_size}")
        if isinstance(stop_strings, str):
            raise ValueError("stop_strings: must be a sequence of strings, not one string")
        if any(not isinstance(s, str) or not s for s in stop_strings):
            raise ValueError(f"stop_strings: must be non-empty strings, got {list(stop_strings)!r}")
        if engine not in ENGINES:
            raise ValueError(f"engine: must be one of {', '.join(ENGINES)}, got {engine!r}")
        encoder_decoder = bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))
        if engine == "lean" and encoder_decoder:
            raise ValueError(
                "engine: 'lean' supports decoder-only models; use 'hf_generate' for encoder-decoder models"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.stop_strings = list(stop_strings)
        self.batch_size = batch_size
        self.engine = engine if engine != "auto" else ("hf_generate" if encoder_decoder else "lean")

        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if eos is None:
            eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError("tokenizer: neither the model's generation_config nor the tokenizer defines an EOS token")
        self.eos_ids = [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else self.eos_ids[0]

    @classmethod
    def from_rollout(cls, model: Any, tokenizer: Any, rollout: Any, stop_strings: Sequence[str] = ()) -> HFGenerator:
        """The generator of a config's `rollout:` section (any object with `max_new_tokens`,
        `temperature`, `top_p`, `batch_size` and `engine`), stopping at the task's `stop_strings`: what
        training samples with."""
        return cls(
            model,
            tokenizer,
            max_new_tokens=rollout.max_new_tokens,
            temperature=rollout.temperature,
            top_p=rollout.top_p,
            stop_strings=list(stop_strings),
            batch_size=rollout.batch_size,
            engine=rollout.engine,
        )

    def _generation_config(self) -> GenerationConfig:
        # Every distribution-changing option is set explicitly so that the model's own
        # generation_config (e.g. top_k=20, repetition_penalty=1.05) cannot leak in; temperature and
        # top-p are applied by _SamplingWarper, which records the log-probs.
        return GenerationConfig(
            do_sample=True,
            max_new_tokens=self.max_new_tokens,
            min_new_tokens=0,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            min_p=0.0,
            typical_p=1.0,
            epsilon_cutoff=0.0,
            eta_cutoff=0.0,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            num_beams=1,
            num_return_sequences=1,
            use_cache=True,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            return_dict_in_generate=False,
            output_scores=False,
        )

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        examples: list | None,
        n: int,
        *,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> RolloutBatch:
        """Sample `n` responses for each prompt.

        Args:
            prompts: P prompt strings (templates already applied).
            examples: P task examples aligned with `prompts` (or None / empty), copied per sample.
            n: samples per prompt; rows are prompt-major (rows i*n .. i*n+n-1 belong to prompt i).
            generator: a torch.Generator; one 63-bit seed is drawn from it.
            seed: the seed itself (takes precedence over `generator`). With neither, one seed is
                drawn from the global torch RNG.

        Returns:
            RolloutBatch with B = P * n rows, group_ids = prompt index.
        """
        if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompts: must be a non-empty list of strings")
        examples = list(examples) if examples else []
        if examples and len(examples) != len(prompts):
            raise ValueError(f"examples: {len(examples)} examples for {len(prompts)} prompts")
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n: must be a positive integer, got {n!r}")
        if seed is None:
            src = generator if generator is not None else None
            seed = int(torch.randint(0, 2**63 - 1, (1,), generator=src).item())

        model, tok = self.model, self.tokenizer
        device = next(model.parameters()).device
        old_side = getattr(tok, "padding_side", "right")
        tok.padding_side = "left"
        try:
            enc = tok(list(prompts), return_tensors="pt", padding=True)
        finally:
            tok.padding_side = old_side
        prompt_ids = enc["input_ids"].repeat_interleave(n, dim=0)  # [B, P]
        prompt_mask = enc["attention_mask"].repeat_interleave(n, dim=0)  # [B, P]

        was_training = model.training
        model.eval()
        try:
            if self.engine == "lean":
                responses, logps = self._sample_lean(enc["input_ids"], enc["attention_mask"], n, seed, device)
            else:
                responses, logps = self._sample_hf(prompt_ids, prompt_mask, seed, device)
        finally:
            model.train(was_training)

        return self._assemble(prompts, examples, n, prompt_ids, prompt_mask, responses, logps)

    def _sample_hf(self, prompt_ids, prompt_mask, seed, device) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``hf_generate`` engine: chunks of [b, t] response ids and their sampler log-probs (CPU)."""
        B, P = prompt_ids.shape
        chunk = self.batch_size or B
        cfg = self._generation_config()
        responses: list[torch.Tensor] = []
        logps: list[torch.Tensor] = []
        fork_devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(seed)
            for start in range(0, B, chunk):
                ids = prompt_ids[start : start + chunk].to(device)  # [b, P]
                mask = prompt_mask[start : start + chunk].to(device)  # [b, P]
                warper = _SamplingWarper(self.temperature, self.top_p, P)
                seqs = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    generation_config=cfg,
                    logits_processor=LogitsProcessorList([warper]),
                    stopping_criteria=StoppingCriteriaList(
                        [_StopOnStrings(self.tokenizer, self.stop_strings, P)] if self.stop_strings else []
                    ),
                )  # [b, P + t]
                responses.append(seqs[:, P:].cpu())  # [b, t]
                logps.append(warper.finish(seqs).cpu())  # [b, t]
        return responses, logps

    def _sample_lean(self, enc_ids, enc_mask, n, seed, device) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``lean`` engine: chunks of [b, t] response ids and their sampler log-probs (CPU).

        `enc_ids` / `enc_mask` are the [P, L] left-padded prompts, not yet repeated n times.
        """
        B = enc_ids.shape[0] * n
        chunk = self.batch_size or B
        rng = torch.Generator(device=device)
        rng.manual_seed(seed)
        keep_last = {"logits_to_keep": 1} if _accepts_logits_to_keep(self.model) else {}
        responses: list[torch.Tensor] = []
        logps: list[torch.Tensor] = []
        for start in range(0, B, chunk):
            rows = torch.arange(start, min(start + chunk, B))  # [b] global row indices
            ids, lps = self._lean_chunk(enc_ids, enc_mask, rows // n, rng, device, keep_last)
            responses.append(ids)
            logps.append(lps)
        return responses, logps

    def _lean_chunk(self, enc_ids, enc_mask, prompt_of_row, rng, device, keep_last):
        """Decode one chunk: rows `prompt_of_row` [b] (indices into the [P, L] prompts, non-decreasing).

        Returns:
            ([b, t] response ids padded with pad_id after each row's end, [b, t] float32 log-probs).
        """
        model = self.model
        first = int(prompt_of_row[0])
        expand_cpu = prompt_of_row - first  # [b] row -> distinct prompt of this chunk
        ids_u = enc_ids[first : int(prompt_of_row[-1]) + 1].to(device)  # [U, L]
        mask_u = enc_mask[first : int(prompt_of_row[-1]) + 1].to(device)  # [U, L]
        b, U, L = int(prompt_of_row.shape[0]), int(ids_u.shape[0]), int(ids_u.shape[1])
        T_max = self.max_new_tokens

        # Prefill each distinct prompt once; its n samples share the cache rows after the expansion.
        out = model(
            input_ids=ids_u,
            attention_mask=mask_u,
            position_ids=position_ids_from_mask(mask_u),
            use_cache=True,
            **keep_last,
        )
        cache = out.past_key_values
        if cache is None or not hasattr(cache, "reorder_cache"):
            raise ValueError(
                f"engine: the model returned no reorderable KV cache ({type(cache).__name__}); use engine='hf_generate'"
            )
        logits = out.logits[:, -1]  # [U, V]
        del out
        expand = expand_cpu.to(device)  # [b]
        if b != U:
            cache.reorder_cache(expand)
            logits = logits[expand]  # [b, V]
        next_pos = mask_u.sum(-1, keepdim=True)[expand]  # [b, 1] position of response token 0
        mask = torch.cat([mask_u[expand], mask_u.new_ones(b, T_max)], dim=1)  # [b, L + T_max]
        padded = (enc_mask[first : int(prompt_of_row[-1]) + 1] == 0).any(-1)[expand_cpu]  # [b] CPU bool

        eos = torch.tensor(self.eos_ids)  # [n_eos]
        window = max(len(s) for s in self.stop_strings) + 1 if self.stop_strings else 0
        out_ids = torch.full((b, T_max), self.pad_id, dtype=torch.long)  # [b, T_max] CPU
        out_lp = torch.zeros(b, T_max, dtype=torch.float32)  # [b, T_max] CPU
        active = torch.arange(b)  # [a] chunk rows still decoding (CPU)
        steps = 0
        for t in range(T_max):
            logp = torch.log_softmax(_sampling_scores(logits, self.temperature, self.top_p), dim=-1)  # [a, V]
            token = torch.multinomial(logp.exp(), 1, generator=rng)  # [a, 1]
            token_cpu = token.squeeze(1).cpu()  # [a]
            out_ids[active, t] = token_cpu
            out_lp[active, t] = logp.gather(1, token).squeeze(1).cpu()
            steps = t + 1
            done = torch.isin(token_cpu, eos)  # [a]
            if window:
                check = (~done).nonzero().squeeze(1).tolist()
                if check:
                    tails = out_ids[active[check], max(0, t + 1 - window) : t + 1].tolist()  # [c, <= window]
                    hits = _stop_string_hits(self.tokenizer, self.stop_strings, tails)
                    done[[i for i, h in zip(check, hits) if h]] = True
            if t == T_max - 1 or bool(done.all()):
                break
            if bool(done.any()):  # finished rows leave the batch and the cache
                keep_cpu = (~done).nonzero().squeeze(1)  # [a']
                keep = keep_cpu.to(device)
                active, padded = active[keep_cpu], padded[keep_cpu]
                cache.reorder_cache(keep)
                token, next_pos, mask = token[keep], next_pos[keep], mask[keep]
            # without left padding among the active rows no mask is needed (plain causal attention)
            step_mask = mask[:, : L + t + 1] if bool(padded.any()) else None  # [a, L + t + 1]
            logits = model(
                input_ids=token, attention_mask=step_mask, position_ids=next_pos, past_key_values=cache, use_cache=True
            ).logits[:, -1]  # [a, V]
            next_pos = next_pos + 1
        return out_ids[:, :steps], out_lp[:, :steps]

    def _end_of(self, resp: list[int]) -> tuple[int, bool, str]:
        """(number of kept tokens, stopped by a stop string, completion text) for one raw response."""
        eos_at = next((i for i, t in enumerate(resp) if t in self.eos_ids), None)
        visible = resp if eos_at is None else resp[:eos_at]
        if self.stop_strings:
            text = self.tokenizer.decode(visible, skip_special_tokens=True)
            hits = [(text.find(s), s) for s in self.stop_strings if s in text]
            if hits:
                cut = min(i for i, _ in hits)

                def contains(k: int) -> bool:
                    part = self.tokenizer.decode(visible[:k], skip_special_tokens=True)
                    return any(s in part for s in self.stop_strings)

                lo, hi = 1, len(visible)  # smallest k with contains(k): binary search, contains(hi) holds
                while lo < hi:
                    mid = (lo + hi) // 2
                    if contains(mid):
                        hi = mid
                    else:
                        lo = mid + 1
                return lo, True, text[:cut]
        if eos_at is not None:
            return eos_at + 1, True, self.tokenizer.decode(visible, skip_special_tokens=True)
        return len(resp), False, self.tokenizer.decode(visible, skip_special_tokens=True)

    def _assemble(self, prompts, examples, n, prompt_ids, prompt_mask, responses, logps) -> RolloutBatch:
        ends: list[int] = []
        done: list[bool] = []
        texts: list[str] = []
        rows: list[torch.Tensor] = []
        row_logps: list[torch.Tensor] = []
        for resp, lp in zip(responses, logps):
            for r, lp_row in zip(resp, lp):
                end, finished, text = self._end_of(r.tolist())
                ends.append(end)
                done.append(finished)
                texts.append(text)
                rows.append(r[:end])
                row_logps.append(lp_row[:end])
        B = len(rows)
        T = max(1, max(ends))
        response_ids = torch.full((B, T), self.pad_id, dtype=torch.long)  # [B, T]
        sampler_logp = torch.zeros(B, T, dtype=torch.float32)  # [B, T]
        response_mask = torch.zeros(B, T, dtype=torch.float32)  # [B, T]
        for b, (r, lp_row, e) in enumerate(zip(rows, row_logps, ends)):
            response_ids[b, :e] = r
            sampler_logp[b, :e] = lp_row
            response_mask[b, :e] = 1.0
        input_ids = torch.cat([prompt_ids, response_ids], dim=1)  # [B, P + T]
        attention_mask = torch.cat([prompt_mask.long(), response_mask.long()], dim=1)  # [B, P + T]
        group_ids = torch.arange(len(prompts)).repeat_interleave(n)  # [B]
        return RolloutBatch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            response_mask=response_mask,
            prompt_len=int(prompt_ids.shape[1]),
            sampler_logp=sampler_logp,
            group_ids=group_ids,
            prompts=[p for p in prompts for _ in range(n)],
            completions=texts,
            examples=[e for e in examples for _ in range(n)] if examples else [],
            truncated=torch.tensor([not d for d in done], dtype=torch.bool),
        )
