"""The report's panels: one function per panel, each returning a figure or the reason it is omitted.

Every panel function takes the list of `RunData` and returns a `PanelResult`: either ``figures``
(a list of (file stem, matplotlib Figure)) or a ``note`` saying which data is missing. A panel is
never drawn empty. NaN values stay NaN in the arrays, so matplotlib draws them as gaps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from rlentropy.report.rundata import QUADRANT_KEY_PATTERNS, QUADRANT_ORDER, RunData  # noqa: E402

QUADRANT_COLORS = {"pos_high": "#1f77b4", "pos_low": "#aec7e8", "neg_high": "#d62728", "neg_low": "#ff9896"}
QUADRANT_LABELS = {
    "pos_high": "A>0, S>E[S] (H down)",
    "pos_low": "A>0, S<E[S] (H up)",
    "neg_high": "A<0, S>E[S] (H up)",
    "neg_low": "A<0, S<E[S] (H down)",
}


@dataclass
class PanelResult:
    """A panel's output: figures to save (stem, figure) or a note explaining why it is omitted."""

    key: str
    title: str
    caption: str
    figures: list[tuple[str, Figure]] = field(default_factory=list)
    note: str | None = None


def run_color(i: int) -> str:
    return plt.get_cmap("tab10")(i % 10)


def _finite(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.isfinite(x) & np.isfinite(y)


def fit_exp_entropy(h: np.ndarray, r: np.ndarray) -> tuple[float, float, float]:
    """Least-squares fit of R = −a·e^H + b (Cui et al., 2505.22617) via `rlentropy.dynamics`.

    Args:
        h: [P] entropies; r: [P] rewards / accuracies (finite, P ≥ 2).

    Returns:
        (a, b, r2): the coefficients and the coefficient of determination.
    """
    import torch

    from rlentropy.dynamics.covariance import fit_entropy_performance

    _, m = fit_entropy_performance(torch.as_tensor(h, dtype=torch.float64), torch.as_tensor(r, dtype=torch.float64))
    return float(m["a"]), float(m["b"]), float(m["r2"])


def agreement(pred: np.ndarray, meas: np.ndarray) -> dict[str, float]:
    """`rlentropy.dynamics.prediction_agreement` of two aligned arrays (n, corr, sign_agree, ...)."""
    from rlentropy.dynamics.summary import prediction_agreement

    rows = [{"p": float(p), "m": float(m)} for p, m in zip(pred, meas)]
    return prediction_agreement(rows, pred_key="p", meas_key="m")


def _new(nrows: int = 1, ncols: int = 1, w: float = 6.4, h: float = 3.8) -> tuple[Figure, np.ndarray]:
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False)
    return fig, axes


def _style(
    ax,
    *,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
    ylim: tuple[float, float] | None = None,
    legend: int | None = None,
) -> None:
    """The axis dressing every panel shares: labels, optional title and y-range, a light grid, and a
    legend of the given font size (None: no legend)."""
    if title is not None:
        ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    if legend is not None:
        ax.legend(fontsize=legend)


def panel_entropy(runs: list[RunData]) -> PanelResult:
    res = PanelResult(
        "entropy",
        "Entropy vs step",
        "Token-mean policy entropy of the rollouts at each training step; all runs overlaid. "
        "Dashed: entropy of eval samples (rlentropy eval), when present.",
    )
    fig, ax = _new()
    ax = ax[0, 0]
    drawn = False
    for i, run in enumerate(runs):
        s = run.series("entropy")
        if s is not None:
            ax.plot(s[0], s[1], color=run_color(i), label=run.name)
            drawn = True
        e = run.eval_series("entropy")
        if e is not None:
            ax.plot(e[0], e[1], color=run_color(i), ls="--", marker="o", ms=3, label=f"{run.name} (eval)")
            drawn = True
    if not drawn:
        plt.close(fig)
        res.note = "no run logged an entropy metric (metrics.jsonl key 'entropy') or eval entropy"
        return res
    _style(ax, xlabel="step", ylabel="entropy (nats / token)", legend=8)
    res.figures.append(("entropy", fig))
    return res


