"""Issue 19, harness side: each fault a user could cause, reproduced, and the fixed behaviour.

3 locks: a 0-byte lock, a foreign lock judged by its Slurm job, a second driver that waits.
4 records: a record with a \\xff byte, a record under another cell's file name.
5 response cache: a bf16 run on an fp32 cache, batch 8 on a batch-4 cache, `--model hf` on a
  looped cache.
6 late errors: each reported by planning (no weights loaded) in under 10 s; an offline Hub id is
  "not run" for every cell of its model, decided once.
7+8 canonical ids: equivalent specs share one id; two copies of the checkout at different paths
  plan the demo grid with identical ids.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness import config
from harness import store as st
from harness.plan import PlanError, plan_grid
from tests.harness.test_store import record

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("offline")       # fixtures offline / session: conftest


def env(**extra):
    e = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
             WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", **extra)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    return e


# ---- 3. locks ------------------------------------------------------------------------------------
def test_zero_byte_lock_is_stale_after_the_grace_period_not_a_day(tmp_path):
    path = st.lock_path(tmp_path, "c0")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")                     # the disk filled while the lock was created
    with st.cell_lock(tmp_path, "c0") as mine:
        assert not mine                       # fresh: its writer may still be writing
    assert "empty or unreadable" in st.judge_lock(path)[1]
    old = time.time() - st.LOCK_GRACE_S - 5
    os.utime(path, (old, old))
    with st.cell_lock(tmp_path, "c0", stale_s=86400) as mine:
        assert mine                           # judged by content: taken over after the grace
        assert json.loads(path.read_text())["pid"] == os.getpid()
    # the same for bytes that are not a lock
    path.write_bytes(b"\xff\x00garbage")
    os.utime(path, (old, old))
    assert st.judge_lock(path)[0]


def test_lock_is_created_with_its_content_including_the_slurm_job(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    with st.cell_lock(tmp_path, "c1") as mine:
        assert mine
        info = json.loads(st.lock_path(tmp_path, "c1").read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        assert info["slurm_job_id"] == "4242"
    # no temporaries left beside it
    assert not list(st.lock_path(tmp_path, "c1").parent.iterdir())


def _fake_slurm(bin_dir: Path, state: str | None) -> None:
    """A `squeue` on PATH that reports `state` for any job (None: the job is not known)."""
    bin_dir.mkdir(exist_ok=True)
    unknown = "echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1"
    out = f"echo {state}" if state else unknown
    (bin_dir / "squeue").write_text(f"#!/bin/sh\n{out}\n")
    (bin_dir / "squeue").chmod(0o755)


@pytest.mark.parametrize("state, stale", [("RUNNING", False), ("PENDING", False), (None, True)])
def test_foreign_lock_is_judged_by_its_slurm_job(tmp_path, monkeypatch, state, stale):
    _fake_slurm(tmp_path / "bin", state)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    path = st.lock_path(tmp_path, "c2")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"pid": 1, "host": "node-elsewhere", "time": time.time(),
                                "slurm_job_id": "777"}))
    got, why = st.judge_lock(path, stale_s=86400)
    assert got is stale, why
    assert "Slurm job 777" in why
    with st.cell_lock(tmp_path, "c2") as mine:
        assert mine is stale                  # a cancelled job's lock is not trusted for a day


def test_foreign_lock_without_evidence_falls_back_to_lock_stale_s(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))          # no squeue / sacct here
    path = st.lock_path(tmp_path, "c3")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"pid": 1, "host": "node-elsewhere", "time": time.time(),
                                "slurm_job_id": "777"}))
    assert not st.judge_lock(path, stale_s=3600)[0]
    os.utime(path, (0, 0))
    assert st.judge_lock(path, stale_s=3600)[0]


def test_second_driver_waits_for_a_cell_a_live_process_computes(tmp_path, monkeypatch):
    """A cell locked by another live process is waited for (with a line saying so) and counted as
    finished by that process, not reported busy (the old driver exited 1 for it)."""
    from harness import run as hr
    from harness.record import CellRecord
    from harness.spec import CellSpec, cell_id

    monkeypatch.setattr(hr, "WAIT_POLL_S", 0.2)
    spec = CellSpec(model="m/x", task="t1", limit=2)
    cid = cell_id(spec)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path = st.lock_path(tmp_path, cid)
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                    "time": time.time()}))

        waiting = threading.Event()

        def other_process_finishes():
            waiting.wait(120)                 # the driver has seen the lock
            time.sleep(0.5)
            rec = dict(record(cid), spec=spec.to_dict())
            st.write_record(tmp_path, CellRecord.from_dict(rec))
            path.unlink()

        t = threading.Thread(target=other_process_finishes)
        t.start()
        lines = []
        def log(text, **kw):
            lines.append(text)
            if "another process is computing it" in text:
                waiting.set()

        summary = hr.run_cells([(spec, "x")], store=tmp_path, log=log)
        t.join()
    finally:
        holder.kill()
        holder.wait()
    text = "\n".join(lines)
    assert f"pid {holder.pid}" in text and "another process is computing it" in text
    assert summary["busy"] == [] and summary["skipped"] == [cid], text
    assert "finished by another process" in text


# ---- 4. records ----------------------------------------------------------------------------------
def test_record_with_a_non_utf8_byte_is_broken_not_a_crash(tmp_path, capsys):
    st.write_record(tmp_path, record("good00000000"))
    st.write_record(tmp_path, record("bad000000000"))
    bad = st.record_path(tmp_path, "bad000000000")
    bad.write_bytes(bad.read_bytes().replace(b'"ok"', b'"\xffk"', 1))
    assert st.status_of(tmp_path, "bad000000000") == "broken"      # recomputed by the planner
    df = st.load_results(tmp_path)
    assert set(df.cell_id) == {"good00000000"}
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad000000000.json" in err[0] and "not UTF-8" in err[0]
    with pytest.raises(st.RecordError, match="not UTF-8"):
        st.load_results(tmp_path, strict=True)
    # the report skips it and says so
    from harness.report import make_report
    out = make_report(tmp_path, tmp_path / "report", tmp_path / "figures", n_boot=10,
                      log=lambda *a: None)
    assert any("bad000000000.json" in k for k in out["skipped"])
    assert "bad000000000.json" in (tmp_path / "report" / "report.md").read_text()


def test_record_under_another_cells_name_is_broken(tmp_path, capsys):
    st.write_record(tmp_path, record("aaaaaaaaaaaa"))
    shutil.copy(st.record_path(tmp_path, "aaaaaaaaaaaa"), st.record_path(tmp_path, "bbbbbbbbbbbb"))
    assert st.status_of(tmp_path, "aaaaaaaaaaaa") == "ok"
    status, why = st.check_record(tmp_path, "bbbbbbbbbbbb")
    assert status == "broken" and "'aaaaaaaaaaaa'" in why and "bbbbbbbbbbbb" in why
    assert list(st.load_results(tmp_path).cell_id.unique()) == ["aaaaaaaaaaaa"]
    assert "bbbbbbbbbbbb.json" in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"\xff\xfe", b"{not json", b"[1, 2]", b'{"cell_id": 3}'])
def test_planner_recomputes_a_broken_record_and_says_so(session, tmp_path, content):
    plan = plan_grid([f"store={tmp_path}"], costs=False)
    cid = plan.cells[1].cell_id
    st.cells_dir(tmp_path).mkdir(parents=True)
    st.record_path(tmp_path, cid).write_bytes(content)
    plan = plan_grid([f"store={tmp_path}"], costs=False)
    cell = next(c for c in plan.cells if c.cell_id == cid)
    assert cell.status == "broken" and cell in plan.todo and cell.problem
    from harness.plan import plan_notes
    assert any(n.startswith("broken record") and f"{cid}.json" in n for n in plan_notes(plan))


# ---- 5. the response cache -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def lms(tiny_model_dir):
    from harness.adapter import LoopedLM

    def make(dtype="float32", batch=4, loop="window=1:3,k=2,integrator=euler"):
        return LoopedLM.create_from_arg_string(
            f"pretrained={tiny_model_dir},dtype={dtype},batch_size={batch},max_length=512,{loop}",
            {"device": "cpu"})
    return make


def _db(path):
    from sqlitedict import SqliteDict
    return SqliteDict(str(path), autocommit=False)


@pytest.mark.parametrize("change, field", [(dict(dtype="bfloat16"), "dtype"),
                                           (dict(batch=8), "batch_size"),
                                           (dict(loop="window=1:3,k=3,integrator=euler"), "loop")])
def test_response_cache_refuses_a_run_that_differs_naming_the_field(lms, tmp_path, change, field):
    from harness.adapter import ModelArgsError, bind_response_cache

    first = lms()
    with _db(tmp_path / "c_rank0.db") as db:
        bind_response_cache(db, first.cache_owner())
        db["some request"] = "fp32 answer"
        db.commit()
        bind_response_cache(db, lms().cache_owner())               # the same run: served
        with pytest.raises(ModelArgsError, match=f"with {field}=") as info:
            bind_response_cache(db, lms(**change).cache_owner())
    assert "this run has" in str(info.value)
    owner = first.cache_owner()
    assert owner["weights"] and owner["lm_eval"] and owner["max_length"] == 512
    assert owner["dtype"] == "float32" and owner["batch_size"] == 4


def test_model_hf_on_a_looped_cache_is_refused_by_our_cli(lms, tmp_path):
    from harness.adapter import bind_response_cache
    from harness.cli import _check_response_cache

    with _db(tmp_path / "lc_rank0.db") as db:
        bind_response_cache(db, lms().cache_owner())
    argv = ["loopsweep-eval", "run", "--model", "hf", "--model_args", "pretrained=x",
            "--use_cache", str(tmp_path / "lc")]
    with pytest.raises(SystemExit, match="--model hf would be served its answers"):
        _check_response_cache(argv)
    _check_response_cache(argv[:3] + ["looped"] + argv[4:])        # looped checks the stamp itself
    _check_response_cache(argv[:-1] + [str(tmp_path / "fresh")])   # a fresh path: fine


def test_a_cells_request_cache_of_an_older_stamp_is_dropped_not_a_failure(lms, tmp_path):
    """A preempted cell's per-cell cache stamped by the older {model, loop} stamp: the new
    binding would refuse it on every retry, so the sweep deletes it (its requests rerun)."""
    from harness.adapter import CACHE_MARKER, bind_response_cache
    from harness.run import _drop_outdated_cache

    with _db(tmp_path / "old_rank0.db") as db:
        db[CACHE_MARKER] = json.dumps({"model": "x", "loop": None})
        db["req"] = "answer"
        db.commit()
    with _db(tmp_path / "new_rank0.db") as db:
        bind_response_cache(db, lms().cache_owner())
    lines = []
    for name in ("old", "new"):
        _drop_outdated_cache(tmp_path / name, log=lambda s, **k: lines.append(s))
    assert not (tmp_path / "old_rank0.db").exists() and (tmp_path / "new_rank0.db").exists()
    assert len(lines) == 1 and "older loopsweep" in lines[0]


# ---- 6. late errors, reported by planning --------------------------------------------------------
@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """One valid plan first: the timings below measure planning, not this worker's first import
    of transformers and lm-eval's task index."""
    with config.hydra_session():
        plan_grid([f"store={tmp_path_factory.mktemp('warm')}"], costs=False)


