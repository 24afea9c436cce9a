"""Per-token policy statistics of a rollout batch, without ever building `[B, T, V]` logits.

`policy_token_stats(model, batch)` runs the transformer body once over prompt + response, takes the
last hidden states at the positions that predict response tokens and hands them, with the LM head
weight, to `rlentropy.tokenstats.token_stats_from_hidden`, which works chunk by chunk over tokens and
vocabulary. Every consumer (old-policy statistics, the loss forward, probes, evaluation) uses it, so
they all see the same numbers.
"""

from __future__ import annotations

from typing import Any

import torch

from rlentropy.rollout.base import RolloutBatch
from rlentropy.tokenstats import STAT_FIELDS, TokenStats, token_stats_from_hidden

DEFAULT_WORKSPACE_BYTES = 256 * 2**20


def _causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The HF CausalLM inside peft / accelerate / DDP wrappers (adapters stay active)."""
    m = model
    for _ in range(4):
        if hasattr(m, "get_base_model") and callable(m.get_base_model):
            m = m.get_base_model()  # peft: LoRA layers are injected in place, so they stay in the forward
        elif not hasattr(m, "get_output_embeddings") and isinstance(getattr(m, "module", None), torch.nn.Module):
            m = m.module  # DistributedDataParallel / accelerate wrappers
        else:
            break
    return m


def body_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The transformer body (embeddings → blocks → final norm) and the LM head of a causal LM.

    Raises:
        ValueError: when the model exposes no decoder body or no output embeddings.
    """
    lm = _causal_lm(model)
    body = None
    if hasattr(lm, "get_decoder"):
        try:
            body = lm.get_decoder()
        except (AttributeError, NotImplementedError):
            body = None
    if body is None or body is lm:
        body = getattr(lm, getattr(lm, "base_model_prefix", "model"), None)
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if body is None or head is None:
        raise ValueError(f"model: {type(lm).__name__} exposes no decoder body / output embeddings")
    if hasattr(head, "lora_A"):
        raise ValueError("model: the LM head carries a LoRA adapter; token statistics need a plain head")
    return body, head


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding, as HF `generate` uses them: cumsum(mask) − 1, ≥ 0.

    Args:
        attention_mask: [B, L] 0/1.

    Returns:
        [B, L] long.
    """
    pos = attention_mask.long().cumsum(-1) - 1  # [B, L]
    return pos.clamp(min=0)  # [B, L]


def response_hidden(model: torch.nn.Module, batch: RolloutBatch) -> torch.Tensor:
    """Last hidden states at the positions that predict the response tokens.

    Args:
        model: a causal LM (possibly peft-wrapped).
        batch: the rollout batch; `input_ids` [B, L] with P = `prompt_len`.

    Returns:
        [B, T, D] where row t predicts `input_ids[:, P + t]` (hidden position P + t − 1).
    """
    return response_hidden_of(model, batch.input_ids, batch.attention_mask, batch.prompt_len)


def response_hidden_of(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_len: int,
    *,
    share_prompts: bool = False,
) -> torch.Tensor:
    """`response_hidden` on plain tensors: ids [B, L], attention mask [B, L], prompt length P.

    With `share_prompts`, rows with the same prompt (ids and mask over the first P positions, e.g. the
    samples of a GRPO group) run the prompt through the body once: one forward over the U distinct
    prompts fills a KV cache, the cache is expanded to the B rows (an index_select, so gradients
    reach the prompt positions of every row) and a second forward runs the response positions only.
    The result equals the plain forward up to float rounding (different matmul shapes); it saves
    (B − U) · P positions of the body, most of the work when prompts are long and responses short.
    Models whose forward returns no reorderable cache take the plain path.

    Returns:
        [B, L − P, D] hidden states predicting the response tokens.
    """
    body, _ = body_and_head(model)
    if prompt_len < 1:
        raise ValueError("batch.prompt_len: must be >= 1 (the first response token needs a predicting position)")
    position_ids = position_ids_from_mask(attention_mask)  # [B, L]
    if share_prompts:
        hidden = _shared_prompt_hidden(body, input_ids, attention_mask, position_ids, prompt_len)
        if hidden is not None:
            return hidden
    out = body(
        input_ids=input_ids[:, :-1],
        attention_mask=attention_mask[:, :-1],
        position_ids=position_ids[:, :-1],
        use_cache=False,
    )
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # [B, L-1, D]
    return hidden[:, prompt_len - 1 :]  # [B, T, D]


def _shared_prompt_hidden(
    body: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    prompt_len: int,
) -> torch.Tensor | None:
    """The prompt-sharing path of `response_hidden_of`; None when no prompt repeats or no cache."""
    P = prompt_len
    key = torch.cat([input_ids[:, :P], attention_mask[:, :P].to(input_ids.dtype)], dim=1)  # [B, 2P]
    uniq, expand = torch.unique(key, dim=0, return_inverse=True)  # [U, 2P], [B]
    if uniq.shape[0] == input_ids.shape[0]:
        return None
    first = torch.full((uniq.shape[0],), input_ids.shape[0], dtype=torch.long, device=input_ids.device)  # [U]
    first = first.scatter_reduce(0, expand, torch.arange(input_ids.shape[0], device=input_ids.device), "amin")
    out = body(
        input_ids=input_ids[first, :P],
        attention_mask=attention_mask[first, :P],
        position_ids=position_ids[first, :P],
        use_cache=True,
    )
    cache = getattr(out, "past_key_values", None)
    if cache is None or not hasattr(cache, "reorder_cache"):
        return None
    last = out.last_hidden_state[:, -1:]  # [U, 1, D] the position predicting response token 0
    last = last.index_select(0, expand)  # [B, 1, D]
    if input_ids.shape[1] - P <= 1:  # one response position: nothing after the prompt to run
        return last
    cache.reorder_cache(expand)  # every layer's keys / values [U, ...] -> [B, ...], differentiable
    rest = body(
        input_ids=input_ids[:, P:-1],
        attention_mask=attention_mask[:, :-1],
        position_ids=position_ids[:, P:-1],
        past_key_values=cache,
        use_cache=True,
    )
    return torch.cat([last, rest.last_hidden_state], dim=1)  # [B, T, D]


def token_stats_of(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_len: int,
    mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    check_finite: bool | None = None,
    share_prompts: bool = False,
) -> TokenStats:
    """Token statistics of the response tokens `input_ids[:, prompt_len:]` at the positions of `mask`.

    The graph is kept when autograd is enabled (log p and H differentiable; s, s_bar, sum_p2 detached).

    Args:
        model: a causal LM (HF `PreTrainedModel`, possibly wrapped by peft).
        input_ids, attention_mask: [B, L] prompt (left-padded) + response (right-padded).
        prompt_len: P.
        mask: [B, L − P] positions to compute; the rest read 0.
        temperature, workspace_bytes, check_finite: see `policy_token_stats`.
        share_prompts: one body pass per distinct prompt (`response_hidden_of`).

    Returns:
        `TokenStats`, every field [B, L − P] float32.
    """
    if temperature <= 0:
        raise ValueError(f"temperature: must be > 0, got {temperature}")
    hidden = response_hidden_of(model, input_ids, attention_mask, prompt_len, share_prompts=share_prompts)  # [B, T, D]
    _, head = body_and_head(model)
    tokens = input_ids[:, prompt_len:]  # [B, T]
    return token_stats_from_hidden(
        hidden,
        head.weight,
        tokens,
        temperature=temperature,
        mask=mask,
        bias=getattr(head, "bias", None),
        workspace_bytes=workspace_bytes,
        check_finite=check_finite,
    )


class PolicyForward(torch.nn.Module):
    """The training forward of a policy as one module call: body + statistics of the response tokens.

    DDP and FSDP synchronise gradients only for work done inside the forward of the module they wrap,
    so the trainer wraps the policy in this module (and `accelerate.prepare`s it) and calls it for every
    loss forward. Generation, the no-grad statistics and the probes use `self.policy` directly.

    Args:
        policy: the causal LM (possibly peft-wrapped).
        share_prompts: one body pass per distinct prompt of a micro-batch (`response_hidden_of`;
            `train.share_prompts`).
    """

    def __init__(self, policy: torch.nn.Module, *, share_prompts: bool = False) -> None:
        super().__init__()
        self.policy = policy
        self.share_prompts = share_prompts

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        mask: torch.Tensor,
        *,
        prompt_len: int,
        temperature: float = 1.0,
        check_finite: bool | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """Returns the `TokenStats` fields (logp, entropy, s, s_bar, sum_p2), each [B, T]."""
        st = token_stats_of(
            self.policy,
            input_ids,
            attention_mask,
            prompt_len,
            mask,
            temperature=temperature,
            check_finite=check_finite,
            share_prompts=self.share_prompts,
        )
        return st.logp, st.entropy, st.s, st.s_bar, st.sum_p2


def policy_token_stats(
    model: torch.nn.Module,
    batch: RolloutBatch,
    *,
    temperature: float = 1.0,
    with_grad: bool = False,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    mask: torch.Tensor | None = None,
    check_finite: bool | None = None,
    share_prompts: bool = False,
) -> TokenStats:
    """Token statistics of the response tokens of `batch` under `model`, from hidden states.

    Args:
        model: a causal LM (HF `PreTrainedModel`, possibly wrapped by peft or accelerate).
        batch: `RolloutBatch` (prompt left-padded, response right-padded).
        temperature: the logits are divided by it before the softmax (use the sampling temperature).
        with_grad: keep the autograd graph (log p and H differentiable; s, s_bar, sum_p2 detached).
        workspace_bytes: memory budget of one `[chunk, V]` block inside `token_stats_from_hidden`.
        mask: [B, T] positions to compute (default `batch.response_mask`); the rest read 0.
        check_finite: passed to `token_stats_from_hidden` (None = on unless python -O). The trainer
            turns it off in the loss forward so a non-finite loss is detected and the update skipped.

    Returns:
        `TokenStats`, every field [B, T] float32, zero outside `mask`.
    """
    resp_mask = batch.response_mask if mask is None else mask  # [B, T]
    ctx: Any = torch.enable_grad() if with_grad else torch.no_grad()
    with ctx:
        return token_stats_of(
            model,
            batch.input_ids,
            batch.attention_mask,
            batch.prompt_len,
            resp_mask,
            temperature=temperature,
            workspace_bytes=workspace_bytes,
            check_finite=check_finite,
            share_prompts=share_prompts,
        )


def policy_token_stats_chunked(
    model: torch.nn.Module,
    batch: RolloutBatch,
    *,
    rows_per_chunk: int,
    temperature: float = 1.0,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    share_prompts: bool = False,
) -> TokenStats:
    """`policy_token_stats` without gradient, `rows_per_chunk` sequences at a time (bounded memory).

    Returns:
        `TokenStats` with every field [B, T].
    """
    if rows_per_chunk < 1:
        raise ValueError(f"rows_per_chunk: must be >= 1, got {rows_per_chunk}")
    parts = []
    n = len(batch)
    for start in range(0, n, rows_per_chunk):
        sub = batch.select(list(range(start, min(n, start + rows_per_chunk))))
        parts.append(
            policy_token_stats(
                model, sub, temperature=temperature, workspace_bytes=workspace_bytes, share_prompts=share_prompts
            )
        )
    return TokenStats(**{k: torch.cat([getattr(p, k) for p in parts], dim=0) for k in STAT_FIELDS})  # each [B, T]