def panel_reward(runs: list[RunData]) -> PanelResult:
    res = PanelResult(
        "reward",
        "Reward and pass rate",
        "Left: mean rollout reward per step. Right: fraction of correct rollouts per step "
        "(solid) and eval avg@n of the checkpoints (markers).",
    )
    have_r = [r.series("reward") for r in runs]
    have_p = [r.series("pass_rate") for r in runs]
    have_e = []
    for r in runs:
        cols = r.eval_columns("avg@")
        have_e.append(r.eval_series(cols[0]) if cols else None)
    left = any(x is not None for x in have_r)
    right = any(x is not None for x in have_p) or any(x is not None for x in have_e)
    if not (left or right):
        res.note = "no reward, pass-rate or eval avg@n data in any run"
        return res
    ncols = int(left) + int(right)
    fig, axes = _new(1, ncols)
    col = 0
    if left:
        ax = axes[0, col]
        col += 1
        for i, (run, s) in enumerate(zip(runs, have_r)):
            if s is not None:
                ax.plot(s[0], s[1], color=run_color(i), label=run.name)
        _style(ax, xlabel="step", ylabel="mean reward", title="reward", legend=8)
    if right:
        ax = axes[0, col]
        for i, (run, s, e) in enumerate(zip(runs, have_p, have_e)):
            if s is not None:
                ax.plot(s[0], s[1], color=run_color(i), label=f"{run.name} (train)")
            if e is not None:
                ax.plot(e[0], e[1], color=run_color(i), ls="--", marker="o", ms=4, label=f"{run.name} (eval avg@n)")
        _style(ax, xlabel="step", ylabel="fraction correct", title="pass rate", legend=8)
    res.figures.append(("reward", fig))
    return res


