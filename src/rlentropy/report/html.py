"""`rlentropy report`: a self-contained report.html (+ plots/*.png) for one or more runs.

The HTML embeds every image as base64 and uses no script, font or stylesheet from the network, so it
opens from disk anywhere. Panels whose data is absent are listed with a note, never drawn empty.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
from pathlib import Path

import numpy as np

from rlentropy.errors import UserError
from rlentropy.report.plots import PANELS, PanelResult, agreement, run_color
from rlentropy.report.rundata import RunData, TruncatedMetricsWarning, load_runs

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; color: #222; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
.meta { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; white-space: nowrap; }
figure { margin: 0.6em 0 1.4em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
.note { color: #8a6d3b; background: #fcf8e3; border: 1px solid #faebcc; padding: 0.4em 0.8em; margin: 0.3em 0; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
.swatch { display: inline-block; width: 0.8em; height: 0.8em; margin-right: 0.4em; border-radius: 2px; }
"""


def _fmt(x: float, digits: int = 4) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x:.{digits}g}"


def _last_finite(vals: np.ndarray) -> float:
    ok = np.isfinite(vals)
    return float(vals[ok][-1]) if ok.any() else math.nan


def _first_finite(vals: np.ndarray) -> float:
    ok = np.isfinite(vals)
    return float(vals[ok][0]) if ok.any() else math.nan


def _cfg_get(cfg: dict, *paths: str) -> str:
    for p in paths:
        cur = cfg
        for part in p.split("."):
            if isinstance(cur, dict) and part in cur:
                cur = cur[part]
            else:
                cur = None
                break
        if cur is not None and not isinstance(cur, (dict, list)):
            return str(cur)
    return "–"


def summary_rows(runs: list[RunData]) -> list[dict[str, str]]:
    """One row of summary strings per run (also used by tests)."""
    rows = []
    for run in runs:
        ent = run.series("entropy")
        rew = run.series("reward")
        steps = run.steps()
        row = {
            "run": run.name,
            "task": _cfg_get(run.config, "data.task"),
            "model": _cfg_get(run.config, "model.name", "model.path", "model.name_or_path", "model"),
            "loss": _cfg_get(run.config, "algorithm.loss", "algorithm.policy_loss", "loss.name", "loss"),
            "control": _cfg_get(run.config, "algorithm.control"),
            "steps": str(int(np.nanmax(steps))) if steps.size else "–",
            "entropy first → last": (
                f"{_fmt(_first_finite(ent[1]))} → {_fmt(_last_finite(ent[1]))}" if ent is not None else "–"
            ),
            "reward (last 10 steps)": (
                _fmt(float(np.nanmean(rew[1][-10:]))) if rew is not None and np.isfinite(rew[1][-10:]).any() else "–"
            ),
        }
        pass_cols = run.eval_columns("pass@")
        if pass_cols:
            last = run.eval_rows[-1]
            row["eval step"] = str(int(last["step"]))
            row["eval pass@1"] = _fmt(last.get("pass@1", math.nan))
            row[f"eval {pass_cols[-1]}"] = _fmt(last.get(pass_cols[-1], math.nan))
        p, m = run.series("pred_dH"), run.series("meas_dH")
        if p is not None and m is not None:
            ag = agreement(p[1], m[1])
            row["probed steps"] = str(int(ag["n"]))
            row["corr(pred, meas ΔH)"] = _fmt(ag["corr"], 3)
            row["ΔH signs agree"] = _fmt(ag["sign_agree"], 3)
        rows.append(row)
    return rows


def _table_html(rows: list[dict[str, str]], runs: list[RunData]) -> str:
    cols: list[str] = []
    for r in rows:
        cols.extend(c for c in r if c not in cols)
    head = "".join(f'<th class="{"l" if c == "run" else ""}">{html.escape(c)}</th>' for c in cols)
    body = []
    for i, r in enumerate(rows):
        cells = []
        for c in cols:
            v = html.escape(r.get(c, "–"))
            if c == "run":
                rgba = run_color(i)
                col = "#" + "".join(f"{int(255 * x):02x}" for x in rgba[:3])
                cells.append(f'<td class="l"><span class="swatch" style="background:{col}"></span>{v}</td>')
            else:
                cells.append(f"<td>{v}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table id="summary"><tr>{head}</tr>{"".join(body)}</table>'


def write_report(run_dirs: list[Path | str], out_dir: Path | str | None = None) -> Path:
    """Write ``report.html`` and ``plots/*.png`` for the given runs.

    Args:
        run_dirs: one or more run directories (see docs/architecture.md for the layout).
        out_dir: where to write (default: the first run's directory). Created if missing; existing
            ``plots/*.png`` there are replaced.

    Returns:
        Path of the written report.html.

    Raises:
        UserError: a path is not a run directory, or no path was given.
        DataError: a run file is malformed (named in the message).
    """
    import matplotlib.pyplot as plt

    runs = load_runs(list(run_dirs))
    out = Path(out_dir) if out_dir is not None else runs[0].path
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    for old in plots.glob("*.png"):
        old.unlink()

    results: list[PanelResult] = []
    for panel in PANELS:
        res = panel(runs)
        for stem, fig in res.figures:
            fig.tight_layout()
            fig.savefig(plots / f"{stem}.png", dpi=90)
            plt.close(fig)
        results.append(res)

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>rlentropy report: {html.escape(', '.join(r.name for r in runs))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>rlentropy report: {html.escape(', '.join(r.name for r in runs))}</h1>",
        f'<p class="meta">Generated {_dt.datetime.now().strftime("%Y-%m-%d %H:%M")} from '
        + ", ".join(f"<code>{html.escape(str(r.path))}</code>" for r in runs)
        + "</p>",
        "<h2>Runs</h2>",
        _table_html(summary_rows(runs), runs),
    ]
    omitted = []
    for res in results:
        if not res.figures:
            omitted.append(res)
            continue
        parts.append(f'<h2 id="{res.key}">{html.escape(res.title)}</h2>')
        for stem, _ in res.figures:
            data = base64.b64encode((plots / f"{stem}.png").read_bytes()).decode("ascii")
            parts.append(
                f'<figure><img id="img-{html.escape(stem)}" alt="{html.escape(res.title)}" '
                f'src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(res.caption)}</figcaption></figure>"
            )
    if omitted:
        parts.append('<h2 id="omitted">Panels not drawn</h2>')
        for res in omitted:
            parts.append(
                f'<p class="note" id="note-{res.key}"><b>{html.escape(res.title)}</b>: '
                f"{html.escape(res.note or 'no data')}.</p>"
            )
    parts.append("<h2>Configs</h2>")
    for run in runs:
        cfg = run.path / "config.yaml"
        text = cfg.read_text(encoding="utf-8", errors="replace") if cfg.is_file() else "(no config.yaml)"
        parts.append(f"<details><summary>{html.escape(run.name)}</summary><pre>{html.escape(text)}</pre></details>")
    parts.append("</body></html>")
    path = out / "report.html"
    tmp = out / "report.html.tmp"
    tmp.write_text("\n".join(parts), encoding="utf-8")
    tmp.replace(path)
    return path


def report_command(runs: list[Path], out: Path | None = None) -> None:
    """CLI body of `rlentropy report RUN [RUN ...] [--out DIR]`: write the report and print its path."""
    import sys
    import warnings

    if not runs:
        raise UserError("report: give at least one run directory")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TruncatedMetricsWarning)
        path = write_report(runs, out)
    for w in caught:
        if issubclass(w.category, TruncatedMetricsWarning):
            print(f"warning: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    print(f"wrote {path}")
