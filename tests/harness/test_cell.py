"""Cells: the id covers exactly ID_FIELDS; run_cell writes schema records, skips ok cells, retries
failed ones, shares one model load; wandb makes one offline run per cell and is never required."""
import dataclasses
import json
from pathlib import Path

import pytest

from harness import store as st
from harness.run import ModelCache, run_cell, run_cells
from harness.spec import ID_FIELDS, CellSpec, cell_id
from looping import LoopConfig

HERE = Path(__file__).parent


# ---- a tiny local task (shared with test_sweep.py) --------------------------------------------
def write_task(folder: Path, name: str = "sweep_fx_mc", n: int = 6) -> Path:
    """A local multiple-choice lm-eval task (loglikelihood) over `n` rows of a jsonl file."""
    folder.mkdir(parents=True, exist_ok=True)
    words = ["red", "blue", "green", "yes", "no", "fox"]
    rows = [{"question": f"question {i}: the quick brown", "choices": [words[i % 6], words[(i + 1) % 6],
             words[(i + 2) % 6]], "label": i % 3} for i in range(n)]
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / f"{name}.yaml").write_text(f"""task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""")
    return folder


@pytest.fixture(scope="session")
def tiny_dir(tiny_model_dir):
    """The tiny Qwen3 checkpoint of tests/harness/conftest.py."""
    return Path(tiny_model_dir)


@pytest.fixture(scope="session")
def task_dir(tmp_path_factory):
    return write_task(tmp_path_factory.mktemp("tasks"))


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(k, "1")


def tiny_spec(tiny_dir, task_dir, **kw):
    from harness.spec import task_version, weights_hash
    base = dict(model=str(tiny_dir), weights_hash=weights_hash(tiny_dir), dtype="float32",
                attn_implementation="sdpa", task="sweep_fx_mc",
                task_version=task_version(["sweep_fx_mc"], str(task_dir)), include_path=str(task_dir),
                num_fewshot=0, batch_size=2, model_name="tiny", task_name="fx", metric="acc,none",
                loop=LoopConfig(window="1:3", k=3, integrator="euler", mode="block"))
    base.update(kw)
    return CellSpec(**base)


# ---- identity ------------------------------------------------------------------------------
HUB = CellSpec(model="Qwen/Qwen3-4B-Instruct-2507", task="commonsense_qa", num_fewshot=7,
               task_version="yaml+12345678", loop=LoopConfig(window="15:19", k=3, integrator="euler"))
CHANGES = {
    "model": "Qwen/Qwen3-1.7B", "revision": "abc123", "weights_hash": "sha256:00ff",
    "dtype": "float32", "attn_implementation": "eager", "loop": LoopConfig(window="15:19", k=4,
                                                                           integrator="euler"),
    "task": "openbookqa", "task_version": "yaml+87654321", "num_fewshot": 5, "fewshot_seed": 7,
    "limit": 100, "apply_chat_template": True, "fewshot_as_multiturn": True,
    "system_instruction": "be brief", "gen_kwargs": "max_gen_toks=16", "max_length": 1024,
    "batch_size": 4, "seed": 7, "transformers_version": "0.0.1", "lm_eval_version": "0.0.1",
    "torch_version": "0.0.1",
}
UNLISTED = {"model_name": "other", "task_name": "other", "loop_name": "other", "metric": "acc_norm,none",
            "aggregate": ("agg", "acc,none"), "unsafe_code": True, "include_path": "/elsewhere",
            "trust_remote_code": True}


def test_every_id_field_has_a_change_under_test():
    assert set(CHANGES) == set(ID_FIELDS)
    assert set(UNLISTED) | set(ID_FIELDS) == {f.name for f in dataclasses.fields(CellSpec)}


@pytest.mark.parametrize("field", ID_FIELDS)
def test_changing_an_id_field_changes_the_id(field):
    assert cell_id(dataclasses.replace(HUB, **{field: CHANGES[field]})) != cell_id(HUB), field


@pytest.mark.parametrize("field", sorted(UNLISTED))
def test_changing_an_unlisted_field_keeps_the_id(field):
    assert cell_id(dataclasses.replace(HUB, **{field: UNLISTED[field]})) == cell_id(HUB), field


def test_every_loop_field_changes_the_id():
    seen = {cell_id(HUB)}
    # each option in a setting that reads it (an unread option is refused / normalised away)
    reader = dict(decode_n=dict(decode="first_n"), ema_alpha=dict(integrator="ema"),
                  beta=dict(integrator="anchored"), anchor_rescale=dict(integrator="anchored"),
                  momentum=dict(integrator="heavy_ball"), anderson_m=dict(integrator="anderson"),
                  anderson_beta=dict(integrator="anderson", anderson_m=3))
    for name, value in dict(k=2, integrator="anchored", mode="layer", kv="last", decode="bypass",
                            decode_n=16, routing="freeze", alpha=0.5, beta=0.25, halt_tau=0.01,
                            ema_alpha=0.3, momentum=0.2, anderson_m=3, anderson_beta=0.5,
                            anchor_rescale=True, window="14:18").items():
        base = HUB.loop.replace(**reader.get(name, {}))
        if name in reader:                   # the reading setting alone is a new id too
            seen.add(cell_id(dataclasses.replace(HUB, loop=base)))
        cid = cell_id(dataclasses.replace(HUB, loop=base.replace(**{name: value})))
        assert cid not in seen, name
        seen.add(cid)