def panel_pass_at_k(runs: list[RunData]) -> PanelResult:
    res = PanelResult(
        "pass_at_k",
        "pass@k vs step (eval)",
        "Unbiased pass@k of each evaluated checkpoint (rlentropy eval), one line per k; one subplot per run.",
    )
    with_eval = [(i, r) for i, r in enumerate(runs) if r.eval_columns("pass@")]
    if not with_eval:
        res.note = "no eval results (run `rlentropy eval RUN` first to get pass@k per checkpoint)"
        return res
    ncols = min(3, len(with_eval))
    nrows = math.ceil(len(with_eval) / ncols)
    fig, axes = _new(nrows, ncols, w=5.2)
    for j, (_, run) in enumerate(with_eval):
        ax = axes[j // ncols, j % ncols]
        cols = run.eval_columns("pass@")
        cmap = plt.get_cmap("viridis")
        for c_idx, col in enumerate(cols):
            s = run.eval_series(col)
            if s is not None:
                ax.plot(s[0], s[1], marker="o", ms=3, color=cmap(c_idx / max(1, len(cols) - 1)), label=col)
        _style(ax, xlabel="step", ylabel="pass@k", title=run.name, ylim=(-0.02, 1.02), legend=7)
    for j in range(len(with_eval), nrows * ncols):
        axes[j // ncols, j % ncols].set_visible(False)
    res.figures.append(("pass_at_k", fig))
    return res


def panel_controls(runs: list[RunData]) -> PanelResult:
    res = PanelResult(
        "controls",
        "Fraction of tokens removed by each control",
        "Per step, the fraction of response tokens whose gradient each entropy control "
        "(Clip_B, Clip_V, Clip-Cov, KL-Cov, …) removed; one subplot per control.",
    )
    series: dict[str, list] = {}
    for i, run in enumerate(runs):
        for name, key in run.controls():
            st, v = run.raw_series(key)
            if np.isfinite(v).any():
                series.setdefault(name, []).append((i, run, st, v))
    if not series:
        res.note = "no control logged a removed-token fraction (no run used Clip_B / Clip_V / Clip-Cov / KL-Cov)"
        return res
    names = sorted(series)
    fig, axes = _new(1, len(names), w=5.2)
    for j, name in enumerate(names):
        ax = axes[0, j]
        for i, run, st, v in series[name]:
            ax.plot(st, v, color=run_color(i), label=run.name)
        _style(ax, xlabel="step", ylabel="fraction of tokens removed", title=name, legend=8)
    res.figures.append(("controls", fig))
    return res


def panel_delta_h(runs: list[RunData]) -> PanelResult:
    res = PanelResult(
        "delta_h",
        "Predicted vs measured ΔH",
        "Each point is one probed step: the first-order prediction ∇H·Δθ from the real optimizer "
        "update against the entropy change measured on the probe batch. Line: y = x. "
        "r: Pearson correlation; signs agree: fraction of steps where prediction and measurement have the same sign.",
    )
    pts = []
    for i, run in enumerate(runs):
        p, m = run.series("pred_dH"), run.series("meas_dH")
        if p is None or m is None:
            continue
        ok = _finite(p[1], m[1])
        if ok.sum() >= 1:
            pts.append((i, run, p[1][ok], m[1][ok]))
    if not pts:
        res.note = "no probed steps with both predicted and measured ΔH (set probes.every > 0 in the training config)"
        return res
    fig, axes = _new(1, 1, w=5.6, h=5.0)
    ax = axes[0, 0]
    all_p = np.concatenate([p for _, _, p, _ in pts])
    all_m = np.concatenate([m for _, _, _, m in pts])
    for i, run, p, m in pts:
        ag = agreement(p, m)
        label = f"{run.name} (n={p.size}"
        if math.isfinite(ag["corr"]):
            label += f", r={ag['corr']:.3f}"
        label += f", signs agree {ag['sign_agree']:.0%})"
        ax.scatter(p, m, s=16, color=run_color(i), label=label)
    lo = float(min(all_p.min(), all_m.min()))
    hi = float(max(all_p.max(), all_m.max()))
    pad = 0.05 * (hi - lo) if hi > lo else max(abs(hi), 1e-6) * 0.1
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="k", lw=1, ls="--", label="y = x")
    r_all = agreement(all_p, all_m)["corr"]
    title = f"all runs: r = {r_all:.3f}" if math.isfinite(r_all) else "predicted vs measured ΔH"
    _style(ax, xlabel="predicted ΔH", ylabel="measured ΔH", title=title, legend=8)
    ax.ticklabel_format(style="sci", scilimits=(-3, 3))
    res.figures.append(("delta_h", fig))
    return res


def _stacked_signed_bars(ax, steps: np.ndarray, parts: dict[str, np.ndarray]) -> None:
    width = 0.8 * float(np.min(np.diff(np.unique(steps)))) if np.unique(steps).size > 1 else 0.8
    pos = np.zeros_like(steps, dtype=np.float64)
    neg = np.zeros_like(steps, dtype=np.float64)
    for q in QUADRANT_ORDER:
        if q not in parts:
            continue
        v = np.nan_to_num(parts[q], nan=0.0)  # [S] gaps draw as zero-height bars
        bottom = np.where(v >= 0, pos, neg)
        ax.bar(steps, v, width=width, bottom=bottom, color=QUADRANT_COLORS[q], label=QUADRANT_LABELS[q])
        pos = pos + np.where(v >= 0, v, 0.0)
        neg = neg + np.where(v < 0, v, 0.0)
    ax.axhline(0.0, color="k", lw=0.8)


def panel_quadrants(runs: list[RunData]) -> PanelResult:
    res = PanelResult(
        "quadrants",
        "Quadrant contributions per step",
        "Entropy pressure of the four quadrants (sign of A × S above / below E_p[S]) at each "
        "probed step, stacked (positive parts up, negative parts down); one subplot per run.",
    )
    items = []
    for run in runs:
        fam = run.family(QUADRANT_KEY_PATTERNS)
        if not fam:
            continue
        parts = {}
        steps = None
        for q, key in fam.items():
            st, v = run.raw_series(key)
            parts[q] = v
            steps = st
        keep = np.zeros_like(steps, dtype=bool)
        for v in parts.values():
            keep |= np.isfinite(v)
        if keep.any():
            items.append((run, steps[keep], {q: v[keep] for q, v in parts.items()}))
    if not items:
        res.note = "no quadrant decomposition in any run (set probes.every > 0 with probes.pressure on)"
        return res
    if all(not np.nan_to_num(v).any() for _, _, parts in items for v in parts.values()):
        res.note = (
            "every quadrant contribution is zero at every probed step (no token had a non-zero "
            "advantage, e.g. every group was all-correct or all-wrong)"
        )
        return res
    fig, axes = _new(len(items), 1, w=8.0, h=3.4)
    for j, (run, steps, parts) in enumerate(items):
        ax = axes[j, 0]
        _stacked_signed_bars(ax, steps, parts)
        ax.set_title(run.name)
        ax.set_xlabel("step")
        ax.set_ylabel("contribution to ΔH")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7, ncol=2)
    res.figures.append(("quadrants", fig))
    return res


