"""report: the paper-layout tables from a results store, and the files they are written to.

    from harness.report import make_report
    make_report("results")                                  # every table and figure, to files

    from harness import report
    results, samples = store.load_results(root), store.load_samples(root)
    cmp = report.compare_to_baseline(results, samples)      # one row per looped cell x task
    report.delta_table(results, samples, compared=cmp, reference=report.load_reference())
    tables = report.build_tables(results, samples, reference=report.load_reference())

Modules, one concern each:
    compare     each looped cell beside its baseline (by the record's `baseline_id`) + statistics
    tables      the tables (deltas, collapse, strategies, depth, MoE, cost, select-then-confirm)
    render      formatted, wide, markdown and LaTeX views
    reference   the paper's published cells and the name maps to them
    common      status words, loop keys, the depth band, NaN-safe helpers (shared with plots)
    make        `make_report`: the files (the only module here that writes)
"""
from .common import (DEPTH_BAND, FAILED, LOOP_KEYS, MISSING, MOE_MODES, MOE_ROUTINGS, OK,
                     config_label)
from .compare import COMPARE_COLUMNS, compare_to_baseline
from .make import make_report
from .reference import MODEL_TO_REFERENCE, TASK_TO_REFERENCE, load_reference, reference_path
from .render import INT_COLUMNS, format_table, pivot_display, to_latex, to_markdown
from .tables import (COST_COLUMNS, DELTA_COLUMNS, LONG_COLUMNS, SELECT_COLUMNS, TABLE_NAMES,
                     ReportTable, build_tables, collapse_table, collapse_wide, cost_table,
                     delta_table, depth_summary, depth_table, moe_table, moe_wide,
                     select_then_confirm, strategy_table, strategy_wide)

__all__ = [
    "DEPTH_BAND", "FAILED", "LOOP_KEYS", "MISSING", "MOE_MODES", "MOE_ROUTINGS", "OK",
    "config_label", "COMPARE_COLUMNS", "compare_to_baseline", "make_report", "MODEL_TO_REFERENCE",
    "TASK_TO_REFERENCE", "load_reference", "reference_path", "INT_COLUMNS", "format_table",
    "pivot_display", "to_latex", "to_markdown", "COST_COLUMNS", "DELTA_COLUMNS", "LONG_COLUMNS",
    "SELECT_COLUMNS", "TABLE_NAMES", "ReportTable", "build_tables", "collapse_table",
    "collapse_wide", "cost_table", "delta_table", "depth_summary", "depth_table", "moe_table",
    "moe_wide", "select_then_confirm", "strategy_table", "strategy_wide",
]
