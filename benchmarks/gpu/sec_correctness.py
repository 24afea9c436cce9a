"""Section `correctness`: `token_stats` and `token_stats_from_hidden` on the device against the float64
reference computed on the CPU, for bf16 / fp16 / fp32 inputs at V = 151,936: forward (all five fields)
and gradients (of sum(g_logp * logp + g_ent * H) to the logits, or to hidden and W); the same calls
under bf16 autocast (how the trainer calls them on a GPU) and, for information, under TF32; and the
Theorem 3.2 finite-difference check dH/dz_k = -S_k.

Tolerance (derived here once, used by every forward row):

    The reference is computed from the SAME rounded inputs: the bf16 / fp16 tensors the device sees
    are copied back and up-cast to float64 (exact), so input rounding cancels and what remains is the
    device's float32 arithmetic. Let dz be the float32 error of the (tempered) logits the kernel
    works with: zero for the logits path (bf16/fp16 -> fp32 is exact; x - m and the 1/T scaling add
    ~u32 * |x - m| <= 6e-8 * 30 ~ 2e-6), and the fp32 GEMM's rounding for the hidden path (about
    u32 * sqrt(d) * |z| ~ 6e-8 * 40 * 30 ~ 7e-5 in the worst case at d = 1536, typically 10x less as
    cuBLAS accumulates in blocks). First-order error propagation through the statistics:
        |d log p_k| <= ||e_k - p||_1 max|dz| = 2 (1 - p_k) max|dz| <= 2 |log p_k| max|dz|
        |dH|        <= sum_i p_i |log p_i + H| max|dz|  <= 2 H max|dz|
    so log p and H carry a RELATIVE error of at most ~2 max|dz| plus the float32 reductions over V
    (sums of non-negative terms; exp adds a few ulp). A reduction's error depends on its order: a
    tree / cascade order (torch.sum) gives ~u32 * log2(V) ~ 1e-6, a serial chain over all V terms up
    to V * u32 ~ 9e-3 and is biased low once small terms fall below half an ulp of the running sum.
    The kernels' two dot products per row (w and u, `rowdot`: a batched torch.bmm of [n,1,V] x [n,V,1])
    use whatever order the BLAS picks: on the CPU (torch 2.13) one serial chain, measured 2.4e-4
    relative on w and 1.8e-4 on H at V = 151,936, which this tolerance flags; the "diagnostic" rows
    measure the device's bmm and sum orders directly, so a FAIL can be attributed. S_k and E_p[S]
    are differences, so their error is bounded relative to the size of their terms:
        scale(S_k)    = p_k (H + |log p_k|)
        scale(E_p[S]) = sum_i p_i^2 (H + |log p_i|)
    and sum p^2 (positive) is relative. Hence: |got - ref| <= RTOL * scale with RTOL = 1e-4 for every
    field, which is 10-100x above the expected float32 error and 5-40x below the error bf16 or fp16
    arithmetic would leave (bf16 logits: u = 2^-8 = 3.9e-3; fp16: 2^-11 = 4.9e-4). The table reports
    max |got - ref| / scale per field, so the margin is visible.

    Gradients come back in the input dtype (accumulated in float32, rounded once), so they are
    compared norm-wise: ||g - g_ref|| / ||g_ref|| <= u(dtype) + RTOL, u = 2^-8 (bf16), 2^-11 (fp16),
    2^-24 (fp32).
"""

from __future__ import annotations

import math
from typing import Any

from suite_util import Ctx, Recorder, fmt

RTOL = 1e-4
UNIT_ROUNDOFF = {"bfloat16": 2.0**-8, "float16": 2.0**-11, "float32": 2.0**-24}
FIELDS = ("logp", "entropy", "s", "s_bar", "sum_p2")


def sizes(dry: bool) -> dict[str, int]:
    """V, rows N and hidden size d of the checks (toy sizes in the dry run)."""
    return {"V": 1_000, "N": 48, "d": 32} if dry else {"V": 151_936, "N": 256, "d": 1536}


