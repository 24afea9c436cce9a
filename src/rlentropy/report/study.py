"""The study report: runs grouped by method, curves as mean ± band over seeds.

`write_study_report({method: [run_dir, ...]}, out)` writes `<out>/report.html` (self-contained, images
embedded) and `<out>/plots/study_*.png`:

* entropy vs step and reward vs step: per method the mean over seeds with a band (the 95 % Student-t
  interval of the mean at each step), optionally EMA-smoothed (the smoothing is stated on the axis);
  the target entropy of controller runs as a dashed line;
* pass@k vs k of the final policies: per method the mean with its 95 % interval, the base policy dashed;
* predicted vs measured ΔH of every probed step, pooled over seeds, per method, with the pooled
  correlation and sign agreement.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from scipy import stats as _st  # noqa: E402

from rlentropy.dynamics.summary import MEAS_KEY, PRED_KEY, prediction_agreement  # noqa: E402
from rlentropy.report.plots import run_color  # noqa: E402
from rlentropy.report.rundata import RunData, load_runs  # noqa: E402

__all__ = ["band", "ema", "write_study_report"]


def ema(values: np.ndarray, alpha: float) -> np.ndarray:
    """Exponential moving average `m_t = alpha·m_{t−1} + (1 − alpha)·x_t` (alpha 0: no smoothing); NaN kept."""
    if alpha <= 0:
        return values
    out = np.empty_like(values)
    m = math.nan
    for i, x in enumerate(values):
        m = x if not math.isfinite(m) else (m if not math.isfinite(x) else alpha * m + (1 - alpha) * x)
        out[i] = m
    return out


def band(curves: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and Student-t interval over seeds at each step.

    Args:
        curves: [n_seeds, steps] (NaN where a seed has no value).

    Returns:
        (mean, low, high), each [steps]; low = high = mean where fewer than 2 seeds have a value.
    """
    n = np.isfinite(curves).sum(axis=0)  # [steps]
    mean = np.nanmean(np.where(n[None] > 0, curves, 0.0), axis=0) if curves.size else np.zeros(0)
    mean = np.where(n > 0, mean, np.nan)
    sd = np.nanstd(curves, axis=0, ddof=1) if curves.shape[0] > 1 else np.zeros_like(mean)
    t = np.array([_st.t.ppf(0.5 + confidence / 2, k - 1) if k > 1 else 0.0 for k in n])
    half = np.where(n > 1, t * np.nan_to_num(sd) / np.sqrt(np.maximum(n, 1)), 0.0)
    return mean, mean - half, mean + half


def _curves(runs: list[RunData], logical: str) -> tuple[np.ndarray, np.ndarray] | None:
    series = [r.series(logical) for r in runs]
    series = [s for s in series if s is not None]
    if not series:
        return None
    steps = np.unique(np.concatenate([s[0] for s in series]))  # [S]
    mat = np.full((len(series), steps.size), np.nan)
    for i, (st, v) in enumerate(series):
        mat[i, np.searchsorted(steps, st)] = v
    return steps, mat


def _target(runs: list[RunData]) -> float | None:
    for r in runs:
        t = ((r.config.get("algorithm") or {}).get("controller_params") or {}).get("target")
        if t is not None and (r.config.get("algorithm") or {}).get("controller", "none") != "none":
            return float(t)
    return None


