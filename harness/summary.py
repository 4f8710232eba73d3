"""summary: what a sweep prints while it runs and when it ends, from the records in its store.

    delta_line(store, cell_id)          # '  delta vs baseline: mc +1.2 pp [-0.8, +3.1], p=0.31'
    Progress(costs).line(i, n, done)    # '[grid ####------] 4/10 cells, 38% of the work, ETA 1m5s'
    frame = grid_summary(store, ids)    # every cell: accuracy, delta, paired CI, McNemar p, Holm
    print(format_summary(frame)); write_summary(store, frame, grid_id)   # summary.md / .csv

The delta of a looped cell is looped - baseline on the documents both scored (paired), in
percentage points; the CI is the paired bootstrap 95% interval (stats.paired_comparison), p is
McNemar's exact test; in the end table p_holm is Holm-adjusted across the grid's looped cells. The
best-of-grid flag marks the looped cell with the largest delta whose CI lies above zero, per model
and task (none when no CI does): a selection over many cells, so read its p_holm.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Iterable, Sequence

from . import store as st

SUMMARY_COLUMNS = ["model", "task", "loop", "acc", "delta_pp", "ci_low_pp", "ci_high_pp",
                   "p_mcnemar", "p_holm", "n", "best", "status", "cell_id"]


def _pp(x) -> str:
    return "" if x is None or x != x else f"{x:+.1f}"


# ---- one cell, as soon as it and its baseline exist -------------------------------------------
def _samples(record, task):
    import pandas as pd

    rows = [{"cell_id": record.cell_id, "task": task, **s}
            for s in (record.samples.get(task) or [])]
    return pd.DataFrame(rows)


def delta_line(store: str | os.PathLike, cell_id: str, *, n_boot: int = 2000) -> str | None:
    """The paired delta of a finished looped cell vs its baseline, per task, when both records
    are ok and have per-sample rows; None otherwise (a baseline, or its baseline not done yet)."""
    from . import stats

    rec = st.read_record(store, cell_id)
    if rec is None or rec.status != "ok" or not rec.baseline_id:
        return None
    base = st.read_record(store, rec.baseline_id)
    if base is None or base.status != "ok":
        return None
    parts = []
    for task in rec.samples:
        a, b = _samples(base, task), _samples(rec, task)
        if a.empty or b.empty:
            continue
        c = stats.paired_comparison(a, b, n_boot=n_boot)
        if not c["n_paired"]:
            continue
        parts.append(f"{task} {c['delta'] * 100:+.1f} pp [{c['ci_low'] * 100:+.1f}, "
                     f"{c['ci_high'] * 100:+.1f}] p={c['p_mcnemar']:.2g} (n={c['n_paired']})")
    return ("  delta vs baseline (paired 95% CI, McNemar p): " + "; ".join(parts)) if parts \
        else None


# ---- progress over a list of cells --------------------------------------------------------------
class Progress:
    """Progress over cells with an ETA that learns: each cell's share of the work is its
    estimated cost (layer passes x items; the mean when unknown), and the seconds per unit of
    cost come from the cells computed so far (before any, no ETA), divided by `parallel`."""

    def __init__(self, costs: Sequence[float | None], parallel: int = 1):
        known = [c for c in costs if c]
        fill = (sum(known) / len(known)) if known else 1.0
        self.costs = [float(c) if c else fill for c in costs]
        self.total = sum(self.costs) or 1.0
        self.started = time.monotonic()
        self.done_cost = 0.0
        self.timed_cost = 0.0             # cost of the cells computed here (skips take no time)
        self.seconds = 0.0
        self.parallel = max(1, parallel)  # cells computed at once (worker processes)

    def finished(self, index: int, wall_s: float | None) -> None:
        """Cell `index` (0-based) is done; `wall_s` its compute time (None: skipped)."""
        self.done_cost += self.costs[index]
        if wall_s is not None:
            self.timed_cost += self.costs[index]
            self.seconds += wall_s

    def line(self, n_done: int, n: int) -> str:
        frac = self.done_cost / self.total
        bar = "#" * round(20 * frac)
        elapsed = time.monotonic() - self.started
        if self.timed_cost and frac < 1:
            rate = self.seconds / self.timed_cost / self.parallel
            eta = f"ETA {_duration(rate * (self.total - self.done_cost))}"
        else:
            eta = "done" if frac >= 1 else "ETA after the first computed cell"
        return (f"[progress {bar:<20}] {n_done}/{n} cells, {frac:.0%} of the estimated work, "
                f"{_duration(elapsed)} elapsed, {eta}")


def _duration(s: float) -> str:
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


# ---- the grid's answer at the end --------------------------------------------------------------
def grid_summary(store: str | os.PathLike, cell_ids: Iterable[str], *, n_boot: int = 2000):
    """One row per cell x task of `cell_ids` that has a record: SUMMARY_COLUMNS. Looped rows carry
    the paired delta vs their baseline with its CI, McNemar p and Holm's p across the grid."""
    import pandas as pd

    from .report.common import LOOP_KEYS, config_label, with_names
    from .report.tables import cells_table

    keep = set(cell_ids)
    results = st.load_results(store)
    results = results[results["cell_id"].isin(keep)].reset_index(drop=True)
    samples = st.load_samples(store)
    samples = samples[samples["cell_id"].isin(keep)].reset_index(drop=True)
    if results.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    res = with_names(results)
    cells = cells_table(results, samples, n_boot=n_boot) if (~res["is_baseline"]).any() else None
    by_cell = {} if cells is None else {(r["cell_id"], r["task"]): r
                                        for _, r in cells.iterrows()}
    looped = res[~res["is_baseline"]]
    keys = ["integrator", "k", "window"] + [          # the loop fields that vary in this grid
        k for k in LOOP_KEYS if k not in ("integrator", "k", "window") and k in looped
        and looped[k].map(lambda v: "" if v is None or v != v else str(v)).nunique() > 1]
    rows = []
    for _, r in res.iterrows():
        c = by_cell.get((r["cell_id"], r["task"]))
        row = {"model": r["model_name"] or r["model"], "task": r["task"],
               "loop": "baseline" if r["is_baseline"] else config_label(r, keys),
               "_sort": (not r["is_baseline"], str(r["integrator"]), r["k"] or 0,
                         str(r["window"])),
               "acc": r["value"], "n": r["n"], "status": r["status"], "cell_id": r["cell_id"],
               "best": ""}
        for k in ("delta_pp", "ci_low_pp", "ci_high_pp", "p_mcnemar", "p_holm"):
            row[k] = c[k] if c is not None else math.nan
        if c is not None and r["status"] == "ok" and c["status"] != "ok":
            row["status"] = c["status"]              # e.g. 'baseline missing'
        rows.append(row)
    out = pd.DataFrame(rows, columns=[*SUMMARY_COLUMNS, "_sort"])
    for _, g in out[out["ci_low_pp"] > 0].groupby(["model", "task"]):
        out.loc[g["delta_pp"].idxmax(), "best"] = "*"
    out = out.sort_values(["model", "task", "_sort"], kind="stable")
    return out.drop(columns="_sort").reset_index(drop=True)


