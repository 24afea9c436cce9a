"""Section `speed`: time and peak memory of the per-token statistics at real sizes, all in one run.

Every case starts from `hidden [N, d]` and the LM head `W [V, d]` in one dtype (bf16 = what a bf16
model hands over; fp32 = the CPU benchmark's setting, benchmarks/bench_tokenstats.py) and computes:

    matmul       the bare projection hidden @ W.T in the input dtype (the GEMM floor; its TFLOP/s)
    naive        full [N, V] logits in the input dtype, then log_softmax / softmax in float32 (+ S,
                 E_p[S], sum p^2 without grad), exactly bench_tokenstats.py's (a)
    verl         verl's anchor: full logits, `entropy_from_logits_with_chunking` (chunks of 2048 rows,
                 float32 softmax / logsumexp, copied here: verl cannot be carried) and log p by a
                 chunked logsumexp (what flash-attn's cross-entropy kernel computes in verl's default
                 path); H and log p only, no S / E_p[S]
    liger        Liger-Kernel's fused linear cross-entropy (`LigerFusedLinearCrossEntropyFunction`,
                 reduction "sum"): log p only, never materialises [N, V]; SKIP when not importable
    hidden       `token_stats_from_hidden` with its default 256 MiB workspace: log p, H, S, E_p[S], sum p^2
    hidden_ws4g  the same with a 4 GiB workspace (what a GPU could afford: full-vocabulary blocks)

each without gradient (forward under no_grad) and with backward of sum(log p) + sum(H) (Liger:
sum(-log p)) to hidden and W. Time: CUDA events, median of 1-5 calls after a warm-up call on 1024
rows of the same shapes; memory: growth of torch.cuda.max_memory_allocated over the inputs during one
call (so it counts logits, temporaries, saved tensors and the gradients of hidden and W).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from suite_util import Ctx, Recorder, fmt, free_device_memory, is_oom, peak_bytes, sync, time_reps

METHODS_FWD = ("matmul", "naive", "verl", "liger", "hidden", "hidden_ws4g")
METHODS_BWD = ("naive", "verl", "liger", "hidden", "hidden_ws4g")
OURS = ("hidden", "hidden_ws4g")
TARGET_BWD_TIME = 1.1  # hidden fwd+bwd time <= 1.1 x naive fwd+bwd
TARGET_BWD_MEM = 1 / 8  # hidden fwd+bwd peak <= 1/8 of naive's
TARGET_FWD_MATMUL = 1.3  # hidden no-grad time <= 1.3 x bare matmul


def grid(dry: bool) -> tuple[int, list[tuple[str, int, int]]]:
    """(V, [(dtype, d, N), ...]) in priority order: the 8k-token cases of both dtypes come first."""
    if dry:
        return 512, [("bfloat16", 16, 64), ("float32", 16, 64)]
    return 151_936, [
        ("bfloat16", 1536, 8192),
        ("bfloat16", 3584, 8192),
        ("float32", 1536, 8192),
        ("float32", 3584, 8192),
        ("bfloat16", 1536, 32768),
        ("bfloat16", 3584, 32768),
        ("float32", 1536, 32768),
        ("float32", 3584, 32768),
    ]


# ------------------------------------------------------------------------------------------ the methods


def verl_entropy_from_logits_with_chunking(logits: Any, chunk_size: int = 2048) -> Any:
    """verl.utils.torch_functional.entropy_from_logits_with_chunking (verl 0.9), verbatim semantics."""
    import torch

    entropy = torch.zeros(logits.shape[0], device=logits.device)  # [N]
    for i in range(0, logits.shape[0], chunk_size):
        logits_chunk = logits[i : i + chunk_size].float()  # [c, V]
        pd_chunk = torch.nn.functional.softmax(logits_chunk, dim=-1)  # [c, V]
        entropy_chunk = torch.logsumexp(logits_chunk, dim=-1) - torch.sum(pd_chunk * logits_chunk, dim=-1)  # [c]
        entropy[i : i + chunk_size] = entropy_chunk
    return entropy


def verl_logprobs_chunked(logits: Any, labels: Any, chunk_size: int = 2048) -> Any:
    """log p_k = z_k - logsumexp(z) in float32, 2048 rows at a time (the quantity flash-attn's
    cross-entropy kernel returns in verl's default `logprobs_from_logits`)."""
    import torch

    out = []
    for i in range(0, logits.shape[0], chunk_size):
        chunk = logits[i : i + chunk_size].float()  # [c, V]
        zk = chunk.gather(-1, labels[i : i + chunk_size, None]).squeeze(-1)  # [c]
        out.append(zk - torch.logsumexp(chunk, dim=-1))  # [c]
    return torch.cat(out)  # [N]


def make_method(name: str, hidden: Any, weight: Any, tokens: Any, backward: bool) -> Callable[[], Any]:
    """A closure that runs one method once (forward, and backward when asked), freeing its outputs."""
    import torch

    from rlentropy.tokenstats import token_stats_from_hidden

    def naive() -> tuple:
        logits = hidden @ weight.T  # [N, V] input dtype
        logprobs = torch.log_softmax(logits.float(), -1)  # [N, V]
        probs = logprobs.exp()  # [N, V]
        entropy = -(probs * logprobs).sum(-1)  # [N]
        logp = logprobs.gather(-1, tokens[:, None]).squeeze(-1)  # [N]
        with torch.no_grad():
            s = logp.exp() * (entropy + logp)  # [N]
            p2 = probs * probs  # [N, V]
            sum_p2 = p2.sum(-1)  # [N]
            s_bar = (p2 * (entropy[:, None] + logprobs)).sum(-1)  # [N]
        return logp, entropy, s, s_bar, sum_p2

    def verl() -> tuple:
        logits = hidden @ weight.T  # [N, V]
        return verl_logprobs_chunked(logits, tokens), verl_entropy_from_logits_with_chunking(logits)

    def hidden_path(workspace: int) -> Callable[[], tuple]:
        def fn() -> tuple:
            st = token_stats_from_hidden(hidden, weight, tokens, workspace_bytes=workspace)
            return st.logp, st.entropy

        return fn

    def liger() -> tuple:
        from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction

        # positional: input, weight, target, bias, ce_weight, ignore_index, lse_square_scale, label_smoothing,
        # reduction; it returns (loss, z_loss, token_accuracy, predicted_tokens)
        out = LigerFusedLinearCrossEntropyFunction.apply(hidden, weight, tokens, None, None, -100, 0.0, 0.0, "sum")
        return (out[0] if isinstance(out, tuple) else out,)

    def matmul() -> tuple:
        return (hidden @ weight.T,)  # [N, V]

    fns = {
        "naive": naive,
        "verl": verl,
        "liger": liger,
        "matmul": matmul,
        "hidden": hidden_path(256 * 2**20),
        "hidden_ws4g": hidden_path(4 * 2**30),
    }
    fn = fns[name]

    def call() -> None:
        if backward:
            res = fn()
            total = res[0].float().sum() if len(res) == 1 else res[0].sum() + res[1].sum()
            total.backward()
            hidden.grad = None
            weight.grad = None
        else:
            with torch.no_grad():
                fn()

    return call


def liger_available() -> str | None:
    """None when Liger's fused linear cross-entropy imports, else the reason."""
    try:
        from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction  # noqa: F401
    except Exception as err:  # noqa: BLE001 - ImportError, or triton failing to initialise
        first = str(err).splitlines()[0][:80] if str(err) else ""
        return f"liger-kernel not importable ({type(err).__name__}: {first})"
    return None


# ------------------------------------------------------------------------------------------ the section


def run(rec: Recorder, ctx: Ctx) -> None:
    """Time and measure every (dtype, d, N) case in priority order until the budget runs out."""
    import torch

    dev = ctx.device
    vocab, cases = grid(ctx.dry)
    no_liger = liger_available() if dev == "cuda" else "Liger needs CUDA (triton)"
    rec.data["vocab"] = vocab
    rec.data["rows"] = []
    if dev == "cuda":
        rec.data["device"] = torch.cuda.get_device_name(0)
        rec.data["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    if no_liger:
        rec.skip("liger (all sizes)", no_liger)
    for dt_name, d, n in cases:
        tag = f"{dt_name} d={d} N={n}"
        # a rough cost guess of the case (fp32 GEMMs are ~10x slower than bf16 on an H100/H200)
        if rec.over_budget(f"{tag}: all methods", 0.0 if ctx.dry else 12.0):
            continue
        try:
            one_size(rec, ctx, vocab, dt_name, d, n, no_liger)
        except Exception as err:  # noqa: BLE001
            rec.fail(f"{tag}", err)
        free_device_memory(dev)


def one_size(rec: Recorder, ctx: Ctx, vocab: int, dt_name: str, d: int, n: int, no_liger: str | None) -> None:
    """Every method, forward and forward+backward, at one size; then the ratios and the targets."""
    import torch

    dev = ctx.device
    dtype = getattr(torch, dt_name)
    gen = torch.Generator(device=dev).manual_seed(0)
    hidden = (torch.randn(n, d, generator=gen, device=dev) * 0.5).to(dtype)  # [N, d]
    weight = (torch.randn(vocab, d, generator=gen, device=dev) * d**-0.5).to(dtype)  # [V, d]
    tokens = torch.randint(0, vocab, (n,), generator=gen, device=dev)  # [N]
    warm_rows = min(n, 1024)
    res: dict[tuple[str, bool], dict[str, Any]] = {}
    tag = f"{dt_name} d={d} N={n}"
    for backward in (False, True):
        for name in METHODS_BWD if backward else METHODS_FWD:
            mode = "fwd+bwd" if backward else "fwd"
            item = f"{tag} {mode} {name}"
            if name == "liger" and no_liger:
                continue
            if rec.over_budget(item, 0.0 if ctx.dry else 3.0):
                continue
            hidden.requires_grad_(backward)
            weight.requires_grad_(backward)
            failure: BaseException | None = None
            oom = False
            try:
                small_h = hidden[:warm_rows].detach().requires_grad_(backward)
                make_method(name, small_h, weight, tokens[:warm_rows], backward)()  # warm-up: kernels, autotune
                fn = make_method(name, hidden, weight, tokens, backward)
                peak = peak_bytes(fn, dev)
                seconds, reps = time_reps(fn, dev, target_s=0.5 if ctx.dry else 1.0)
                res[(name, backward)] = {"seconds": seconds, "peak": peak, "reps": reps}
            except Exception as err:  # noqa: BLE001
                oom = is_oom(err)
                failure = RuntimeError(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            # outside the except clause: the exception's frames (and their [N, V] tensors) are gone
            hidden.grad = weight.grad = None
            if failure is not None:
                free_device_memory(dev)
                if oom:
                    res[(name, backward)] = {"oom": True}
                    if name in OURS:
                        rec.check(item, False, "OOM", "runs", "out of memory")
                    else:
                        rec.skip(item, "OOM")
                else:
                    rec.fail(item, failure)
            else:
                report_case(rec, tag, vocab, d, n, res, name, backward)
            sync(dev)
            free_device_memory(dev)  # the naive path leaves ~100 GB of cached blocks at N = 32k
    hidden.requires_grad_(False)
    weight.requires_grad_(False)
    # the raw rows get the ratios to baselines measured after them (matmul's ratio to naive)
    for row in rec.data["rows"]:
        if (row["dtype"], row["d"], row["N"]) != (dt_name, d, n):
            continue
        base = res.get(("naive", row["backward"]), {})
        if row["time_vs_naive"] is None and base.get("seconds"):
            row["time_vs_naive"] = row["seconds"] / base["seconds"]
        if row["mem_vs_naive"] is None and row["peak_bytes"] is not None and base.get("peak"):
            row["mem_vs_naive"] = row["peak_bytes"] / base["peak"]
    rec.save()
    report_targets(rec, ctx, tag, res)


def report_case(
    rec: Recorder,
    tag: str,
    vocab: int,
    d: int,
    n: int,
    res: dict[tuple[str, bool], dict[str, Any]],
    name: str,
    backward: bool,
) -> None:
    """The row of one measured case (time, ratios to naive and matmul, peak, TFLOP/s), written at once.

    The baselines come first in METHODS_FWD / METHODS_BWD, so their figures are there already.
    """
    gemm_flop = 2.0 * n * vocab * d
    mm = res.get(("matmul", False), {})
    r = res[(name, backward)]
    base = res.get(("naive", backward), {})
    t, peak = r["seconds"], r["peak"]
    ratio_naive = t / base["seconds"] if base.get("seconds") else None
    ratio_mm = t / mm["seconds"] if mm.get("seconds") else None
    mem_ratio = peak / base["peak"] if (peak is not None and base.get("peak")) else None
    # GEMMs the method performs: forward 1; with backward naive/verl 3 (fwd, dhidden, dW),
    # ours 4 (fwd, recompute, dhidden, dW), Liger 3 (all in its forward)
    gemms = 1 if not backward else (4 if name in OURS else 3)
    tflops = gemms * gemm_flop / t / 1e12
    row = {
        "dtype": tag.split()[0],
        "d": d,
        "N": n,
        "V": vocab,
        "method": name,
        "backward": backward,
        "seconds": t,
        "reps": r["reps"],
        "peak_bytes": peak,
        "time_vs_naive": ratio_naive,
        "time_vs_matmul": ratio_mm,
        "mem_vs_naive": mem_ratio,
        "gemm_tflops": tflops,
    }
    rec.data["rows"].append(row)
    mode = "fwd+bwd" if backward else "fwd"
    value = (
        f"{t * 1e3:.4g} ms; x{fmt(ratio_naive)} naive; x{fmt(ratio_mm)} matmul; "
        f"peak {fmt(peak / 2**30 if peak is not None else None)} GiB (x{fmt(mem_ratio)} naive); "
        f"GEMM {tflops:.3g} TFLOP/s"
    )
    rec.info(f"{tag} {mode} {name}", value, detail=f"{r['reps']} timed calls", number=t)


def report_targets(rec: Recorder, ctx: Ctx, tag: str, res: dict[tuple[str, bool], dict[str, Any]]) -> None:
    """The three target rows of each of our two variants at one size."""
    mm = res.get(("matmul", False), {})
    dry_note = "dry run: toy sizes on CPU, not a measurement"
    for ours in OURS:
        fb, nb = res.get((ours, True), {}), res.get(("naive", True), {})
        ff = res.get((ours, False), {})
        _target(
            rec,
            ctx,
            f"{tag} target: {ours} fwd+bwd time <= {TARGET_BWD_TIME}x naive",
            fb,
            nb,
            "seconds",
            TARGET_BWD_TIME,
            dry_note,
        )
        _target(rec, ctx, f"{tag} target: {ours} fwd+bwd peak <= 1/8 naive", fb, nb, "peak", TARGET_BWD_MEM, dry_note)
        _target(
            rec,
            ctx,
            f"{tag} target: {ours} no-grad time <= {TARGET_FWD_MATMUL}x matmul",
            ff,
            mm,
            "seconds",
            TARGET_FWD_MATMUL,
            dry_note,
        )


def _target(rec: Recorder, ctx: Ctx, item: str, ours: dict, base: dict, key: str, limit: float, dry_note: str) -> None:
    if ours.get("oom"):
        rec.check(item, False, "OOM", f"<= {limit:.3g}")
        return
    if not ours or ours.get(key) is None:
        rec.skip(item, "not measured (budget or error)" if not ctx.dry or key != "peak" else "CPU: no allocator peak")
        return
    if base.get("oom"):
        rec.skip(item, "baseline OOM (ours ran)")
        return
    if not base or not base.get(key):
        rec.skip(item, "baseline not measured")
        return
    ratio = ours[key] / base[key]
    if ctx.dry:
        rec.skip(item, f"{dry_note}; ratio {fmt(ratio)}")
        return
    rec.check(item, ratio <= limit, f"x{fmt(ratio)}", f"<= {limit:.3g}", number=ratio)