def test_local_model_id_is_its_weights_not_its_path(tmp_path):
    a = dataclasses.replace(HUB, model="/data/a/model", weights_hash="sha256:1")
    b = dataclasses.replace(HUB, model="/moved/b/model", weights_hash="sha256:1")
    assert cell_id(a) == cell_id(b)
    assert cell_id(dataclasses.replace(b, weights_hash="sha256:2")) != cell_id(b)


def test_store_and_logging_settings_are_not_in_the_id(tmp_path, tiny_dir, task_dir):
    spec = tiny_spec(tiny_dir, task_dir)
    assert cell_id(spec) == cell_id(tiny_spec(tiny_dir, task_dir))
    import inspect
    params = inspect.signature(run_cell).parameters
    assert {"store", "tracker", "label", "log", "device"} <= set(params)   # run options, not spec fields


def test_baseline_is_keyed_by_the_non_loop_fields():
    a = HUB.baseline()
    b = dataclasses.replace(HUB, loop=HUB.loop.replace(k=5)).baseline()
    assert a.loop is None and cell_id(a) == cell_id(b)
    assert cell_id(dataclasses.replace(HUB, num_fewshot=0).baseline()) != cell_id(a)


def test_weights_hash_follows_content(tmp_path, tiny_dir):
    from harness.spec import weights_hash
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dir, copy)
    assert weights_hash(copy) == weights_hash(tiny_dir)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["rms_norm_eps"] = 1e-5
    (copy / "config.json").write_text(json.dumps(cfg))
    assert weights_hash(copy) != weights_hash(tiny_dir)


def test_spec_round_trips():
    d = HUB.to_dict()
    assert CellSpec.from_dict(json.loads(json.dumps(d))) == HUB
    with pytest.raises(ValueError, match="unknown CellSpec field"):
        CellSpec.from_dict({**d, "bogus": 1})
    with pytest.raises(ValueError, match="batch_size"):
        dataclasses.replace(HUB, batch_size=0)


# ---- running cells (real tiny model, real lm-eval through the project's adapter) --------------
@pytest.mark.slow
def test_run_cell_writes_a_schema_record_and_skips_it_next_time(tmp_path, tiny_dir, task_dir):
    spec = tiny_spec(tiny_dir, task_dir)
    models = ModelCache()
    r = run_cell(spec, store=tmp_path, models=models, device="cpu")
    assert r.computed and r.status == "ok", r.error
    rec = json.loads(st.record_path(tmp_path, r.cell_id).read_text())
    for key in ("schema_version", "cell_id", "status", "error", "spec", "loop_resolved", "baseline_id",
                "metrics", "primary_metric", "samples", "cost", "diagnostics", "env", "lm_eval_config"):
        assert key in rec, key
    assert rec["baseline_id"] == cell_id(spec.baseline())
    assert rec["loop_resolved"]["window_layers"] == "1:3" and rec["loop_resolved"]["mode_resolved"] == "block"
    assert 0.0 <= rec["metrics"]["sweep_fx_mc"]["acc,none"] <= 1.0
    assert len(rec["samples"]["sweep_fx_mc"]) == 6
    assert rec["cost"]["window_passes"] == 3 and rec["cost"]["wall_time_s"] > 0
    assert not st.cache_dir(tmp_path, r.cell_id).exists()       # request cache removed once ok
    again = run_cell(spec, store=tmp_path, models=models, device="cpu")
    assert not again.computed and again.status == "ok"
    base = run_cell(spec.baseline(), store=tmp_path, models=models, device="cpu")
    assert base.computed and base.status == "ok" and base.record["loop_resolved"] is None
    assert models.loads == 1                                     # one load for both cells
    df = st.load_results(tmp_path)
    assert len(df) == 2 and df.is_baseline.sum() == 1


@pytest.mark.slow
def test_failed_cells_are_recorded_and_retried(tmp_path, tiny_dir, task_dir):
    bad = tiny_spec(tiny_dir, task_dir, loop=LoopConfig(window="2:9", k=2, integrator="euler"))
    r = run_cell(bad, store=tmp_path, device="cpu")
    assert r.computed and r.status == "failed" and "2:9" in r.error
    assert st.read_record(tmp_path, r.cell_id)["status"] == "failed"
    r2 = run_cell(bad, store=tmp_path, device="cpu")
    assert r2.computed and r2.status == "failed"                  # retried, not skipped


