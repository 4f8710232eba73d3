"""plots: the report's figures, as pure functions of the report's long tables (DataFrame -> Figure).

    fig = plot_collapse(report.collapse_table(results, samples))
    fig.savefig("results/figures/collapse.png")     # harness.report.make_report also writes the CSV

Owns: one figure per table (collapse, strategy comparison, depth fraction, MoE block vs layer x
routing, cost) and the shared look (`style()`: font sizes, grid, one colour per strategy / model).
Figures are built as `matplotlib.figure.Figure` on the Agg canvas, never through pyplot's global
state, so calling these in a loop leaks nothing and needs no display. Each function takes exactly
the frame the script saves beside the figure. Accuracies and deltas are in percentage points (pp);
the baseline is drawn in every figure (a dashed horizontal line, or the zero line of a delta).
Cells whose status is not ok are marked with an 'x' on the baseline line and counted in the title.
"""
from __future__ import annotations

import contextlib
import math
from typing import Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib as mpl  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .report.common import DEPTH_BAND  # noqa: E402
from .report.common import blank as _blank  # noqa: E402

STYLE = {
    "font.size": 10, "axes.titlesize": 10.5, "axes.labelsize": 10, "legend.fontsize": 8.5,
    "xtick.labelsize": 9, "ytick.labelsize": 9, "axes.grid": True, "grid.alpha": 0.3,
    "axes.spines.top": False, "axes.spines.right": False, "figure.dpi": 100, "savefig.dpi": 200,
    "savefig.bbox": "tight", "lines.linewidth": 1.6, "lines.markersize": 5,
}
_PALETTE = ["#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#393b79",
            "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#1f77b4", "#d62728", "#2ca02c"]
#: one colour per strategy in every figure (report, trajectory, benchmarks); strategies are drawn
#: as solid lines, windows told apart by marker (WINDOW_MARKERS), the baseline is the only dashed
#: line
_FIXED = {"naive": "#d62728", "euler": "#1f77b4", "anchored": "#2ca02c", "baseline": "#444444"}
WINDOW_MARKERS = ["o", "s", "^", "D", "v", "P"]
BASELINE_STYLE = dict(color="#444444", linestyle="--", linewidth=1.2)
FAILED_STYLE = dict(marker="x", color="#000000", linestyle="none", markersize=7, zorder=5)


@contextlib.contextmanager
def style():
    """The project's plot style (readable fonts, light grid, no top/right spines)."""
    with mpl.rc_context(STYLE):
        yield


def colour(name: str, names: Sequence[str] = ()) -> str:
    """A stable colour per strategy (naive red, euler blue, anchored green) or per other label."""
    if name in _FIXED:
        return _FIXED[name]
    others = [n for n in dict.fromkeys(names) if n not in _FIXED]
    i = others.index(name) if name in others else abs(hash(name))
    return _PALETTE[i % len(_PALETTE)]


def _grid(n_panels: int, ncols: int = 3) -> tuple[int, int]:
    """(columns, rows) of a figure of `n_panels` with at most `ncols` columns; 4 panels: 2 x 2."""
    ncols = max(1, min(ncols, n_panels, 2 if n_panels == 4 else ncols))
    return ncols, max(1, math.ceil(n_panels / ncols))


def _figure(n_panels: int, *, ncols: int = 3, size=(4.6, 3.4)) -> tuple[Figure, list]:
    ncols, nrows = _grid(n_panels, ncols)
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(max(1, n_panels))]
    return fig, axes


def _empty(message: str) -> Figure:
    fig, (ax,) = _figure(1)
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("(no data)")
    ax.set_ylabel("(no data)")
    ax.set_axis_off()
    return fig


