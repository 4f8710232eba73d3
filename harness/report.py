"""report: the paper-layout tables, as pure functions of the store's frames (DataFrame -> DataFrame).

    results, samples = store.load_results(root), store.load_samples(root)
    cmp = compare_to_baseline(results, samples)            # one row per looped cell x task
    delta_table(results, samples, compared=cmp, reference=load_reference())
    collapse_table(results, samples, compared=cmp)         # accuracy vs K per strategy
    tables = build_tables(results, samples, reference=load_reference())   # all of them

Owns: matching each looped cell to its baseline (its `baseline_id`, else the baseline of the same
model / task / shots / limit / batch size / seed), the paired comparison of every looped cell
(harness.stats: delta in pp, paired-bootstrap CI, exact McNemar p, Holm within a table), the
tables (deltas vs the published values, collapse, strategies at equal K and at equal window passes,
depth fraction, MoE block vs layer x routing, cost), select-then-confirm, and plain-text renderers
(markdown, LaTeX) for them. No file I/O except `load_reference()`, which reads the packaged
`harness/data/reference.csv`; scripts/make_report.py writes the files.

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
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy.stats import norm

from . import stats

LOOP_KEYS: tuple[str, ...] = ("integrator", "k", "window", "mode", "kv", "decode", "routing",
                              "beta", "alpha")
OK, MISSING, FAILED = "ok", "missing", "failed"
DEPTH_BAND: tuple[float, float] = (0.43, 0.71)       # the paper's best window centres (> 1.7B)
MOE_MODES: tuple[str, ...] = ("block", "layer")
MOE_ROUTINGS: tuple[str, ...] = ("recompute", "freeze")

# Our names -> the paper's row names in reference.csv (harness/data/reference.README.md).
MODEL_TO_REFERENCE: dict[str, str] = {
    "qwen3-4b": "Qwen3-4B-Instruct", "Qwen/Qwen3-4B-Instruct-2507": "Qwen3-4B-Instruct",
    "llama-3.2-1b": "Llama-3.2-1B-Instruct", "meta-llama/Llama-3.2-1B-Instruct": "Llama-3.2-1B-Instruct",
    "llama-3.2-3b": "Llama-3.2-3B-Instruct", "meta-llama/Llama-3.2-3B-Instruct": "Llama-3.2-3B-Instruct",
    "qwen1.5-moe-a2.7b": "Qwen1.5-MoE-A2.7B", "Qwen/Qwen1.5-MoE-A2.7B": "Qwen1.5-MoE-A2.7B",
    "moonlight-16b-a3b": "Moonlight-16B-A3B-Instruct",
    "moonshotai/Moonlight-16B-A3B-Instruct": "Moonlight-16B-A3B-Instruct",
    "deepseek-v2-lite": "DeepSeek-V2-Lite-Chat", "deepseek-ai/DeepSeek-V2-Lite-Chat": "DeepSeek-V2-Lite-Chat",
    "qwen3-30b-a3b": "Qwen3-30B-A3B-Instruct", "qwen3-30b-a3b-code": "Qwen3-30B-A3B-Instruct",
    "Qwen/Qwen3-30B-A3B-Instruct-2507": "Qwen3-30B-A3B-Instruct",
}
TASK_TO_REFERENCE: dict[str, str] = {
    "mmlu_pro": "MMLU-Pro", "gpqa_main_zeroshot": "GPQA-Main", "gpqa_main": "GPQA-Main",
    "commonsense_qa": "CommonsenseQA", "csqa": "CommonsenseQA", "arc_challenge": "ARC-Challenge",
    "openbookqa": "OpenBookQA",
}
# The names a published row without any result of ours is shown under (our preset / lm-eval task).
_REFERENCE_MODEL_PRESET = {v: k for k, v in reversed(list(MODEL_TO_REFERENCE.items())) if "/" not in k}
_REFERENCE_TASK = {"MMLU-Pro": "mmlu_pro", "GPQA-Main": "gpqa_main_zeroshot",
                   "CommonsenseQA": "commonsense_qa", "ARC-Challenge": "arc_challenge",
                   "OpenBookQA": "openbookqa"}


# ---- small helpers -------------------------------------------------------------------------------
def reference_path() -> Path:
    return Path(__file__).parent / "data" / "reference.csv"


def load_reference(path: str | Path | None = None) -> pd.DataFrame:
    """The published cells (harness/data/reference.csv; its README cites the paper)."""
    return pd.read_csv(path or reference_path())


def _blank(x) -> bool:
    if x is None:
        return True
    try:
        return bool(pd.isna(x))
    except (TypeError, ValueError):
        return False


def _same_value(x, y) -> bool:
    if _blank(x) and _blank(y):
        return True
    if _blank(x) or _blank(y):
        return False
    try:
        return float(x) == float(y)
    except (TypeError, ValueError):
        return str(x) == str(y)


def _norm(v):
    """A hashable, NaN-free key for grouping (None for blanks; ints for integral floats)."""
    if _blank(v):
        return None
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return int(v)
    if isinstance(v, np.integer):
        return int(v)
    return v


def _with_names(results: pd.DataFrame) -> pd.DataFrame:
    """Ensure model_name (falls back to model) and task labels exist and are strings."""
    df = results.copy()
    if "model_name" not in df.columns:
        df["model_name"] = None
    df["model_name"] = [m if not _blank(m) else (mm if not _blank(mm) else "?")
                        for m, mm in zip(df["model_name"], df.get("model", df["model_name"]))]
    df["task"] = [t if not _blank(t) else (tn if not _blank(tn) else "?")
                  for t, tn in zip(df["task"], df.get("task_name", df["task"]))]
    return df


def config_label(row: pd.Series | dict, keys: Sequence[str] = LOOP_KEYS) -> str:
    """'euler k=3 window=15:19 mode=block ...': a looped row's loop fields, blanks left out."""
    if row.get("is_baseline") is True:
        return "baseline"
    parts = []
    for key in keys:
        v = _norm(row.get(key))
        if v is None:
            continue
        parts.append(str(v) if key == "integrator" else f"{key}={v}")
    return " ".join(parts)


