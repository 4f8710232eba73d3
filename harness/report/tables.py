"""report.tables: the report's tables, each a pure function of the store's two frames
(DataFrame -> DataFrame), and `build_tables`, which makes all of them.

    delta_table, collapse_table (+ collapse_wide), strategy_table (+ strategy_wide by K / passes),
    depth_table (+ depth_summary), moe_table (+ moe_wide), cost_table, select_then_confirm

Invariants: a failed or missing cell is never dropped: it stays a row whose `status` says so
('failed', 'oom', 'missing', 'baseline missing', 'baseline failed'), and wide views print that
word in its place. 'missing' rows are the combinations of a table's grid axes (e.g. strategy x K)
that some cell of the same panel has and this one lacks. Percentages are percentage points (pp) of
the primary metric (`value` x 100). A `best_of_grid` flag marks a number that is the maximum over
several configurations (optimistic; confirm it with `select_then_confirm`).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy.stats import norm

from .. import stats
from .common import (DEPTH_BAND, LOOP_KEYS, MISSING, MOE_MODES, MOE_ROUTINGS, OK, blank,
                     config_label, norm_value, row_mask, same_value, sort_rows, to_pp, variants,
                     with_names)
from .compare import cell_samples, compare_to_baseline, ensure_compared, sample_groups
from .reference import attach_reference, chance_of
from .render import format_table, pivot_display

def holm_column(df: pd.DataFrame, p_col: str = "p_mcnemar") -> np.ndarray:
    """Holm-adjusted p over the table's rows with status ok (the family = what the table shows)."""
    p = np.where(df["status"].to_numpy() == OK, df[p_col].to_numpy(dtype=float), np.nan)
    return stats.holm(p)


def complete_grid(df: pd.DataFrame, panel: Sequence[str], axes: Sequence[str]) -> pd.DataFrame:
    """Add a 'missing' row for each combination of `axes` values seen in a panel but absent."""
    if df.empty:
        return df
    extra = []
    for pkey, g in df.groupby(list(panel), dropna=False, sort=False):
        pkey = pkey if isinstance(pkey, tuple) else (pkey,)
        levels = [sorted({norm_value(v) for v in g[a]},
                         key=lambda v: (v is None, str(type(v)), v if v is not None else 0))
                  for a in axes]
        have = {tuple(norm_value(v) for v in r) for r in g[list(axes)].itertuples(index=False)}
        for combo in itertools.product(*levels):
            if combo not in have:
                extra.append({**dict(zip(panel, pkey)), **dict(zip(axes, combo)),
                              "status": MISSING})
    if not extra:
        return df
    return pd.concat([df, pd.DataFrame(extra)], ignore_index=True)


# ---- the delta table (vs the paper) --------------------------------------------------------------

DELTA_COLUMNS = [
    "model_name", "task", "metric", "method", "status", "config", "cell_id", "n_grid",
    "best_of_grid",
    "baseline_pp", "naive_pp", "value_pp", "delta_pp", "ci_low_pp", "ci_high_pp", "p_mcnemar",
    "p_holm", "n_paired", "n_dropped", "num_fewshot", "published_model", "published_benchmark",
    "published_shots", "published_baseline", "published_looped", "published_delta",
    "published_config", "published_source",
]