@pytest.mark.parametrize("override, message", [
    ("loop.window='0:99'", "0:99"),
    ("loop.window=c0.5w9", "c0.5w9"),
    ("model.dtype=bfloat61", "model.dtype=bfloat61: not a dtype"),
    ("task.limit=0", "task.limit=0"),
    ("task.limit=-3", "task.limit=-3"),
    ("model.path=/no/such/model", "no such directory"),
    ("model.path=./not/here/either", "no such directory"),
])
def test_late_errors_are_planning_errors_in_under_10s(warm, session, tmp_path, override, message):
    t0 = time.perf_counter()
    with pytest.raises(PlanError) as info:
        plan_grid([override, "loop.k=2,3", f"store={tmp_path}"])
    assert time.perf_counter() - t0 < 10
    assert message in str(info.value)
    assert len(info.value.lines) == 1                  # one line for the grid, not one per cell


def test_a_bad_cell_is_exit_2_before_any_weights_load(tmp_path):
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(ROOT / "sweep.py"), "loop.window='0:99'", "loop.k=2,3",
                        f"store={tmp_path}"], cwd=ROOT, env=env(), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2, r.stderr
    assert "0:99" in r.stderr and "[cell" not in r.stdout        # no cell started
    assert not (tmp_path / "cells").exists()
    print(f"sweep.py refused the grid in {time.perf_counter() - t0:.1f}s (with interpreter start)")


