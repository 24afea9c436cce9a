"""Precision tests of rlentropy.tokenstats: inside a bf16 autocast region, and at a real vocabulary size.

Both compare against the float64 reference on exactly the inputs the function saw (bf16-rounded
where the inputs are bf16), so the only error allowed is float32 work.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from rlentropy.tokenstats import TokenStats, token_stats, token_stats_from_hidden, token_stats_reference

FIELDS = ("logp", "entropy", "s", "s_bar", "sum_p2")
RTOL, ATOL = 1e-5, 2e-6  # as in tests/test_tokenstats.py
QWEN_VOCAB = 151_936


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def _close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = RTOL, atol: float = ATOL) -> None:
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol)


def _ref_and_grads(leaves, build_logits, tokens, g_logp, g_ent, mask=None):
    """Float64 reference statistics of build_logits(*leaves) and the gradients of the test loss."""
    xs = [t.detach().double().requires_grad_() for t in leaves]
    ref = token_stats_reference(build_logits(*xs), tokens)
    m = torch.ones_like(g_logp) if mask is None else mask.double()
    ((ref["logp"] * g_logp + ref["entropy"] * g_ent) * m).sum().backward()
    return {k: v.detach() * m for k, v in ref.items()}, [x.grad for x in xs]


# ------------------------------------------------------------------------------ bf16 autocast


def _grad_tol(dtype: torch.dtype) -> dict[str, float]:
    # float32 leaves: float32 tolerance; bf16 leaves: the gradient's final rounding to bf16 (2^-8)
    return {"rtol": RTOL, "atol": ATOL} if dtype == torch.float32 else {"rtol": 2**-7, "atol": 1e-4}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("workspace", [2**28, 3000])  # whole vocabulary / vocabulary slices
def test_hidden_path_ignores_bf16_autocast(dtype, workspace):
    # The trainer calls token_stats_from_hidden inside torch.autocast(..., dtype=torch.bfloat16).
    # Statistics and gradients must still be float32 work on the inputs as given (float32 inputs
    # here hold bf16-rounded values, the "up-cast bf16" case); a bf16 reduction is ~1e-3 off in H.
    g = torch.Generator().manual_seed(21)
    hidden = torch.randn(2, 5, 32, generator=g).to(torch.bfloat16).to(dtype).requires_grad_()  # [B, T, d]
    weight = (torch.randn(1000, 32, generator=g) * 0.4).to(torch.bfloat16).to(dtype).requires_grad_()  # [V, d]
    bias = torch.randn(1000, generator=g).to(torch.bfloat16).to(dtype).requires_grad_()  # [V]
    tokens = torch.randint(0, 1000, (2, 5), generator=g)
    mask = torch.ones(2, 5)
    mask[0, :2] = 0
    g_logp, g_ent = torch.randn(2, 5, generator=g), torch.randn(2, 5, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = token_stats_from_hidden(hidden, weight, tokens, mask=mask, bias=bias, workspace_bytes=workspace)
        assert torch.is_autocast_enabled("cpu")  # the caller's region is left as it was
        (out.logp * g_logp + out.entropy * g_ent).sum().backward()
    ref, (gh, gw, gb) = _ref_and_grads([hidden, weight, bias], lambda h, w, b: h @ w.T + b, tokens, g_logp, g_ent, mask)
    for f in FIELDS:
        assert getattr(out, f).dtype == torch.float32
        _close(getattr(out, f), ref[f])
    assert hidden.grad.dtype == weight.grad.dtype == bias.grad.dtype == dtype
    _close(hidden.grad, gh, **_grad_tol(dtype))
    _close(weight.grad, gw, **_grad_tol(dtype))
    _close(bias.grad, gb, **_grad_tol(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("workspace", [2**28, 3000])
def test_logits_path_ignores_bf16_autocast(dtype, workspace):
    g = torch.Generator().manual_seed(22)
    logits = (torch.randn(2, 5, 1000, generator=g) * 4.0).to(dtype).requires_grad_()  # [B, T, V]
    tokens = torch.randint(0, 1000, (2, 5), generator=g)
    g_logp, g_ent = torch.randn(2, 5, generator=g), torch.randn(2, 5, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = token_stats(logits, tokens, workspace_bytes=workspace)
        (out.logp * g_logp + out.entropy * g_ent).sum().backward()
    ref, (g_ref,) = _ref_and_grads([logits], lambda x: x, tokens, g_logp, g_ent)
    for f in FIELDS:
        _close(getattr(out, f), ref[f])
    _close(logits.grad, g_ref, **_grad_tol(dtype))


def test_block_loops_run_with_autocast_disabled():
    # Whatever kernels run inside the loops (projection, reductions, gradient GEMMs), an ambient
    # autocast region must not reach them.
    from rlentropy.tokenstats._kernels import plan_chunks
    from rlentropy.tokenstats.core import _backward_blocks, _forward_blocks

    seen = []

    def fill(z: torch.Tensor, i0: int, i1: int, v0: int, v1: int) -> None:
        seen.append(torch.is_autocast_enabled("cpu"))
        z.copy_(torch.arange(v1 - v0, dtype=torch.float32).expand(i1 - i0, -1))  # [n, vc]

    def consume(dz: torch.Tensor, i0: int, i1: int, v0: int, v1: int) -> None:
        seen.append(torch.is_autocast_enabled("cpu"))

    tokens = torch.tensor([0, 3, 5])
    plan = plan_chunks(3, 8, workspace_bytes=3 * 4 * 8)  # 3 rows x 4 columns: 2 vocabulary slices
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, entropy, _, _, _, mraw, log_s0 = _forward_blocks(fill, tokens, 8, plan, 1.0, tokens.device)
        ones = torch.ones(3)
        _backward_blocks(fill, consume, tokens, 8, plan, 1.0, mraw, log_s0, entropy, ones, ones)
        assert torch.is_autocast_enabled("cpu")
    assert len(seen) == 6 and not any(seen)


# ------------------------------------------------------------------------------ V = 151,936


def _assert_stats_scaled(out: TokenStats, logits64: torch.Tensor, tokens: torch.Tensor, ref: dict) -> None:
    """rtol 1e-5 and no absolute floor, except for the two statistics that cancel by construction.

    S = p_k (H + log p_k) and s_bar = sum_i p_i^2 (H + log p_i) can be ~0 when H ~ -log p; their
    error is measured against the size of the terms before cancellation, p_k (H + |log p_k|) and
    sum_i p_i^2 (H + |log p_i|) (both computed here in float64).
    """
    lp = torch.log_softmax(logits64, -1)  # [N, V]
    p2 = lp.exp().square()  # [N, V]
    h = ref["entropy"].unsqueeze(-1)  # [N, 1]
    lpk = lp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # [N]
    scale = {
        "s": lpk.exp() * (ref["entropy"] + lpk.abs()),  # [N]
        "s_bar": (p2 * (h + lp.abs())).sum(-1),  # [N]
    }
    for f in FIELDS:
        got, want = getattr(out, f).double(), ref[f]
        bound = RTOL * torch.maximum(want.abs(), scale.get(f, want.abs()))
        err = (got - want).abs()
        assert torch.all(err <= bound), f"{f}: max error / bound {float((err / bound).max()):.3g}"


def _qwen_sized_problem(seed: int):
    # d = 16 keeps it fast; weights of std 1 give logits of std ~4 and H from ~2 to ~8 nats.
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(8, 16, generator=g)  # [N, d]
    weight = torch.randn(QWEN_VOCAB, 16, generator=g)  # [V, d]
    logits64 = hidden.double() @ weight.double().T  # [N, V]
    # tokens as a sampler would draw them, plus the arg-max and two uniform (very unlikely) ones
    tokens = torch.multinomial(torch.softmax(logits64, -1), 1, generator=g).squeeze(1)  # [N]
    tokens[4:6] = logits64[4:6].argmax(-1)
    tokens[6:] = torch.randint(0, QWEN_VOCAB, (2,), generator=g)
    return hidden, weight, logits64, tokens, g


@pytest.mark.parametrize("workspace", [2**28, 2**20])  # one whole-vocabulary block / 10 slices of 16,384
def test_hidden_path_at_qwen_vocabulary(workspace):
    # A serial float32 sum over 151,936 columns is ~2e-4 relative off (biased low): H was 1.8e-4 off.
    hidden, weight, logits64, tokens, g = _qwen_sized_problem(31)
    g_logp, g_ent = torch.randn(8, generator=g), torch.randn(8, generator=g)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    out = token_stats_from_hidden(h, w, tokens, workspace_bytes=workspace)
    (out.logp * g_logp + out.entropy * g_ent).sum().backward()
    ref, (gh, gw) = _ref_and_grads([hidden, weight], lambda a, b: a @ b.T, tokens, g_logp, g_ent)
    _assert_stats_scaled(out, logits64, tokens, ref)
    # gradients: relative 1e-5 of the largest entry (a sum of 151,936 products per entry of dhidden)
    _close(h.grad, gh, atol=RTOL * float(gh.abs().max()))
    _close(w.grad, gw, atol=RTOL * float(gw.abs().max()))


@pytest.mark.parametrize("workspace", [2**28, 2**20])
def test_logits_path_at_qwen_vocabulary(workspace):
    _, _, logits64, tokens, _ = _qwen_sized_problem(32)
    logits = logits64.float()  # [N, V]
    out = token_stats(logits, tokens, workspace_bytes=workspace)
    _assert_stats_scaled(out, logits.double(), tokens, token_stats_reference(logits, tokens))


# ------------------------------------------------------------------------------ low-precision weights


class _WeightUpcasts(TorchDispatchMode):
    """Counts the float32 copies made of (slices of) one low-precision tensor."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.ptr = weight.untyped_storage().data_ptr()
        self.rows = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        src = args[0] if args else None
        if (
            func is torch.ops.aten._to_copy.default
            and isinstance(src, torch.Tensor)
            and src.untyped_storage().data_ptr() == self.ptr
            and (kwargs or {}).get("dtype") == torch.float32
        ):
            self.rows += src.shape[0]
        return func(*args, **(kwargs or {}))


