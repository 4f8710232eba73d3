"""The cell store: atomic records, clear errors for broken files, tidy tables, the per-cell lock."""
import json
import math
import os
import subprocess
import sys

import pandas as pd
import pytest

from harness import store as st


def record(cid="abc123", status="ok", loop=True, tasks=("t1",)):
    spec = {"model": "m/x", "model_name": "x", "task": ",".join(tasks), "task_name": "tn",
            "num_fewshot": 0, "limit": None, "batch_size": 2, "seed": 1, "metric": "acc,none",
            "loop": {"window": "1:3", "k": 3, "integrator": "euler", "mode": "block", "kv": "first",
                     "decode": "full", "routing": "auto", "beta": 0.5, "alpha": 1.0} if loop else None}
    return {
        "schema_version": 1, "cell_id": cid, "status": status, "error": None if status == "ok" else "boom",
        "spec": spec,
        "loop_resolved": {"window_layers": "1:3", "window_centre": 0.375, "window_width": 2,
                          "mode_resolved": "block", "routing_resolved": "n/a"} if loop else None,
        "baseline_id": "base00000000" if loop else None,
        "metrics": {t: {"acc,none": 0.5, "acc_stderr,none": 0.1} for t in tasks} if status == "ok" else {},
        "primary_metric": "acc,none",
        "samples": {t: [{"doc_id": i, "doc_hash": "d", "prompt_hash": "p", "target_hash": "t",
                         "score": float(i % 2)} for i in range(4)] for t in tasks} if status == "ok" else {},
        "cost": {"wall_time_s": 1.0, "peak_mem_bytes": 10, "window_passes": 3 if loop else 0,
                 "layer_calls": None},
        "diagnostics": {"routing_change_rate": None}, "env": {}, "lm_eval_config": None,
    }


def test_write_is_atomic_and_leaves_no_temporaries(tmp_path):
    p = st.write_record(tmp_path, record())
    assert p == tmp_path / "cells" / "abc123.json"
    assert json.loads(p.read_text())["cell_id"] == "abc123"
    assert [f.name for f in (tmp_path / "cells").iterdir()] == ["abc123.json"]


