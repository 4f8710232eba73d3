"""The README's section "What looping does to real models" against the committed tables of the
real-model parts (`results/real/cells.csv`, `baselines.csv`, `scan_select.csv`): every row of its
deltas table and of its depth table is that CSV, no shown setting is left out, K = 1 equals the
baseline per sample, each part's planned cells have their rows (the cell ids still match the
committed results), and the window scan's selected window is reported with its confirmed
delta."""
import csv
import re
from pathlib import Path

import pytest
import yaml

from looping.config import window_from_centre

ROOT = Path(__file__).resolve().parents[2]

CELLS = ROOT / "results" / "real" / "cells.csv"
SCAN_SELECT = ROOT / "results" / "real" / "scan_select.csv"
BASELINES = ROOT / "results" / "real" / "baselines.csv"
#: every cell's per-sample answers (harness.store.answer_digests), written with the report
ANSWERS = ROOT / "results" / "real" / "answers.csv"
#: the real-model parts (harness/configs/experiment/real-*.yaml) whose results are committed
PARTS = ("real-collapse", "real-depth", "real-paper", "real-scan")
LOOPED = "## What looping does to real models"
#: each model preset's window width (the paper's 4 of 36 layers) and layer count
SHAPE = {"smollm2-135m-dequantised-from-GGUF-Q4_1": (3, 30),
         "gemma3-270m-dequantised-from-GGUF-Q4_K_M": (2, 18)}
#: the depth rule's window of each model: centre 0.5 (SmolLM2 14:17, Gemma-3 9:11)
RULE = {m: "%d:%d" % window_from_centre(0.5, w, n) for m, (w, n) in SHAPE.items()}
#: the settings the README table shows at the rule's window (every cell is in results/real/cells.md)
SHOWN = {("naive", 6), ("euler", 3), ("anchored", 3)}
#: the depth part's window centres
DEPTH_CENTRES = (0.3, 0.5, 0.7)
DEPTH_SHOWN = {("naive", 3), ("anchored", 3)}
DEPTH_TASKS = ("local_arc_easy300_val", "local_piqa300")
#: the tables' headers (scripts/real_readme_table.py rewrites the tables below them)
TABLE_HEAD = ("| model | task | n | baseline [95% CI] | mark | setting | delta pp [95% CI] "
              "| p (Holm) |")
DEPTH_HEAD = ("| model | task | setting | centre 0.3: window, delta pp [95% CI] | centre 0.5 "
              "| centre 0.7 |")


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


def depth_windows(model_name: str) -> list[str]:
    width, layers = SHAPE[model_name]
    return ["%d:%d" % window_from_centre(c, width, layers) for c in DEPTH_CENTRES]


def depth_rows(cells: list[dict]) -> list[list[str]]:
    """The README's depth table from cells.csv: one row per model x task x setting, one column
    per window centre ('window delta [CI]'; '-' where the cell has not been run)."""
    by = {(r["model_name"], r["task"], r["integrator"], int(float(r["k"])), r["window"]): r
          for r in cells if r["status"] == "ok"}
    out = []
    for model in sorted(SHAPE):
        for task in DEPTH_TASKS:
            for integ, k in sorted(DEPTH_SHOWN, key=lambda s: s[0] != "naive"):
                row = [model, task, f"{integ} K={k}"]
                for w in depth_windows(model):
                    r = by.get((model, task, integ, k, w))
                    row.append("-" if r is None else f"{w} {fmt_delta(r)[6]}")
                out.append(row)
    return out


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


def test_readme_depth_table_is_the_committed_cells(cells):
    """Every cell of the depth part, as cells.csv has it (a '-' would be a cell not run)."""
    rows = table_after(section(LOOPED), DEPTH_HEAD)
    assert rows == depth_rows(cells)
    assert not any("-" == c for r in rows for c in r), "README depth table: a cell was not run"
    # what the sentence under the table says: anchored within 2 points of the baseline at every
    # centre, naive below it at every centre
    text = " ".join(section(LOOPED).split()).lower()
    assert "anchored k = 3 stays within 2 points of the baseline at every centre" in text
    assert "naive k = 3 loses at every centre" in text
    for row in rows:
        deltas = [float(c.split()[1]) for c in row[3:]]
        if row[2].startswith("anchored"):
            assert all(abs(d) <= 2.0 for d in deltas), row
        else:
            assert all(d < 0 for d in deltas), row


def _answers():
    with ANSWERS.open() as f:
        return {r["cell_id"]: r for r in csv.DictReader(f)}


def test_k1_cells_equal_the_baseline_per_sample(cells):
    """naive, damped Euler and anchored all reduce to the plain model at K = 1: every per-sample
    row (document, prompt, target, score) equal to the baseline's, by the committed answers."""
    answers = _answers()
    k1 = [r for r in cells if int(float(r["k"])) == 1]
    assert {r["integrator"] for r in k1} == {"naive", "euler", "anchored"}
    assert len(k1) == 3 * len(RULE) * 2          # 3 strategies x 2 models x 2 collapse tasks
    for r in k1:
        assert r["status"] == "ok" and float(r["delta_pp"]) == 0.0, r
        assert float(r["ci_low_pp"]) == float(r["ci_high_pp"]) == 0.0, r
        looped, base = answers[r["cell_id"]], answers[r["baseline_cell_id"]]
        assert looped["answers_sha256"] == base["answers_sha256"], r
        assert looped["scores"] == base["scores"] and len(base["scores"]) == int(base["n"]), r
    k6 = [r for r in cells if int(float(r["k"])) == 6 and r["integrator"] == "naive"]
    assert all(answers[r["cell_id"]]["scores"] != answers[r["baseline_cell_id"]]["scores"]
               for r in k6)                     # the check can fail: naive K = 6 changes answers