def test_offline_hub_model_is_not_run_once_per_model(warm, session, tmp_path):
    t0 = time.perf_counter()
    plan = plan_grid(["model=qwen3-4b", "task=embedded-mc", "loop.k=2,3,4", f"store={tmp_path}"])
    assert time.perf_counter() - t0 < 10
    assert len(plan.not_run) == 4 and not plan.todo              # 3 looped + the baseline
    reasons = {c.not_run for c in plan.not_run}
    assert len(reasons) == 1 and "HF_HUB_OFFLINE=1" in reasons.pop()


def test_offline_hub_model_cells_are_reported_not_run_by_the_driver(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "sweep.py"), "model=qwen3-4b",
                        "task=embedded-mc", "loop.k=2,3",
                        f"store={tmp_path}"], cwd=ROOT, env=env(), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    not_run = [ln for ln in r.stdout.splitlines() if ln.startswith("[loopsweep] not run ")]
    assert len(not_run) == 3 and all("HF_HUB_OFFLINE=1" in ln for ln in not_run)
    assert "3 not run (model unavailable)" in r.stdout and "[cell" not in r.stdout


# ---- 7. equivalent specs share one id ------------------------------------------------------------
@pytest.mark.parametrize("a, b", [
    (["loop.window=c0.5w1"], ["loop.window='4:5'"]),                     # the same layers
    (["loop.decode=full", "loop.decode_n=64"], ["loop.decode=full", "loop.decode_n=8"]),
    (["loop=naive", "loop.beta=0.5"], ["loop=naive", "loop.beta=0.9"]),   # naive reads no beta
    (["loop.routing=auto"], ["loop.routing=freeze"]),                      # a dense model
    (["loop.kv=first"], ["loop.kv=last"]),                                # loglikelihood task
])
def test_equivalent_specs_share_one_id(session, tmp_path, a, b):
    ids = [[c.cell_id for c in plan_grid([*x, "task=embedded-mc", f"store={tmp_path}"],
                                         costs=False).cells] for x in (a, b)]
    assert ids[0] == ids[1]
    both = plan_grid([*a, "task=embedded-mc", f"store={tmp_path}"], costs=False)
    assert len(both.cells) == 2