def _panels(df: pd.DataFrame, keys: Sequence[str]) -> list[tuple[str, pd.DataFrame]]:
    keys = [k for k in keys if k in df.columns]
    out = []
    for key, g in df.groupby(keys, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        title = " | ".join(f"K={int(v)}" if c == "k" else str(v)
                           for c, v in zip(keys, key) if not _blank(v))
        if len(title) > 45:              # long model names: the model on its own line
            title = title.replace(" | ", "\n", 1)
        out.append((title, g))
    return out


def _baseline(ax, g: pd.DataFrame, col: str = "baseline_pp", *, at_zero: bool = False) -> float:
    if at_zero:
        ax.axhline(0.0, **BASELINE_STYLE, label="baseline (delta 0)")
        return 0.0
    vals = g[col].dropna() if col in g.columns else pd.Series(dtype=float)
    if len(vals):
        y = float(vals.iloc[0])
        ax.axhline(y, **BASELINE_STYLE, label=f"baseline ({y:.1f})")
        return y
    return math.nan


def _mark_not_ok(ax, g: pd.DataFrame, x: str, y_at: float) -> int:
    bad = g[g["status"] != "ok"]
    xs = pd.to_numeric(bad[x], errors="coerce").dropna()
    if len(xs):
        ax.plot(xs, [0.0 if math.isnan(y_at) else y_at] * len(xs), **FAILED_STYLE, label="failed / missing")
    return len(bad)


def _series_label(r: pd.Series, extra: Sequence[str]) -> str:
    parts = [str(r["integrator"])]
    parts += [str(r[c]) for c in extra if c in r and not _blank(r[c]) and str(r[c])]
    return " ".join(parts)


def _title(name: str, n_bad: int) -> str:
    return f"{name}  ({n_bad} not ok)" if n_bad else name


def _legend(ax) -> None:
    handles, labels = ax.get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    if len(seen) > 4:  # many series: beside the panel, where it hides no data
        ax.legend(seen.values(), seen.keys(), frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1),
                  fontsize="small")
    elif seen:
        ax.legend(seen.values(), seen.keys(), frameon=False, loc="best")


# ---- collapse -------------------------------------------------------------------------------------------
def _curves_only(g: pd.DataFrame) -> pd.DataFrame:
    """A panel's rows in windows that have a curve (two or more K): a store that also holds
    single-K cells (a depth part, a window scan) would otherwise add a point per window."""
    ks = g.groupby("window", dropna=False)["k"].nunique()
    curved = ks[ks > 1].index
    return g[g["window"].isin(curved)] if len(curved) else g


def plot_collapse(collapse: pd.DataFrame, *, band: str = "paired") -> Figure:
    """Accuracy (pp) vs K, one line per strategy (colour; marker per window, and variant when
    several), one panel per model x task; shaded band (band='paired') = baseline + the paired 95%
    CI of the cell's delta (the claim is about paired deltas: where the band leaves the dashed
    baseline the delta is significant); band='value': the accuracy's own CI from lm-eval's
    stderr (unpaired); dashed line = the baseline; 'x' = failed or missing cells."""
    df = collapse[collapse["k"].notna()] if len(collapse) else collapse
    if df.empty:
        return _empty("no looped cells")
    with style():
        panels = _panels(df, ["model_name", "task"])
        fig, axes = _figure(len(panels))
        names = list(df["integrator"].dropna().unique())
        for ax, (name, g) in zip(axes, panels):
            base = _baseline(ax, g)
            g = _curves_only(g)
            several_windows = g["window"].nunique() > 1
            several_modes = g["mode"].nunique() > 1
            windows = sorted(g["window"].dropna().astype(str).unique().tolist())
            for (integ, win, mode, var), s in g[g["status"] == "ok"].groupby(
                    ["integrator", "window", "mode", "variant"], dropna=False, sort=True):
                s = s.sort_values("k")
                extra = (["window"] if several_windows else []) + (["mode"] if several_modes else [])
                label = _series_label(s.iloc[0], extra + ["variant"])
                c = colour(integ, names)
                mk = WINDOW_MARKERS[windows.index(str(win)) % len(WINDOW_MARKERS)] \
                    if several_windows and not _blank(win) else "o"
                ax.plot(s["k"], s["value_pp"], marker=mk, color=c, linestyle="-", label=label)
                lo, hi = (s["value_ci_low_pp"], s["value_ci_high_pp"]) if band == "value" else (
                    s["baseline_pp"] + s["ci_low_pp"], s["baseline_pp"] + s["ci_high_pp"])
                if lo.notna().any():
                    ax.fill_between(s["k"].astype(float), lo.clip(0, 100), hi.clip(0, 100),
                                    color=c, alpha=0.10, linewidth=0)
            n_bad = _mark_not_ok(ax, g, "k", base)
            ax.set_xlabel("K (sub-steps of the window)")
            ax.set_ylabel("accuracy (%)")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.set_title(_title(name, n_bad))
            _legend(ax)
        fig.suptitle("Collapse: accuracy vs K per strategy (band: " + (
            "baseline + paired 95% CI of the delta)" if band != "value"
            else "95% CI of the accuracy, lm-eval stderr)"))
    return fig


