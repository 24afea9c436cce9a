"""HFGenerator: layout, masks and padding, stop strings, sampler log-probs, determinism."""

from __future__ import annotations

import pytest
import torch

from rlentropy.models.tiny import make_random_tiny_policy
from rlentropy.rollout.base import RolloutBatch
from rlentropy.rollout.hf import HFGenerator, position_ids_from_mask, top_p_filter

PROMPTS = ["Make 22 from 3 5 7:", "1+1=", "Make 9 from 1 2 3 4:"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Models this small run fastest on one thread; more threads only add barrier waits on a busy CPU.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def policy():
    return make_random_tiny_policy(seed=0)


def _teacher_forced_logp(model, batch: RolloutBatch, temperature: float) -> torch.Tensor:
    """float64 log softmax(z / T) at the sampled tokens, from one forward over prompt + response."""
    with torch.no_grad():
        logits = model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=position_ids_from_mask(batch.attention_mask),
        ).logits  # [B, L, V]
    P = batch.prompt_len
    logp = torch.log_softmax(logits[:, P - 1 : -1].double() / temperature, dim=-1)  # [B, T, V]
    return logp.gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1) * batch.response_mask  # [B, T]


def test_layout_masks_and_padding(policy):
    model, tok = policy
    gen = HFGenerator(model, tok, max_new_tokens=10)
    batch = gen.generate(PROMPTS, ["a", "b", "c"], 4, seed=0)
    B, L = batch.input_ids.shape
    P, T = batch.prompt_len, L - batch.prompt_len
    assert B == 12 and len(batch) == 12
    # P = <bos> + longest prompt; left padding with <pad> = 0 and attention 0 there
    assert P == 1 + max(len(p) for p in PROMPTS)
    assert batch.response_mask.shape == batch.sampler_logp.shape == (12, T) and 1 <= T <= 10
    assert batch.response_mask.dtype == torch.float32 and batch.sampler_logp.dtype == torch.float32
    assert batch.group_ids.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert batch.prompts == [p for p in PROMPTS for _ in range(4)]
    assert batch.examples == ["a"] * 4 + ["b"] * 4 + ["c"] * 4
    for b in range(B):
        prompt = PROMPTS[b // 4]
        pad = P - 1 - len(prompt)
        assert batch.input_ids[b, :pad].tolist() == [tok.pad_token_id] * pad
        assert batch.attention_mask[b, :pad].sum() == 0 and batch.attention_mask[b, pad:P].all()
        assert tok.decode(batch.input_ids[b, pad:P]) == "<bos>" + prompt
        n_resp = int(batch.response_mask[b].sum())
        # the mask is a prefix of ones; after it: pad ids, zero attention, zero log-probs
        assert batch.response_mask[b, :n_resp].all() and not batch.response_mask[b, n_resp:].any()
        assert (batch.attention_mask[b, P:] == batch.response_mask[b].long()).all()
        assert (batch.response_ids[b, n_resp:] == tok.pad_token_id).all()
        assert (batch.sampler_logp[b, n_resp:] == 0).all() and (batch.sampler_logp[b, :n_resp] < 0).all()
        resp = batch.response_ids[b, :n_resp].tolist()
        if batch.truncated[b]:
            assert n_resp == 10 and tok.eos_token_id not in resp
        else:  # ended by EOS, which is kept and masked in
            assert resp[-1] == tok.eos_token_id and tok.eos_token_id not in resp[:-1]
        assert batch.completions[b] == tok.decode(resp, skip_special_tokens=True)


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.6])
def test_sampler_logp_equals_teacher_forced_recompute(policy, temperature):
    model, tok = policy
    gen = HFGenerator(model, tok, max_new_tokens=12, temperature=temperature, batch_size=5)
    batch = gen.generate(PROMPTS, None, 4, seed=3)
    ref = _teacher_forced_logp(model, batch, temperature)  # [B, T] float64
    assert batch.response_mask.sum() > 30
    torch.testing.assert_close(batch.sampler_logp.double(), ref, rtol=1e-4, atol=1e-5)


def test_top_p_distribution_and_logp(policy):
    # hand-worked nucleus: p = (0.5, 0.3, 0.15, 0.05); top_p 0.8 keeps 0.5 and 0.3 (0.5 < 0.8 <= 0.8)
    scores = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = top_p_filter(scores, 0.8)
    assert torch.isfinite(kept).tolist() == [[True, True, False, False]]
    # top_p below the top probability keeps exactly one token
    assert torch.isfinite(top_p_filter(scores, 0.3)).sum() == 1
    model, tok = policy
    gen = HFGenerator(model, tok, max_new_tokens=8, temperature=0.9, top_p=0.6)
    batch = gen.generate(PROMPTS, None, 3, seed=1)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=position_ids_from_mask(batch.attention_mask)).logits
    P = batch.prompt_len
    z = top_p_filter(logits[:, P - 1 : -1].double() / 0.9, 0.6)  # [B, T, V] renormalised nucleus
    ref = torch.log_softmax(z, -1).gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1) * batch.response_mask
    torch.testing.assert_close(batch.sampler_logp.double(), ref, rtol=1e-4, atol=1e-5)
    # every sampled token lies inside its nucleus, and the nucleus renormalisation raised its log-prob
    plain = _teacher_forced_logp(model, batch, 0.9)
    m = batch.response_mask.bool()
    assert torch.isfinite(ref[m]).all() and (batch.sampler_logp.double()[m] >= plain[m] - 1e-5).all()


