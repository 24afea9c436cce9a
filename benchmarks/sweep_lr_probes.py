"""Where the first-order entropy prediction breaks down: probed steps of a config at several learning rates.

    python benchmarks/sweep_lr_probes.py configs/smollm2-135m_arithmetic_cpu.yaml \
        --lrs 1e-4 5e-4 2e-3 1e-2 --steps 4 --plot docs/assets/smollm2_lr_sweep.png

For each lr, `--steps` training steps of the config (plain GRPO: control none) from the base policy with
a probe on every step: the first-order predicted ΔH = ∇H·Δθ on the held-out probe batch from the
optimizer's real update, against the measured ΔH on the same sequences, and the logit-space check
(−Σ S δz against the per-position ΔH). Per lr: the Pearson correlation and sign agreement over the
probed steps (`rlentropy.dynamics.summary.prediction_agreement`), the median measured / predicted
ratio, the mean |ΔH|, and the mean per-step logit-space correlation. `--plot` writes a scatter of
predicted vs measured ΔH, one colour per lr.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile

from rlentropy.dynamics.summary import prediction_agreement
from rlentropy.runs.config import load_config
from rlentropy.train.run import run_training


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--lrs", type=float, nargs="+", required=True)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--plot", default=None)
    ap.add_argument("overrides", nargs="*", help="extra key=value overrides for every run")
    args = ap.parse_args()
    points: dict[float, list[tuple[float, float]]] = {}
    print("| lr | probed steps | corr(pred, meas) | sign agreement | meas/pred | mean abs ΔH | logit corr |")
    print("|---|---|---|---|---|---|---|")
    for lr in args.lrs:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = load_config(
                args.config,
                [
                    f"optim.lr={lr}",
                    f"train.steps={args.steps}",
                    "algorithm.control=none",
                    "probes.every=1",
                    "probes.save_arrays=false",
                    "checkpoint.every=0",
                    "checkpoint.save_final=false",
                    "logging.tensorboard=false",
                    "logging.rollouts_every=0",
                    "eval.at_end=false",
                    f"run_dir={tmp}/run",
                    *args.overrides,
                ],
            )
            hist = run_training(cfg, quiet=True).history
        ag = prediction_agreement(hist)
        pairs = [(float(h["probe/step_pred_dH"]), float(h["probe/step_meas_dH"])) for h in hist]
        points[lr] = pairs
        meas = statistics.fmean(abs(m) for _, m in pairs)
        logit = [float(h["probe/logit_corr"]) for h in hist if math.isfinite(float(h.get("probe/logit_corr", "nan")))]
        lc = f"{statistics.fmean(logit):.3f}" if logit else "–"
        print(
            f"| {lr:g} | {int(ag['n'])} | {ag['corr']:.3f} | {100 * ag['sign_agree']:.0f} % | "
            f"{ag['median_ratio']:.2f} | {meas:.2e} | {lc} |",
            flush=True,
        )
    if args.plot:
        _plot(points, args.plot)


def _plot(points: dict[float, list[tuple[float, float]]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 4.0), dpi=100)
    lim = max(max(abs(p), abs(m)) for pairs in points.values() for p, m in pairs) * 1.1
    ax.plot([-lim, lim], [-lim, lim], color="0.6", lw=0.8, ls="--")
    for lr, pairs in points.items():
        ax.scatter([p for p, _ in pairs], [m for _, m in pairs], s=18, label=f"lr {lr:g}")
    ax.set_xlabel("predicted ΔH (first order, real update)")
    ax.set_ylabel("measured ΔH")
    ax.set_xscale("symlog", linthresh=lim / 1e3)
    ax.set_yscale("symlog", linthresh=lim / 1e3)
    ax.legend(fontsize=7)
    ax.set_title("SmolLM2-135M: probed steps by lr", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
