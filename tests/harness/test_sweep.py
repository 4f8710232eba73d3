"""sweep.py end to end, as a user runs it (real subprocesses, a real tiny model, real lm-eval):
a grid without -m, a second run that computes nothing, SIGKILL in the middle of a grid, and the
same grid through submitit's local executor with the shared baseline computed once."""
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness.test_cell import write_task

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_dir(tiny_model_dir):
    return Path(tiny_model_dir)


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    return write_task(tmp_path_factory.mktemp("tasks"), n=6)


def env():
    e = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
             WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def grid_args(tiny_dir, task_dir, store, ks="2,3,4"):
    """The user's `python sweep.py model=<tiny> loop.k=2,3,4 task=<fixture>`, with the tiny model
    and the local task given through the presets' fields."""
    return ["model=embedded", f"model.path={tiny_dir}", "model.name=tiny", "model.dtype=float32",
            "loop=euler", "loop.window='1:3'", f"loop.k={ks}",
            "task=csqa", "task.task=sweep_fx_mc", "task.name=fx", f"task.include_path={task_dir}",
            "task.num_fewshot=0", "eval.batch_size=2", f"store={store}", "device=cpu",
            "wandb.mode=disabled"]


def sweep(args, **kw):
    return subprocess.run([sys.executable, str(ROOT / "sweep.py"), *args], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=300, **kw)


def records(store):
    return {p.stem: json.loads(p.read_text()) for p in (Path(store) / "cells").glob("*.json")}


@pytest.fixture(scope="module")
def basic_grid(tiny_dir, task_dir, tmp_path_factory):
    store = tmp_path_factory.mktemp("basic") / "results"
    first = sweep(grid_args(tiny_dir, task_dir, store))
    return store, first


def test_grid_without_m_runs_three_cells_and_one_baseline(basic_grid):
    store, r = basic_grid
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    recs = records(store)
    assert len(recs) == 4, r.stdout
    assert all(rec["status"] == "ok" for rec in recs.values())
    baselines = [c for c, rec in recs.items() if rec["spec"]["loop"] is None]
    assert len(baselines) == 1
    looped = [rec for rec in recs.values() if rec["spec"]["loop"] is not None]
    assert sorted(rec["spec"]["loop"]["k"] for rec in looped) == [2, 3, 4]
    assert {rec["baseline_id"] for rec in looped} == set(baselines)
    assert "4 done, 0 skipped" in r.stdout
    m = re.search(r"in (\d+) worker processes", r.stdout)      # launcher.workers=auto
    workers = int(m.group(1)) if m else 1
    assert r.stdout.count("loading tiny") == workers     # one model load per worker
    assert r.stdout.count(": ok in ") == 4                # one line per computed cell
    # the live view: a progress line with an ETA, each looped cell's paired delta when done,
    # and the answer at the end (every cell), also in <store>/summary.md / .csv
    assert "[progress " in r.stdout and "ETA " in r.stdout
    assert r.stdout.count("delta vs baseline (paired 95% CI, McNemar p): sweep_fx_mc ") == 3
    table = r.stdout[r.stdout.index("Holm across the grid"):]
    assert sum(ln.startswith("tiny ") for ln in table.splitlines()) == 4
    assert (store / "summary.md").read_text().count("| tiny | ") == 4
    import csv
    rows = list(csv.DictReader((store / "summary.csv").open()))
    assert sorted(rows, key=lambda x: x["loop"])[0]["loop"] == "baseline" and len(rows) == 4
    assert all(x["delta_pp"] != "" for x in rows if x["loop"] != "baseline")


def test_second_run_computes_nothing_and_says_so(basic_grid, tiny_dir, task_dir):
    store, _ = basic_grid
    before = {p.name: p.stat().st_mtime_ns for p in (store / "cells").glob("*.json")}
    r = sweep(grid_args(tiny_dir, task_dir, store))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "nothing to compute" in r.stdout and "0 done, 4 skipped" in r.stdout
    assert "loading" not in r.stdout
    assert before == {p.name: p.stat().st_mtime_ns for p in (store / "cells").glob("*.json")}