def chosen_steps(steps: list[int], k: int = 3) -> list[int]:
    """Up to k steps spread over the sorted list: first, middle(s), last."""
    steps = sorted(steps)
    if len(steps) <= k:
        return steps
    idx = sorted({round(j * (len(steps) - 1) / (k - 1)) for j in range(k)})
    return [steps[i] for i in idx]


def panel_s_hist(runs: list[RunData]) -> PanelResult:
    res = PanelResult(
        "s_hist",
        "Distributions of S and E_p[S]",
        "Histograms over response tokens of S = p_k(H + log p_k) (the sampled token's entropy "
        "discriminator) and s_bar = E_p[S], at the first, a middle and the last probed step "
        "(dynamics/step_N.npz); one figure per run.",
    )
    for run in runs:
        if not run.dynamics:
            continue
        steps = chosen_steps(list(run.dynamics))
        loaded = []
        for st in steps:
            arrs = run.load_dynamics(st)
            if "s" not in arrs and "s_bar" not in arrs:
                continue
            mask = arrs.get("mask")
            sel = {}
            for name in ("s", "s_bar"):
                if name in arrs:
                    a = arrs[name].astype(np.float64)
                    if mask is not None and mask.shape == a.shape:
                        a = a[mask.astype(bool)]
                    a = a[np.isfinite(a)].ravel()
                    if a.size:
                        sel[name] = a
            if sel:
                loaded.append((st, sel))
        if not loaded:
            continue
        fig, axes = _new(1, 2, w=5.2)
        cmap = plt.get_cmap("plasma")
        for c, name, label in ((0, "s", "S"), (1, "s_bar", "s_bar = E_p[S]")):
            ax = axes[0, c]
            vals = [(st, sel[name]) for st, sel in loaded if name in sel]
            if not vals:
                ax.text(0.5, 0.5, f"{label} not saved", ha="center", va="center", transform=ax.transAxes)
                ax.set_axis_off()
                continue
            lo = min(float(v.min()) for _, v in vals)
            hi = max(float(v.max()) for _, v in vals)
            bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 41)
            for j, (st, v) in enumerate(vals):
                ax.hist(
                    v,
                    bins=bins,
                    histtype="step",
                    lw=1.5,
                    density=True,
                    color=cmap(j / max(1, len(vals) - 1) * 0.85),
                    label=f"step {st}",
                )
            ax.set_yscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel("density")
            ax.set_title(f"{run.name}: {label}")
            ax.legend(fontsize=8)
        res.figures.append((f"s_hist_{_slug(run.name)}", fig))
    if not res.figures:
        res.note = (
            "no dynamics/step_N.npz with S or s_bar arrays in any run (set probes.every > 0 in the training config)"
        )
    return res


