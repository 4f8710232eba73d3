"""harness.record: real records (written by `python sweep.py experiment=demo`: a baseline, a looped
multiple-choice cell and a looped generative cell) read into CellRecord and back without losing a
key or a value; malformed records are refused with a message naming the problem."""
import json
import math
from pathlib import Path

import pytest

from harness import store as st
from harness.record import SCHEMA_VERSION, CellRecord, RecordError

RECORDS = sorted((Path(__file__).parent / "data" / "records").glob("*.json"))


def test_there_are_sample_records():
    assert len(RECORDS) == 3
    kinds = {(json.loads(p.read_text())["spec"]["loop"] is None,
              json.loads(p.read_text())["spec"]["task_name"]) for p in RECORDS}
    assert kinds == {(True, "embedded-mc"), (False, "embedded-mc"), (False, "embedded-gen")}


@pytest.mark.parametrize("path", RECORDS, ids=[p.stem for p in RECORDS])
def test_every_record_round_trips(path):
    raw = json.loads(path.read_text())
    rec = CellRecord.from_json(path.read_text(), source=str(path))
    assert rec.to_dict() == raw                          # nothing lost, nothing added
    assert list(rec.to_dict()) == list(raw)              # the schema's key order
    assert CellRecord.from_json(rec.to_json()) == rec
    assert rec.cell_id == path.stem and rec["status"] == rec.status == "ok"
    assert rec.is_baseline == (rec.baseline_id is None) == (rec.loop_resolved is None)
    spec = rec.cell_spec()                               # the spec is a whole CellSpec
    assert spec.to_dict() == raw["spec"]


@pytest.mark.parametrize("path", RECORDS, ids=[p.stem for p in RECORDS])
def test_store_writes_what_it_reads(path, tmp_path):
    rec = CellRecord.from_json(path.read_text())
    st.write_record(tmp_path, rec)
    again = st.read_record(tmp_path, rec.cell_id)
    assert again == rec
    assert json.loads(st.record_path(tmp_path, rec.cell_id).read_text()) == json.loads(
        path.read_text())


def test_rows_come_from_the_record(tmp_path):
    for p in RECORDS:
        st.write_record(tmp_path, CellRecord.from_json(p.read_text()))
    df = st.load_results(tmp_path)
    assert list(df.columns) == st.RESULT_COLUMNS and len(df) == 3
    looped = df[~df.is_baseline].set_index("task")
    mc = looped.loc["embedded_mc"]
    rec = CellRecord.from_json(next(p for p in RECORDS if p.stem == mc.cell_id).read_text())
    assert mc.baseline_id == rec.baseline_id and mc.baseline_id in set(df.cell_id)
    assert mc.window == rec.loop_resolved["window_layers"] and mc.k == rec.loop["k"]
    assert mc.window_passes == rec.cost["window_passes"]
    assert mc.n == len(rec.samples["embedded_mc"]) and not math.isnan(mc.value)
    assert len(st.load_samples(tmp_path)) == sum(
        len(s) for p in RECORDS for s in json.loads(p.read_text())["samples"].values())


def _good() -> dict:
    return json.loads(RECORDS[0].read_text())


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("spec"), "lacks \\['spec'\\]"),
    (lambda d: d.update(status="done"), "status 'done'; valid: ok, failed, oom"),
    (lambda d: d.update(bogus=1), "unknown record key\\(s\\) \\['bogus'\\]"),
    (lambda d: d.update(schema_version=SCHEMA_VERSION + 1), "newer than this loopsweep"),
    (lambda d: d.update(metrics=[1, 2]), "metrics: a mapping"),
    (lambda d: d.update(cell_id=""), "cell_id"),
])
def test_malformed_records_are_refused_with_the_reason(change, message):
    d = _good()
    change(d)
    with pytest.raises(RecordError, match=message):
        CellRecord.from_dict(d, source="x.json")


def test_broken_json_names_the_source():
    with pytest.raises(RecordError, match="broken cell record y.json: not valid JSON"):
        CellRecord.from_json('{"cell_id": "y", "sta', source="y.json")
