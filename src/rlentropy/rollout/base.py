"""The rollout contract: what a generation engine hands to the trainer, the probes and the evaluator."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class RolloutBatch:
    """B sampled sequences (prompts × samples per prompt), prompt left-padded, response right-padded.

    Layout: `input_ids[:, :prompt_len]` is the left-padded prompt, `input_ids[:, prompt_len:]` the
    response (T = L - prompt_len positions, padded after EOS / stop). Token `input_ids[b, prompt_len + t]`
    is predicted by the logits at position `prompt_len + t - 1`.

    Attributes:
        input_ids: [B, L] long, prompt + response.
        attention_mask: [B, L] long, 1 on real prompt and response tokens.
        response_mask: [B, T] float32, 1 on real response tokens (EOS included, padding excluded).
        prompt_len: P, the padded prompt length (same for the whole batch).
        sampler_logp: [B, T] float32, log-prob of each response token under the sampler (0 on padding).
        group_ids: [B] long, the prompt index of each sequence (GRPO groups).
        prompts: B prompt strings; completions: B decoded responses.
        examples: B task examples (`rlentropy.data.Example`), for scoring.
        truncated: [B] bool, True when the response hit max_new_tokens without EOS / stop.
    """

    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    response_mask: torch.Tensor  # [B, T]
    prompt_len: int
    sampler_logp: torch.Tensor  # [B, T]
    group_ids: torch.Tensor  # [B]
    prompts: list[str] = field(default_factory=list)
    completions: list[str] = field(default_factory=list)
    examples: list[Any] = field(default_factory=list)
    truncated: torch.Tensor | None = None  # [B]

    @property
    def response_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_len :]  # [B, T]

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def select(self, idx: torch.Tensor | list[int]) -> RolloutBatch:
        """Rows `idx` (a mini-batch), keeping the layout."""
        index = torch.as_tensor(idx, dtype=torch.long)
        pick = index.tolist()
        return RolloutBatch(
            input_ids=self.input_ids[index],
            attention_mask=self.attention_mask[index],
            response_mask=self.response_mask[index],
            prompt_len=self.prompt_len,
            sampler_logp=self.sampler_logp[index],
            group_ids=self.group_ids[index],
            prompts=[self.prompts[i] for i in pick] if self.prompts else [],
            completions=[self.completions[i] for i in pick] if self.completions else [],
            examples=[self.examples[i] for i in pick] if self.examples else [],
            truncated=None if self.truncated is None else self.truncated[index],
        )


def concat_batches(parts: list[RolloutBatch], *, pad_id: int) -> RolloutBatch:
    """Stack rollout batches: prompts re-left-padded to the longest P, responses right-padded to the
    longest T, group ids renumbered consecutively."""
    P = max(b.prompt_len for b in parts)
    T = max(b.response_mask.shape[1] for b in parts)
    ids, att, rmask, slp, gids, trunc = [], [], [], [], [], []
    offset = 0
    for b in parts:
        n, p, t = len(b), b.prompt_len, b.response_mask.shape[1]
        lp, rp = P - p, T - t
        ids.append(
            torch.cat(
                [
                    torch.full((n, lp), pad_id, dtype=b.input_ids.dtype),
                    b.input_ids[:, :p],
                    b.input_ids[:, p:],
                    torch.full((n, rp), pad_id, dtype=b.input_ids.dtype),
                ],
                1,
            )
        )  # [n, P+T]
        att.append(
            torch.cat(
                [
                    torch.zeros(n, lp, dtype=b.attention_mask.dtype),
                    b.attention_mask,
                    torch.zeros(n, rp, dtype=b.attention_mask.dtype),
                ],
                1,
            )
        )  # [n, P+T]
        rmask.append(torch.nn.functional.pad(b.response_mask, (0, rp)))  # [n, T]
        slp.append(torch.nn.functional.pad(b.sampler_logp, (0, rp)))  # [n, T]
        gids.append(b.group_ids - b.group_ids.min() + offset)  # [n]
        offset = int(gids[-1].max()) + 1
        trunc.append(b.truncated if b.truncated is not None else torch.zeros(n, dtype=torch.bool))
    return RolloutBatch(
        input_ids=torch.cat(ids),
        attention_mask=torch.cat(att),
        response_mask=torch.cat(rmask),
        prompt_len=P,
        sampler_logp=torch.cat(slp),
        group_ids=torch.cat(gids),
        prompts=[x for b in parts for x in b.prompts],
        completions=[x for b in parts for x in b.completions],
        examples=[x for b in parts for x in b.examples],
        truncated=torch.cat(trunc),
    )
