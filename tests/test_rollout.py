"""HFGenerator, both engines (lean decode loop, HF generate): layout, masks and padding, stop strings,
EOS, sampler log-probs, determinism, greedy parity between the engines, early exit and row dropping."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from rlentropy.models.tiny import build_tokenizer, load_shipped_policy, make_random_tiny_policy, tiny_llama_config
from rlentropy.rollout.base import RolloutBatch
from rlentropy.rollout.hf import HFGenerator, position_ids_from_mask, top_p_filter

PROMPTS = ["Make 22 from 3 5 7:", "1+1=", "Make 9 from 1 2 3 4:"]
ENGINES = ["lean", "hf_generate"]


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


@pytest.mark.parametrize("engine", ENGINES)
def test_layout_masks_and_padding(policy, engine):
    model, tok = policy
    gen = HFGenerator(model, tok, max_new_tokens=10, engine=engine)
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


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.6])
def test_sampler_logp_equals_teacher_forced_recompute(policy, temperature, engine):
    model, tok = policy
    # batch_size 5 with n = 4: chunks split the groups of a prompt (the lean engine prefills each
    # distinct prompt of a chunk once and shares its cache)
    gen = HFGenerator(model, tok, max_new_tokens=12, temperature=temperature, batch_size=5, engine=engine)
    batch = gen.generate(PROMPTS, None, 4, seed=3)
    ref = _teacher_forced_logp(model, batch, temperature)  # [B, T] float64
    assert batch.response_mask.sum() > 30
    torch.testing.assert_close(batch.sampler_logp.double(), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("engine", ENGINES)
def test_top_p_distribution_and_logp(policy, engine):
    # hand-worked nucleus: p = (0.5, 0.3, 0.15, 0.05); top_p 0.8 keeps 0.5 and 0.3 (0.5 < 0.8 <= 0.8)
    scores = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = top_p_filter(scores, 0.8)
    assert torch.isfinite(kept).tolist() == [[True, True, False, False]]
    # top_p below the top probability keeps exactly one token
    assert torch.isfinite(top_p_filter(scores, 0.3)).sum() == 1
    model, tok = policy
    gen = HFGenerator(model, tok, max_new_tokens=8, temperature=0.9, top_p=0.6, engine=engine)
    batch = gen.generate(PROMPTS, None, 3, seed=1)
    with torch.no_grad():
        logits = model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=position_ids_from_mask(batch.attention_mask),
        ).logits
    P = batch.prompt_len
    z = top_p_filter(logits[:, P - 1 : -1].double() / 0.9, 0.6)  # [B, T, V] renormalised nucleus
    ref = torch.log_softmax(z, -1).gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1) * batch.response_mask
    torch.testing.assert_close(batch.sampler_logp.double(), ref, rtol=1e-4, atol=1e-5)
    # every sampled token lies inside its nucleus, and the nucleus renormalisation raised its log-prob
    plain = _teacher_forced_logp(model, batch, 0.9)
    m = batch.response_mask.bool()
    assert torch.isfinite(ref[m]).all() and (batch.sampler_logp.double()[m] >= plain[m] - 1e-5).all()


@pytest.mark.parametrize("engine", ENGINES)
def test_stop_strings_truncate_and_mask(policy, engine):
    model, tok = policy
    # a random policy over ~100 characters: with many stop characters most rows stop early
    # (P(a row survives 16 tokens) ~ 0.94^16 = 0.37, so ~15 of 24 rows stop)
    stops = ["a", "e", "1", "7", "x", "Q"]
    gen = HFGenerator(model, tok, max_new_tokens=16, stop_strings=stops, engine=engine)
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


@pytest.mark.parametrize("engine", ENGINES)
def test_determinism_and_rng_isolation(policy, engine):
    model, tok = policy
    gen = HFGenerator(model, tok, max_new_tokens=10, batch_size=4, engine=engine)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = gen.generate(PROMPTS, None, 3, seed=7)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG is untouched
    b = gen.generate(PROMPTS, None, 3, seed=7)
    c = gen.generate(PROMPTS, None, 3, seed=8)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.sampler_logp, b.sampler_logp)
    # another seed gives other samples (36 random characters per row set: equal by chance ~never)
    assert a.completions != c.completions
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
    with pytest.raises(ValueError, match="engine: must be one of auto, lean, hf_generate"):
        HFGenerator(model, tok, max_new_tokens=4, engine="vllm")
    assert gen.engine == "lean"  # "auto" on a decoder-only model
    enc_dec = SimpleNamespace(config=SimpleNamespace(is_encoder_decoder=True), generation_config=None)
    assert HFGenerator(enc_dec, tok, max_new_tokens=4).engine == "hf_generate"
    with pytest.raises(ValueError, match="engine: 'lean' supports decoder-only models"):
        HFGenerator(enc_dec, tok, max_new_tokens=4, engine="lean")


def test_lean_engine_needs_a_reorderable_cache(policy):
    model, tok = policy

    class NoCache(torch.nn.Module):  # a causal LM that returns no KV cache
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, **kwargs):
            return SimpleNamespace(logits=self.inner(**kwargs).logits, past_key_values=None)

    gen = HFGenerator(NoCache(), tok, max_new_tokens=4, engine="lean")
    with pytest.raises(ValueError, match="engine: the model returned no reorderable KV cache"):
        gen.generate(PROMPTS, None, 2, seed=0)


@pytest.mark.parametrize("engine", ENGINES)
def test_model_generation_config_does_not_leak(policy, engine):
    # A model whose generation_config asks for top_k=1 and a repetition penalty: our sampler ignores
    # them, so log-probs still match the plain temperature softmax.
    model, tok = policy
    old = model.generation_config
    model.generation_config = old.__class__(
        top_k=1, repetition_penalty=3.0, temperature=0.1, eos_token_id=2, pad_token_id=0, bos_token_id=1
    )
    try:
        batch = HFGenerator(model, tok, max_new_tokens=8, engine=engine).generate(PROMPTS, None, 2, seed=0)
    finally:
        model.generation_config = old
    torch.testing.assert_close(
        batch.sampler_logp.double(), _teacher_forced_logp(model, batch, 1.0), rtol=1e-4, atol=1e-5
    )


# ------------------------------------------------------------------ a scripted model: forced EOS / stops
def _scripted_policy():
    """A tiny Llama whose next token is forced by position: at input position q the logit of
    SCRIPT[q] gets +40 (every other token then has probability < 100 * e^-40 ~ 4e-16, so both engines
    sample the script exactly). It records the batch size of every forward call.

    A prompt of k characters (+ <bos>) has its last real token at position k, so its response is
    SCRIPT[k], SCRIPT[k + 1], ... The segments below give, with stop strings ["=2", "\\n"] and 8 new
    tokens: "ab"+2 chars -> "x=2" (stop string over two tokens), 5 chars -> "ab<eos>", 10 chars ->
    "12=2", 18 chars -> "abcdefgh" (truncated), 27 chars -> "z\\n" (one-token stop string).
    """
    from transformers import GenerationConfig, LlamaForCausalLM

    tok = build_tokenizer()
    script = ["q"] * 64
    for start, text in ((2, "x=2"), (5, "ab"), (10, "12=2"), (18, "abcdefgh"), (27, "z\n")):
        script[start : start + len(text)] = list(text)
    ids = [tok.convert_tokens_to_ids(c) for c in script]
    ids[7] = tok.eos_token_id  # 5-character prompt: "ab" then <eos> at position 7

    class Scripted(LlamaForCausalLM):
        def forward(self, input_ids=None, position_ids=None, **kwargs):
            assert position_ids is not None  # both engines pass generation's position ids
            self.batch_sizes.append(int(input_ids.shape[0]))
            out = super().forward(input_ids=input_ids, position_ids=position_ids, **kwargs)
            q = out.logits.shape[1]
            forced = self.script[position_ids[:, -q:]]  # [b, q]
            out.logits = out.logits + 40.0 * F.one_hot(forced, out.logits.shape[-1])  # [b, q, V]
            return out

    cfg = tiny_llama_config(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Scripted(cfg).eval()
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model.script = torch.tensor(ids)
    model.batch_sizes = []
    return model, tok


SCRIPT_PROMPTS = ["pp", "ppppp", "p" * 10, "p" * 18, "p" * 27]


def test_forced_eos_and_stop_strings_match_between_engines():
    model, tok = _scripted_policy()
    batches = {}
    for engine in ENGINES:
        gen = HFGenerator(model, tok, max_new_tokens=8, stop_strings=["=2", "\n"], engine=engine)
        model.batch_sizes = []
        batches[engine] = gen.generate(SCRIPT_PROMPTS, None, 2, seed=0)
        if engine == "lean":
            # prefill: 5 distinct prompts once; then finished rows leave the batch: "z\n" rows after
            # token 2, "x=2" and "ab<eos>" rows after token 3, "12=2" after token 4; the truncated rows
            # decode alone and the loop ends at max_new_tokens (no forward for the 8th token's successor)
            assert model.batch_sizes == [5, 10, 8, 4, 2, 2, 2, 2]
    for engine, batch in batches.items():
        assert batch.completions == ["x", "x", "ab", "ab", "12", "12", "abcdefgh", "abcdefgh", "z", "z"], engine
        assert batch.response_mask.sum(1).tolist() == [3, 3, 3, 3, 4, 4, 8, 8, 2, 2]
        assert batch.truncated.tolist() == [False] * 6 + [True, True] + [False, False]
        eos_row = batch.response_ids[2, :3].tolist()
        assert eos_row == [tok.convert_tokens_to_ids("a"), tok.convert_tokens_to_ids("b"), tok.eos_token_id]
        assert batch.response_ids.shape[1] == 8
        torch.testing.assert_close(
            batch.sampler_logp.double(), _teacher_forced_logp(model, batch, 1.0), rtol=0, atol=1e-6
        )
    lean, hf = batches["lean"], batches["hf_generate"]
    assert torch.equal(lean.input_ids, hf.input_ids) and torch.equal(lean.attention_mask, hf.attention_mask)
    assert torch.equal(lean.response_mask, hf.response_mask)
    torch.testing.assert_close(lean.sampler_logp, hf.sampler_logp, rtol=0, atol=1e-6)


def test_lean_exits_early_when_every_row_is_done():
    model, tok = _scripted_policy()
    # "x=2" stops every row after 3 tokens: 1 prefill + 2 decode forwards, not 16
    gen = HFGenerator(model, tok, max_new_tokens=16, stop_strings=["=2"], engine="lean")
    batch = gen.generate(["pp"], None, 3, seed=0)
    assert model.batch_sizes == [1, 3, 3]
    assert batch.completions == ["x"] * 3 and batch.response_ids.shape[1] == 3


@pytest.fixture(scope="module")
def shipped():
    return load_shipped_policy()


def test_greedy_parity_with_hf_generate(shipped):
    """top_p tiny keeps only the most likely token: both engines are deterministic and must agree."""
    model, tok = shipped
    prompts = ["Make 22 from 3 5 7:", "Make 9 from 1 2 3 4:", "Make 10 from 2 8:", "Make 40 from 4 5 8 2:"]
    hf = HFGenerator(model, tok, max_new_tokens=16, top_p=1e-6, stop_strings=["\n"], engine="hf_generate")
    want = hf.generate(prompts, None, 3, seed=0)
    # lean, in chunks of 5 rows (groups of 3 split across chunks) and with another seed
    lean = HFGenerator(model, tok, max_new_tokens=16, top_p=1e-6, stop_strings=["\n"], batch_size=5)
    got = lean.generate(prompts, None, 3, seed=1)
    assert torch.equal(got.input_ids, want.input_ids) and got.completions == want.completions
    assert torch.equal(got.response_mask, want.response_mask)
    assert got.sampler_logp.abs().max() == 0  # a one-token nucleus has probability 1
    assert all(c == got.completions[3 * i] for i in range(4) for c in got.completions[3 * i : 3 * i + 3])
    assert got.response_mask.sum() >= 4 * 3 * 4  # real responses (answers are ~8 tokens)


@pytest.mark.parametrize("engine", ENGINES)
def test_prompts_without_padding(policy, engine):
    # equal-length prompts: no left padding, so the lean loop decodes without an attention mask
    model, tok = policy
    batch = HFGenerator(model, tok, max_new_tokens=10, engine=engine).generate(
        ["1+1=", "2+5=", "9*3="], None, 4, seed=2
    )
    assert batch.attention_mask[:, : batch.prompt_len].all()
    torch.testing.assert_close(
        batch.sampler_logp.double(), _teacher_forced_logp(model, batch, 1.0), rtol=1e-4, atol=1e-5
    )


def test_lean_engine_on_a_peft_model():
    from peft import LoraConfig, get_peft_model

    base, tok = make_random_tiny_policy(seed=1)
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    model.eval()
    batch = HFGenerator(model, tok, max_new_tokens=8, temperature=0.8, engine="lean").generate(PROMPTS, None, 3, seed=0)
    assert batch.response_mask.sum() > 12
    torch.testing.assert_close(
        batch.sampler_logp.double(), _teacher_forced_logp(model, batch, 0.8), rtol=1e-4, atol=1e-5
    )