def _curve_panel(groups: dict[str, list[RunData]], logical: str, ylabel: str, alpha: float) -> Figure:
    fig, ax = plt.subplots(figsize=(7.2, 4.2))
    for i, (method, runs) in enumerate(groups.items()):
        got = _curves(runs, logical)
        if got is None:
            continue
        steps, mat = got
        mat = np.stack([ema(row, alpha) for row in mat])
        mean, lo, hi = band(mat)
        ax.plot(steps, mean, color=run_color(i), label=f"{method} (n={mat.shape[0]})")
        ax.fill_between(steps, lo, hi, color=run_color(i), alpha=0.18, linewidth=0)
        target = _target(runs) if logical == "entropy" else None
        if target is not None:
            ax.axhline(target, color=run_color(i), linestyle="--", linewidth=1)
    smooth = f", EMA {alpha:g}" if alpha > 0 else ""
    ax.set_xlabel("step")
    ax.set_ylabel(f"{ylabel}\n(mean over seeds, band: 95 % t-interval{smooth})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _final_eval(run: RunData) -> dict[str, float]:
    return max(run.eval_rows, key=lambda r: r["step"]) if run.eval_rows else {}


def _pass_at_k_panel(groups: dict[str, list[RunData]], base: dict[str, Any]) -> Figure | None:
    fig, ax = plt.subplots(figsize=(7.2, 4.2))
    drawn = False
    for i, (method, runs) in enumerate(groups.items()):
        finals = [_final_eval(r) for r in runs]
        ks = sorted({int(c[5:]) for f in finals for c in f if c.startswith("pass@") and c[5:].isdigit()})
        if not ks:
            continue
        mat = np.array([[f.get(f"pass@{k}", np.nan) for k in ks] for f in finals], dtype=np.float64)  # [seeds, K]
        mean, lo, hi = band(mat)
        ax.errorbar(
            ks,
            mean,
            yerr=[mean - lo, hi - mean],
            color=run_color(i),
            marker="o",
            capsize=3,
            label=f"{method} (n={len(finals)})",
        )
        drawn = True
    bks = sorted(int(c[5:]) for c in base if c.startswith("pass@") and c[5:].isdigit())
    if bks:
        ax.plot(bks, [base[f"pass@{k}"] for k in bks], "k--", marker="x", label="base policy")
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k of the final policy\n(mean, 95 % t-interval over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _scatter_panel(groups: dict[str, list[RunData]]) -> tuple[Figure | None, list[str]]:
    fig, ax = plt.subplots(figsize=(6.0, 5.0))
    notes, allp, allm = [], [], []
    for i, (method, runs) in enumerate(groups.items()):
        rows = [row for r in runs for row in r.rows if PRED_KEY in row and MEAS_KEY in row]
        agree = prediction_agreement(rows)
        if agree["n"] == 0:
            continue
        p = np.array([float(row[PRED_KEY]) for row in rows if row[PRED_KEY] is not None and row[MEAS_KEY] is not None])
        m = np.array([float(row[MEAS_KEY]) for row in rows if row[PRED_KEY] is not None and row[MEAS_KEY] is not None])
        ax.scatter(
            p,
            m,
            s=14,
            color=run_color(i),
            alpha=0.8,
            label=f"{method}: r {agree['corr']:.3f}, sign {100 * agree['sign_agree']:.0f} %",
        )
        notes.append(
            f"{method}: {int(agree['n'])} probed steps, corr {agree['corr']:.3f}, sign agreement "
            f"{100 * agree['sign_agree']:.0f} %"
        )
        allp.append(p)
        allm.append(m)
    if not allp:
        plt.close(fig)
        return None, []
    lim = float(np.nanmax(np.abs(np.concatenate(allp + allm)))) * 1.1 or 1.0
    ax.plot([-lim, lim], [-lim, lim], "k:", linewidth=1)
    ax.set_xlabel("predicted ΔH (first order, real update)")
    ax.set_ylabel("measured ΔH (probe batch)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    pooled = prediction_agreement(
        [{"p": a, "m": b} for a, b in zip(np.concatenate(allp), np.concatenate(allm))], pred_key="p", meas_key="m"
    )
    notes.append(
        f"all methods pooled: {int(pooled['n'])} probed steps, corr {pooled['corr']:.3f}, sign agreement "
        f"{100 * pooled['sign_agree']:.0f} %"
    )
    return fig, notes


def _md_to_html(text: str) -> str:
    """The summary's markdown (headings, paragraphs, bullet lists, tables) as HTML."""
    out, table = [], []

    def flush() -> None:
        if table:
            rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table if "---" not in line]
            head, body = rows[0], rows[1:]
            out.append(
                "<table><tr>"
                + "".join(f"<th>{html.escape(c)}</th>" for c in head)
                + "</tr>"
                + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
                + "</table>"
            )
            table.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")) + 1, 4)
            out.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("* "):
            out.append(f"<p class='item'>• {html.escape(line[2:])}</p>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    flush()
    return "\n".join(out)


_CSS = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}td,th{border:1px solid #ccc;padding:3px 7px}"
    "th{background:#f2f2f2}figure{margin:1.5em 0}img{max-width:100%}p.item{margin:0.2em 0 0.2em 1em}"
    "figcaption{color:#555;font-size:0.9em}"
)


def write_study_report(
    groups: dict[str, list[Path]],
    out: Path,
    *,
    base_metrics: dict[str, Any] | None = None,
    title: str = "study",
    summary_md: str = "",
    ema: float = 0.0,
) -> Path:
    """Write `<out>/report.html` and `<out>/plots/study_*.png` (see the module docstring)."""
    runs = {m: load_runs(list(paths)) for m, paths in groups.items() if paths}
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    figures: list[tuple[str, str, Figure | None, str]] = [
        (
            "study_entropy",
            "Entropy",
            _curve_panel(runs, "entropy", "token-mean entropy (nats)", ema),
            "Token-mean entropy of each step's rollouts; dashed: a controller's target.",
        ),
        (
            "study_reward",
            "Reward",
            _curve_panel(runs, "reward", "mean training reward", ema),
            "Mean reward of each step's rollouts.",
        ),
        (
            "study_pass_at_k",
            "pass@k of the final policies",
            _pass_at_k_panel(runs, base_metrics or {}),
            "Unbiased pass@k on the eval prompts (the same prompts and sampling seed for every run).",
        ),
    ]
    scatter, notes = _scatter_panel(runs)
    figures.append(
        (
            "study_delta_h",
            "Predicted vs measured ΔH",
            scatter,
            "Every probed step, pooled over seeds. " + "; ".join(notes),
        )
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Generated {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}.</p>",
        _md_to_html(summary_md),
    ]
    for stem, heading, fig, caption in figures:
        if fig is None:
            parts.append(f"<p class='note' id='note-{stem}'><b>{html.escape(heading)}</b>: no data.</p>")
            continue
        fig.tight_layout()
        fig.savefig(plots / f"{stem}.png", dpi=90)
        plt.close(fig)
        data = base64.b64encode((plots / f"{stem}.png").read_bytes()).decode("ascii")
        parts.append(
            f'<h2>{html.escape(heading)}</h2><figure><img id="img-{stem}" alt="{html.escape(heading)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{html.escape(caption)}</figcaption></figure>'
        )
    parts.append("</body></html>")
    path = out / "report.html"
    tmp = out / "report.html.tmp"
    tmp.write_text("\n".join(parts), encoding="utf-8")
    tmp.replace(path)
    return path