def _tokens(z: Any, gen: Any) -> Any:
    """Half the rows take a token sampled from softmax(z) (realistic p_k), half a uniform one."""
    import torch

    n, vocab = z.shape
    probs = torch.softmax(z.double(), dim=-1)  # [N, V]
    sampled = torch.multinomial(probs, 1, generator=gen).squeeze(1)  # [N]
    uniform = torch.randint(0, vocab, (n,), generator=gen)  # [N]
    return torch.where(torch.arange(n) % 2 == 0, sampled, uniform)  # [N]


def make_logits(n: int, vocab: int, gen: Any) -> Any:
    """Float32 logits [N, V] whose rows range from near-uniform to near-one-hot."""
    import torch

    scale = torch.tensor([0.5, 2.0, 4.0, 8.0])[torch.arange(n) % 4]  # [N]
    z = torch.randn(n, vocab, generator=gen) * scale[:, None]  # [N, V]
    peaked = torch.nonzero(torch.arange(n) % 8 == 7).squeeze(1)  # [n_peaked]
    top = torch.randint(0, vocab, (peaked.numel(),), generator=gen)
    z[peaked, top] += 20.0  # H ~ 1e-4 nats: the near-one-hot regime
    return z


def reference(x64: Any, tokens: Any, temperature: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """float64 statistics (differentiable) and the per-row tolerance scales of the module docstring."""
    import torch

    from rlentropy.tokenstats import token_stats_reference

    ref = token_stats_reference(x64, tokens, temperature=temperature)
    with torch.no_grad():
        lp = torch.log_softmax(x64.detach() / temperature, dim=-1)  # [N, V]
        p = lp.exp()  # [N, V]
        ent = ref["entropy"].detach()  # [N]
        lpk = ref["logp"].detach()  # [N]
        scales = {
            "logp": lpk.abs(),
            "entropy": ent.abs(),
            "s": lpk.exp() * (ent + lpk.abs()),
            "s_bar": (p * p * (ent[:, None] + lp.abs())).sum(-1),
            "sum_p2": ref["sum_p2"].detach().abs(),
        }
        del lp, p
    return ref, scales


def field_errors(got: Any, ref: dict[str, Any], scales: dict[str, Any]) -> dict[str, float]:
    """max_rows |got - ref| / scale for every field (float64, on CPU)."""
    out = {}
    for f in FIELDS:
        g = getattr(got, f).detach().double().cpu()
        r = ref[f].detach()
        err = (g - r).abs() / scales[f].clamp_min(1e-300)
        out[f] = float(err.max()) if err.numel() else 0.0
        if not math.isfinite(out[f]):
            out[f] = float("inf")
    return out


def grad_error(got: Any, want: Any) -> float:
    """||got - want|| / ||want|| in float64."""
    g = got.detach().double().cpu()
    return float((g - want).norm() / want.norm().clamp_min(1e-300))


def _report_forward(rec: Recorder, item: str, errs: dict[str, float], detail: str = "") -> bool:
    worst = max(errs.values())
    value = ", ".join(f"{k} {fmt(v, 2)}" for k, v in errs.items())
    return rec.check(item, worst <= RTOL, value, f"max err/scale <= {RTOL:g}", detail, number=worst)


def _report_grads(rec: Recorder, item: str, errs: dict[str, float], dtype: str, detail: str = "") -> bool:
    tol = UNIT_ROUNDOFF[dtype] + RTOL
    worst = max(errs.values())
    value = ", ".join(f"d{k} {fmt(v, 2)}" for k, v in errs.items())
    return rec.check(
        item, worst <= tol, value, f"norm-wise rel err <= u({dtype}) + {RTOL:g} = {tol:.2e}", detail, number=worst
    )


def run(rec: Recorder, ctx: Ctx) -> None:
    """Every forward / gradient / theorem row of the section."""
    import torch

    from rlentropy.tokenstats import token_stats, token_stats_from_hidden

    dev = ctx.device
    sz = sizes(ctx.dry)
    vocab, n, d = sz["V"], sz["N"], sz["d"]
    rec.data["sizes"] = sz
    rec.data["rtol"] = RTOL
    if dev == "cuda":
        rec.data["tf32_default"] = {
            "matmul": torch.backends.cuda.matmul.allow_tf32,
            "cudnn": torch.backends.cudnn.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
        }
    known = (
        "package issue: rowdot()'s torch.bmm is autocast to bf16, so w and u (H, E_p[S]) lose "
        "float32 accuracy; see docs/gpu.md"
    )

    # ---------------------------------------------------------------- logits path: token_stats
    gen = torch.Generator().manual_seed(0)
    z32 = make_logits(n, vocab, gen)  # [N, V] float32
    tokens = _tokens(z32, gen)  # [N]
    g_logp = torch.randn(n, generator=gen, dtype=torch.float64)  # [N]
    g_ent = torch.randn(n, generator=gen, dtype=torch.float64)  # [N]
    temp = 1.0
    for dt_name in ("bfloat16", "float16", "float32"):
        if rec.over_budget(f"token_stats {dt_name}", 10.0 if not ctx.dry else 0.0):
            continue
        dtype = getattr(torch, dt_name)
        try:
            z_dev = z32.to(dtype).to(dev)  # [N, V] the values the device sees
            x64 = z_dev.detach().cpu().double().requires_grad_()  # [N, V] same values, float64
            ref, scales = reference(x64, tokens, temp)
            ((ref["logp"] * g_logp + ref["entropy"] * g_ent).sum()).backward()
            want = x64.grad
            tok_dev = tokens.to(dev)
            for autocast in (False, True) if dt_name == "bfloat16" else (False,):
                leaf = z_dev.clone().requires_grad_()
                with torch.autocast(dev, dtype=torch.bfloat16, enabled=autocast):
                    st = token_stats(leaf, tok_dev, temperature=temp)
                ((st.logp.double() * g_logp.to(dev) + st.entropy.double() * g_ent.to(dev)).sum()).backward()
                tag = f"token_stats {dt_name} V={vocab}" + (" under bf16 autocast" if autocast else "")
                _report_forward(rec, f"{tag}: forward", field_errors(st, ref, scales), known if autocast else "")
                _report_grads(
                    rec, f"{tag}: grad", {"logits": grad_error(leaf.grad, want)}, dt_name, known if autocast else ""
                )
            del z_dev, x64, ref, scales, want
        except Exception as err:  # noqa: BLE001 - one failing dtype must not hide the others
            rec.fail(f"token_stats {dt_name}", err)

    # ---------------------------------------------------------------- hidden path: token_stats_from_hidden
    gen = torch.Generator().manual_seed(1)
    row_scale = torch.tensor([0.25, 0.5, 1.0, 2.0])[torch.arange(n) % 4]  # [N]
    h32 = torch.randn(n, d, generator=gen) * row_scale[:, None]  # [N, d]
    w32 = torch.randn(vocab, d, generator=gen) * (3.0 / math.sqrt(d))  # [V, d]  logit std 3 at row scale 1
    tokens = _tokens(h32 @ w32.T, gen)  # [N]
    g_logp = torch.randn(n, generator=gen, dtype=torch.float64)  # [N]
    g_ent = torch.randn(n, generator=gen, dtype=torch.float64)  # [N]
    temp = 0.7
    for dt_name in ("bfloat16", "float16", "float32"):
        if rec.over_budget(f"token_stats_from_hidden {dt_name}", 15.0 if not ctx.dry else 0.0):
            continue
        dtype = getattr(torch, dt_name)
        try:
            h_dev = h32.to(dtype).to(dev)  # [N, d]
            w_dev = w32.to(dtype).to(dev)  # [V, d]
            h64 = h_dev.cpu().double().requires_grad_()  # [N, d]
            w64 = w_dev.cpu().double().requires_grad_()  # [V, d]
            ref, scales = reference(h64 @ w64.T, tokens, temp)
            ((ref["logp"] * g_logp + ref["entropy"] * g_ent).sum()).backward()
            want_h, want_w = h64.grad, w64.grad
            tok_dev = tokens.to(dev)
            variants: list[tuple[str, bool, bool]] = [("", False, False)]
            if dt_name == "bfloat16":
                variants.append((" under bf16 autocast", True, False))
            if dt_name == "float32":
                variants.append((" under TF32", False, True))
            for suffix, autocast, tf32 in variants:
                tag = f"token_stats_from_hidden {dt_name} V={vocab} d={d}{suffix}"
                if tf32 and dev != "cuda":
                    rec.skip(f"{tag}: forward", "TF32 is a CUDA setting")
                    continue
                hl = h_dev.clone().requires_grad_()
                wl = w_dev.clone().requires_grad_()
                old_tf32 = torch.backends.cuda.matmul.allow_tf32
                try:
                    torch.backends.cuda.matmul.allow_tf32 = tf32 or old_tf32
                    with torch.autocast(dev, dtype=torch.bfloat16, enabled=autocast):
                        st = token_stats_from_hidden(hl, wl, tok_dev, temperature=temp)
                    ((st.logp.double() * g_logp.to(dev) + st.entropy.double() * g_ent.to(dev)).sum()).backward()
                finally:
                    torch.backends.cuda.matmul.allow_tf32 = old_tf32
                errs = field_errors(st, ref, scales)
                gerrs = {"hidden": grad_error(hl.grad, want_h), "W": grad_error(wl.grad, want_w)}
                if tf32:
                    # Information only: TF32 (a user's global setting) rounds the GEMM and rowdot inputs
                    # to 10 mantissa bits, so the float32 claims do not hold under it.
                    rec.info(
                        f"{tag}: forward max err/scale",
                        max(errs.values()),
                        ", ".join(f"{k} {fmt(v, 2)}" for k, v in errs.items()),
                    )
                    rec.info(f"{tag}: grad norm-wise rel err", max(gerrs.values()))
                    continue
                _report_forward(rec, f"{tag}: forward", errs, known if autocast else "")
                _report_grads(rec, f"{tag}: grad", gerrs, dt_name, known if autocast else "")
            del h_dev, w_dev, h64, w64, ref, scales, want_h, want_w
        except Exception as err:  # noqa: BLE001
            rec.fail(f"token_stats_from_hidden {dt_name}", err)

    # ---------------------------------------------------------------- the reduction orders, isolated
    try:
        reductions(rec, ctx, vocab)
    except Exception as err:  # noqa: BLE001
        rec.fail("diagnostic: reductions", err)

    # ---------------------------------------------------------------- Theorem 3.2 by finite differences
    if not rec.over_budget("Theorem 3.2", 5.0 if not ctx.dry else 0.0):
        try:
            theorem_3_2(rec, ctx, vocab)
        except Exception as err:  # noqa: BLE001
            rec.fail("Theorem 3.2", err)


def reductions(rec: Recorder, ctx: Ctx, vocab: int) -> None:
    """Relative float32 error, against float64, of the two reductions the kernels run over V on the
    device, on the kernels' own data (e = exp(x - m), b = m - x of std-4 logits, 8 rows): the batched
    dot product torch.bmm([n,1,V], [n,V,1]) (`rowdot`: w and u) and torch.sum (r and q)."""
    import torch

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(8, vocab, generator=gen) * 4.0  # [8, V]
    b = x.max(dim=1, keepdim=True).values - x  # [8, V] >= 0
    e = torch.exp(-b)  # [8, V] in (0, 1]
    want_dot = (e.double() * b.double()).sum(1)  # [8]
    want_sum = e.double().sum(1)  # [8]
    ed, bd = e.to(ctx.device), b.to(ctx.device)
    dot = torch.bmm(ed.unsqueeze(1), bd.unsqueeze(2)).view(-1).double().cpu()  # [8]
    total = ed.sum(dim=1).double().cpu()  # [8]
    err_dot = float(((dot - want_dot).abs() / want_dot).max())
    err_sum = float(((total - want_sum).abs() / want_sum).max())
    rec.info(
        f"diagnostic: batched-dot (torch.bmm, as rowdot) fp32 rel err, V={vocab}",
        err_dot,
        "serial accumulation shows as >~1e-5 at V=151,936",
        number=err_dot,
    )
    rec.info(f"diagnostic: torch.sum fp32 rel err, V={vocab}", err_sum, number=err_sum)


def theorem_3_2(rec: Recorder, ctx: Ctx, vocab: int) -> None:
    """dH/dz_k (central difference of the float64 entropy, CPU) = -S_k (device, float32), and the
    custom backward's dH/dz_k on the device equals -S_k too.

    Per row (near-uniform to peaked), k = the arg-max, a sampled and a uniform token; eps = 1e-3:
    truncation eps^2 |H'''| / 6 ~ 1e-7 p_k, float64 rounding 1e-16 H / eps ~ 1e-12 (the absolute
    floor). Target |fd + S_k| <= RTOL * p_k (H + |log p_k|) + 1e-11 (the tolerance of the forward rows).
    """
    import torch

    from rlentropy.tokenstats import token_stats

    gen = torch.Generator().manual_seed(2)
    z = make_logits(4, vocab, gen)  # [4, V]
    ks = []
    for r in range(4):
        p = torch.softmax(z[r].double(), -1)
        ks += [
            (r, int(z[r].argmax())),
            (r, int(torch.multinomial(p, 1, generator=gen))),
            (r, int(torch.randint(0, vocab, (1,), generator=gen))),
        ]
    rows = torch.tensor([r for r, _ in ks])
    toks = torch.tensor([k for _, k in ks])
    zz = z[rows].to(ctx.device).requires_grad_()  # [R, V]
    st = token_stats(zz, toks.to(ctx.device))
    st.entropy.sum().backward()
    s = st.s.double().cpu()  # [R]
    grad_k = zz.grad.gather(1, toks.to(ctx.device)[:, None]).squeeze(1).double().cpu()  # [R]

    def h64(v: Any) -> float:
        lp = torch.log_softmax(v, -1)
        return float(-(lp.exp() * lp).sum())

    eps = 1e-3
    fd_err = bw_err = 0.0
    for i, (r, k) in enumerate(ks):
        v = z[r].double()
        lp = torch.log_softmax(v, -1)
        ent = float(-(lp.exp() * lp).sum())
        scale = math.exp(float(lp[k])) * (ent + abs(float(lp[k]))) + 1e-11 / RTOL
        e_k = torch.zeros_like(v)
        e_k[k] = eps
        fd = (h64(v + e_k) - h64(v - e_k)) / (2 * eps)
        fd_err = max(fd_err, abs(fd + float(s[i])) / scale)
        bw_err = max(bw_err, abs(float(grad_k[i]) + float(s[i])) / scale)
    n = len(ks)
    rec.check(
        f"Theorem 3.2: central difference dH/dz_k = -S_k ({n} rows x tokens, V={vocab})",
        fd_err <= RTOL,
        fd_err,
        f"|fd + S| / (p_k (H + |log p_k|)) <= {RTOL:g}",
        number=fd_err,
    )
    rec.check(
        f"Theorem 3.2: custom backward dH/dz_k = -S_k ({n} cases)",
        bw_err <= RTOL,
        bw_err,
        f"same, <= {RTOL:g}",
        number=bw_err,
    )
