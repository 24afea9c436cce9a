"""Benchmark of rlentropy.tokenstats against the naive full-logits computation (not a test).

    .venv/bin/python benchmarks/bench_tokenstats.py                       # the full grid (minutes)
    .venv/bin/python benchmarks/bench_tokenstats.py --dims 896 --tokens 1024

Every case starts from the last hidden states `hidden [N, d]` and the lm_head `W [V, d]` (float32,
CPU) and computes log p, H, S, E_p[S] and sum p^2 for N sampled tokens:

    matmul  the bare projection hidden @ W.T (the compute floor of any exact method)
    (a)     naive: full [N, V] logits, then log_softmax / softmax in float32
    (b)     full [N, V] logits, then `token_stats(logits, tokens)`
    (c)     `token_stats_from_hidden(hidden, W, tokens)` (never materialises [N, V])

each without and with backward (gradients of sum(logp) + sum(H) to hidden and W). Each case runs in
a fresh subprocess; "peak" is the growth of the process's peak resident memory over the inputs
(hidden, W, tokens), so it counts logits, temporaries, saved tensors and gradients.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

CASES = ("matmul", "naive", "logits", "hidden")
LABEL = {"matmul": "matmul", "naive": "(a) naive", "logits": "(b) token_stats", "hidden": "(c) from_hidden"}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_one(case: str, vocab: int, dim: int, n: int, backward: bool, workspace: int) -> dict:
    """Time one case in this process and measure its peak memory over the inputs."""
    import torch

    from rlentropy.tokenstats import token_stats, token_stats_from_hidden

    g = torch.Generator().manual_seed(0)
    # generated in place, so that no input-sized temporary inflates the baseline peak
    hidden_all = torch.randn(n, dim, generator=g).mul_(0.5)  # [N, d]
    weight = torch.randn(vocab, dim, generator=g).mul_(dim**-0.5)  # [V, d]
    tokens_all = torch.randint(0, vocab, (n,), generator=g)  # [N]
    weight.requires_grad_(backward)
    hidden = tokens = None  # set below: first a small warm-up slice, then the measured problem

    def naive():
        logits = hidden @ weight.T  # [N, V]
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

    def via_logits():
        out = token_stats(hidden @ weight.T, tokens, workspace_bytes=workspace)
        return out.logp, out.entropy

    def via_hidden():
        out = token_stats_from_hidden(hidden, weight, tokens, workspace_bytes=workspace)
        return out.logp, out.entropy

    def matmul():
        return (hidden @ weight.T,)

    fn = {"naive": naive, "logits": via_logits, "hidden": via_hidden, "matmul": matmul}[case]

    def step():
        res = fn()
        if backward:
            (res[0].sum() + res[1].sum() if len(res) > 1 else res[0].sum()).backward()
            hidden.grad = weight.grad = None
        return res

    ctx = torch.enable_grad() if backward else torch.no_grad()
    with ctx:
        hidden, tokens = hidden_all[:8].clone().requires_grad_(backward), tokens_all[:8]
        step()  # warm-up: library initialisation, kernels
        hidden, tokens = hidden_all.requires_grad_(backward), tokens_all
        base = max(_rss_bytes(), _peak_bytes())
        t0, c0 = time.perf_counter(), time.process_time()
        res = step()
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        del res
    peak = _peak_bytes() - base
    return {
        "case": case,
        "dim": dim,
        "n": n,
        "backward": backward,
        "seconds": seconds,
        "cpu": cpu,
        "peak_bytes": max(peak, 0),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=151_936)
    ap.add_argument("--dims", type=int, nargs="+", default=[896, 1536])
    ap.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    ap.add_argument("--workspace-mib", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--one", nargs=4, metavar=("CASE", "DIM", "N", "BACKWARD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    workspace = args.workspace_mib * 2**20
    if args.one:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        case, dim, n, bwd = args.one
        print(json.dumps(run_one(case, args.vocab, int(dim), int(n), bwd == "1", workspace)))
        return

    import torch

    print(
        f"# torch {torch.__version__}, {torch.get_num_threads()} threads, V={args.vocab}, float32, CPU, "
        f"workspace {args.workspace_mib} MiB"
    )
    print("| d | N | backward | case | CPU s | wall s | peak MiB | CPU / (a) | peak / (a) | CPU / matmul |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for dim in args.dims:
        for n in args.tokens:
            matmul_s = None
            for bwd in (False, True):
                rows = {}
                for case in args.cases:
                    if case == "matmul" and bwd:
                        continue
                    cmd = [
                        sys.executable,
                        __file__,
                        "--vocab",
                        str(args.vocab),
                        "--workspace-mib",
                        str(args.workspace_mib),
                        "--threads",
                        str(args.threads),
                        "--one",
                        case,
                        str(dim),
                        str(n),
                        "1" if bwd else "0",
                    ]
                    out = subprocess.run(cmd, capture_output=True, text=True)
                    if out.returncode != 0:
                        print(f"| {dim} | {n} | {bwd} | {LABEL[case]} | failed: {out.stderr.strip()[-200:]} |")
                        continue
                    rows[case] = json.loads(out.stdout.strip().splitlines()[-1])
                if "matmul" in rows:
                    matmul_s = rows["matmul"]["cpu"]
                a = rows.get("naive")
                for case, r in rows.items():
                    ratio_t = f"{r['cpu'] / a['cpu']:.2f}" if a else "-"
                    ratio_m = f"{r['peak_bytes'] / a['peak_bytes']:.3f}" if a and a["peak_bytes"] else "-"
                    ratio_mm = f"{r['cpu'] / matmul_s:.2f}" if matmul_s else "-"
                    print(
                        f"| {dim} | {n} | {'yes' if bwd else 'no'} | {LABEL[case]} | {r['cpu']:.2f} | "
                        f"{r['seconds']:.2f} | "
                        f"{r['peak_bytes'] / 2**20:.0f} | {ratio_t} | {ratio_m} | {ratio_mm} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