def _variants(df: pd.DataFrame, panel: Sequence[str], used: Sequence[str]) -> pd.Series:
    """Per row, the loop fields outside `used` that vary within its panel ('' when none vary):
    tells apart rows that a table's own keys would otherwise merge."""
    out = pd.Series([""] * len(df), index=df.index, dtype=object)
    free = [k for k in LOOP_KEYS if k not in used and k in df.columns]
    if not free or df.empty:
        return out
    for _, g in df.groupby(list(panel), dropna=False, sort=False):
        vary = [k for k in free if g[k].map(_norm).nunique(dropna=True) > 1]
        if vary:
            out.loc[g.index] = [" ".join(f"{k}={_norm(r[k])}" for k in vary if _norm(r[k]) is not None)
                                for _, r in g.iterrows()]
    return out


def _mask(flags: Iterable[bool]) -> np.ndarray:
    """A boolean row mask (a plain empty list would select columns instead)."""
    return np.fromiter((bool(f) for f in flags), dtype=bool)


def _pp(x) -> float:
    return float(x) * 100.0 if not _blank(x) else math.nan


def _holm_column(df: pd.DataFrame, p_col: str = "p_mcnemar") -> np.ndarray:
    """Holm-adjusted p over the table's rows with status ok (the family = what the table shows)."""
    p = np.where(df["status"].to_numpy() == OK, df[p_col].to_numpy(dtype=float), np.nan)
    return stats.holm(p)


# ---- the comparison of every looped cell with its baseline --------------------------------------
COMPARE_COLUMNS = [
    "baseline_cell_id", "baseline_status", "value_pp", "baseline_pp", "delta_pp", "ci_low_pp",
    "ci_high_pp", "p_mcnemar", "n_paired", "n_dropped", "dropped", "n_up", "n_down", "note",
]


def _sample_groups(samples: pd.DataFrame | None) -> dict:
    if samples is None or samples.empty:
        return {}
    return {cid: g for cid, g in samples.groupby("cell_id", sort=False)}


def _cell_samples(groups: dict, cell_id, task) -> pd.DataFrame:
    """The cell's rows for `task`; for a group task without rows of its own (mmlu_pro), the rows
    of its subtasks (`task_*`), paired on (task, doc_id)."""
    g = groups.get(cell_id)
    if g is None:
        return pd.DataFrame(columns=stats.HASH_FIELDS + ("doc_id", "task", "score"))
    own = g[g["task"] == task]
    if len(own):
        return own
    return g[g["task"].astype(str).str.startswith(f"{task}_")]