def test_write_killed_midway_keeps_the_old_file(tmp_path):
    st.write_record(tmp_path, record())
    code = f"""
import os, json, harness.store as st
orig = json.dump
def dump(obj, f, **kw):
    f.write('{{"cell_id": "abc123", "status": "ok", "trunc')
    f.flush(); os.kill(os.getpid(), 9)
json.dump = dump
st.write_record({str(tmp_path)!r}, {record(status="failed")!r})
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert r.returncode == -9
    rec = st.read_record(tmp_path, "abc123")
    assert rec["status"] == "ok"                       # the old record, whole
    assert len(st.load_results(tmp_path)) == 1          # the stray temporary is not a record


def test_record_validation(tmp_path):
    with pytest.raises(st.RecordError, match="status"):
        st.write_record(tmp_path, dict(record(), status="done"))
    with pytest.raises(st.RecordError, match="spec"):
        st.write_record(tmp_path, {"schema_version": 1, "cell_id": "x", "status": "ok"})


def test_broken_record_is_named_and_skipped(tmp_path, capsys):
    st.write_record(tmp_path, record("good00000000"))
    bad = tmp_path / "cells" / "bad000000000.json"
    bad.write_text('{"cell_id": "bad0", "stat')
    with pytest.raises(st.RecordError, match="bad000000000.json"):
        st.read_record(tmp_path, "bad000000000")
    assert st.status_of(tmp_path, "bad000000000") == "broken"
    df = st.load_results(tmp_path)
    assert list(df.cell_id) == ["good00000000"]
    assert "bad000000000.json" in capsys.readouterr().err
    with pytest.raises(st.RecordError, match="bad000000000.json"):
        st.load_results(tmp_path, strict=True)


def test_load_results_columns_and_values(tmp_path):
    st.write_record(tmp_path, record("looped000000", tasks=("t1", "t2")))
    st.write_record(tmp_path, record("base00000000", loop=False))
    st.write_record(tmp_path, record("fail00000000", status="failed"))
    df = st.load_results(tmp_path)
    assert list(df.columns) == st.RESULT_COLUMNS
    assert len(df) == 4
    looped = df[df.cell_id == "looped000000"].iloc[0]
    assert looped.integrator == "euler" and looped.k == 3 and looped.window == "1:3"
    assert looped.value == 0.5 and looped.stderr == 0.1 and looped.n == 4
    assert looped["mode"] == "block" and looped.routing == "n/a" and not looped.is_baseline
    base = df[df.cell_id == "base00000000"].iloc[0]
    assert base.is_baseline and pd.isna(base.integrator) and base.baseline_id == ""
    fail = df[df.cell_id == "fail00000000"].iloc[0]
    assert fail.status == "failed" and math.isnan(fail.value) and fail.error == "boom"
    assert len(st.load_results(tmp_path, status="ok")) == 3


def test_load_samples(tmp_path):
    st.write_record(tmp_path, record("looped000000", tasks=("t1", "t2")))
    df = st.load_samples(tmp_path)
    assert list(df.columns) == st.SAMPLE_COLUMNS
    assert len(df) == 8 and set(df.task) == {"t1", "t2"} and df.score.sum() == 4


def test_empty_store(tmp_path):
    assert st.load_results(tmp_path / "nothing").empty
    assert st.load_samples(tmp_path / "nothing").empty


def test_lock_is_exclusive_and_released(tmp_path):
    with st.cell_lock(tmp_path, "c1") as a:
        assert a
        with st.cell_lock(tmp_path, "c1") as b:
            assert not b                              # held by a live process (us)
    assert not st.lock_path(tmp_path, "c1").exists()
    with st.cell_lock(tmp_path, "c1") as c:
        assert c


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    path = st.lock_path(tmp_path, "c2")
    path.parent.mkdir(parents=True)
    import socket
    path.write_text(json.dumps({"pid": p.pid, "host": socket.gethostname(), "time": 0}))
    with st.cell_lock(tmp_path, "c2") as mine:
        assert mine
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_lock_of_another_host_is_trusted_until_stale(tmp_path):
    path = st.lock_path(tmp_path, "c3")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"pid": 1, "host": "elsewhere", "time": 0}))
    with st.cell_lock(tmp_path, "c3", stale_s=3600) as mine:
        assert not mine
    os.utime(path, (0, 0))
    with st.cell_lock(tmp_path, "c3", stale_s=3600) as mine:
        assert mine


def test_compare_stores_script_names_the_cells_that_differ(tmp_path):
    """scripts/compare_stores.py (the regeneration check of docs/real-models.md): equal answers
    pass; a changed score, a missing cell, a store that is not one each fail with their names."""
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "compare_stores.py"
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        st.write_record(root, record("same00000000"))
        st.write_record(root, record("chgd00000000"))
    changed = record("chgd00000000")
    changed["samples"]["t1"][2]["score"] = 1.0
    st.write_record(b, changed)
    st.write_record(a, record("only00000000"))

    def run(*args):
        return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True,
                              text=True)

    r = run(a, b)
    assert r.returncode == 1
    assert "DIFFERS chgd00000000: 1 of 4 samples differ in score" in r.stdout
    assert "MISSING only00000000" in r.stdout and "same00000000" not in r.stdout
    assert "1 cell(s) with the same per-sample answers, 1 differ, 1 missing" in r.stdout
    ids = tmp_path / "ids.txt"
    ids.write_text("same00000000\n")
    assert run(a, b, "--cells", ids).returncode == 0
    r = run(a, tmp_path / "nowhere")
    assert r.returncode == 2 and "is neither a results store" in r.stderr
    # a committed report without record files (a fresh clone): compared by its answers.csv
    report = tmp_path / "report"
    report.mkdir()
    st.answer_digests(st.load_samples(b)).to_csv(report / st.ANSWERS_FILE, index=False)
    r = run(a, report)
    assert r.returncode == 1 and "comparing with its answers.csv" in r.stdout
    assert "DIFFERS chgd00000000: 1 of 4 samples differ in score" in r.stdout
    assert "MISSING only00000000" in r.stdout
    assert "1 cell(s) with the same per-sample answers, 1 differ, 1 missing" in r.stdout
    assert run(a, report, "--cells", ids).returncode == 0
    moved = record("same00000000")                    # same scores, another prompt
    moved["samples"]["t1"][0]["prompt_hash"] = "0" * 64
    st.write_record(a, moved)
    r = run(a, report, "--cells", ids)
    assert r.returncode == 1 and "DIFFERS same00000000: per-sample rows differ" in r.stdout


def test_answer_digests_carry_each_cells_per_sample_answers(tmp_path):
    """answers.csv (written by every report): one row per cell, its per-sample scores in doc order
    and a hash that changes with any per-sample field but not with record order."""
    st.write_record(tmp_path, record("aaaa00000000"))
    st.write_record(tmp_path, record("bbbb00000000"))
    d = st.answer_digests(st.load_samples(tmp_path)).set_index("cell_id")
    assert list(d.index) == ["aaaa00000000", "bbbb00000000"]
    samples = st.load_samples(tmp_path)
    one = samples[samples.cell_id == "aaaa00000000"].sort_values(["task", "doc_id"])
    assert d.loc["aaaa00000000", "n"] == len(one)
    assert d.loc["aaaa00000000", "scores"] == "".join(str(int(s)) for s in one.score)
    shuffled = st.answer_digests(samples.iloc[::-1])
    assert list(shuffled.answers_sha256) == list(d.answers_sha256)
    first = samples.index[samples.cell_id == "aaaa00000000"]
    samples.loc[first[0], "target_hash"] = "f" * 64
    changed = st.answer_digests(samples).set_index("cell_id")
    assert changed.loc["aaaa00000000", "answers_sha256"] != d.loc["aaaa00000000", "answers_sha256"]
    assert changed.loc["bbbb00000000", "answers_sha256"] == d.loc["bbbb00000000", "answers_sha256"]
    samples.loc[first[1], "score"] = 0.5
    assert st.answer_digests(samples).set_index("cell_id").loc["aaaa00000000", "scores"] == ""