def _fmt(v, kind: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if kind == "acc":
        return f"{v:.4f}"
    if kind == "p":
        return f"{v:.3g}"
    if kind == "pp":
        return _pp(v)
    return str(v)


def rows_text(frame) -> list[list[str]]:
    head = ["model", "task", "loop", "acc", "delta pp", "95% CI", "p", "p_holm", "n", "best",
            "status"]
    rows = [head]
    for _, r in frame.iterrows():
        ci = (f"[{_pp(r['ci_low_pp'])}, {_pp(r['ci_high_pp'])}]"
              if r["ci_low_pp"] == r["ci_low_pp"] else "")
        rows.append([str(r["model"]), str(r["task"]), str(r["loop"]), _fmt(r["acc"], "acc"),
                     _fmt(r["delta_pp"], "pp"), ci, _fmt(r["p_mcnemar"], "p"),
                     _fmt(r["p_holm"], "p"), _fmt(r["n"], ""), r["best"], str(r["status"])])
    return rows


def format_summary(frame) -> str:
    """The summary as an aligned text table (what the sweep prints at its end)."""
    rows = rows_text(frame)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)


def write_summary(store: str | os.PathLike, frame, grid_id: str) -> list[Path]:
    """`<store>/summary.md` and `summary.csv`: the latest grid's summary (its id in the .md)."""
    root = Path(store)
    root.mkdir(parents=True, exist_ok=True)
    rows = rows_text(frame)
    md = [f"# Sweep summary: grid {grid_id}", "",
          "Delta = looped - baseline in percentage points on the paired documents; 95% paired "
          "bootstrap CI; p = exact McNemar; p_holm = Holm across the grid's looped cells; "
          "best = largest delta with a CI above zero, per model and task.", "",
          "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    md += ["| " + " | ".join(v.replace("|", "\\|") for v in r) + " |" for r in rows[1:]]
    (root / "summary.md").write_text("\n".join(md) + "\n")
    frame.assign(grid_id=grid_id).to_csv(root / "summary.csv", index=False)
    return [root / "summary.md", root / "summary.csv"]