def test_a_grid_of_equivalent_settings_runs_them_once(session, tmp_path):
    plan = plan_grid(["loop.window=c0.5w1,'4:5'", "task=embedded-mc", f"store={tmp_path}"],
                     costs=False)
    assert len(plan.cells) == 2 and plan.equivalent == 1


def test_settings_that_differ_keep_different_ids(session, tmp_path):
    ids = {plan_grid([w, "task=embedded-mc", f"store={tmp_path}"], costs=False).cells[1].cell_id
           for w in ("loop.window='4:5'", "loop.window='3:5'", "loop.k=4")}
    assert len(ids) == 3
    gen = [plan_grid([kv, "task=embedded-gen", f"store={tmp_path}"], costs=False).cells[1].cell_id
           for kv in ("loop.kv=first", "loop.kv=last")]
    assert gen[0] != gen[1]                             # generation reads kv


# ---- 8. ids do not depend on where the checkout lies ---------------------------------------------
def _copy_checkout(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for f in files:
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    return dest


PLAN_IDS = """
import json, sys
from harness import config
from harness.plan import plan_grid
with config.hydra_session():
    plan = plan_grid(["experiment=demo", "store=" + sys.argv[1]], costs=False, check_hub=False)
print(json.dumps([c.cell_id for c in plan.cells]))
"""


@pytest.mark.slow
def test_demo_grid_has_the_same_ids_in_two_copies_of_the_checkout(tmp_path):
    copies = [_copy_checkout(tmp_path / "a" / "loopsweep"),
              _copy_checkout(tmp_path / "elsewhere" / "deeper" / "clone")]
    procs = []
    for c in copies:
        e = env()
        e["PYTHONPATH"] = str(c)                       # this copy's harness, tasks and data
        procs.append(subprocess.Popen([sys.executable, "-c", PLAN_IDS, str(c / "results")], cwd=c,
                                      env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    ids = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert len(ids[0]) == 110 and ids[0] == ids[1]
    # and they are the ids of the committed tables (migrated to canonical ids)
    import pandas as pd
    committed = set(pd.read_csv(ROOT / "results" / "strategy_k.csv").cell_id)
    assert len(committed) == 108 and committed <= set(ids[0])


# ---- migration of older records ------------------------------------------------------------------
RECORDS = ROOT / "tests" / "harness" / "data" / "records"


def _legacy(tmp_path, new_id, old_id, **spec_loop):
    """A committed record as schema 1 wrote it: another id, the loop as the user spelled it."""
    d = json.loads((RECORDS / f"{new_id}.json").read_text())
    d.update(schema_version=1, cell_id=old_id)
    d["spec"]["task_version"] = "1.0+ca597eee"           # hashed with the old checkout's paths
    if spec_loop:
        d["spec"]["loop"] = dict(d["spec"]["loop"], **spec_loop)
    st.cells_dir(tmp_path).mkdir(parents=True, exist_ok=True)
    st.record_path(tmp_path, old_id).write_text(json.dumps(d))
    return d


def test_migrate_ids_rewrites_older_records_to_canonical_ids(tmp_path, capsys):
    from harness.store import main

    old = _legacy(tmp_path, "d502eea3c3c5", "1b8bb31dfe43", window="c0.5w1")
    _legacy(tmp_path, "d502eea3c3c5", "0123456789ab", window="4:5")       # the same cell again
    _legacy(tmp_path, "b5d6e7562b19", "23dfa6260729")                       # its baseline
    assert main(["migrate-ids", str(tmp_path), "--dry-run"]) == 0
    assert sorted(p.stem for p in st.cells_dir(tmp_path).glob("*.json")) == [
        "0123456789ab", "1b8bb31dfe43", "23dfa6260729"]
    assert main(["migrate-ids", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "1b8bb31dfe43 -> d502eea3c3c5" in out and "collision" in out
    assert sorted(p.stem for p in st.cells_dir(tmp_path).glob("*.json")) == [
        "b5d6e7562b19", "d502eea3c3c5"]
    assert len(list((tmp_path / "superseded").glob("*.json"))) == 1     # kept, never deleted
    rec = st.read_record(tmp_path, "d502eea3c3c5")
    assert rec.schema_version == st.SCHEMA_VERSION and rec.baseline_id == "b5d6e7562b19"
    assert rec.metrics == old["metrics"] and rec.samples == old["samples"]   # no recomputation
    assert main(["migrate-ids", str(tmp_path)]) == 0                       # idempotent
    assert "0 record(s) migrated" in capsys.readouterr().out