def delta_table(results: pd.DataFrame, samples: pd.DataFrame | None = None, *,
                reference: pd.DataFrame | None = None, unrun: bool = False,
                methods: Sequence[str] = ("euler", "anchored"), naive: str = "naive",
                compared: pd.DataFrame | None = None, holm_adjust: bool = True,
                n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Per model x task x method: baseline, naive, the method's accuracy, delta (pp), its paired
    CI, McNemar p (and Holm-adjusted over the table's rows), beside the published cell.

    A method with several cells for one model x task (a grid) is shown at its best delta and
    flagged `best_of_grid` (n_grid = cells it was chosen from). `naive_pp` is the naive cell with
    the chosen cell's K / window / mode / kv / decode / routing, NaN if there is none. A method that
    appears anywhere in `results` but not for a model x task gives a 'missing' row; with `unrun`,
    every published row of `reference` without a result of ours gives a 'missing' row with the
    published numbers (else published rows appear only beside the model x task we ran)."""
    cmp = with_names(ensure_compared(results, samples, compared, n_boot, confidence, seed))
    res = with_names(results)
    present = [m for m in methods if (cmp["integrator"] == m).any()] if len(cmp) else []
    pairs = list(dict.fromkeys(zip(res["model_name"], res["task"])))
    rows = []
    for model_name, task in pairs:
        here = cmp[(cmp["model_name"] == model_name) & (cmp["task"] == task)]
        bases = res[(res["model_name"] == model_name) & (res["task"] == task)
                    & res["is_baseline"].astype(bool)]
        if len(here):           # looped cells: their own baselines (by baseline_id), no other
            bases = bases[bases["cell_id"].isin(set(here["baseline_id"]))]
        base_row = bases[bases["status"] == OK].iloc[0] if (bases["status"] == OK).any() else (
            bases.iloc[0] if len(bases) else None)
        meta = {"model_name": model_name, "task": task,
                "metric": (here["metric"].dropna().iloc[0] if here["metric"].notna().any() else
                           (base_row["metric"] if base_row is not None else None)),
                "num_fewshot": norm_value(here["num_fewshot"].iloc[0]) if len(here) else (
                    norm_value(base_row["num_fewshot"]) if base_row is not None else None)}
        base_pp = (to_pp(base_row["value"]) if base_row is not None and base_row["status"] == OK
                   else math.nan)
        if not present:
            rows.append({**meta, "method": "baseline", "baseline_pp": base_pp,
                         "status": OK if base_row is not None and base_row["status"] == OK else
                         (base_row["status"] if base_row is not None else MISSING)})
            continue
        for method in present:
            cand = here[here["integrator"] == method]
            row = {**meta, "method": method, "baseline_pp": base_pp, "n_grid": len(cand)}
            if cand.empty:
                rows.append({**row, "status": MISSING, "best_of_grid": False})
                continue
            ok = cand[cand["status"] == OK]
            pick = ok.loc[ok["delta_pp"].fillna(-np.inf).idxmax()] if len(ok) else cand.iloc[0]
            row.update(status=pick["status"], config=config_label(pick), cell_id=pick["cell_id"],
                       best_of_grid=len(ok) > 1,
                       **{c: pick[c] for c in ("value_pp", "delta_pp", "ci_low_pp", "ci_high_pp",
                                               "p_mcnemar", "n_paired", "n_dropped")})
            if not blank(pick["baseline_pp"]):
                row["baseline_pp"] = pick["baseline_pp"]
            nv = here[(here["integrator"] == naive) & (here["status"] == OK)]
            for key in ("k", "window", "mode", "kv", "decode", "routing"):
                nv = nv[row_mask(same_value(v, pick[key]) for v in nv[key])]
            row["naive_pp"] = nv["value_pp"].iloc[0] if len(nv) else math.nan
            rows.append(row)
    out = pd.DataFrame(rows, columns=DELTA_COLUMNS)
    out["best_of_grid"] = out["best_of_grid"].fillna(False).astype(bool)
    out = attach_reference(out, reference, unrun=unrun)
    out["p_holm"] = holm_column(out) if holm_adjust else math.nan
    return sort_rows(out, ["model_name", "task", "method"])


# ---- collapse: accuracy vs K per strategy --------------------------------------------------------

LONG_COLUMNS = [
    "model_name", "task", "metric", "integrator", "k", "window", "window_centre", "window_width",
    "mode", "kv", "decode", "routing", "beta", "alpha", "variant", "status", "cell_id",
    "window_passes", "value_pp", "value_ci_low_pp", "value_ci_high_pp", "baseline_pp", "delta_pp",
    "ci_low_pp", "ci_high_pp", "p_mcnemar", "p_holm", "n_paired", "n_dropped", "wall_time_s",
    "routing_change_rate",
]


def _long(cmp: pd.DataFrame, panel: Sequence[str], used: Sequence[str], axes: Sequence[str],
          holm_adjust: bool, confidence: float) -> pd.DataFrame:
    df = cmp.copy()
    df["variant"] = variants(df, panel, used)
    z = float(norm.ppf(1 - (1 - confidence) / 2))
    se = df["stderr"].astype(float) * 100 if "stderr" in df.columns else np.nan
    df["value_ci_low_pp"] = df["value_pp"] - z * se
    df["value_ci_high_pp"] = df["value_pp"] + z * se
    df = complete_grid(df, [*panel, "variant"], axes)
    # a completed ('missing') row gets its panel's baseline, so plots can still draw the line
    for col in ("baseline_pp",):
        df[col] = df.groupby(list(panel), dropna=False)[col].transform(
            lambda s: s.fillna(s.dropna().iloc[0]) if s.notna().any() else s)
    for col in LONG_COLUMNS:
        if col not in df.columns:
            df[col] = math.nan
    df = df[LONG_COLUMNS].copy()
    df["p_holm"] = holm_column(df) if holm_adjust else math.nan
    return df


def collapse_table(results: pd.DataFrame, samples: pd.DataFrame | None = None, *,
                   compared: pd.DataFrame | None = None, holm_adjust: bool = True,
                   n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Accuracy vs K per strategy (long form): one row per model x task x window x mode x strategy
    (x any other loop field that varies: `variant`) x K, with the accuracy and its CI (lm-eval
    stderr, normal), the delta vs the baseline and its paired CI / p. A K that one strategy of a
    panel has and another lacks is a 'missing' row. `collapse_wide` prints it as strategy x K."""
    cmp = with_names(ensure_compared(results, samples, compared, n_boot, confidence, seed))
    panel = ["model_name", "task", "window", "mode"]
    out = _long(cmp, panel, [*panel, "integrator", "k"], ["integrator", "k"], holm_adjust,
                confidence)
    return sort_rows(out, [*panel, "variant", "integrator", "k"])


def collapse_wide(collapse: pd.DataFrame, value: str = "value_pp") -> pd.DataFrame:
    """Strategy x K grid of `value` (formatted; 'failed' / 'missing' where a cell has no number),
    with the baseline as its own column."""
    return pivot_display(collapse, ["model_name", "task", "window", "mode", "variant",
                                    "integrator"], "k",
                         value, extra={"baseline": "baseline_pp"})


# ---- strategies at equal K and at equal window passes --------------------------------------------

def strategy_table(results: pd.DataFrame, samples: pd.DataFrame | None = None, *,
                   compared: pd.DataFrame | None = None, holm_adjust: bool = True,
                   n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Every strategy's delta vs the baseline (long form, same columns as `collapse_table`) with
    its K and its window passes (evaluations of the window; 2 per step for heun / midpoint, 4 for
    rk4), ranked within equal K (`rank_at_k`) and within equal passes (`rank_at_passes`), 1 = best.
    View it with `strategy_wide(table, by='k')` or `by='window_passes'`."""
    out = collapse_table(results, samples, compared=compared, holm_adjust=holm_adjust,
                         n_boot=n_boot,
                         confidence=confidence, seed=seed)
    panel = ["model_name", "task", "window", "mode"]
    for by, col in (("k", "rank_at_k"), ("window_passes", "rank_at_passes")):
        key = out[by].map(norm_value)
        ranks = pd.Series(np.nan, index=out.index)
        ok = (out["status"] == OK) & key.notna()
        if ok.any():
            g = out[ok].assign(_b=key[ok]).groupby([*panel, "_b"], dropna=False)["delta_pp"]
            ranks[ok] = g.rank(ascending=False, method="min")
        out[col] = ranks
    return out


def strategy_wide(strategy: pd.DataFrame, by: str = "k", value: str = "delta_pp") -> pd.DataFrame:
    """Strategy x budget grid of `value` (delta in pp by default), budget = K or window passes.
    At equal passes a strategy appears only at the budgets it was run at ('' elsewhere); failed
    cells without a recorded pass count are listed under the column 'n/a'."""
    if by not in ("k", "window_passes"):
        raise ValueError(f"by must be 'k' or 'window_passes', got {by!r}")
    df = strategy.copy()
    if by == "window_passes":
        df = df[df["status"] != MISSING]
    return pivot_display(df, ["model_name", "task", "window", "mode", "variant", "integrator"],
                         by, value)


# ---- depth fraction ------------------------------------------------------------------------------

def depth_table(results: pd.DataFrame, samples: pd.DataFrame | None = None, *,
                compared: pd.DataFrame | None = None, band: tuple[float, float] = DEPTH_BAND,
                holm_adjust: bool = True, n_boot: int = 2000, confidence: float = 0.95,
                seed: int = 0) -> pd.DataFrame:
    """Delta vs window centre (depth fraction) and width, per model x task x strategy x K: one
    row per window, `in_band` = centre within the paper's best band. Failed cells keep their row
    (their centre is unknown when the window was never resolved)."""
    cmp = with_names(ensure_compared(results, samples, compared, n_boot, confidence, seed))
    panel = ["model_name", "task", "integrator", "k", "mode"]
    out = _long(cmp, panel, [*panel, "window"], [], holm_adjust, confidence)
    c = out["window_centre"].astype(float)
    out["in_band"] = (c >= band[0]) & (c <= band[1])
    return sort_rows(out, ["model_name", "task", "integrator", "k", "mode", "window_width",
                           "window_centre"])


def depth_summary(depth: pd.DataFrame, band: tuple[float, float] = DEPTH_BAND) -> pd.DataFrame:
    """Per model x task x strategy x K x width: windows run / ok / failed, how many gained, the
    best centre and its delta, the mean delta inside and outside the band."""
    rows = []
    keys = ["model_name", "task", "integrator", "k", "mode", "window_width"]
    for key, g in depth.groupby(keys, dropna=False, sort=True):
        ok = g[g["status"] == OK]
        best = ok.loc[ok["delta_pp"].idxmax()] if ok["delta_pp"].notna().any() else None
        inside = ok[ok["in_band"]]["delta_pp"]
        outside = ok[~ok["in_band"]]["delta_pp"]
        rows.append({**dict(zip(keys, key)), "n_windows": len(g), "n_ok": len(ok),
                     "n_not_ok": int((g["status"] != OK).sum()),
                     "n_positive": int((ok["delta_pp"] > 0).sum()),
                     "best_centre": best["window_centre"] if best is not None else math.nan,
                     "best_window": best["window"] if best is not None else None,
                     "best_delta_pp": best["delta_pp"] if best is not None else math.nan,
                     "mean_delta_in_band_pp": inside.mean() if len(inside) else math.nan,
                     "mean_delta_out_of_band_pp": outside.mean() if len(outside) else math.nan,
                     "band": f"{band[0]:.2f}-{band[1]:.2f}"})
    return pd.DataFrame(rows)


# ---- MoE: block vs layer x routing ---------------------------------------------------------------

def moe_table(results: pd.DataFrame, samples: pd.DataFrame | None = None, *,
              compared: pd.DataFrame | None = None, holm_adjust: bool = True,
              n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """For MoE models (those with a looped cell whose routing is recompute or freeze): one row per
    model x task x strategy x K x window x mode x routing, with the delta, its CI / p and the
    routing change rate. Each of block/layer x recompute/freeze absent in a panel is 'missing'."""
    cmp = with_names(ensure_compared(results, samples, compared, n_boot, confidence, seed))
    moe_models = set(cmp.loc[cmp["routing"].isin(MOE_ROUTINGS), "model_name"])
    cmp = cmp[cmp["model_name"].isin(moe_models)]
    if cmp.empty:
        return pd.DataFrame(columns=LONG_COLUMNS)
    panel = ["model_name", "task", "integrator", "k", "window"]
    seed_rows = [{**{p: v for p, v in zip(panel, key)}, "mode": m, "routing": r, "status": MISSING}
                 for key in {tuple(r) for r in cmp[panel].itertuples(index=False)}
                 for m in MOE_MODES for r in MOE_ROUTINGS
                 if not ((cmp[panel].apply(tuple, axis=1) == key) & (cmp["mode"] == m)
                         & (cmp["routing"] == r)).any()]
    out = _long(cmp, panel, [*panel, "mode", "routing"], [], holm_adjust, confidence)
    if seed_rows:
        extra = pd.DataFrame(seed_rows)
        extra["variant"] = ""
        out = pd.concat([out, extra.reindex(columns=out.columns)], ignore_index=True)
        out["baseline_pp"] = out.groupby(["model_name", "task"])["baseline_pp"].transform(
            lambda s: s.fillna(s.dropna().iloc[0]) if s.notna().any() else s)
        out["p_holm"] = holm_column(out) if holm_adjust else math.nan
    return sort_rows(out, [*panel, "mode", "routing"])


def moe_wide(moe: pd.DataFrame, value: str = "delta_pp") -> pd.DataFrame:
    """Model x (mode/routing) grid of `value` with the baseline column."""
    df = moe.copy()
    df["mode/routing"] = df["mode"].astype(str) + "/" + df["routing"].astype(str)
    return pivot_display(df, ["model_name", "task", "integrator", "k", "window", "variant"],
                         "mode/routing", value, extra={"baseline": "baseline_pp"})


# ---- cost ----------------------------------------------------------------------------------------

COST_COLUMNS = ["model_name", "task", "integrator", "k", "window", "mode", "kv", "decode",
                "routing",
                "variant", "status", "cell_id", "window_passes", "wall_time_s", "peak_mem_gib",
                "baseline_wall_time_s", "wall_ratio", "overhead_pct"]


def cost_table(results: pd.DataFrame) -> pd.DataFrame:
    """Wall time, window passes and peak memory per cell, baselines included (integrator
    'baseline', K 0, 0 passes), with each looped cell's wall-time ratio to its baseline and the
    overhead in percent. Wall times compare only within one device and batch size."""
    df = with_names(results)
    if df.empty:
        return pd.DataFrame(columns=COST_COLUMNS)
    base_wall = {(r["cell_id"], r["task"]): r["wall_time_s"]
                 for _, r in df[df["is_baseline"].astype(bool)].iterrows()}
    df = df.copy()
    isb = df["is_baseline"].astype(bool)
    df.loc[isb, "integrator"] = "baseline"
    df.loc[isb, "k"] = 0
    df["window_passes"] = [0 if b else p for b, p in zip(isb, df["window_passes"])]
    df["peak_mem_gib"] = df["peak_mem_bytes"].astype(float) / 2 ** 30
    df["baseline_wall_time_s"] = [base_wall.get((b, t), math.nan) if not isb_ else w
                                  for b, t, isb_, w in zip(df["baseline_id"], df["task"], isb,
                                                           df["wall_time_s"])]
    ok = df["status"] == OK
    df["wall_ratio"] = np.where(
        ok, df["wall_time_s"].astype(float) / df["baseline_wall_time_s"].astype(float), np.nan)
    df["overhead_pct"] = (df["wall_ratio"] - 1) * 100
    df["variant"] = variants(df, ["model_name", "task"], ["model_name", "task", "integrator", "k",
                                                          "window",
                                                           "mode", "kv", "decode", "routing"])
    out = df[COST_COLUMNS]
    return sort_rows(out, ["model_name", "task", "variant", "integrator", "k"])


# ---- select then confirm -------------------------------------------------------------------------

SELECT_COLUMNS = [
    "model_name", "task", "select_on", "confirm_on", "status", "n_candidates", "config", "cell_id",
    "select_delta_pp", "confirm_cell_id", "confirm_baseline_pp", "confirm_value_pp",
    "confirm_delta_pp", "confirm_ci_low_pp", "confirm_ci_high_pp", "confirm_p", "confirm_n",
    "best_of_grid_on_confirm_pp", "confirm_rank",
]


def _restrict(rows: pd.DataFrame, docs) -> pd.DataFrame:
    docs = set(docs)
    if docs and all(isinstance(d, tuple) for d in docs):
        keep = [(t, d) in docs for t, d in zip(rows["task"], rows["doc_id"])]
    else:
        keep = rows["doc_id"].isin(docs).to_numpy()
    return rows[np.asarray(keep, dtype=bool)]


def select_then_confirm(results: pd.DataFrame, samples: pd.DataFrame | None = None, *,
                        select_docs: Iterable | None = None, select_task: str | None = None,
                        confirm_task: str | None = None, candidates: Sequence[str] | None = None,
                        compared: pd.DataFrame | None = None, n_boot: int = 2000,
                        confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Choose the best configuration on one split and report it on the other.

    Document split (`select_docs`: doc_ids, or (task, doc_id) pairs): per model x task, each looped
    cell's paired delta on the selection documents picks the configuration; its delta, CI and p
    are then measured on the other documents only. Task split (`select_task`, `confirm_task`):
    per model, the best configuration on `select_task` (by delta) is looked up with the same loop
    fields on `confirm_task` ('missing' if it was not run there). `candidates` restricts the
    strategies. `best_of_grid_on_confirm_pp` is the best delta any candidate reached on the
    confirm split (what picking on the reported split would claim); `confirm_rank` is where the
    chosen one ranks there."""
    if (select_docs is None) == (select_task is None):
        raise ValueError("give either select_docs (a document split) or select_task + confirm_task")
    if select_task is not None and confirm_task is None:
        raise ValueError("select_task needs confirm_task")
    cmp = with_names(ensure_compared(results, samples, compared, n_boot, confidence, seed))
    if candidates is not None:
        cmp = cmp[cmp["integrator"].isin(list(candidates))]
    cmp = cmp.assign(config=[config_label(r) for _, r in cmp.iterrows()])
    rows = []
    if select_docs is not None:
        groups = sample_groups(samples)
        for (model_name, task), g in cmp.groupby(["model_name", "task"], sort=True):
            ok = g[g["status"] == OK]
            row = {"model_name": model_name, "task": task, "select_on": "documents in select_docs",
                   "confirm_on": "the other documents", "n_candidates": len(g)}
            scored = []
            for _, c in ok.iterrows():
                sa = cell_samples(groups, c["baseline_cell_id"], task)
                sb = cell_samples(groups, c["cell_id"], task)
                if not (len(sa) and len(sb)):
                    continue
                pair = stats.pair_samples(sa, sb)
                frame = pair.frame
                sel = _restrict(frame, select_docs)
                conf = frame.drop(index=sel.index)
                if sel.empty or conf.empty:
                    continue
                d_sel = (sel["looped"] - sel["base"]).mean() * 100
                scored.append((d_sel, c, conf))
            if not scored:
                rows.append({**row, "status": MISSING if ok.empty
                             else "no per-sample rows on both splits"})
                continue
            confirm_deltas = [(cf["looped"] - cf["base"]).mean() * 100 for _, _, cf in scored]
            best = _pick_best(scored)
            d_sel, c, conf = scored[best]
            delta, lo, hi = stats.paired_bootstrap_ci(conf["base"], conf["looped"], n_boot=n_boot,
                                                      confidence=confidence, seed=seed)
            rows.append({**row, "status": OK, "config": c["config"], "cell_id": c["cell_id"],
                         "select_delta_pp": d_sel, "confirm_cell_id": c["cell_id"],
                         "confirm_baseline_pp": conf["base"].mean() * 100,
                         "confirm_value_pp": conf["looped"].mean() * 100,
                         "confirm_delta_pp": delta * 100, "confirm_ci_low_pp": lo * 100,
                         "confirm_ci_high_pp": hi * 100,
                         "confirm_p": stats.mcnemar_exact_scores(conf["base"], conf["looped"]),
                         "confirm_n": len(conf), "best_of_grid_on_confirm_pp": max(confirm_deltas),
                         "confirm_rank": 1 + sum(d > confirm_deltas[best] for d in confirm_deltas)})
    else:
        key_cols = [k for k in LOOP_KEYS if k in cmp.columns]
        for model_name, g in cmp.groupby("model_name", sort=True):
            sel = g[(g["task"] == select_task) & (g["status"] == OK) & g["delta_pp"].notna()]
            conf_all = g[g["task"] == confirm_task]
            row = {"model_name": model_name, "task": f"{select_task} -> {confirm_task}",
                   "select_on": select_task, "confirm_on": confirm_task,
                   "n_candidates": len(g[g["task"] == select_task])}
            if sel.empty:
                rows.append({**row, "status": MISSING if conf_all.empty and row["n_candidates"] == 0
                             else f"no ok cell on {select_task}"})
                continue
            pick = sel.loc[sel.index[_pick_best([(d, r) for d, (_, r) in
                                                  zip(sel["delta_pp"], sel.iterrows())])]]
            row.update(config=pick["config"], cell_id=pick["cell_id"],
                       select_delta_pp=pick["delta_pp"])
            match = conf_all[row_mask(all(same_value(r[k], pick[k]) for k in key_cols)
                                   for _, r in conf_all.iterrows())]
            if match.empty:
                rows.append({**row, "status": MISSING})
                continue
            m = match.iloc[0]
            conf_ok = conf_all[conf_all["status"] == OK]["delta_pp"].dropna()
            rows.append({**row, "status": m["status"], "confirm_cell_id": m["cell_id"],
                         "confirm_baseline_pp": m["baseline_pp"], "confirm_value_pp": m["value_pp"],
                         "confirm_delta_pp": m["delta_pp"], "confirm_ci_low_pp": m["ci_low_pp"],
                         "confirm_ci_high_pp": m["ci_high_pp"], "confirm_p": m["p_mcnemar"],
                         "confirm_n": m["n_paired"],
                         "best_of_grid_on_confirm_pp": conf_ok.max() if len(conf_ok) else math.nan,
                         "confirm_rank": (1 + int((conf_ok > m["delta_pp"]).sum()))
                         if m["status"] == OK and not blank(m["delta_pp"]) else math.nan})
    return pd.DataFrame(rows, columns=SELECT_COLUMNS)


# ---- every looped cell, with the baseline's competence ------------------------------------------

CELL_COLUMNS = [
    "model_name", "task", "metric", "integrator", "k", "window", "window_centre", "window_width",
    "mode", "kv", "status", "baseline_pp", "baseline_ci_low_pp", "baseline_ci_high_pp",
    "chance_pp", "competence", "value_pp", "delta_pp", "ci_low_pp", "ci_high_pp", "p_mcnemar",
    "p_holm", "n_paired", "cell_id", "baseline_cell_id",
]


def cells_table(results: pd.DataFrame, samples: pd.DataFrame | None = None, *,
                compared: pd.DataFrame | None = None, holm_adjust: bool = True,
                n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """One row per looped cell x task: its accuracy, the paired delta vs its baseline with the
    CI and exact McNemar p (Holm over the whole table), and the baseline's accuracy with its
    Wilson 95% interval, the task's chance level and the mark `competent` (the baseline's interval
    lies above chance) or `near chance` (it includes chance: a delta there is no evidence of
    anything). `competence` is empty where the chance level is unknown (e.g. generation tasks)."""
    cmp = with_names(ensure_compared(results, samples, compared, n_boot, confidence, seed))
    res = with_names(results)
    n_of = {(r["cell_id"], r["task"]): r["n"] for _, r in res.iterrows()}
    rows = []
    for _, r in cmp.iterrows():
        row = {c: r.get(c, math.nan) for c in CELL_COLUMNS}
        n = n_of.get((r["baseline_cell_id"], r["task"])) or 0
        base = r["baseline_pp"] / 100 if not blank(r["baseline_pp"]) else math.nan
        lo, hi = stats.wilson_interval(base, int(n)) if n else (math.nan, math.nan)
        chance = chance_of(r["task"])
        row.update(baseline_ci_low_pp=lo * 100, baseline_ci_high_pp=hi * 100,
                   chance_pp=chance * 100,
                   competence="" if chance != chance or lo != lo else
                   ("competent" if lo > chance else "near chance"))
        rows.append(row)
    out = pd.DataFrame(rows, columns=CELL_COLUMNS)
    out["p_holm"] = holm_column(out) if holm_adjust and len(out) else math.nan
    return sort_rows(out, ["model_name", "task", "integrator", "window", "k"])


BASELINE_COLUMNS = ["model_name", "task", "metric", "n", "value_pp", "ci_low_pp", "ci_high_pp",
                    "chance_pp", "competence", "cell_id"]


def baselines_table(results: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """One row per ok baseline cell x task: its accuracy (pp) over n documents with the Wilson
    interval, the task's chance level and the mark `competent` (the interval lies above chance)
    or `near chance` (it includes chance; empty where the chance level is unknown)."""
    res = with_names(results)
    rows = []
    for _, r in res[res["is_baseline"].astype(bool) & (res["status"] == "ok")].iterrows():
        n = int(r["n"] or 0)
        lo, hi = stats.wilson_interval(float(r["value"]), n, confidence) if n else (math.nan,) * 2
        chance = chance_of(r["task"])
        rows.append({"model_name": r["model_name"], "task": r["task"], "metric": r["metric"],
                     "n": n, "value_pp": to_pp(r["value"]), "ci_low_pp": lo * 100,
                     "ci_high_pp": hi * 100, "chance_pp": chance * 100,
                     "competence": "" if chance != chance or lo != lo else
                     ("competent" if lo > chance else "near chance"), "cell_id": r["cell_id"]})
    return sort_rows(pd.DataFrame(rows, columns=BASELINE_COLUMNS), ["model_name", "task"])


# ---- a window scan: delta over window start x width, and select-then-confirm ---------------------

SCAN_COLUMNS = ["model_name", "task", "integrator", "k", "start", "width", "window",
                "window_centre", "status", "delta_pp", "ci_low_pp", "ci_high_pp", "p_mcnemar",
                "cell_id"]
SCAN_SELECT_COLUMNS = [
    "model_name", "task", "integrator", "k", "n_windows", "which", "window", "window_centre",
    "select_delta_pp", "confirm_delta_pp", "confirm_ci_low_pp", "confirm_ci_high_pp",
    "confirm_p", "confirm_n", "confirm_rank", "cell_id"]
SCAN_MIN_STARTS = 4      # a panel is a scan when it has at least this many starts, and two widths


def _pick_best(scored: list) -> int:
    """The index of the best (selection delta, cell row, ...) entry: the largest delta; ties (equal
    to 1e-9 pp, common on a few hundred items) go to the fewest window passes, then the smallest
    config label / window, so the choice never depends on the order the records were read in."""
    def key(i):
        d, c = scored[i][0], scored[i][1]
        passes = c.get("window_passes", 0)
        passes = 0 if blank(passes) else float(passes)
        return (-round(float(d), 9), passes, str(c.get("config", "")), str(c.get("window", "")))
    return min(range(len(scored)), key=key)


def scan_table(results: pd.DataFrame, samples: pd.DataFrame | None = None, *,
               compared: pd.DataFrame | None = None, n_boot: int = 2000,
               confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """The panels (model x task x strategy x K) whose windows cover several starts and widths:
    one row per window with its delta vs the baseline and paired CI (the heatmap's numbers)."""
    cmp = with_names(ensure_compared(results, samples, compared, n_boot, confidence, seed))
    if cmp.empty:
        return pd.DataFrame(columns=SCAN_COLUMNS)
    df = cmp.assign(start=[int(str(w).split(":")[0]) if ":" in str(w) else -1
                           for w in cmp["window"]],
                    width=cmp["window_width"])
    rows = []
    for key, g in df.groupby(["model_name", "task", "integrator", "k"], sort=True):
        if g["start"].nunique() < SCAN_MIN_STARTS or g["width"].nunique() < 2:
            continue
        for _, r in g.iterrows():
            rows.append({c: r.get(c, math.nan) for c in SCAN_COLUMNS})
    return sort_rows(pd.DataFrame(rows, columns=SCAN_COLUMNS),
                     ["model_name", "task", "integrator", "k", "width", "start"])


def scan_select(scan: pd.DataFrame, samples: pd.DataFrame, select_docs: Iterable, *,
                rule_centre: float = 0.5, n_boot: int = 2000, confidence: float = 0.95,
                seed: int = 0, compared: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per scan panel: the window with the best delta on the selection documents, and its delta,
    CI and p on the other documents (the confirmed number to report); beside it, on the same
    confirmation documents, the depth rule's window (the panel's window whose centre is nearest
    `rule_centre`, the widest of ties; the rule picks it without looking at any result) and the
    best window of the confirmation half (what choosing on the reported data would claim)."""
    groups = sample_groups(samples)
    rows = []
    base_of = {}
    if compared is not None:
        base_of = dict(zip(compared["cell_id"], compared["baseline_cell_id"]))
    for key, g in scan.groupby(["model_name", "task", "integrator", "k"], sort=True):
        ok = g[g["status"] == OK]
        scored = []
        for _, c in ok.iterrows():
            sa = cell_samples(groups, base_of.get(c["cell_id"]), c["task"])
            sb = cell_samples(groups, c["cell_id"], c["task"])
            if not (len(sa) and len(sb)):
                continue
            frame = stats.pair_samples(sa, sb).frame
            sel = _restrict(frame, select_docs)
            conf = frame.drop(index=sel.index)
            if sel.empty or conf.empty:
                continue
            scored.append(((sel["looped"] - sel["base"]).mean() * 100, c, conf))
        if not scored:
            continue
        confirm = [(cf["looped"] - cf["base"]).mean() * 100 for _, _, cf in scored]
        best = _pick_best(scored)
        rule = min(range(len(scored)), key=lambda i: (abs(scored[i][1]["window_centre"]
                                                          - rule_centre),
                                                      -scored[i][1]["width"]))
        top = max(range(len(scored)), key=lambda i: confirm[i])
        for which, i in (("selected on half A", best), ("depth rule", rule),
                         ("best on half B (optimistic)", top)):
            d_sel, c, conf = scored[i]
            delta, lo, hi = stats.paired_bootstrap_ci(conf["base"], conf["looped"], n_boot=n_boot,
                                                      confidence=confidence, seed=seed)
            rows.append({"model_name": key[0], "task": key[1], "integrator": key[2], "k": key[3],
                         "n_windows": len(scored), "which": which, "window": c["window"],
                         "window_centre": c["window_centre"], "select_delta_pp": d_sel,
                         "confirm_delta_pp": delta * 100, "confirm_ci_low_pp": lo * 100,
                         "confirm_ci_high_pp": hi * 100,
                         "confirm_p": stats.mcnemar_exact_scores(conf["base"], conf["looped"]),
                         "confirm_n": len(conf),
                         "confirm_rank": 1 + sum(d > confirm[i] for d in confirm),
                         "cell_id": c["cell_id"]})
    return pd.DataFrame(rows, columns=SCAN_SELECT_COLUMNS)


# ---- all tables at once --------------------------------------------------------------------------

@dataclass
class ReportTable:
    """One table of the report: `frame` (numbers, for CSV), `display` (strings, for markdown /
    LaTeX), or `skipped` with the reason when its inputs are absent."""
    name: str
    title: str
    frame: pd.DataFrame | None = None
    display: pd.DataFrame | None = None
    skipped: str | None = None


_HIDE = ("cell_id", "baseline_cell_id", "confirm_cell_id", "alpha", "beta", "window_centre",
         "routing_change_rate", "value_ci_low_pp", "value_ci_high_pp", "wall_time_s",
         "published_model", "published_benchmark",
         "published_source", "metric")


def build_tables(results: pd.DataFrame, samples: pd.DataFrame | None = None, *,
                 reference: pd.DataFrame | None = None, unrun: bool = False,
                 holm_adjust: bool = True, select_docs: Iterable | None = None,
                 select_fraction: float = 0.5,
                 n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> list[ReportTable]:
    """Every table of the report from the store's two frames. A table whose inputs are absent is
    returned with `skipped` set (e.g. no looped cells, no MoE model, no window grid). Select-then-
    confirm uses `select_docs`, or a seeded random half of each task's documents."""
    tables: list[ReportTable] = []
    if results is None or results.empty:
        reason = "no results in the store"
        for name, title in _TITLES.items():
            tables.append(ReportTable(name, title, skipped=reason))
        return tables
    cmp = compare_to_baseline(results, samples, n_boot=n_boot, confidence=confidence, seed=seed)
    kw = dict(compared=cmp, holm_adjust=holm_adjust, n_boot=n_boot, confidence=confidence,
              seed=seed)
    has_looped = len(cmp) > 0

    def add(name, frame, display, skipped=None):
        tables.append(ReportTable(name, _TITLES[name], frame, display, skipped))

    dt = delta_table(results, samples, reference=reference, unrun=unrun, **kw)
    add("deltas", dt, format_table(dt, drop=_HIDE))
    if not has_looped:
        for name in ("collapse", "strategy_k", "strategy_passes", "depth", "depth_summary", "moe",
                     "select_confirm"):
            add(name, None, None, "no looped cells in the store")
    else:
        col = collapse_table(results, samples, **kw)
        multi_k = col.groupby(["model_name", "task", "integrator"])["k"].nunique().max() > 1
        add("collapse", col, collapse_wide(col)) if multi_k else add(
            "collapse", None, None, "no strategy was run at more than one K")
        st = strategy_table(results, samples, **kw)
        n_strat = st.groupby(["model_name", "task"])["integrator"].nunique().max()
        if n_strat > 1:
            add("strategy_k", st, strategy_wide(st, "k"))
            add("strategy_passes", st, strategy_wide(st, "window_passes"))
        else:
            for name in ("strategy_k", "strategy_passes"):
                add(name, None, None, "only one strategy per model x task")
        dp = depth_table(results, samples, **kw)
        n_win = dp[dp["window_centre"].notna()].groupby(["model_name", "task", "integrator", "k"])[
            "window"].nunique()
        if len(n_win) and n_win.max() > 1:
            add("depth", dp, format_table(dp, drop=_HIDE))
            ds = depth_summary(dp)
            add("depth_summary", ds, format_table(ds))
        else:
            for name in ("depth", "depth_summary"):
                add(name, None, None, "no model x task was run at more than one window")
        mo = moe_table(results, samples, **kw)
        if len(mo):
            add("moe", mo, moe_wide(mo))
        else:
            add("moe", None, None, "no MoE cell (routing recompute / freeze) in the store")
        sel = _select_split(results, samples, cmp, select_docs, select_fraction, seed)
        if sel is None:
            add("select_confirm", None, None,
                "no per-sample rows or no model x task with more than one configuration")
        else:
            stc = select_then_confirm(results, samples, select_docs=sel, compared=cmp,
                                      n_boot=n_boot,
                                      confidence=confidence, seed=seed)
            add("select_confirm", stc, format_table(stc, drop=("cell_id", "confirm_cell_id")))
    if has_looped:
        cl = cells_table(results, samples, **kw)
        add("cells", cl, format_table(cl, drop=("cell_id", "baseline_cell_id", "window_centre",
                                                "metric"), ci_pairs=_CELL_CIS))
        sc = scan_table(results, samples, compared=cmp, n_boot=n_boot, confidence=confidence,
                        seed=seed)
        sel_docs = _select_split(results, samples, cmp, select_docs, select_fraction, seed)
        if len(sc) and sel_docs is not None:
            add("scan", sc, format_table(sc, drop=("cell_id",)))
            ss = scan_select(sc, samples, sel_docs, n_boot=n_boot, confidence=confidence,
                             seed=seed, compared=cmp)
            add("scan_select", ss, format_table(ss, drop=("cell_id",)))
        else:
            for name in ("scan", "scan_select"):
                add(name, None, None, "no window scan (a strategy x K over several window "
                                      "starts and widths)")
    else:
        for name in ("cells", "scan", "scan_select"):
            add(name, None, None, "no looped cells in the store")
    bt = baselines_table(results)
    if len(bt):
        add("baselines", bt, format_table(bt, drop=("cell_id",), ci_pairs=_BASE_CIS))
    else:
        add("baselines", None, None, "no ok baseline cell")
    ct = cost_table(results)
    if ct["wall_time_s"].notna().any():
        add("cost", ct, format_table(ct, drop=("cell_id",)))
    else:
        add("cost", None, None, "no wall times recorded")
    return tables


def _select_split(results, samples, cmp, select_docs, fraction, seed):
    if select_docs is not None:
        return set(select_docs)
    if samples is None or samples.empty or cmp.empty:
        return None
    if cmp[cmp["status"] == OK].groupby(["model_name", "task"]).size().max() < 2:
        return None
    keys = set(zip(samples["task"], samples["doc_id"]))
    sel, _ = stats.split_doc_ids(keys, fraction=fraction, seed=seed)
    return sel


_TITLES = {
    "deltas": "Baseline -> looped per model x benchmark, beside the published values",
    "collapse": "Collapse: accuracy (pp) vs K per strategy",
    "strategy_k": "Strategies at equal K: delta vs baseline (pp)",
    "strategy_passes": "Strategies at equal window passes: delta vs baseline (pp)",
    "depth": "Depth fraction: delta vs window centre and width",
    "depth_summary": "Depth fraction summary per model and width",
    "moe": "MoE: block vs layer mode x routing, delta vs baseline (pp)",
    "select_confirm": "Select on one split, confirm on the other",
    "cost": "Cost: wall time and window passes vs K",
    "cells": "Every looped cell vs its baseline, with the baseline's competence",
    "scan": "Window scan: delta vs window start and width",
    "scan_select": "Window scan: select on half A, confirm on half B, beside the depth rule",
    "baselines": "Baselines: accuracy with its 95% Wilson interval, beside the chance level",
}
_BASE_CIS = (("ci_low_pp", "ci_high_pp", "ci95_pp"),)
_CELL_CIS = (("ci_low_pp", "ci_high_pp", "ci95_pp"),
             ("baseline_ci_low_pp", "baseline_ci_high_pp", "baseline_ci95_pp"))
TABLE_NAMES: tuple[str, ...] = tuple(_TITLES)