def test_sigkill_mid_grid_leaves_no_corrupt_record_and_resumes(tiny_dir, task_dir, tmp_path):
    store = tmp_path / "results"
    big = write_task(tmp_path / "bigtask", n=30)
    args = grid_args(tiny_dir, big, store, ks="2,3,4")
    p = subprocess.Popen([sys.executable, str(ROOT / "sweep.py"), *args], cwd=ROOT, env=env(),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(list((store / "cells").glob("*.json"))) < 2:
        assert p.poll() is None, p.stdout.read()
        time.sleep(0.05)
    time.sleep(0.3)                                   # well inside the next cell
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    done = records(store)                             # every file left is a whole record
    assert 2 <= len(done) < 4
    assert all(rec["status"] == "ok" for rec in done.values())
    r = sweep(args)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    n_missing = 4 - len(done)
    assert f"{n_missing} done, {len(done)} skipped" in r.stdout, r.stdout
    after = records(store)
    assert len(after) == 4 and all(rec["status"] == "ok" for rec in after.values())
    for cid, rec in done.items():                    # what was finished was not recomputed
        assert after[cid]["cost"] == rec["cost"]
    assert not list((store / "locks").glob("*.lock"))


def test_submitit_local_same_records_and_one_shared_baseline(basic_grid, tiny_dir, task_dir, tmp_path):
    store_basic, _ = basic_grid
    store = tmp_path / "results"
    r = sweep(grid_args(tiny_dir, task_dir, store, ks="2,3") + ["hydra/launcher=submitit_local", "group_by=cell",
                                                        "hydra.launcher.timeout_min=10"])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    basic, local = records(store_basic), records(store)
    assert len(local) == 3 and set(local) <= set(basic)   # the same cells get the same ids
    for cid in local:
        assert local[cid]["metrics"] == basic[cid]["metrics"], cid
        assert local[cid]["samples"] == basic[cid]["samples"], cid
    # three concurrent jobs each tried the baseline; exactly one computed it
    baseline = next(c for c, rec in local.items() if rec["spec"]["loop"] is None)
    results = list(store.glob("sweeps/*/.submitit/*/*_result.pkl"))
    assert len(results) == 3, results        # 2 looped cells + the baseline, each its own job
    computed = []
    for f in results:
        status, ret = pickle.loads(f.read_bytes())
        assert status == "success"
        summary = ret                          # run_job's summary
        computed += summary["done"]
        assert baseline in summary["done"] + summary["busy"] + summary["skipped"]
    assert computed.count(baseline) == 1
    assert sorted(computed) == sorted(local)         # every cell computed exactly once


def test_report_true_covers_only_this_grid(basic_grid, tiny_dir, task_dir, tmp_path):
    """report=true builds the tables from the grid's own cells and their baseline (also with
    baseline=false): another grid's records in the same store stay out; figures go to `figures=`,
    else under the store."""
    import csv
    import shutil

    store = tmp_path / "results"
    shutil.copytree(basic_grid[0], store)          # holds the k = 2, 3, 4 grid
    figures = tmp_path / "figs"
    committed = (ROOT / "results" / "figures" / "collapse.png").stat().st_mtime_ns
    git_before = git_status()
    r = sweep(grid_args(tiny_dir, task_dir, store, ks="5,6") + ["report=true", f"figures={figures}",
                                                                 "baseline=false"])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert len(records(store)) == 6
    assert "restricted to the 3 requested cells" in (store / "report.md").read_text()
    rows = list(csv.DictReader((store / "collapse.csv").open()))
    assert rows and {float(row["k"]) for row in rows} == {5.0, 6.0}
    assert (figures / "collapse.png").is_file()
    assert (ROOT / "results" / "figures" / "collapse.png").stat().st_mtime_ns == committed
    # without figures=: under the store; the previous report's files it does not rewrite go
    again = sweep(grid_args(tiny_dir, task_dir, store, ks="5,6") + ["report=true",
                                                                     "baseline=false"])
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert (store / "figures" / "collapse.png").is_file()
    assert not (figures / "collapse.png").exists()
    assert "stale file(s) of the previous report" in again.stdout
    # report=store: every record in the store (the parts of an experiment sharing one store)
    whole = sweep(grid_args(tiny_dir, task_dir, store, ks="5,6") + ["report=store",
                                                                     "baseline=false"])
    assert whole.returncode == 0, whole.stdout[-3000:] + whole.stderr[-3000:]
    assert "restricted" not in (store / "report.md").read_text()
    rows = list(csv.DictReader((store / "collapse.csv").open()))
    assert {float(row["k"]) for row in rows} == {2.0, 3.0, 4.0, 5.0, 6.0}
    bad = sweep(grid_args(tiny_dir, task_dir, store, ks="5,6") + ["report=all"])
    assert bad.returncode == 2 and "report=all: not a choice" in bad.stderr, bad.stderr[-2000:]
    assert git_status() == git_before                     # nothing written into the checkout


def git_status() -> str:
    return subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True,
                          text=True).stdout