@pytest.mark.slow
def test_force_recomputes(tmp_path, tiny_dir, task_dir):
    spec = tiny_spec(tiny_dir, task_dir, loop=None)
    models = ModelCache()
    first = run_cell(spec, store=tmp_path, models=models, device="cpu")
    again = run_cell(spec, store=tmp_path, models=models, device="cpu", force=True)
    assert first.computed and again.computed
    assert again.record["metrics"] == first.record["metrics"]    # same spec, same numbers


@pytest.mark.slow
def test_busy_cell_is_left_to_its_holder(tmp_path, tiny_dir, task_dir):
    spec = tiny_spec(tiny_dir, task_dir)
    with st.cell_lock(tmp_path, cell_id(spec)):
        out = run_cells([(spec, "x")], store=tmp_path, device="cpu")
    assert out["busy"] == [cell_id(spec)] and not st.record_path(tmp_path, cell_id(spec)).exists()


@pytest.mark.slow
def test_wandb_runs_live_with_delta_ci_and_per_sample_table(tmp_path, tiny_dir, task_dir,
                                                            monkeypatch):
    from harness.tracking import Tracker, read_offline_run
    monkeypatch.delenv("WANDB_MODE", raising=False)
    tracker = Tracker(mode=None, group="g1", dir=tmp_path / "wandb")
    assert tracker.mode == "offline"
    looped = tiny_spec(tiny_dir, task_dir)
    specs = [looped.baseline(), looped]                    # the baseline first: then the delta
    out = run_cells([(s, f"cell{i}") for i, s in enumerate(specs)], store=tmp_path, device="cpu",
                    tracker=tracker)
    assert len(out["done"]) == 2
    assert len(tracker.runs) == 2 and len(set(tracker.runs)) == 2, tracker.errors
    runs = {}
    for folder in sorted((tmp_path / "wandb" / "wandb").glob("offline-run-*")):
        r = read_offline_run(folder)
        runs[r["name"]] = r
    assert set(runs) == {"tiny|fx|baseline", "tiny|fx|euler K3 1:3"}, set(runs)
    for spec in specs:
        rec = st.read_record(tmp_path, cell_id(spec))
        run = runs["tiny|fx|baseline" if spec.loop is None else "tiny|fx|euler K3 1:3"]
        assert run["group"] == "g1" and run["job_type"] == "cell"
        # the run started when the cell started: before its computation (record written at
        # the end, wall_time_s before that), not after it finished
        started = st.record_path(tmp_path, rec.cell_id).stat().st_mtime - rec.cost["wall_time_s"]
        assert run["start_time"] <= started + 1, (run["start_time"], started)
        (task,) = rec.samples
        rows = run["tables"][f"samples/{task}"]
        assert len(rows) == len(rec.samples[task]) > 0
        assert {r["doc_hash"] for r in rows} == {x["doc_hash"] for x in rec.samples[task]}
    base = st.read_record(tmp_path, cell_id(specs[0]))
    s = runs["tiny|fx|euler K3 1:3"]["summary"]
    plain = {x["doc_id"]: x["score"] for x in base.samples[task]}
    rows = runs["tiny|fx|euler K3 1:3"]["tables"][f"samples/{task}"]
    assert all(r["correct_plain"] == plain[r["doc_id"]] for r in rows)
    looped_rec = st.read_record(tmp_path, cell_id(looped))
    delta = 100 * (sum(x["score"] for x in looped_rec.samples[task])
                   - sum(plain.values())) / len(plain)
    assert s[f"delta_pp/{task}"] == pytest.approx(delta)
    assert s[f"ci_low_pp/{task}"] <= s[f"delta_pp/{task}"] <= s[f"ci_high_pp/{task}"]
    assert 0 <= s[f"p_mcnemar/{task}"] <= 1


def test_wandb_mode_precedence(monkeypatch):
    from harness.tracking import Tracker, resolve_mode
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert resolve_mode(None) == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode(None) == "disabled" and not Tracker().enabled
    assert resolve_mode("online") == "online"


def test_wandb_errors_never_fail(tmp_path, monkeypatch, capsys):
    from harness.tracking import Tracker
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))          # no ~/.netrc key
    t = Tracker(mode="online", dir=tmp_path / "w")
    assert t.log_cell({"cell_id": "x", "status": "ok", "spec": {}, "metrics": {}}, name="x") is None
    assert t.errors and "wandb logging failed" in capsys.readouterr().err


def test_wandb_two_records_in_one_process_are_two_offline_runs(tmp_path, monkeypatch):
    from harness.tracking import Tracker
    from tests.harness.test_store import record
    monkeypatch.delenv("WANDB_MODE", raising=False)
    t = Tracker(group="grid0", dir=tmp_path)
    ids = [t.log_cell(record("a00000000000"), name="loop.k=2"),
           t.log_cell(record("b00000000000", loop=False), name="loop=baseline")]
    assert None not in ids and len(set(ids)) == 2, t.errors
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 2