# ---- strategy comparison ----------------------------------------------------------------------------------
def plot_strategy(strategy: pd.DataFrame, *, by: str = "k") -> Figure:
    """Delta vs baseline (pp) per strategy, grouped bars at each budget (`by` = 'k' or
    'window_passes'), error bars = the paired-bootstrap 95% CI, one panel per model x task x
    window; zero line = the baseline."""
    if by not in ("k", "window_passes"):
        raise ValueError(f"by must be 'k' or 'window_passes', got {by!r}")
    df = strategy[strategy["status"] == "ok"] if len(strategy) else strategy
    df = df[df[by].notna()] if len(df) else df
    if df.empty:
        return _empty("no ok looped cells")
    with style():
        panels = _panels(df, ["model_name", "task", "window", "mode"])
        fig, axes = _figure(len(panels), ncols=2, size=(6.0, 3.6))
        for ax, (name, g) in zip(axes, panels):
            _baseline(ax, g, at_zero=True)
            budgets = sorted(g[by].astype(float).unique())
            series = list(dict.fromkeys(_series_label(r, ["variant"]) for _, r in g.iterrows()))
            width = 0.8 / max(1, len(series))
            names = list(g["integrator"].unique())
            hatches = ["", "//", "..", "xx", "\\\\", "++"]
            variant_of: dict = {}                     # variants of one strategy: a hatch each
            for j, lab in enumerate(series):
                s = g[np.array([_series_label(r, ["variant"]) == lab for _, r in g.iterrows()], dtype=bool)]
                xs = np.array([budgets.index(float(b)) for b in s[by]]) + (j - (len(series) - 1) / 2) * width
                err = np.vstack([(s["delta_pp"] - s["ci_low_pp"]).clip(lower=0),
                                 (s["ci_high_pp"] - s["delta_pp"]).clip(lower=0)])
                integ = s["integrator"].iloc[0]
                n_var = variant_of[integ] = variant_of.get(integ, -1) + 1
                ax.bar(xs, s["delta_pp"], width=width, color=colour(integ, names),
                       hatch=hatches[n_var % len(hatches)], edgecolor="white", linewidth=0.5,
                       label=lab, yerr=np.nan_to_num(err), capsize=2, error_kw={"linewidth": 0.8})
            ax.set_xticks(range(len(budgets)), [f"{b:g}" for b in budgets])
            ax.set_xlabel("K (sub-steps)" if by == "k" else "window passes (evaluations of the window)")
            ax.set_ylabel("delta vs baseline (pp)")
            ax.set_title(name)
            _legend(ax)
        fig.suptitle("Strategies at equal " + ("K" if by == "k" else "window passes")
                     + " (error bars: paired bootstrap 95% CI)")
    return fig


# ---- depth fraction ---------------------------------------------------------------------------------------
def plot_depth(depth: pd.DataFrame, *, band: tuple[float, float] = DEPTH_BAND) -> Figure:
    """Delta vs window centre (depth fraction): small multiples with shared axes, one panel per
    model x task x K (x mode when several; K = 1 is left out: most strategies are the plain model
    there), one line per strategy in its colour (marker and label per window width when a panel
    has several), error bars = paired 95% CI, shaded = the paper's best band (0.43-0.71), dashed
    zero line = the baseline. At most 1600 x 1600 px. Cells without a resolved centre are not
    drawn (the depth table lists them)."""
    df = depth[depth["window_centre"].notna()] if len(depth) else depth
    if len(df):
        df = df[df["k"].astype(float) > 1]
    if len(df):     # a line needs at least two windows to say anything about depth
        n_win = df.groupby(["task", "integrator", "k", "mode", "model_name", "window_width",
                            "variant"], dropna=False)["window_centre"].transform("nunique")
        df = df[n_win > 1]
    if df.empty:
        return _empty("no windows with a known centre at K > 1")
    with style():
        keys = ["model_name", "task", "k"] + (["mode"] if df["mode"].nunique() > 1 else [])
        panels = _panels(df, keys)
        ncols, nrows = _grid(len(panels), 4)
        width = 6.4 if ncols == 1 else min(4.6, 15.0 / ncols)     # room for the long titles
        fig, axes = _figure(len(panels), ncols=ncols, size=(width, min(3.2, 14.0 / nrows)))
        for ax in axes[1:]:
            ax.sharex(axes[0])
            ax.sharey(axes[0])
        names = list(df["integrator"].dropna().unique())
        for ax, (name, g) in zip(axes, panels):
            ax.axvspan(*band, color="#f2c14e", alpha=0.22,
                       label=f"paper's best band {band[0]:.2f}-{band[1]:.2f}")
            _baseline(ax, g, at_zero=True)
            ok = g[g["status"] == "ok"]
            widths = sorted(ok["window_width"].dropna().astype(float).unique().tolist())
            for (integ, width, var), s in ok.groupby(["integrator", "window_width", "variant"],
                                                     dropna=False, sort=True):
                s = s.sort_values("window_centre")
                several = len(widths) > 1 and not _blank(width)
                mk = WINDOW_MARKERS[widths.index(float(width)) % len(WINDOW_MARKERS)] \
                    if several else "o"
                err = np.vstack([(s["delta_pp"] - s["ci_low_pp"]).clip(lower=0),
                                 (s["ci_high_pp"] - s["delta_pp"]).clip(lower=0)])
                label = " ".join([str(integ)] + ([f"width {int(width)}"] if several else [])
                                 + ([] if _blank(var) or not str(var) else [str(var)]))
                ax.errorbar(s["window_centre"], s["delta_pp"], yerr=np.nan_to_num(err),
                            marker=mk, capsize=2, color=colour(integ, names), label=label)
            n_bad = _mark_not_ok(ax, g, "window_centre", 0.0)
            ax.set_xlim(0, 1)
            ax.set_title(_title(name, n_bad), fontsize=8)
        for ax in axes:
            ax.label_outer()
        fig.supxlabel("window centre (depth fraction of the layers)")
        fig.supylabel("delta vs baseline (pp)")
        handles, labels = [], []
        for ax in axes:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
        fig.legend(handles, labels, loc="outside right center", frameon=False, fontsize="small")
        fig.suptitle("Depth fraction: delta vs window centre (error bars: paired 95% CI)")
    return fig