def test_committed_answers_are_the_committed_tables():
    """answers.csv has a row for every looped and baseline cell of the tables, with their sample
    count and accuracy: what scripts/compare_stores.py checks a regeneration against."""
    answers = _answers()
    with CELLS.open() as f:
        looped = list(csv.DictReader(f))
    with BASELINES.open() as f:
        baselines = list(csv.DictReader(f))
    assert set(answers) == {r["cell_id"] for r in looped + baselines}
    for r in looped + baselines:
        a = answers[r["cell_id"]]
        assert int(a["n"]) == int(r.get("n") or r["n_paired"]) == len(a["scores"]), r
        assert a["scores"].count("1") == float(a["correct"]), r
        assert abs(100 * float(a["correct"]) / int(a["n"]) - float(r["value_pp"])) < 1e-9, r


def test_every_cell_of_the_collapse_part_has_its_row(cells):
    exp = yaml.safe_load((ROOT / "harness/configs/experiment/real-collapse.yaml").read_text())
    params = exp["hydra"]["sweeper"]["params"]
    n = (len(params["model"].split(",")) * len(params["task"].split(","))
         * len(params["loop"].split(",")) * len(params["loop.k"].split(",")))
    collapse = [r for r in cells if r["window"] == RULE[r["model_name"]]
                and r["task"] in ("local_arc_easy300_val", "local_piqa300")]
    assert len(collapse) == n == 60
    assert all(r["status"] == "ok" and r["ci_low_pp"] and r["competence"] for r in collapse)


@pytest.mark.slow
def test_each_part_plans_the_cell_ids_of_the_committed_results(cells, offline, session,
                                                                real_asset, tmp_path):
    """Each part planned as `python sweep.py experiment=<part>` plans it (Hydra, the assets' weight
    hashes, the tasks' versions), every model x task with its first loop setting, and its baseline:
    every planned cell must have its row in the committed cells.csv / baselines.csv. Fails when a
    cell's identity drifted from the one the results were computed with (task_version hashes the
    task's files, harness/tasks/real/* included): a second run of the part would recompute it.
    (Planning every combination costs ~1 s of Hydra each; the counts are tested above.)"""
    from harness.plan import plan_grid

    for name in ("smollm2-135m", "gemma3-270m", "tasks"):
        real_asset(name)
    looped = {r["cell_id"]: r for r in cells}
    baselines = {r["cell_id"] for r in csv.DictReader(BASELINES.open())}
    for part in PARTS:
        exp = yaml.safe_load((ROOT / f"harness/configs/experiment/{part}.yaml").read_text())
        params = exp["hydra"]["sweeper"]["params"]
        first = [f"{k}={str(v).split(',')[0]}".replace('\\$', '$') for k, v in params.items()
                 if k not in ("model", "task")]
        plan = plan_grid([f"experiment={part}", f"store={tmp_path}", *first], costs=False,
                         check_hub=False)
        assert len({c.spec.model_name for c in plan.cells}) == len(params.get("model", "x").split(","))
        missing = [c.label for c in plan.cells if c.cell_id not in
                   (baselines if c.spec.is_baseline else looped)]
        assert not missing, f"{part}: {len(missing)} cell(s) without a row, e.g. {missing[:3]}"
        for c in plan.cells:
            r = looped.get(c.cell_id)
            assert r is None or (r["status"] == "ok" and r["ci_low_pp"] and r["competence"]), r


def test_readme_scan_reports_the_confirmed_delta():
    """The selected window is reported with its delta on the confirmation half (not the selection
    half), beside the depth rule's window on the same half."""
    sel = {r["which"]: r for r in csv.DictReader(SCAN_SELECT.open())}
    text = " ".join(section(LOOPED).split())

    def ci(r):
        return (f"{float(r['confirm_delta_pp']):+.1f} [{float(r['confirm_ci_low_pp']):+.1f}, "
                f"{float(r['confirm_ci_high_pp']):+.1f}]")
    a, rule = sel["selected on half A"], sel["depth rule"]
    # 29 scanned + the rule's 14:17 + the depth part's 8:11 and 20:23 (anchored K = 3 on PIQA too)
    assert int(float(a["n_windows"])) == 32
    m = re.search(r"selected \*\*(\S+)\*\* \(\+([\d.]+) pp on half A\), confirmed \*\*(.+?)\*\* pp",
                  text)
    assert m, "README: no 'selected **window** ... confirmed **delta**' sentence"
    assert m.group(1) == a["window"] and m.group(3) == ci(a)
    assert float(m.group(2)) == round(float(a["select_delta_pp"]), 1)
    assert f"the depth rule's **{rule['window']}**" in text and ci(rule) in text
    assert rule["window"] == RULE["smollm2-135m-dequantised-from-GGUF-Q4_1"]
