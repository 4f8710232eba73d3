"""report.render: text views of the tables: numbers formatted for reading, wide (pivoted) views,
GitHub markdown and booktabs LaTeX. Pure; strings in, strings out."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from .common import OK, blank, norm_value, row_mask

INT_COLUMNS = frozenset({"k", "window_width", "window_passes", "num_fewshot", "published_shots",
                         "seed", "batch_size", "limit", "confirm_n", "confirm_rank", "rank_at_k",
                         "rank_at_passes"})


def _fmt_num(v, digits: int = 2, integer: bool = False) -> str:
    if blank(v):
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
    if blank(v):
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
    levels = sorted({norm_value(v) for v in df[columns]},
                    key=lambda v: (v is None, str(type(v)), v if v is not None else 0))
    rows = []
    for key, g in df.groupby(index, dropna=False, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row = {c: _fmt_num(v, integer=c in INT_COLUMNS) for c, v in zip(index, key)}
        for name, field in (extra or {}).items():
            vals = g[field].dropna()
            row[name] = _fmt_num(vals.iloc[0]) if len(vals) else "missing"
        for lvl in levels:
            hit = g[row_mask(norm_value(v) == lvl for v in g[columns])]
            label = "n/a" if lvl is None else str(lvl)
            row[label] = ("; ".join(_cell_text(r, value) for _, r in hit.iterrows())
                          if len(hit) else "")
        rows.append(row)
    out = pd.DataFrame(rows)
    drop = [c for c in index if c in out.columns and (out[c] == "").all()]
    return out.drop(columns=drop)


def format_table(df: pd.DataFrame, *, p_cols: Sequence[str] = ("p_mcnemar", "p_holm", "confirm_p"),
                 ci_pairs: Sequence[tuple[str, str, str]] = (
                     ("ci_low_pp", "ci_high_pp", "ci95_pp"),
                     ("confirm_ci_low_pp", "confirm_ci_high_pp", "confirm_ci95_pp")),
                 drop: Sequence[str] = ()) -> pd.DataFrame:
    """A string-valued copy for reading: numbers to 2 decimals, p-values to 3-4 significant
    places, each CI pair merged into one '[lo, hi]' column, booleans as 'yes' / ''."""
    out = df.drop(columns=[c for c in drop if c in df.columns]).copy()
    for lo, hi, name in ci_pairs:
        if lo in out.columns and hi in out.columns:
            pos = list(out.columns).index(lo)
            txt = [f"[{_fmt_num(a)}, {_fmt_num(b)}]" if not (blank(a) or blank(b)) else ""
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
    lines = ["| " + " | ".join(esc(c) for c in cols) + " |",
             "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(esc("" if blank(v) else v) for v in row) + " |")
    return "\n".join(lines) + "\n"


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                "^": r"\textasciicircum{}"}


def _tex(s) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in ("" if blank(s) else str(s)))


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