def test_low_precision_weight_is_upcast_once_per_pass():
    # bf16 W [4000, 8] in 256 KiB: 64-row blocks x 9 vocabulary slices of 481 columns, 2 row blocks.
    # Each pass (forward; backward recompute + dhidden) must copy each weight slice to float32 once,
    # not once per row block (and not twice in backward): 4000 weight rows per pass.
    g = torch.Generator().manual_seed(41)
    hidden = torch.randn(128, 8, generator=g).to(torch.bfloat16).requires_grad_()  # [N, d]
    weight = torch.randn(4000, 8, generator=g).to(torch.bfloat16)  # [V, d] frozen (as under LoRA)
    tokens = torch.randint(0, 4000, (128,), generator=g)
    with _WeightUpcasts(weight) as fwd:
        out = token_stats_from_hidden(hidden, weight, tokens, workspace_bytes=256 * 1024)
    with _WeightUpcasts(weight) as bwd:
        (out.logp + out.entropy).sum().backward()
    assert fwd.rows == 4000 and bwd.rows == 4000
    ref, (gh,) = _ref_and_grads([hidden], lambda h: h @ weight.double().T, tokens, torch.ones(128), torch.ones(128))
    for f in FIELDS:
        _close(getattr(out, f), ref[f])
    _close(hidden.grad, gh, rtol=2**-7, atol=1e-4)
