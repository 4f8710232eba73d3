"""The README's section "What looping does to real models" against the committed tables of the
real-model parts (`results/real/cells.csv`, `scan_select.csv`): every row of its deltas table is
that CSV, no shown setting is left out, K = 1 equals the baseline per sample, every cell of the
collapse part has its row, and the window scan's selected window is reported with its confirmed
delta."""
import csv
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

CELLS = ROOT / "results" / "real" / "cells.csv"
SCAN_SELECT = ROOT / "results" / "real" / "scan_select.csv"
LOOPED = "## What looping does to real models"
#: the depth rule's window of each model preset (c0.5w3 of 30 layers, c0.5w2 of 18)
RULE = {"smollm2-135m-dequantised-from-GGUF-Q4_1": "14:17",
        "gemma3-270m-dequantised-from-GGUF-Q4_K_M": "9:11"}
#: the settings the README table shows at the rule's window (every cell is in results/real/cells.md)
SHOWN = {("naive", 6), ("euler", 3), ("anchored", 3)}
#: the table's header (scripts/real_readme_table.py rewrites the table below it)
TABLE_HEAD = ("| model | task | n | baseline [95% CI] | mark | setting | delta pp [95% CI] "
              "| p (Holm) |")


def section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    assert title in text, f"README: no section '{title}'"
    rest = text[text.index(title) + len(title):]
    return rest[:rest.index("\n## ")] if "\n## " in rest else rest


def table_after(text: str, head: str) -> list[list[str]]:
    block = next(b for b in text.split("\n\n") if b.startswith(head))
    return [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines()[2:]]


def setting(row: dict) -> str:
    return f"{row['integrator']} K={int(float(row['k']))} {row['window']}"


def fmt_delta(row: dict) -> list[str]:
    f = lambda k, s="": f"{float(row[k]):{s}.1f}"          # noqa: E731
    return [row["model_name"], row["task"], str(int(float(row["n_paired"]))),
            f"{f('baseline_pp')} [{f('baseline_ci_low_pp')}, {f('baseline_ci_high_pp')}]",
            row["competence"], setting(row),
            f"{f('delta_pp', '+')} [{f('ci_low_pp', '+')}, {f('ci_high_pp', '+')}]",
            f"{float(row['p_holm']):.2g}"]


@pytest.fixture(scope="module")
def cells():
    return list(csv.DictReader(CELLS.open()))


def test_readme_deltas_are_the_committed_cells(cells):
    rows = table_after(section(LOOPED), TABLE_HEAD)
    assert rows, "README: empty deltas table"
    by_key = {(r["model_name"], r["task"], setting(r)): r for r in cells}
    for shown in rows:
        key = (shown[0], shown[1], shown[5])
        assert key in by_key, f"README row {key} not in {CELLS.name}"
        assert shown == fmt_delta(by_key[key]), (shown, fmt_delta(by_key[key]))
    # no row left out: every shown setting at the rule's window of every model x task run
    want = {(r["model_name"], r["task"], setting(r)) for r in cells
            if r["window"] == RULE[r["model_name"]] and r["status"] == "ok"
            and (r["integrator"], int(float(r["k"]))) in SHOWN}
    assert {(r[0], r[1], r[5]) for r in rows} == want


def test_k1_cells_equal_the_baseline_per_sample(cells):
    """naive, damped Euler and anchored all reduce to the plain model at K = 1: every paired
    per-sample score equal (delta 0 with a bootstrap CI of [0, 0] means no item differs)."""
    k1 = [r for r in cells if int(float(r["k"])) == 1]
    assert {r["integrator"] for r in k1} == {"naive", "euler", "anchored"}
    assert len(k1) == 3 * len(RULE) * 2          # 3 strategies x 2 models x 2 collapse tasks
    for r in k1:
        assert r["status"] == "ok" and float(r["delta_pp"]) == 0.0, r
        assert float(r["ci_low_pp"]) == float(r["ci_high_pp"]) == 0.0, r


def test_every_cell_of_the_collapse_part_has_its_row(cells):
    exp = yaml.safe_load((ROOT / "harness/configs/experiment/real-collapse.yaml").read_text())
    params = exp["hydra"]["sweeper"]["params"]
    n = (len(params["model"].split(",")) * len(params["task"].split(","))
         * len(params["loop"].split(",")) * len(params["loop.k"].split(",")))
    collapse = [r for r in cells if r["window"] == RULE[r["model_name"]]
                and r["task"] in ("local_arc_easy300_val", "local_piqa300")]
    assert len(collapse) == n == 60
    assert all(r["status"] == "ok" and r["ci_low_pp"] and r["competence"] for r in collapse)


def test_readme_scan_reports_the_confirmed_delta():
    """The selected window is reported with its delta on the confirmation half (not the selection
    half), beside the depth rule's window on the same half."""
    sel = {r["which"]: r for r in csv.DictReader(SCAN_SELECT.open())}
    text = " ".join(section(LOOPED).split())

    def ci(r):
        return (f"{float(r['confirm_delta_pp']):+.1f} [{float(r['confirm_ci_low_pp']):+.1f}, "
                f"{float(r['confirm_ci_high_pp']):+.1f}]")
    a, rule = sel["selected on half A"], sel["depth rule"]
    assert int(float(a["n_windows"])) == 30                 # 29 scanned + the rule's 14:17
    m = re.search(r"selected \*\*(\S+)\*\* \(\+([\d.]+) pp on half A\), confirmed \*\*(.+?)\*\* pp",
                  text)
    assert m, "README: no 'selected **window** ... confirmed **delta**' sentence"
    assert m.group(1) == a["window"] and m.group(3) == ci(a)
    assert float(m.group(2)) == round(float(a["select_delta_pp"]), 1)
    assert f"the depth rule's **{rule['window']}**" in text and ci(rule) in text
    assert rule["window"] == RULE["smollm2-135m-dequantised-from-GGUF-Q4_1"]
