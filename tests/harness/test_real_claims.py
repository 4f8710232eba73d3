"""The README's real-model baselines against the committed tables of `experiment=real-baselines`
(`results/real/baselines.csv`): every row of the README table is that CSV (accuracy, Wilson 95%
interval, chance level, competence mark), and every model x task of the preset has its row.
Regenerating with code that changes these numbers fails here until the README says so."""
import csv
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BASELINES = ROOT / "results" / "real" / "baselines.csv"
SECTION = "### Baselines of the real models"


def readme_rows() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    assert SECTION in text, f"README: no section '{SECTION}'"
    block = text[text.index(SECTION):].split("\n\n")
    table = next(b for b in block if b.startswith("| model"))
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]


def fmt(row: dict) -> list[str]:
    f = lambda k: f"{float(row[k]):.1f}"                    # noqa: E731
    return [row["model_name"], row["task"], str(int(float(row["n"]))), f("value_pp"),
            f"[{f('ci_low_pp')}, {f('ci_high_pp')}]", f("chance_pp"), row["competence"]]


#: the tasks of experiment=real-baselines (the store also holds the grids' seeded subsets)
FULL = {"local_piqa": 1838, "local_commonsense_qa": 1221, "local_openbookqa_val": 500,
        "local_arc_easy_val": 570, "local_mmlu1k": 1000}


@pytest.fixture(scope="module")
def committed():
    return {(r["model_name"], r["task"]): r for r in csv.DictReader(BASELINES.open())
            if r["task"] in FULL}


def test_readme_table_is_the_committed_baselines(committed):
    rows = readme_rows()
    assert rows, "README: empty baselines table"
    for cells in rows:
        key = (cells[0], cells[1])
        assert key in committed, f"README row {key} not in {BASELINES.name}"
        assert cells == fmt(committed[key]), (cells, fmt(committed[key]))
    assert {(r[0], r[1]) for r in rows} == set(committed)


def test_every_model_and_task_of_the_preset_is_there(committed):
    exp = yaml.safe_load((ROOT / "harness/configs/experiment/real-baselines.yaml").read_text())
    params = exp["hydra"]["sweeper"]["params"]
    assert len(committed) == len(params["model"].split(",")) * len(params["task"].split(","))
    for (model, task), r in committed.items():
        assert re.search(r"dequantised-from-GGUF", model)
        assert int(float(r["n"])) == FULL[task], (model, task, r["n"])     # every item