def _find_baseline(row: pd.Series, by_id: dict, baselines: pd.DataFrame):
    hit = by_id.get((row.get("baseline_id"), row["task"]))
    if hit is not None:
        return hit
    if baselines.empty:
        return None
    same = np.ones(len(baselines), dtype=bool)
    for col in ("model", "model_name", "task", "num_fewshot", "limit", "batch_size", "seed"):
        if col in baselines.columns:
            same &= np.array([_same_value(v, row.get(col)) for v in baselines[col]])
    cand = baselines[same]
    if cand.empty:
        return None
    ok = cand[cand["status"] == OK]
    return (ok if len(ok) else cand).iloc[0]


def compare_to_baseline(results: pd.DataFrame, samples: pd.DataFrame | None = None, *,
                        n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """One row per looped cell x task of `results` (all its columns) plus COMPARE_COLUMNS:
    value / baseline / delta in pp, the paired-bootstrap CI of the delta and McNemar's exact p on
    the documents both cells share (stats.pair_samples), and `status`: the looped cell's own
    status if not ok, else 'baseline missing' / 'baseline failed', else ok. Without per-sample
    rows the delta is the difference of the two metric values and the CI / p are NaN (`note`)."""
    df = _with_names(results)
    looped = df[~df["is_baseline"].astype(bool)].copy()
    baselines = df[df["is_baseline"].astype(bool)]
    by_id = {(r["cell_id"], r["task"]): r for _, r in baselines.iterrows()}
    groups = _sample_groups(samples)
    rows = []
    for idx, row in looped.iterrows():
        out = dict.fromkeys(COMPARE_COLUMNS, math.nan)
        out.update(dropped="", note="", baseline_cell_id="", baseline_status=MISSING)
        b = _find_baseline(row, by_id, baselines)
        status = row["status"] if row["status"] != OK else OK
        if b is not None:
            out["baseline_cell_id"], out["baseline_status"] = b["cell_id"], b["status"]
            out["baseline_pp"] = _pp(b["value"])
        out["value_pp"] = _pp(row["value"])
        if status == OK:
            if b is None:
                status = "baseline missing"
            elif b["status"] != OK:
                status = "baseline failed"
        if status == OK:
            sa = _cell_samples(groups, b["cell_id"], row["task"])
            sb = _cell_samples(groups, row["cell_id"], row["task"])
            if len(sa) and len(sb):
                c = stats.paired_comparison(sa, sb, n_boot=n_boot, confidence=confidence, seed=seed)
                out.update(delta_pp=c["delta"] * 100, ci_low_pp=c["ci_low"] * 100,
                           ci_high_pp=c["ci_high"] * 100, p_mcnemar=c["p_mcnemar"],
                           n_paired=c["n_paired"], n_dropped=c["n_dropped"], dropped=c["dropped"],
                           n_up=c["n_up"], n_down=c["n_down"])
                if c["n_paired"] == 0:
                    out["note"] = "no pairable documents"
            else:
                out["delta_pp"] = out["value_pp"] - out["baseline_pp"]
                out["note"] = "no per-sample rows: delta from metric values, no CI / p"
        rows.append(dict(out, status=status, _idx=idx))
    add = pd.DataFrame(rows, columns=[*COMPARE_COLUMNS, "status", "_idx"]).set_index("_idx")
    looped = looped.drop(columns=["status"]).join(add)
    looped.index.name = None
    return looped.reset_index(drop=True)


def _compared(results, samples, compared, n_boot, confidence, seed) -> pd.DataFrame:
    if compared is not None:
        return compared
    return compare_to_baseline(results, samples, n_boot=n_boot, confidence=confidence, seed=seed)


def _complete(df: pd.DataFrame, panel: Sequence[str], axes: Sequence[str]) -> pd.DataFrame:
    """Add a 'missing' row for each combination of `axes` values seen in a panel but absent."""
    if df.empty:
        return df
    extra = []
    for pkey, g in df.groupby(list(panel), dropna=False, sort=False):
        pkey = pkey if isinstance(pkey, tuple) else (pkey,)
        levels = [sorted({_norm(v) for v in g[a]}, key=lambda v: (v is None, str(type(v)), v if v is not None else 0))
                  for a in axes]
        have = {tuple(_norm(v) for v in r) for r in g[list(axes)].itertuples(index=False)}
        for combo in itertools.product(*levels):
            if combo not in have:
                extra.append({**dict(zip(panel, pkey)), **dict(zip(axes, combo)), "status": MISSING})
    if not extra:
        return df
    return pd.concat([df, pd.DataFrame(extra)], ignore_index=True)


def _sort(df: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    keys = [k for k in keys if k in df.columns]
    if df.empty or not keys:
        return df.reset_index(drop=True)
    order = df[keys].map(lambda v: (1, "") if _blank(v) else (0, v) if isinstance(v, (int, float, np.number))
                         else (0, str(v)))
    idx = sorted(range(len(df)), key=lambda i: tuple(order.iloc[i]))
    return df.iloc[idx].reset_index(drop=True)


# ---- the delta table (vs the paper) -----------------------------------------------------------------
DELTA_COLUMNS = [
    "model_name", "task", "metric", "method", "status", "config", "cell_id", "n_grid", "best_of_grid",
    "baseline_pp", "naive_pp", "value_pp", "delta_pp", "ci_low_pp", "ci_high_pp", "p_mcnemar",
    "p_holm", "n_paired", "n_dropped", "num_fewshot", "published_model", "published_benchmark",
    "published_shots", "published_baseline", "published_looped", "published_delta",
    "published_config", "published_source",
]


def delta_table(results: pd.DataFrame, samples: pd.DataFrame | None = None, *,
                reference: pd.DataFrame | None = None, methods: Sequence[str] = ("euler", "anchored"),
                naive: str = "naive", compared: pd.DataFrame | None = None, holm_adjust: bool = True,
                n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Per model x task x method: baseline, naive, the method's accuracy, delta (pp), its paired
    CI, McNemar p (and Holm-adjusted over the table's rows), beside the published cell.

    A method with several cells for one model x task (a grid) is shown at its best delta and
    flagged `best_of_grid` (n_grid = cells it was chosen from). `naive_pp` is the naive cell with
    the chosen cell's K / window / mode / kv / decode / routing, NaN if there is none. A method that
    appears anywhere in `results` but not for a model x task gives a 'missing' row; every published
    row of `reference` without a result of ours gives a 'missing' row with the published numbers."""
    cmp = _with_names(_compared(results, samples, compared, n_boot, confidence, seed))
    res = _with_names(results)
    present = [m for m in methods if (cmp["integrator"] == m).any()] if len(cmp) else []
    pairs = list(dict.fromkeys(zip(res["model_name"], res["task"])))
    rows = []
    for model_name, task in pairs:
        here = cmp[(cmp["model_name"] == model_name) & (cmp["task"] == task)]
        bases = res[(res["model_name"] == model_name) & (res["task"] == task) & res["is_baseline"].astype(bool)]
        base_row = bases[bases["status"] == OK].iloc[0] if (bases["status"] == OK).any() else (
            bases.iloc[0] if len(bases) else None)
        meta = {"model_name": model_name, "task": task,
                "metric": (here["metric"].dropna().iloc[0] if here["metric"].notna().any() else
                           (base_row["metric"] if base_row is not None else None)),
                "num_fewshot": _norm(here["num_fewshot"].iloc[0]) if len(here) else (
                    _norm(base_row["num_fewshot"]) if base_row is not None else None)}
        base_pp = _pp(base_row["value"]) if base_row is not None and base_row["status"] == OK else math.nan
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
            if not _blank(pick["baseline_pp"]):
                row["baseline_pp"] = pick["baseline_pp"]
            nv = here[(here["integrator"] == naive) & (here["status"] == OK)]
            for key in ("k", "window", "mode", "kv", "decode", "routing"):
                nv = nv[_mask(_same_value(v, pick[key]) for v in nv[key])]
            row["naive_pp"] = nv["value_pp"].iloc[0] if len(nv) else math.nan
            rows.append(row)
    out = pd.DataFrame(rows, columns=DELTA_COLUMNS)
    out["best_of_grid"] = out["best_of_grid"].fillna(False).astype(bool)
    out = _attach_reference(out, reference)
    out["p_holm"] = _holm_column(out) if holm_adjust else math.nan
    return _sort(out, ["model_name", "task", "method"])


def _attach_reference(out: pd.DataFrame, reference: pd.DataFrame | None) -> pd.DataFrame:
    if reference is None or reference.empty:
        return out
    ref = {(r["model"], r["benchmark"]): r for _, r in reference.iterrows()}
    pub = [c for c in out.columns if c.startswith("published_")]
    out[pub] = out[pub].astype(object)
    used = set()
    for i, r in out.iterrows():
        key = (MODEL_TO_REFERENCE.get(r["model_name"]), TASK_TO_REFERENCE.get(r["task"]))
        hit = ref.get(key)
        if hit is None:
            continue
        used.add(key)
        out.loc[i, ["published_model", "published_benchmark", "published_shots", "published_baseline",
                    "published_looped", "published_delta", "published_config", "published_source"]] = [
            hit["model"], hit["benchmark"], hit["shots"], hit["baseline"], hit["looped"],
            hit["delta_pp"], hit["config_known"], hit["source"]]
    extra = []
    for key, hit in ref.items():
        if key in used:
            continue
        extra.append({"model_name": _REFERENCE_MODEL_PRESET.get(hit["model"], hit["model"]),
                      "task": _REFERENCE_TASK.get(hit["benchmark"], hit["benchmark"]),
                      "method": "-", "status": MISSING, "best_of_grid": False,
                      "num_fewshot": hit["shots"], "published_model": hit["model"],
                      "published_benchmark": hit["benchmark"], "published_shots": hit["shots"],
                      "published_baseline": hit["baseline"], "published_looped": hit["looped"],
                      "published_delta": hit["delta_pp"], "published_config": hit["config_known"],
                      "published_source": hit["source"]})
    if extra:
        out = pd.concat([out, pd.DataFrame(extra, columns=out.columns)], ignore_index=True)
    return out


# ---- collapse: accuracy vs K per strategy -----------------------------------------------------------
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
    df["variant"] = _variants(df, panel, used)
    z = float(norm.ppf(1 - (1 - confidence) / 2))
    se = df["stderr"].astype(float) * 100 if "stderr" in df.columns else np.nan
    df["value_ci_low_pp"] = df["value_pp"] - z * se
    df["value_ci_high_pp"] = df["value_pp"] + z * se
    df = _complete(df, [*panel, "variant"], axes)
    # a completed ('missing') row gets its panel's baseline, so plots can still draw the line
    for col in ("baseline_pp",):
        df[col] = df.groupby(list(panel), dropna=False)[col].transform(
            lambda s: s.fillna(s.dropna().iloc[0]) if s.notna().any() else s)
    for col in LONG_COLUMNS:
        if col not in df.columns:
            df[col] = math.nan
    df = df[LONG_COLUMNS].copy()
    df["p_holm"] = _holm_column(df) if holm_adjust else math.nan
    return df


def collapse_table(results: pd.DataFrame, samples: pd.DataFrame | None = None, *,
                   compared: pd.DataFrame | None = None, holm_adjust: bool = True,
                   n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Accuracy vs K per strategy (long form): one row per model x task x window x mode x strategy
    (x any other loop field that varies: `variant`) x K, with the accuracy and its CI (lm-eval
    stderr, normal), the delta vs the baseline and its paired CI / p. A K that one strategy of a
    panel has and another lacks is a 'missing' row. `collapse_wide` prints it as strategy x K."""
    cmp = _with_names(_compared(results, samples, compared, n_boot, confidence, seed))
    panel = ["model_name", "task", "window", "mode"]
    out = _long(cmp, panel, [*panel, "integrator", "k"], ["integrator", "k"], holm_adjust, confidence)
    return _sort(out, [*panel, "variant", "integrator", "k"])


def collapse_wide(collapse: pd.DataFrame, value: str = "value_pp") -> pd.DataFrame:
    """Strategy x K grid of `value` (formatted; 'failed' / 'missing' where a cell has no number),
    with the baseline as its own column."""
    return pivot_display(collapse, ["model_name", "task", "window", "mode", "variant", "integrator"], "k",
                         value, extra={"baseline": "baseline_pp"})


# ---- strategies at equal K and at equal window passes -----------------------------------------------
def strategy_table(results: pd.DataFrame, samples: pd.DataFrame | None = None, *,
                   compared: pd.DataFrame | None = None, holm_adjust: bool = True,
                   n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Every strategy's delta vs the baseline (long form, same columns as `collapse_table`) with
    its K and its window passes (evaluations of the window; 2 per step for heun / midpoint, 4 for
    rk4), ranked within equal K (`rank_at_k`) and within equal passes (`rank_at_passes`), 1 = best.
    View it with `strategy_wide(table, by='k')` or `by='window_passes'`."""
    out = collapse_table(results, samples, compared=compared, holm_adjust=holm_adjust, n_boot=n_boot,
                         confidence=confidence, seed=seed)
    panel = ["model_name", "task", "window", "mode"]
    for by, col in (("k", "rank_at_k"), ("window_passes", "rank_at_passes")):
        key = out[by].map(_norm)
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
    return pivot_display(df, ["model_name", "task", "window", "mode", "variant", "integrator"], by, value)


# ---- depth fraction ------------------------------------------------------------------------------------
def depth_table(results: pd.DataFrame, samples: pd.DataFrame | None = None, *,
                compared: pd.DataFrame | None = None, band: tuple[float, float] = DEPTH_BAND,
                holm_adjust: bool = True, n_boot: int = 2000, confidence: float = 0.95,
                seed: int = 0) -> pd.DataFrame:
    """Delta vs window centre (depth fraction) and width, per model x task x strategy x K: one
    row per window, `in_band` = centre within the paper's best band. Failed cells keep their row
    (their centre is unknown when the window was never resolved)."""
    cmp = _with_names(_compared(results, samples, compared, n_boot, confidence, seed))
    panel = ["model_name", "task", "integrator", "k", "mode"]
    out = _long(cmp, panel, [*panel, "window"], [], holm_adjust, confidence)
    c = out["window_centre"].astype(float)
    out["in_band"] = (c >= band[0]) & (c <= band[1])
    return _sort(out, ["model_name", "task", "integrator", "k", "mode", "window_width", "window_centre"])


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


# ---- MoE: block vs layer x routing ------------------------------------------------------------------------
def moe_table(results: pd.DataFrame, samples: pd.DataFrame | None = None, *,
              compared: pd.DataFrame | None = None, holm_adjust: bool = True,
              n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """For MoE models (those with a looped cell whose routing is recompute or freeze): one row per
    model x task x strategy x K x window x mode x routing, with the delta, its CI / p and the
    routing change rate. Each of block/layer x recompute/freeze absent in a panel is 'missing'."""
    cmp = _with_names(_compared(results, samples, compared, n_boot, confidence, seed))
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
        out["p_holm"] = _holm_column(out) if holm_adjust else math.nan
    return _sort(out, [*panel, "mode", "routing"])


def moe_wide(moe: pd.DataFrame, value: str = "delta_pp") -> pd.DataFrame:
    """Model x (mode/routing) grid of `value` with the baseline column."""
    df = moe.copy()
    df["mode/routing"] = df["mode"].astype(str) + "/" + df["routing"].astype(str)
    return pivot_display(df, ["model_name", "task", "integrator", "k", "window", "variant"],
                         "mode/routing", value, extra={"baseline": "baseline_pp"})


# ---- cost -------------------------------------------------------------------------------------------------
COST_COLUMNS = ["model_name", "task", "integrator", "k", "window", "mode", "kv", "decode", "routing",
                "variant", "status", "cell_id", "window_passes", "wall_time_s", "peak_mem_gib",
                "baseline_wall_time_s", "wall_ratio", "overhead_pct"]


def cost_table(results: pd.DataFrame) -> pd.DataFrame:
    """Wall time, window passes and peak memory per cell, baselines included (integrator
    'baseline', K 0, 0 passes), with each looped cell's wall-time ratio to its baseline and the
    overhead in percent. Wall times compare only within one device and batch size."""
    df = _with_names(results)
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
                                  for b, t, isb_, w in zip(df["baseline_id"], df["task"], isb, df["wall_time_s"])]
    ok = df["status"] == OK
    df["wall_ratio"] = np.where(ok, df["wall_time_s"].astype(float) / df["baseline_wall_time_s"].astype(float), np.nan)
    df["overhead_pct"] = (df["wall_ratio"] - 1) * 100
    df["variant"] = _variants(df, ["model_name", "task"], ["model_name", "task", "integrator", "k", "window",
                                                           "mode", "kv", "decode", "routing"])
    out = df[COST_COLUMNS]
    return _sort(out, ["model_name", "task", "variant", "integrator", "k"])


# ---- select then confirm ---------------------------------------------------------------------------------
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
    cmp = _with_names(_compared(results, samples, compared, n_boot, confidence, seed))
    if candidates is not None:
        cmp = cmp[cmp["integrator"].isin(list(candidates))]
    cmp = cmp.assign(config=[config_label(r) for _, r in cmp.iterrows()])
    rows = []
    if select_docs is not None:
        groups = _sample_groups(samples)
        for (model_name, task), g in cmp.groupby(["model_name", "task"], sort=True):
            ok = g[g["status"] == OK]
            row = {"model_name": model_name, "task": task, "select_on": "documents in select_docs",
                   "confirm_on": "the other documents", "n_candidates": len(g)}
            scored = []
            for _, c in ok.iterrows():
                sa = _cell_samples(groups, c["baseline_cell_id"], task)
                sb = _cell_samples(groups, c["cell_id"], task)
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
                rows.append({**row, "status": MISSING if ok.empty else "no per-sample rows on both splits"})
                continue
            confirm_deltas = [(cf["looped"] - cf["base"]).mean() * 100 for _, _, cf in scored]
            best = max(range(len(scored)), key=lambda i: scored[i][0])
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
            pick = sel.loc[sel["delta_pp"].idxmax()]
            row.update(config=pick["config"], cell_id=pick["cell_id"], select_delta_pp=pick["delta_pp"])
            match = conf_all[_mask(all(_same_value(r[k], pick[k]) for k in key_cols)
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
                         if m["status"] == OK and not _blank(m["delta_pp"]) else math.nan})
    return pd.DataFrame(rows, columns=SELECT_COLUMNS)


# ---- display: formatting, wide views, markdown / LaTeX -----------------------------------------------------
INT_COLUMNS = frozenset({"k", "window_width", "window_passes", "num_fewshot", "published_shots", "seed",
                         "batch_size", "limit", "confirm_n", "confirm_rank", "rank_at_k", "rank_at_passes"})


def _fmt_num(v, digits: int = 2, integer: bool = False) -> str:
    if _blank(v):
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else ""
    if isinstance(v, (int, np.integer)) or (integer and isinstance(v, (float, np.floating))
                                             and float(v).is_integer()):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{v:.{digits}f}"
    return str(v)


def _fmt_p(v) -> str:
    if _blank(v):
        return ""
    return "<1e-4" if v < 1e-4 else f"{v:.4f}" if v < 0.01 else f"{v:.3f}"


def _cell_text(row: pd.Series, value: str) -> str:
    if row.get("status", OK) != OK:
        return str(row["status"])
    return _fmt_num(row.get(value))


def pivot_display(df: pd.DataFrame, index: Sequence[str], columns: str, value: str,
                  extra: dict | None = None) -> pd.DataFrame:
    """A wide, string-valued view: one row per `index` combination, one column per `columns`
    level, the cell's `value` formatted, or its status word when it has no number. `extra` maps a
    column name to a per-row field copied from the first row of the group (e.g. the baseline)."""
    index = [c for c in index if c in df.columns]
    if df.empty:
        return pd.DataFrame(columns=[*index, *(extra or {})])
    levels = sorted({_norm(v) for v in df[columns]}, key=lambda v: (v is None, str(type(v)), v if v is not None else 0))
    rows = []
    for key, g in df.groupby(index, dropna=False, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row = {c: _fmt_num(v, integer=c in INT_COLUMNS) for c, v in zip(index, key)}
        for name, field in (extra or {}).items():
            vals = g[field].dropna()
            row[name] = _fmt_num(vals.iloc[0]) if len(vals) else "missing"
        for lvl in levels:
            hit = g[_mask(_norm(v) == lvl for v in g[columns])]
            label = "n/a" if lvl is None else str(lvl)
            row[label] = "; ".join(_cell_text(r, value) for _, r in hit.iterrows()) if len(hit) else ""
        rows.append(row)
    out = pd.DataFrame(rows)
    drop = [c for c in index if c in out.columns and (out[c] == "").all()]
    return out.drop(columns=drop)


def format_table(df: pd.DataFrame, *, p_cols: Sequence[str] = ("p_mcnemar", "p_holm", "confirm_p"),
                 ci_pairs: Sequence[tuple[str, str, str]] = (("ci_low_pp", "ci_high_pp", "ci95_pp"),
                                                           ("confirm_ci_low_pp", "confirm_ci_high_pp",
                                                            "confirm_ci95_pp")),
                 drop: Sequence[str] = ()) -> pd.DataFrame:
    """A string-valued copy for reading: numbers to 2 decimals, p-values to 3-4 significant
    places, each CI pair merged into one '[lo, hi]' column, booleans as 'yes' / ''."""
    out = df.drop(columns=[c for c in drop if c in df.columns]).copy()
    for lo, hi, name in ci_pairs:
        if lo in out.columns and hi in out.columns:
            pos = list(out.columns).index(lo)
            txt = [f"[{_fmt_num(a)}, {_fmt_num(b)}]" if not (_blank(a) or _blank(b)) else ""
                   for a, b in zip(out[lo], out[hi])]
            out = out.drop(columns=[lo, hi])
            out.insert(pos, name, txt)
    for c in out.columns:
        if c in p_cols:
            out[c] = [_fmt_p(v) for v in out[c]]
        elif not (out[c].dtype == object and all(isinstance(v, str) for v in out[c])):
            integer = c in INT_COLUMNS or str(c).startswith("n_")
            out[c] = [_fmt_num(v, integer=integer) for v in out[c]]
    return out


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table of a (formatted) frame."""
    cols = [str(c) for c in df.columns]
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(esc(c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(esc("" if _blank(v) else v) for v in row) + " |")
    return "\n".join(lines) + "\n"


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(s) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in ("" if _blank(s) else str(s)))


def to_latex(df: pd.DataFrame, caption: str = "", label: str = "") -> str:
    """A booktabs LaTeX table of a (formatted) frame (needs \\usepackage{booktabs})."""
    cols = list(df.columns)
    lines = [r"\begin{table}[t]", r"\centering", r"\small"]
    if caption:
        lines.append(rf"\caption{{{_tex(caption)}}}")
    if label:
        lines.append(rf"\label{{{label}}}")
    lines += [rf"\begin{{tabular}}{{{'l' * len(cols)}}}", r"\toprule",
              " & ".join(_tex(c) for c in cols) + r" \\", r"\midrule"]
    for row in df.itertuples(index=False):
        lines.append(" & ".join(_tex(v) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


# ---- all tables at once ------------------------------------------------------------------------------------
@dataclass
class ReportTable:
    """One table of the report: `frame` (numbers, for CSV), `display` (strings, for markdown /
    LaTeX), or `skipped` with the reason when its inputs are absent."""
    name: str
    title: str
    frame: pd.DataFrame | None = None
    display: pd.DataFrame | None = None
    skipped: str | None = None


_HIDE = ("cell_id", "baseline_cell_id", "confirm_cell_id", "alpha", "beta", "window_centre", "routing_change_rate",
         "value_ci_low_pp", "value_ci_high_pp", "wall_time_s", "published_model", "published_benchmark",
         "published_source", "metric")


def build_tables(results: pd.DataFrame, samples: pd.DataFrame | None = None, *,
                 reference: pd.DataFrame | None = None, holm_adjust: bool = True,
                 select_docs: Iterable | None = None, select_fraction: float = 0.5,
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
    kw = dict(compared=cmp, holm_adjust=holm_adjust, n_boot=n_boot, confidence=confidence, seed=seed)
    has_looped = len(cmp) > 0

    def add(name, frame, display, skipped=None):
        tables.append(ReportTable(name, _TITLES[name], frame, display, skipped))

    dt = delta_table(results, samples, reference=reference, **kw)
    add("deltas", dt, format_table(dt, drop=_HIDE))
    if not has_looped:
        for name in ("collapse", "strategy_k", "strategy_passes", "depth", "depth_summary", "moe", "select_confirm"):
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
            add("select_confirm", None, None, "no per-sample rows or no model x task with more than one configuration")
        else:
            stc = select_then_confirm(results, samples, select_docs=sel, compared=cmp, n_boot=n_boot,
                                      confidence=confidence, seed=seed)
            add("select_confirm", stc, format_table(stc, drop=("cell_id", "confirm_cell_id")))
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
}
TABLE_NAMES: tuple[str, ...] = tuple(_TITLES)
