"""`python sweep.py ... launcher=slurm_cpu` through a real single-node Slurm (conftest.py starts
it): the embedded model, a real lm-eval task, real array tasks. An array with one cell per task
where every cell lands; a `scancel` of one task and a SIGKILL of another mid-cell, reported by
the driver as dead within 2 minutes while the third task finishes (exit non-zero); the rerun, ONE
task with the missing cells, which computes only those and exits 0; the GPU preset refused on
this CPU-only cluster before anything is submitted."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# one xdist worker runs them all (one cluster; the rerun uses the killed grid): --dist loadgroup
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("slurm")]


def env(cluster) -> dict[str, str]:
    e = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
             WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false", **cluster.env())
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def grid(store, ks: str, limit: int, *extra: str) -> list[str]:
    """The embedded model's grid: loop.k=<ks>, no baseline (so a task computes exactly its cells),
    one CPU and 1 GB per task (the node has 2 CPUs: two tasks at once)."""
    return [sys.executable, str(ROOT / "sweep.py"), "model=embedded", "task=embedded-mc",
            f"task.limit={limit}", f"loop.k={ks}", "baseline=false", "eval.batch_size=1",
            f"store={store}", "device=cpu", "wandb.mode=disabled", "launcher=slurm_cpu",
            "launcher.cpus_per_task=1", "launcher.mem_gb=1", "launcher.poll_s=2", *extra]


def records(store) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (Path(store) / "cells").glob("*.json")}


def squeue(cluster) -> str:
    return subprocess.run(["squeue", "-h", "-o", "%i %T"], env=env(cluster), capture_output=True,
                          text=True, timeout=30).stdout


class Driver:
    """The driver as a subprocess, its output lines with the time each arrived."""

    def __init__(self, args, cluster):
        self.p = subprocess.Popen(args, cwd=ROOT, env=env(cluster), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: list[tuple[float, str]] = []
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.append((time.time(), line.rstrip("\n")))

    @property
    def out(self) -> str:
        return "\n".join(ln for _, ln in self.lines)

    def wait(self, timeout: float) -> int:
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait()
            pytest.fail(f"the driver did not end within {timeout:.0f}s (a hang):\n{self.out}")
        finally:
            self.t.join(5)


def test_array_one_cell_per_task_every_cell_lands(slurm, tmp_path):
    store = tmp_path / "results"
    d = Driver(grid(store, "2,3", 4, "group_by=cell"), slurm)
    assert d.wait(300) == 0, d.out
    out = d.out
    array = next(ln for ln in out.splitlines() if "submitted Slurm array" in ln)
    assert "with 2 task(s)" in array and "_0: 1 cell(s)" in array and "_1: 1 cell(s)" in array
    recs = records(store)
    assert len(recs) == 2 and all(r["status"] == "ok" for r in recs.values())
    assert sorted(r["spec"]["loop"]["k"] for r in recs.values()) == [2, 3]
    assert "2 done, 0 skipped" in out and ": dead" not in out and "0 dead" in out
    assert not list((store / "locks").glob("*.lock"))


@pytest.fixture(scope="module")
def killed(slurm, tmp_path_factory):
    """Three one-cell tasks; once two are computing, `scancel` one and SIGKILL the other's
    Python process. Returns (store, driver, {'scancel': (task, cell, t), 'sigkill': ...}, rc)."""
    store = tmp_path_factory.mktemp("killed") / "results"
    d = Driver(grid(store, "2,3,4", 80, "group_by=cell"), slurm)
    locks: dict[str, dict] = {}
    deadline = time.time() + 240
    while len(locks) < 2:
        assert time.time() < deadline and d.p.poll() is None, d.out
        for p in (store / "locks").glob("*.lock"):
            try:
                info = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            if info.get("slurm_job"):          # the lock records the Slurm array task
                locks[p.stem] = info
        time.sleep(0.2)
    time.sleep(3)                               # inside the cells (model loaded, lm-eval running)
    (cell_a, a), (cell_b, b) = sorted(locks.items(), key=lambda kv: kv[1]["slurm_job"])
    subprocess.run(["scancel", a["slurm_job"]], env=env(slurm), check=True, timeout=30)
    t_a = time.time()
    os.kill(b["pid"], signal.SIGKILL)
    t_b = time.time()
    rc = d.wait(420)
    return store, d, {"scancel": (a["slurm_job"], cell_a, t_a),
                      "sigkill": (b["slurm_job"], cell_b, t_b)}, rc


def test_dead_tasks_reported_within_two_minutes_others_finish_exit_nonzero(killed, slurm):
    store, d, kills, rc = killed
    out = d.out
    assert rc == 1, out
    for how, (task, cell, t_kill) in kills.items():
        seen = [t for t, ln in d.lines if f"task {task}: dead" in ln]
        assert seen, f"{how}: task {task} never reported dead\n{out}"
        assert seen[0] - t_kill < 120, f"{how}: reported {seen[0] - t_kill:.0f}s after\n{out}"
        # the final report: id, state, log path and the cell still missing
        final = [ln for ln in out.splitlines() if ln.startswith(f"[loopsweep] task {task} dead")]
        assert final and "log " in final[0] and cell in final[0], out
    recs = records(store)
    assert len(recs) == 1 and all(r["status"] == "ok" for r in recs.values()), out
    assert "1 done, 0 skipped (already ok), 0 failed, 2 missing" in out and "partial grid" in out
    # scancel = SIGTERM: the task stopped cleanly and released its lock; SIGKILL left its lock
    task_a, cell_a, _ = kills["scancel"]
    assert not (store / "locks" / f"{cell_a}.lock").exists()
    log_a = next(ln for ln in out.splitlines() if f"task {task_a} dead" in ln).split("log ")[1]
    assert "stopped (SIGTERM)" in Path(log_a.split(";")[0].strip()).read_text()
    assert not squeue(slurm).strip()            # nothing left running or pending


def test_rerun_one_task_completes_only_the_missing_cells(killed, slurm):
    store, _, kills, _ = killed
    before = {p.name: p.stat().st_mtime_ns for p in (store / "cells").glob("*.json")}
    d = Driver(grid(store, "2,3,4", 80, "group_by=model"), slurm)
    assert d.wait(420) == 0, d.out
    out = d.out
    array = next(ln for ln in out.splitlines() if "submitted Slurm array" in ln)
    assert "with 1 task(s)" in array and "_0: 2 cell(s)" in array, array   # one job, two cells
    assert "2 done, 1 skipped" in out, out
    recs = records(store)
    assert len(recs) == 3 and all(r["status"] == "ok" for r in recs.values())
    assert {c for _, c, _ in kills.values()} <= set(recs)
    for name, mtime in before.items():                 # the finished cell was not recomputed
        assert (store / "cells" / name).stat().st_mtime_ns == mtime
    assert not list((store / "locks").glob("*.lock"))


def test_gpu_preset_refused_on_a_cpu_partition_before_submitting(slurm, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "sweep.py"), "model=embedded",
                        "task=embedded-mc", "task.limit=2", f"store={tmp_path / 'results'}",
                        "launcher=slurm", "launcher.partition=debug"], cwd=ROOT, env=env(slurm),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and "1 GPU(s)" in err[0] and "no node of partition debug" in err[0], err
    assert "submitted" not in r.stdout and not squeue(slurm).strip()
    assert not (tmp_path / "results" / "sweeps").exists()