def panel_r_vs_h(runs: list[RunData]) -> PanelResult:
    res = PanelResult(
        "r_vs_h",
        "Reward vs entropy, fitted R = −a·e^H + b",
        "Each point is one training step (entropy, mean reward); the curve is the least-squares "
        "fit of R = −a·e^H + b (Cui et al.) per run.",
    )
    fits = []
    for i, run in enumerate(runs):
        h, r = run.series("entropy"), run.series("reward")
        if h is None or r is None:
            continue
        ok = _finite(h[1], r[1])
        if ok.sum() < 3:
            continue
        hh, rr = h[1][ok], r[1][ok]
        if float(np.ptp(hh)) <= 0:
            continue  # constant entropy: nothing to fit
        a, b, r2 = fit_exp_entropy(hh, rr)
        fits.append((i, run, hh, rr, a, b, r2))
    if not fits:
        res.note = "no run has at least 3 steps with both entropy and reward (and varying entropy)"
        return res
    fig, axes = _new(1, 1, w=6.4, h=4.4)
    ax = axes[0, 0]
    for i, run, hh, rr, a, b, r2 in fits:
        ax.scatter(hh, rr, s=12, color=run_color(i), alpha=0.7)
        grid = np.linspace(hh.min(), hh.max(), 100)
        ax.plot(grid, -a * np.exp(grid) + b, color=run_color(i), label=f"{run.name}: a={a:.3g}, b={b:.3g}, R²={r2:.2f}")
    _style(ax, xlabel="entropy H", ylabel="mean reward R", legend=8)
    res.figures.append(("r_vs_h", fig))
    return res


def panel_fisher(runs: list[RunData]) -> PanelResult:
    res = PanelResult(
        "fisher",
        "Fisher kernel",
        "The per-sequence Fisher / NTK kernel K(i, j) = <g_i, g_j> (metric set by probes.fisher_metric) at the "
        "last step that saved one: heat-map and eigenvalue spectrum; one figure per run.",
    )
    for run in runs:
        kernel, kstep = None, None
        for st in sorted(run.dynamics, reverse=True):
            arrs = run.load_dynamics(st)
            k = arrs.get("fisher")
            if k is not None and k.ndim == 2 and k.shape[0] == k.shape[1] and k.shape[0] >= 2:
                kernel, kstep = k.astype(np.float64), st
                break
        if kernel is None:
            continue
        fig, axes = _new(1, 2, w=5.0, h=4.2)
        vmax = float(np.nanmax(np.abs(kernel))) or 1.0
        im = axes[0, 0].imshow(kernel, cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
        fig.colorbar(im, ax=axes[0, 0], fraction=0.046)
        axes[0, 0].set_title(f"{run.name}: K at step {kstep}")
        axes[0, 0].set_xlabel("sequence j")
        axes[0, 0].set_ylabel("sequence i")
        saved = run.load_dynamics(kstep).get("fisher_eig")
        if saved is not None and saved.ndim == 1 and saved.size == kernel.shape[0]:
            eig = np.sort(np.abs(saved.astype(np.float64)))[::-1]  # [N]
        else:
            sym = 0.5 * (kernel + kernel.T)  # [N, N]
            eig = np.sort(np.abs(np.linalg.eigvalsh(np.nan_to_num(sym))))[::-1]  # [N]
        ax = axes[0, 1]
        ax.semilogy(np.arange(1, eig.size + 1), np.maximum(eig, 1e-300), marker="o", ms=3)
        ax.set_xlabel("rank")
        ax.set_ylabel("|eigenvalue|")
        ax.set_title("spectrum")
        ax.grid(alpha=0.3)
        res.figures.append((f"fisher_{_slug(run.name)}", fig))
    if not res.figures:
        res.note = "no Fisher kernel saved in dynamics/step_N.npz (set probes.fisher_every > 0 in the training config)"
    return res


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


PANELS: tuple[Callable[[list[RunData]], PanelResult], ...] = (
    panel_entropy,
    panel_reward,
    panel_pass_at_k,
    panel_controls,
    panel_delta_h,
    panel_quadrants,
    panel_s_hist,
    panel_r_vs_h,
    panel_fisher,
)