# ---- MoE block vs layer x routing --------------------------------------------------------------------------
def plot_moe(moe: pd.DataFrame) -> Figure:
    """Delta vs baseline (pp) per MoE model, bars for block/layer x recompute/freeze, error bars =
    paired 95% CI, zero line = the baseline; 'missing' / 'failed' combinations are written on the
    axis instead of a bar. One panel per task x strategy x K."""
    if moe.empty:
        return _empty("no MoE cells")
    with style():
        panels = _panels(moe, ["task", "integrator", "k"])
        fig, axes = _figure(len(panels), ncols=2, size=(6.0, 3.6))
        combos = [(m, r) for m in ("block", "layer") for r in ("recompute", "freeze")]
        shades = {("block", "recompute"): "#9ecae1", ("block", "freeze"): "#3182bd",
                  ("layer", "recompute"): "#fdae6b", ("layer", "freeze"): "#e6550d"}
        for ax, (name, g) in zip(axes, panels):
            _baseline(ax, g, at_zero=True)
            models = sorted(g["model_name"].unique())
            width = 0.8 / len(combos)
            for j, (m, r) in enumerate(combos):
                for i, model in enumerate(models):
                    s = g[(g["model_name"] == model) & (g["mode"] == m) & (g["routing"] == r)]
                    x = i + (j - (len(combos) - 1) / 2) * width
                    okr = s[s["status"] == "ok"]
                    if len(okr):
                        row = okr.iloc[0]
                        err = [[max(0.0, row["delta_pp"] - row["ci_low_pp"]) if not _blank(row["ci_low_pp"]) else 0.0],
                               [max(0.0, row["ci_high_pp"] - row["delta_pp"]) if not _blank(row["ci_high_pp"]) else 0.0]]
                        ax.bar([x], [row["delta_pp"]], width=width, color=shades[(m, r)], yerr=err,
                               capsize=2, label=f"{m} / {r}", error_kw={"linewidth": 0.8})
                    else:
                        word = s["status"].iloc[0] if len(s) else "missing"
                        ax.text(x, 0, word, rotation=90, ha="center", va="bottom", fontsize=7)
            ax.set_xticks(range(len(models)), models)
            ax.set_xlabel("model")
            ax.set_ylabel("delta vs baseline (pp)")
            ax.set_title(name)
            _legend(ax)
        fig.suptitle("MoE: block vs layer mode x routing (error bars: paired 95% CI)")
    return fig