def test_stop_strings_truncate_and_mask(policy):
    model, tok = policy
    # a random policy over ~100 characters: with many stop characters most rows stop early
    stops = ["a", "e", "1", "7", "x", "Q"]
    gen = HFGenerator(model, tok, max_new_tokens=16, stop_strings=stops)
    batch = gen.generate(PROMPTS, None, 8, seed=5)
    n_stopped = 0
    for b in range(len(batch)):
        n_resp = int(batch.response_mask[b].sum())
        resp = batch.response_ids[b, :n_resp].tolist()
        text = tok.decode(resp, skip_special_tokens=True)
        hit = [s for s in stops if s in text]
        if hit and tok.eos_token_id not in resp:
            n_stopped += 1
            # the last kept token completes the stop string; no stop string before it
            assert text[-1] in stops and not any(s in text[:-1] for s in stops)
            assert batch.completions[b] == text[:-1]  # completion text excludes the stop string
            assert not batch.truncated[b]
        else:
            assert not hit and batch.completions[b] == text
    assert n_stopped >= 8
    ref = _teacher_forced_logp(model, batch, 1.0)
    torch.testing.assert_close(batch.sampler_logp.double(), ref, rtol=1e-4, atol=1e-5)


def test_multi_token_stop_string_post_processing(policy):
    # the stop string spans tokens; `_end_of` must cut right after the token that completes it
    model, tok = policy
    gen = HFGenerator(model, tok, max_new_tokens=8, stop_strings=["=2"])
    resp = tok("ab=2cd", add_special_tokens=False)["input_ids"]
    assert gen._end_of(resp) == (4, True, "ab")
    assert gen._end_of(tok("ab=", add_special_tokens=False)["input_ids"]) == (3, False, "ab=")
    eos = tok.eos_token_id
    assert gen._end_of(tok("ab", add_special_tokens=False)["input_ids"] + [eos, 5, 6]) == (3, True, "ab")


def test_determinism_and_rng_isolation(policy):
    model, tok = policy
    gen = HFGenerator(model, tok, max_new_tokens=10, batch_size=4)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = gen.generate(PROMPTS, None, 3, seed=7)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG is untouched
    b = gen.generate(PROMPTS, None, 3, seed=7)
    c = gen.generate(PROMPTS, None, 3, seed=8)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.sampler_logp, b.sampler_logp)
    assert not torch.equal(a.input_ids, c.input_ids) if a.input_ids.shape == c.input_ids.shape else True
    # a torch.Generator: one seed is drawn from it, so equal generator states give equal batches
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    d, e = gen.generate(PROMPTS, None, 3, generator=g1), gen.generate(PROMPTS, None, 3, generator=g2)
    assert torch.equal(d.input_ids, e.input_ids)
    assert torch.equal(g1.get_state(), g2.get_state())
    # the model's train/eval mode is restored
    model.train()
    gen.generate(PROMPTS[:1], None, 1, seed=0)
    assert model.training
    model.eval()


def test_bad_arguments(policy):
    model, tok = policy
    with pytest.raises(ValueError, match="max_new_tokens"):
        HFGenerator(model, tok, max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        HFGenerator(model, tok, max_new_tokens=4, temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        HFGenerator(model, tok, max_new_tokens=4, top_p=1.5)
    with pytest.raises(ValueError, match="stop_strings"):
        HFGenerator(model, tok, max_new_tokens=4, stop_strings="\n")
    gen = HFGenerator(model, tok, max_new_tokens=4)
    with pytest.raises(ValueError, match="prompts"):
        gen.generate([], None, 2, seed=0)
    with pytest.raises(ValueError, match="examples"):
        gen.generate(["a", "b"], ["x"], 2, seed=0)
    with pytest.raises(ValueError, match="n:"):
        gen.generate(["a"], None, 0, seed=0)


def test_model_generation_config_does_not_leak(policy):
    # A model whose generation_config asks for top_k=1 and a repetition penalty: our sampler ignores
    # them, so log-probs still match the plain temperature softmax.
    model, tok = policy
    old = model.generation_config
    model.generation_config = old.__class__(top_k=1, repetition_penalty=3.0, temperature=0.1,
                                            eos_token_id=2, pad_token_id=0, bos_token_id=1)
    try:
        batch = HFGenerator(model, tok, max_new_tokens=8).generate(PROMPTS, None, 2, seed=0)
    finally:
        model.generation_config = old
    torch.testing.assert_close(batch.sampler_logp.double(), _teacher_forced_logp(model, batch, 1.0),
                               rtol=1e-4, atol=1e-5)
