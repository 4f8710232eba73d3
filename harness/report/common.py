"""report.common: what every table and figure shares: status words, the loop fields a row is
keyed by, the paper's depth band, and small NaN-safe helpers for frames whose cells may be blank.
Pure; no I/O."""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

LOOP_KEYS: tuple[str, ...] = ("integrator", "k", "window", "mode", "kv", "decode", "routing",
                              "beta", "alpha")
OK, MISSING, FAILED = "ok", "missing", "failed"
DEPTH_BAND: tuple[float, float] = (0.43, 0.71)       # the paper's best window centres (> 1.7B)
MOE_MODES: tuple[str, ...] = ("block", "layer")
MOE_ROUTINGS: tuple[str, ...] = ("recompute", "freeze")


def blank(x) -> bool:
    if x is None:
        return True
    try:
        return bool(pd.isna(x))
    except (TypeError, ValueError):
        return False


def same_value(x, y) -> bool:
    if blank(x) and blank(y):
        return True
    if blank(x) or blank(y):
        return False
    try:
        return float(x) == float(y)
    except (TypeError, ValueError):
        return str(x) == str(y)


def norm_value(v):
    """A hashable, NaN-free key for grouping (None for blanks; ints for integral floats)."""
    if blank(v):
        return None
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return int(v)
    if isinstance(v, np.integer):
        return int(v)
    return v


def with_names(results: pd.DataFrame) -> pd.DataFrame:
    """Ensure model_name (falls back to model) and task labels exist and are strings."""
    df = results.copy()
    if "model_name" not in df.columns:
        df["model_name"] = None
    df["model_name"] = [m if not blank(m) else (mm if not blank(mm) else "?")
                        for m, mm in zip(df["model_name"], df.get("model", df["model_name"]))]
    df["task"] = [t if not blank(t) else (tn if not blank(tn) else "?")
                  for t, tn in zip(df["task"], df.get("task_name", df["task"]))]
    return df


def config_label(row: pd.Series | dict, keys: Sequence[str] = LOOP_KEYS) -> str:
    """'euler k=3 window=15:19 mode=block ...': a looped row's loop fields, blanks left out."""
    if row.get("is_baseline") is True:
        return "baseline"
    parts = []
    for key in keys:
        v = norm_value(row.get(key))
        if v is None:
            continue
        parts.append(str(v) if key == "integrator" else f"{key}={v}")
    return " ".join(parts)


def variants(df: pd.DataFrame, panel: Sequence[str], used: Sequence[str]) -> pd.Series:
    """Per row, the loop fields outside `used` that vary within its panel ('' when none vary):
    tells apart rows that a table's own keys would otherwise merge."""
    out = pd.Series([""] * len(df), index=df.index, dtype=object)
    free = [k for k in LOOP_KEYS if k not in used and k in df.columns]
    if not free or df.empty:
        return out
    for _, g in df.groupby(list(panel), dropna=False, sort=False):
        vary = [k for k in free if g[k].map(norm_value).nunique(dropna=True) > 1]
        if vary:
            out.loc[g.index] = [" ".join(f"{k}={norm_value(r[k])}" for k in vary
                                         if norm_value(r[k]) is not None)
                                for _, r in g.iterrows()]
    return out


def row_mask(flags: Iterable[bool]) -> np.ndarray:
    """A boolean row mask (a plain empty list would select columns instead)."""
    return np.fromiter((bool(f) for f in flags), dtype=bool)


def to_pp(x) -> float:
    return float(x) * 100.0 if not blank(x) else math.nan


def sort_rows(df: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    keys = [k for k in keys if k in df.columns]
    if df.empty or not keys:
        return df.reset_index(drop=True)
    order = df[keys].map(lambda v: (1, "") if blank(v)
                         else (0, v) if isinstance(v, (int, float, np.number))
                         else (0, str(v)))
    idx = sorted(range(len(df)), key=lambda i: tuple(order.iloc[i]))
    return df.iloc[idx].reset_index(drop=True)