# ---- cost ---------------------------------------------------------------------------------------------------
def plot_cost(cost: pd.DataFrame) -> Figure:
    """Two panels per model x task: wall time (s) vs K per strategy with the baseline's as a dashed
    line, and window passes vs K per strategy."""
    df = cost[cost["status"] == "ok"] if len(cost) else cost
    if df.empty or df["wall_time_s"].notna().sum() == 0:
        return _empty("no wall times recorded")
    with style():
        panels = _panels(df, ["model_name", "task"])
        fig, axes = _figure(2 * len(panels), ncols=2, size=(5.0, 3.4))
        for p, (name, g) in enumerate(panels):
            ax_t, ax_p = axes[2 * p], axes[2 * p + 1]
            base = g[g["integrator"] == "baseline"]["wall_time_s"].dropna()
            if len(base):
                ax_t.axhline(float(base.iloc[0]), **BASELINE_STYLE, label=f"baseline ({base.iloc[0]:.1f} s)")
            ax_p.axhline(1.0, **BASELINE_STYLE, label="plain model (1 pass)")
            looped = g[g["integrator"] != "baseline"]
            names = list(looped["integrator"].unique())
            for (integ, var), s in looped.groupby(["integrator", "variant"], dropna=False, sort=True):
                s = s.groupby("k", as_index=False).agg(wall_time_s=("wall_time_s", "mean"),
                                                       window_passes=("window_passes", "max"))
                label = integ + (f" {var}" if not _blank(var) and var else "")
                ax_t.plot(s["k"], s["wall_time_s"], marker="o", color=colour(integ, names), label=label)
                ax_p.plot(s["k"], s["window_passes"].astype(float), marker="s", color=colour(integ, names),
                          label=label)
            ax_t.set_xlabel("K (sub-steps)")
            ax_t.set_ylabel("wall time (s)")
            ax_t.set_title(f"{name}: wall time")
            ax_p.set_xlabel("K (sub-steps)")
            ax_p.set_ylabel("window passes (per forward)")
            ax_p.set_title(f"{name}: window passes")
            for ax in (ax_t, ax_p):
                ax.xaxis.get_major_locator().set_params(integer=True)
                _legend(ax)
        fig.suptitle("Cost vs K (wall times compare only on one device and batch size)")
    return fig


def plot_scan(scan: pd.DataFrame) -> Figure:
    """Window scan heatmap: delta vs baseline (pp) per window start (x) and width (y), one panel
    per model x task x strategy x K; a cell outlined where its paired CI excludes 0."""
    import matplotlib.colors as mcolors
    from matplotlib.patches import Rectangle
    panels = _panels(scan, ["model_name", "task", "integrator", "k"])
    if not panels:
        return _empty("no window scan")
    fig, axes = _figure(len(panels), ncols=1, size=(8.0, 2.4))
    lim = max(1.0, float(np.nanmax(np.abs(scan["delta_pp"].astype(float)))))
    normc = mcolors.TwoSlopeNorm(vmin=-lim, vcenter=0.0, vmax=lim)
    for ax, (name, g) in zip(axes, panels):
        starts = sorted(g["start"].unique())
        widths = sorted(g["width"].unique())
        grid = np.full((len(widths), len(starts)), np.nan)
        for _, r in g.iterrows():
            grid[widths.index(r["width"]), starts.index(r["start"])] = r["delta_pp"]
        ax.imshow(grid, cmap="RdBu", norm=normc, aspect="auto", origin="lower")
        for _, r in g.iterrows():
            x, y = starts.index(r["start"]), widths.index(r["width"])
            ax.text(x, y, f"{r['delta_pp']:+.1f}", ha="center", va="center", fontsize=7)
            if not (np.isnan(r["ci_low_pp"]) or r["ci_low_pp"] <= 0 <= r["ci_high_pp"]):
                ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, lw=1.5,
                                       ec="black"))
        ax.set_xticks(range(len(starts)), [str(int(s)) for s in starts])
        ax.set_yticks(range(len(widths)), [str(int(w)) for w in widths])
        ax.set_xlabel("window start (layer)")
        ax.set_ylabel("width (layers)")
        ax.set_title(f"{name}: delta vs baseline (pp; blue better, red worse)", fontsize=9)
        ax.legend(handles=[Rectangle((0, 0), 1, 1, fc="white", ec="grey", label="baseline (0 pp)"),
                           Rectangle((0, 0), 1, 1, fill=False, ec="black", lw=1.5,
                                     label="paired 95% CI excludes 0")],
                  loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=2, fontsize=7,
                  frameon=False)
    fig.suptitle("Window scan: delta vs the baseline per window start and width")
    return fig


FIGURES = {
    "collapse": ("collapse", plot_collapse),
    "strategy_k": ("strategy_k", lambda df: plot_strategy(df, by="k")),
    "strategy_passes": ("strategy_passes", lambda df: plot_strategy(df, by="window_passes")),
    "depth": ("depth", plot_depth),
    "moe": ("moe", plot_moe),
    "cost": ("cost", plot_cost),
    "scan": ("scan", plot_scan),
}
"""figure name -> (the report table whose frame it plots, the plotting function)."""
