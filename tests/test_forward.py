"""`policy_token_stats` against a plain float64 computation from full logits of unpadded sequences."""

from __future__ import annotations

import pytest
import torch

from rlentropy.models.forward import (
    body_and_head,
    policy_token_stats,
    policy_token_stats_chunked,
    position_ids_from_mask,
)
from rlentropy.rollout.base import RolloutBatch


def _model(seed: int = 0):
    from rlentropy.models.tiny import make_random_tiny_policy

    model, tok = make_random_tiny_policy(seed=seed, hidden=32, layers=2)
    return model.float(), tok


def _batch(vocab: int, seed: int = 1) -> tuple[RolloutBatch, list[list[int]], list[list[int]]]:
    """3 rows: prompts of lengths 5, 3, 1 (left-padded to P = 5), responses of lengths 4, 2, 6 (T = 6)."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in (5, 3, 1)]
    resps = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in (4, 2, 6)]
    P, T = 5, 6
    ids = torch.zeros(3, P + T, dtype=torch.long)
    att = torch.zeros(3, P + T, dtype=torch.long)
    rmask = torch.zeros(3, T)
    for i, (p, r) in enumerate(zip(prompts, resps)):
        ids[i, P - len(p) : P] = torch.tensor(p)
        att[i, P - len(p) : P] = 1
        ids[i, P : P + len(r)] = torch.tensor(r)
        att[i, P : P + len(r)] = 1
        rmask[i, : len(r)] = 1
    batch = RolloutBatch(
        input_ids=ids,
        attention_mask=att,
        response_mask=rmask,
        prompt_len=P,
        sampler_logp=torch.zeros(3, T),
        group_ids=torch.tensor([0, 0, 1]),
    )
    return batch, prompts, resps


def _reference(model, prompts, resps, temperature: float) -> dict[str, list[torch.Tensor]]:
    """float64 statistics from the full logits of each UNPADDED sequence (no masks, no position ids)."""
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("logp", "entropy", "s", "s_bar", "sum_p2")}
    with torch.no_grad():
        for p, r in zip(prompts, resps):
            ids = torch.tensor([p + r])
            logits = model(input_ids=ids).logits[0].double() / temperature  # [L, V]
            z = logits[len(p) - 1 : len(p) + len(r) - 1]  # [n, V] predicts r
            logq = torch.log_softmax(z, -1)  # [n, V]
            q = logq.exp()
            h = -(q * logq).sum(-1)  # [n]
            lp = logq.gather(1, torch.tensor(r)[:, None])[:, 0]  # [n]
            s_all = q * (h[:, None] + logq)  # [n, V]
            out["logp"].append(lp)
            out["entropy"].append(h)
            out["s"].append(lp.exp() * (h + lp))
            out["s_bar"].append((q * s_all).sum(-1))
            out["sum_p2"].append((q * q).sum(-1))
    return out


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_matches_float64_full_logits_with_left_padding(temperature):
    model, tok = _model()
    batch, prompts, resps = _batch(len(tok))
    st = policy_token_stats(model, batch, temperature=temperature)
    ref = _reference(model, prompts, resps, temperature)
    for name in ("logp", "entropy", "s", "s_bar", "sum_p2"):
        got = getattr(st, name)
        assert got.dtype == torch.float32 and got.shape == (3, 6)
        for i, r in enumerate(resps):
            n = len(r)
            # fp32 body + fp32 projection vs float64 softmax of the same fp32 logits: ~1e-6 relative.
            torch.testing.assert_close(got[i, :n].double(), ref[name][i], rtol=1e-5, atol=2e-6)
            assert torch.all(got[i, n:] == 0), f"{name}: padding must read 0"


def test_gradient_matches_logits_reference():
    model, tok = _model(seed=3)
    batch, prompts, resps = _batch(len(tok), seed=4)
    w = torch.randn(3, 6, generator=torch.Generator().manual_seed(5)) * batch.response_mask  # [B, T]

    model.zero_grad()
    st = policy_token_stats(model, batch, with_grad=True)
    ((st.logp * w).sum() + 0.3 * (st.entropy * w).sum()).backward()
    got = {n: p.grad.detach().clone() for n, p in model.named_parameters()}

    model.zero_grad()
    total = 0.0
    for i, (p, r) in enumerate(zip(prompts, resps)):
        logits = model(input_ids=torch.tensor([p + r])).logits[0]  # [L, V]
        z = logits[len(p) - 1 : len(p) + len(r) - 1]  # [n, V]
        logq = torch.log_softmax(z, -1)
        h = -(logq.exp() * logq).sum(-1)
        lp = logq.gather(1, torch.tensor(r)[:, None])[:, 0]
        total = total + (lp * w[i, : len(r)]).sum() + 0.3 * (h * w[i, : len(r)]).sum()
    total.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(got[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)


def test_chunked_equals_whole_and_lora_wrapper_is_transparent():
    from peft import LoraConfig, get_peft_model

    model, tok = _model(seed=6)
    batch, _, _ = _batch(len(tok), seed=7)
    whole = policy_token_stats(model, batch)
    parts = policy_token_stats_chunked(model, batch, rows_per_chunk=2)
    torch.testing.assert_close(parts.entropy, whole.entropy, rtol=1e-6, atol=1e-6)
    # A fresh LoRA adapter has B = 0, so the peft-wrapped model computes the same function.
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    wrapped = policy_token_stats(peft_model, batch)
    torch.testing.assert_close(wrapped.logp, whole.logp, rtol=1e-6, atol=1e-6)
    body, head = body_and_head(peft_model)
    assert head.weight.shape == (len(tok), 32)


def test_position_ids_skip_left_padding():
    att = torch.tensor([[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    # row 0: two pads then positions 0, 1, 2; the right pad repeats 2 (never attended to)
    assert position_ids_from_mask(att).tolist() == [[0, 0, 0, 1, 2, 2], [0, 1, 2, 3, 4, 5]]


def test_bad_temperature_is_value_error():
    model, tok = _model()
    batch, _, _ = _batch(len(tok))
    with pytest.raises(ValueError, match="temperature"):
        policy_token_stats(model, batch, temperature=0.0)


@pytest.mark.parametrize("resp_len", [1, 4])
def test_shared_prompt_forward_equals_plain_values_and_gradients(resp_len):
    """`share_prompts`: one body pass per distinct prompt (KV cache expanded to its samples) gives the
    plain forward's statistics and gradients. float64, two groups of 3 (one prompt left-padded), rows
    out of group order, one response shorter than the rest, and a one-token response (no second pass)."""
    from rlentropy.models.forward import response_hidden_of

    model, _ = _model(seed=3)
    model = model.double()
    g = torch.Generator().manual_seed(5)
    P, G = 6, 3
    prompts = torch.randint(3, 40, (2, P), generator=g)  # [2, P]
    pmask = torch.ones(2, P, dtype=torch.long)
    pmask[0, :2] = 0  # prompt 0 is 4 tokens, left-padded
    order = torch.tensor([0, 3, 1, 4, 2, 5])  # rows interleave the two groups
    ids = torch.cat([prompts.repeat_interleave(G, 0), torch.randint(3, 40, (2 * G, resp_len), generator=g)], 1)
    att = torch.cat([pmask.repeat_interleave(G, 0), torch.ones(2 * G, resp_len, dtype=torch.long)], 1)
    ids, att = ids[order], att[order]  # [6, P + T]
    if resp_len > 1:
        att[1, -1] = 0  # a shorter response (right padding)
    weights = torch.linspace(-1.0, 1.0, 6 * resp_len * 32, dtype=torch.float64).view(6, resp_len, 32)
    grads, hiddens = [], []
    for share in (False, True):
        model.zero_grad(set_to_none=True)
        h = response_hidden_of(model, ids, att, P, share_prompts=share)  # [6, T, 32]
        (h * weights).sum().backward()
        hiddens.append(h.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert hiddens[0].shape == (6, resp_len, 32)
    torch.testing.assert_close(hiddens[1], hiddens[0], rtol=1e-10, atol=1e-10)
    # Gradients: ~1e-8 relative, not float64 rounding, because the rotary tables are built in float32
    # (the finite-difference derivative differs from both paths by more); a missing prompt gradient
    # would be O(1).
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-6, atol=1e-6 * float(grads[0].abs().max()))
    assert float(grads[0].abs().max()) > 1e-3
    # A batch whose prompts are all distinct takes the plain path.
    st_plain = policy_token_stats(model, _batch(model.config.vocab_size)[0])
    st_shared = policy_token_stats(model, _batch(model.config.vocab_size)[0], share_prompts=True)
    assert torch.equal(st_plain.logp, st_shared.logp)
