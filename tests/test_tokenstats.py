"""Tests of rlentropy.tokenstats: exactness against float64, theory checks, gradients, memory, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from rlentropy.tokenstats import TokenStats, token_stats, token_stats_from_hidden, token_stats_reference
from rlentropy.tokenstats._kernels import plan_chunks

FIELDS = ("logp", "entropy", "s", "s_bar", "sum_p2")
# float32 work on O(1..30) logits: relative 1e-5 plus an absolute floor for values that are ~0 by
# cancellation (s, s_bar near uniform rows); the floor is ~100 float32 ulps of the O(1) terms.
RTOL, ATOL = 1e-5, 2e-6


def _close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = RTOL, atol: float = ATOL) -> None:
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol)


def _assert_stats(st_: TokenStats, ref: dict[str, torch.Tensor], rtol: float = RTOL, atol: float = ATOL) -> None:
    for f in FIELDS:
        got = getattr(st_, f)
        assert got.dtype == torch.float32, f
        _close(got, ref[f], rtol, atol)


# ------------------------------------------------------------------------------ exactness


@pytest.mark.parametrize("temperature", [1.0, 0.6, 1.7])
@pytest.mark.parametrize("workspace", [2**28, 3000])  # whole vocabulary / forced vocabulary slices
def test_logits_path_matches_float64_reference(temperature, workspace):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 7, 211, generator=g) * 4.0  # [B, T, V]
    tokens = torch.randint(0, 211, (3, 7), generator=g)
    out = token_stats(logits, tokens, temperature=temperature, workspace_bytes=workspace)
    _assert_stats(out, token_stats_reference(logits, tokens, temperature=temperature))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_low_and_high_precision_inputs_reduce_in_float32(dtype):
    g = torch.Generator().manual_seed(2)
    logits = (torch.randn(4, 300, generator=g) * 5.0).to(dtype)  # [N, V]
    tokens = torch.randint(0, 300, (4,), generator=g)
    out = token_stats(logits, tokens)
    # the reference sees exactly the same (rounded) input values
    _assert_stats(out, token_stats_reference(logits, tokens))


@pytest.mark.parametrize("gap", [20.0, 28.0, 40.0])
@pytest.mark.parametrize("workspace", [2**28, 4000])
@pytest.mark.parametrize("vocab", [1000, 151_936])
def test_near_one_hot_rows_are_exact(gap, workspace, vocab):
    # z = [gap, 0, ..., 0]. With r = (V-1) e^-gap (the mass off the arg-max, unnormalised):
    #   log p_0 = -log1p(r),   H = log1p(r) + gap * r / (1 + r)
    # gap 28, V = 1000: r = 999 e^-28 = 6.9e-10, H = 6.9e-10 + 28 * 6.9e-10 = 2.0e-8 (the "H ~ 1e-8" case).
    # The naive float64 log_softmax gets log p_0 wrong at gap 40 (lse rounds); the closed form does not.
    # V = 151,936 (Qwen2.5): 151,935 equal tiny terms per sum, where one serial float32 chain loses 1e-3.
    z = torch.zeros(2, vocab)
    z[:, 0] = gap
    tokens = torch.tensor([0, 5])
    r = (vocab - 1) * math.exp(-gap)
    lp0 = -math.log1p(r)
    ent = math.log1p(r) + gap * r / (1 + r)
    lp5 = -gap + lp0
    p0, p5 = math.exp(lp0), math.exp(lp5)
    sum_p2 = p0**2 + (vocab - 1) * p5**2
    s_bar = p0**2 * (ent + lp0) + (vocab - 1) * p5**2 * (ent + lp5)
    out = token_stats(z, tokens, workspace_bytes=workspace)
    expect = {
        "logp": torch.tensor([lp0, lp5], dtype=torch.float64),
        "entropy": torch.tensor([ent, ent], dtype=torch.float64),
        "s": torch.tensor([p0 * (ent + lp0), p5 * (ent + lp5)], dtype=torch.float64),
        "s_bar": torch.tensor([s_bar, s_bar], dtype=torch.float64),
        "sum_p2": torch.tensor([sum_p2, sum_p2], dtype=torch.float64),
    }
    _assert_stats(out, expect, rtol=1e-5, atol=0.0)
    assert out.entropy[0].item() > 0.0


def test_uniform_rows():
    # all logits equal: p = 1/V, H = log V, S_k = (1/V)(log V - log V) = 0, s_bar = 0, sum p^2 = 1/V
    vocab = 512
    out = token_stats(torch.full((3, vocab), -7.25), torch.tensor([0, 100, 511]))
    _close(out.entropy, torch.full((3,), math.log(vocab)), atol=0.0)
    _close(out.logp, torch.full((3,), -math.log(vocab)), atol=0.0)
    _close(out.sum_p2, torch.full((3,), 1.0 / vocab), atol=0.0)
    assert torch.all(out.s.abs() < 1e-9) and torch.all(out.s_bar.abs() < 1e-9)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_huge_logits(temperature):
    # logits of +-1e4: the row is one-hot in float64 too, except where two maxima are within a few units
    g = torch.Generator().manual_seed(3)
    logits = (torch.rand(6, 257, generator=g) * 2 - 1) * 1e4  # [N, V]
    logits[0, 10] = logits[0].max() + 0.5  # a near tie at the top: H well away from 0
    logits[0, 11] = logits[0, 10] - 1.0
    tokens = torch.randint(0, 257, (6,), generator=g)
    tokens[0] = 11
    out = token_stats(logits, tokens, temperature=temperature, workspace_bytes=5000)
    ref = token_stats_reference(logits, tokens, temperature=temperature)
    # log p of a token ~1e4 below the max is ~ -1e4: relative 1e-5 of it is far above float32 ulps
    _assert_stats(out, ref, rtol=1e-5, atol=1e-6)
    assert out.entropy[0] > 0.1


# ------------------------------------------------------------------------------ properties


@settings(max_examples=40, deadline=None)
@given(
    vocab=st.integers(2, 64),
    scale=st.floats(0.01, 30.0),
    temperature=st.floats(0.3, 3.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_properties(vocab, scale, temperature, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(vocab, generator=g) * scale  # [V]
    # evaluate S_k for every k at once: V rows of the same logits, token k in row k
    out = token_stats(z.expand(vocab, vocab), torch.arange(vocab), temperature=temperature)
    p = out.logp.double().exp()  # [V]
    s_all = out.s.double()  # [V]
    # sum_i S_i = 0 (its terms are of size <= max p_i |H + log p_i|)
    bound = 1e-5 * (1.0 + (p * (out.entropy.double() + out.logp.double())).abs().sum())
    assert abs(s_all.sum().item()) <= bound
    # s_bar = sum_i p_i S_i = H sum p^2 + sum p^2 log p, and sum_p2 = sum p^2
    assert torch.allclose(out.s_bar.double(), (p * s_all).sum().expand(vocab), rtol=1e-4, atol=1e-6)
    rhs = out.entropy.double() * (p * p).sum() + (p * p * out.logp.double()).sum()
    assert torch.allclose(out.s_bar.double(), rhs, rtol=1e-4, atol=1e-6)
    assert torch.allclose(out.sum_p2.double(), (p * p).sum().expand(vocab), rtol=1e-5, atol=1e-7)
    # 0 <= H <= log V
    assert torch.all(out.entropy >= 0.0)
    assert torch.all(out.entropy.double() <= math.log(vocab) * (1 + 1e-6))


# ------------------------------------------------------------- theory (Theorem 3.2 of arXiv 2602.03392)


def _h64(z: torch.Tensor) -> float:
    lp = torch.log_softmax(z.double(), -1)
    return float(-(lp.exp() * lp).sum())


def test_theorem_3_2_entropy_gradient_is_minus_s():
    g = torch.Generator().manual_seed(4)
    z = torch.randn(50, generator=g, dtype=torch.float64) * 2.0  # [V]
    eps = 1e-4
    for k in (0, 7, int(z.argmax()), int(z.argmin())):
        out = token_stats(z.unsqueeze(0), torch.tensor([k]))
        e_k = torch.zeros(50, dtype=torch.float64)
        e_k[k] = 1.0
        # central difference: truncation O(eps^2) = 1e-8, rounding 1e-16 / 1e-4 = 1e-12
        fd = (_h64(z + eps * e_k) - _h64(z - eps * e_k)) / (2 * eps)
        assert fd == pytest.approx(-out.s.item(), rel=1e-5, abs=1e-7)
        # and the custom backward agrees: dH/dz_k = -S_k
        zz = z.clone().requires_grad_()
        token_stats(zz.unsqueeze(0), torch.tensor([k])).entropy.sum().backward()
        assert zz.grad[k].item() == pytest.approx(-out.s.item(), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("adv", [1.0, -1.0])
def test_theorem_3_3_step_changes_entropy_by_minus_alpha_a_s_minus_sbar(adv):
    g = torch.Generator().manual_seed(5)
    z = torch.randn(60, generator=g, dtype=torch.float64) * 2.0  # [V]
    p = torch.softmax(z, -1)
    k = 3
    out = token_stats(z.unsqueeze(0), torch.tensor([k]))
    slope = -adv * (out.s.double() - out.s_bar.double()).item()  # predicted dH / d alpha
    e_k = torch.zeros(60, dtype=torch.float64)
    e_k[k] = 1.0
    residuals = []
    for alpha in (1e-2, 5e-3):
        dh = _h64(z + alpha * adv * (e_k - p)) - _h64(z)
        residuals.append(abs(dh - alpha * slope))
        assert dh == pytest.approx(alpha * slope, rel=5e-2)
    # the residual is second order: halving alpha divides it by ~4
    assert 3.0 < residuals[0] / residuals[1] < 5.0


# ------------------------------------------------------------------------------ gradients


def _ref_grads(inputs, build_logits, tokens, g_logp, g_ent, temperature=1.0, mask=None):
    leaves = [t.detach().double().requires_grad_() for t in inputs]
    ref = token_stats_reference(build_logits(*leaves), tokens, temperature=temperature)
    m = torch.ones_like(g_logp) if mask is None else mask.double()
    ((ref["logp"] * g_logp + ref["entropy"] * g_ent) * m).sum().backward()
    return [t.grad for t in leaves]


@pytest.mark.parametrize("temperature", [1.0, 0.8])
def test_logits_gradient_parity(temperature):
    g = torch.Generator().manual_seed(6)
    logits = (torch.randn(2, 5, 97, generator=g) * 3).requires_grad_()  # [B, T, V]
    tokens = torch.randint(0, 97, (2, 5), generator=g)
    g_logp, g_ent = torch.randn(2, 5, generator=g), torch.randn(2, 5, generator=g)
    out = token_stats(logits, tokens, temperature=temperature, workspace_bytes=2000)
    (out.logp * g_logp + out.entropy * g_ent).sum().backward()
    (ref_grad,) = _ref_grads([logits], lambda x: x, tokens, g_logp, g_ent, temperature)
    _close(logits.grad, ref_grad)
    assert not out.s.requires_grad and not out.s_bar.requires_grad and not out.sum_p2.requires_grad


@pytest.mark.parametrize("temperature", [1.0, 1.3])
@pytest.mark.parametrize("workspace", [2**28, 1500])  # unchunked / row and vocabulary slices
def test_hidden_gradient_parity(temperature, workspace):
    g = torch.Generator().manual_seed(7)
    hidden = torch.randn(2, 6, 24, generator=g).requires_grad_()  # [B, T, d]
    weight = (torch.randn(131, 24, generator=g) * 0.4).requires_grad_()  # [V, d]
    bias = torch.randn(131, generator=g).requires_grad_()  # [V]
    tokens = torch.randint(0, 131, (2, 6), generator=g)
    mask = torch.ones(2, 6)
    mask[0, :2] = 0  # prompt
    mask[1, 5] = 0  # padding
    g_logp, g_ent = torch.randn(2, 6, generator=g), torch.randn(2, 6, generator=g)
    out = token_stats_from_hidden(
        hidden, weight, tokens, temperature=temperature, mask=mask, bias=bias, workspace_bytes=workspace
    )
    (out.logp * g_logp + out.entropy * g_ent).sum().backward()

    def build(h, w, b):
        return h @ w.T + b

    gh, gw, gb = _ref_grads([hidden, weight, bias], build, tokens, g_logp, g_ent, temperature, mask)
    ref = token_stats_reference(build(hidden.double(), weight.double(), bias.double()), tokens, temperature=temperature)
    for f in FIELDS:
        _close(getattr(out, f), ref[f] * mask)
    _close(hidden.grad, gh)
    _close(weight.grad, gw)
    _close(bias.grad, gb)
    assert torch.all(hidden.grad[0, :2] == 0) and torch.all(hidden.grad[1, 5] == 0)


def test_chunked_equals_unchunked_and_logits_path():
    g = torch.Generator().manual_seed(8)
    hidden = torch.randn(40, 16, generator=g)  # [N, d]
    weight = torch.randn(300, 16, generator=g) * 0.5  # [V, d]
    tokens = torch.randint(0, 300, (40,), generator=g)
    results = []
    for ws in (2**28, 20_000, 900):  # 1 block; row blocks; row blocks x vocabulary slices
        h = hidden.clone().requires_grad_()
        w = weight.clone().requires_grad_()
        out = token_stats_from_hidden(h, w, tokens, workspace_bytes=ws)
        (out.logp.sum() + 0.5 * out.entropy.sum()).backward()
        results.append((out, h.grad, w.grad))
    lg = (hidden @ weight.T).requires_grad_()
    via_logits = token_stats(lg, tokens)
    (via_logits.logp.sum() + 0.5 * via_logits.entropy.sum()).backward()
    base, gh0, gw0 = results[0]
    for out, gh, gw in results[1:]:
        for f in FIELDS:
            _close(getattr(out, f), getattr(base, f))
        _close(gh, gh0)
        _close(gw, gw0)
    for f in FIELDS:
        _close(getattr(via_logits, f), getattr(base, f))
    _close(lg.grad @ weight, gh0)


def test_low_precision_hidden_path_gradients_keep_dtype():
    g = torch.Generator().manual_seed(9)
    hidden = torch.randn(5, 32, generator=g).to(torch.bfloat16).requires_grad_()
    weight = (torch.randn(200, 32, generator=g) * 0.3).to(torch.bfloat16).requires_grad_()
    tokens = torch.randint(0, 200, (5,), generator=g)
    for ws in (2**28, 3000):
        hidden.grad = weight.grad = None
        out = token_stats_from_hidden(hidden, weight, tokens, workspace_bytes=ws)
        out.entropy.sum().backward()
        gh, gw = _ref_grads([hidden, weight], lambda h, w: h @ w.T, tokens, torch.zeros(5), torch.ones(5))
        ref = token_stats_reference(hidden.double() @ weight.double().T, tokens)
        _assert_stats(out, ref)
        assert hidden.grad.dtype == torch.bfloat16 and weight.grad.dtype == torch.bfloat16
        # the only error left is the final rounding of the gradient to bfloat16 (8 bits: 2^-8)
        _close(hidden.grad, gh, rtol=2**-7, atol=1e-4)
        _close(weight.grad, gw, rtol=2**-7, atol=1e-4)


def test_masked_positions_are_never_read():
    # NaN at masked positions would poison any computation that touched them
    g = torch.Generator().manual_seed(10)
    hidden = torch.randn(2, 4, 8, generator=g)
    hidden[0, 0] = float("nan")
    weight = torch.randn(30, 8, generator=g)
    tokens = torch.randint(0, 30, (2, 4), generator=g)
    mask = torch.ones(2, 4, dtype=torch.bool)
    mask[0, 0] = False
    out = token_stats_from_hidden(hidden, weight, tokens, mask=mask)
    assert torch.isfinite(out.entropy).all() and out.entropy[0, 0] == 0 and out.logp[0, 0] == 0
    logits = torch.randn(2, 4, 30, generator=g)
    logits[1, 3, 7] = float("inf")
    mask2 = torch.ones(2, 4)
    mask2[1, 3] = 0
    out2 = token_stats(logits, tokens, mask=mask2)
    ref = token_stats_reference(logits, tokens)
    _close(out2.entropy[mask2.bool()], ref["entropy"][mask2.bool()])
    assert out2.entropy[1, 3] == 0


def test_strided_logits_view_is_not_copied_and_matches():
    g = torch.Generator().manual_seed(11)
    full = torch.randn(3, 9, 64, generator=g, requires_grad=True)  # [B, L, V]
    logits = full[:, 2:8, :]  # [B, T, V], not viewable as [B*T, V]
    tokens = torch.randint(0, 64, (3, 6), generator=g)
    mask = torch.rand(3, 6, generator=g) > 0.3
    out = token_stats(logits, tokens, mask=mask)
    out.logp.sum().backward()
    (ref_grad,) = _ref_grads([full], lambda x: x[:, 2:8, :], tokens, torch.ones(3, 6), torch.zeros(3, 6), 1.0, mask)
    ref = token_stats_reference(logits, tokens)
    _close(out.logp, ref["logp"] * mask)
    _close(full.grad, ref_grad)


class _MaxAlloc(TorchDispatchMode):
    """Records the largest tensor any aten op produces while active."""

    def __init__(self):
        super().__init__()
        self.max_bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.max_bytes = max(self.max_bytes, t.numel() * t.element_size())
        return out


def test_hidden_path_never_materialises_all_logits():
    # N = 128 tokens, V = 4000: [N, V] float32 logits would be 2 MB. The workspace is 256 KiB, so
    # each of the two float32 scratch buffers is <= 128 KiB; the largest other tensor is the
    # [V, d] = 4000 x 8 float32 weight gradient (128,000 bytes).
    g = torch.Generator().manual_seed(12)
    hidden = torch.randn(128, 8, generator=g, requires_grad=True)
    weight = torch.randn(4000, 8, generator=g, requires_grad=True)
    tokens = torch.randint(0, 4000, (128,), generator=g)
    workspace = 256 * 1024
    with _MaxAlloc() as mode:
        out = token_stats_from_hidden(hidden, weight, tokens, workspace_bytes=workspace)
        (out.logp + out.entropy).sum().backward()
    assert mode.max_bytes <= workspace // 2
    # 8 full rows would fit, fewer than 64: 64 rows x (262,144 / (64 x 8) = 512) columns, 8 slices
    plan = plan_chunks(128, 4000, workspace_bytes=workspace)
    assert (plan.rows, plan.vocab, plan.vocab_slices) == (64, 512, 8)
    # and it is still right
    ref = token_stats_reference(hidden.detach().double() @ weight.detach().double().T, tokens)
    _close(out.entropy, ref["entropy"])


def test_plan_splits_vocabulary_only_when_needed():
    # 256 MiB, V = 151,936: 2 float32 buffers = 1,215,488 bytes per row -> 220 rows, whole vocabulary
    plan = plan_chunks(4096, 151_936, workspace_bytes=256 * 2**20)
    assert (plan.rows, plan.vocab, plan.vocab_slices) == (220, 151_936, 1)
    # 4 MiB cannot hold 64 full rows: 64 rows x 8,192 columns (4 MiB / (64 x 8 bytes)) -> 19 slices
    plan = plan_chunks(4096, 151_936, workspace_bytes=4 * 2**20)
    assert (plan.rows, plan.vocab, plan.vocab_slices) == (64, 8192, 19)


# ------------------------------------------------------------------------------ errors


def test_error_messages():
    z = torch.randn(2, 3, 10)
    tok = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"logits must be a floating-point tensor, got dtype torch.int64"):
        token_stats(torch.zeros(2, 3, 10, dtype=torch.long), tok)
    with pytest.raises(
        ValueError, match=r"tokens has shape \[2, 4\] but logits \[2, 3, 10\] has leading shape \[2, 3\]"
    ):
        token_stats(z, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, 10\).*got values in \[0, 10\]"):
        token_stats(z, torch.tensor([[0, 1, 10], [0, 0, 0]]))
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, 10\).*\[-1, 0\]"):
        token_stats(z, torch.tensor([[0, -1, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match=r"tokens must be an integer tensor"):
        token_stats(z, tok.float())
    with pytest.raises(ValueError, match=r"mask has shape \[3\] but tokens has shape \[2, 3\]"):
        token_stats(z, tok, mask=torch.ones(3))
    with pytest.raises(ValueError, match=r"temperature must be a positive finite number, got 0"):
        token_stats(z, tok, temperature=0)
    with pytest.raises(ValueError, match=r"workspace_bytes must be a positive int"):
        token_stats(z, tok, workspace_bytes=0)
    bad = z.clone()
    bad[1, 2, 4] = float("nan")
    with pytest.raises(
        ValueError, match=r"logits \(shape \[2, 3, 10\]\) contains non-finite values.*first at index \[5, 4\]"
    ):
        token_stats(bad, tok)
    out = token_stats(bad, tok, check_finite=False)
    assert torch.isnan(out.entropy[1, 2]) and torch.isfinite(out.entropy[0]).all()

    h = torch.randn(2, 3, 4)
    w = torch.randn(10, 4)
    with pytest.raises(
        ValueError,
        match=r"hidden must have shape \[\.\.\., d\] with d = lm_head_weight.shape\[1\] = 4, got \[2, 3, 5\]",
    ):
        token_stats_from_hidden(torch.randn(2, 3, 5), w, tok)
    with pytest.raises(ValueError, match=r"lm_head_weight must have shape \[V, d\], got \[40\]"):
        token_stats_from_hidden(h, torch.randn(40), tok)
    with pytest.raises(ValueError, match=r"lm_head_weight must be a floating-point tensor"):
        token_stats_from_hidden(h, w.int(), tok)
    with pytest.raises(ValueError, match=r"bias must have shape \[V\] = \[10\], got \[9\]"):
        token_stats_from_hidden(h, w, tok, bias=torch.zeros(9))
    with pytest.raises(ValueError, match=r"tokens has shape \[3, 2\] but hidden \[2, 3, 4\]"):
        token_stats_from_hidden(h, w, tok.T)
    w_bad = w.clone()
    w_bad[3, 1] = float("inf")
    with pytest.raises(
        ValueError,
        match=r"lm_head_weight \(shape \[10, 4\]\) contains non-finite values: 1 entries, first at index \[3, 1\]",
    ):
        token_stats_from_hidden(h, w_bad, tok)
    h_bad = h.clone()
    h_bad[0, 1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"hidden \(shape \[6, 4\]\) contains non-finite"):
        token_stats_from_hidden(h_bad, w, tok)
    with pytest.raises(ValueError, match=r"workspace_bytes=8 is too small"):
        token_stats_from_hidden(h, w, tok, workspace_bytes=8)


def test_empty_mask_and_detach():
    z = torch.randn(2, 3, 10, requires_grad=True)
    tok = torch.zeros(2, 3, dtype=torch.long)
    out = token_stats(z, tok, mask=torch.zeros(2, 3))
    assert all(torch.all(getattr(out, f) == 0) for f in FIELDS)
    out = token_stats(z, tok).detach()
    assert not out.logp.requires_grad and not out.entropy.requires_grad
