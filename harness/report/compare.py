"""report.compare: every looped cell beside its baseline, and the statistics of the pair.

A looped row's baseline is the row whose cell id is its `baseline_id` (the record's; defined once,
by `CellSpec.baseline()`), for the same task; nothing is matched by columns. The pair is compared
on the documents both cells share (harness.stats: delta in pp, paired-bootstrap CI, exact
McNemar p). Pure; no I/O."""
from __future__ import annotations

import math

import pandas as pd

from .. import stats
from .common import MISSING, OK, to_pp, with_names

COMPARE_COLUMNS = [
    "baseline_cell_id", "baseline_status", "value_pp", "baseline_pp", "delta_pp", "ci_low_pp",
    "ci_high_pp", "p_mcnemar", "n_paired", "n_dropped", "dropped", "n_up", "n_down", "note",
]


def sample_groups(samples: pd.DataFrame | None) -> dict:
    if samples is None or samples.empty:
        return {}
    return {cid: g for cid, g in samples.groupby("cell_id", sort=False)}


def cell_samples(groups: dict, cell_id, task) -> pd.DataFrame:
    """The cell's rows for `task`; for a group task without rows of its own (mmlu_pro), the rows
    of its subtasks (`task_*`), paired on (task, doc_id)."""
    g = groups.get(cell_id)
    if g is None:
        return pd.DataFrame(columns=stats.HASH_FIELDS + ("doc_id", "task", "score"))
    own = g[g["task"] == task]
    if len(own):
        return own
    return g[g["task"].astype(str).str.startswith(f"{task}_")]


def compare_to_baseline(results: pd.DataFrame, samples: pd.DataFrame | None = None, *,
                        n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
                        ) -> pd.DataFrame:
    """One row per looped cell x task of `results` (all its columns) plus COMPARE_COLUMNS:
    value / baseline / delta in pp, the paired-bootstrap CI of the delta and McNemar's exact p on
    the documents both cells share (stats.pair_samples), and `status`: the looped cell's own
    status if not ok, else 'baseline missing' / 'baseline failed', else ok. Without per-sample
    rows the delta is the difference of the two metric values and the CI / p are NaN (`note`).
    The baseline of a row is the baseline row with the cell id in its `baseline_id`, same task."""
    df = with_names(results)
    looped = df[~df["is_baseline"].astype(bool)].copy()
    baselines = df[df["is_baseline"].astype(bool)]
    by_id = {(r["cell_id"], r["task"]): r for _, r in baselines.iterrows()}
    groups = sample_groups(samples)
    rows = []
    for idx, row in looped.iterrows():
        out = dict.fromkeys(COMPARE_COLUMNS, math.nan)
        out.update(dropped="", note="", baseline_cell_id="", baseline_status=MISSING)
        b = by_id.get((row.get("baseline_id"), row["task"]))
        status = row["status"] if row["status"] != OK else OK
        if b is not None:
            out["baseline_cell_id"], out["baseline_status"] = b["cell_id"], b["status"]
            out["baseline_pp"] = to_pp(b["value"])
        out["value_pp"] = to_pp(row["value"])
        if status == OK:
            if b is None:
                status = "baseline missing"
            elif b["status"] != OK:
                status = "baseline failed"
        if status == OK:
            sa = cell_samples(groups, b["cell_id"], row["task"])
            sb = cell_samples(groups, row["cell_id"], row["task"])
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


def ensure_compared(results, samples, compared, n_boot, confidence, seed) -> pd.DataFrame:
    if compared is not None:
        return compared
    return compare_to_baseline(results, samples, n_boot=n_boot, confidence=confidence, seed=seed)
