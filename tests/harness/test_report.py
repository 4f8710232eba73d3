"""harness.report: the tables, checked against values computed by hand on a 10-document fixture,
and the multi-model synthetic frame (`make_frames`, shared with test_plots) for the rest: every
table builds, failed and missing cells appear as such, select-then-confirm picks on one split and
reports on the other."""
import hashlib

import numpy as np
import pandas as pd
import pytest

from harness import report
from harness.store import RESULT_COLUMNS, SAMPLE_COLUMNS

def _h(*parts):
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]

def _row(cell_id, model_name, task, *, baseline_id="", status="ok", loop=None, value=np.nan, n=0,
         passes=None, wall=np.nan, rcr=np.nan, centre=np.nan, width=None, n_layers=20):
    loop = loop or {}
    r = dict.fromkeys(RESULT_COLUMNS)
    r.update(cell_id=cell_id, baseline_id=baseline_id, status=status, error="" if status == "ok" else "Boom",
             model=f"org/{model_name}", model_name=model_name, task=task, task_name=task, num_fewshot=0,
             limit=None, batch_size=8, seed=1234, is_baseline=not loop, metric="acc,none", value=value,
             stderr=np.sqrt(value * (1 - value) / n) if n else np.nan, n=n, window_passes=passes,
             wall_time_s=wall, peak_mem_bytes=2.0 ** 30, routing_change_rate=rcr, window_centre=centre,
             window_width=width, beta=np.nan, alpha=np.nan)
    r.update(loop)
    return r

def make_frames(n_docs=150, seed=0):
    """Two models (dense 'dense-a', MoE 'moe-b'), one task; strategies naive / euler / anchored at
    K 1..6 and three windows on the dense model, an anchored K = 3 window scan (starts 0..10,
    widths 2 and 4), heun / rk4 at K 2 and 4, MoE mode x routing, one failed cell (euler K 5
    centre 0.5) and one missing (anchored K 6 centre 0.7)."""
    rng = np.random.default_rng(seed)
    results, samples = [], []
    def add_samples(cid, task, scores):
        for d, s in enumerate(scores):
            samples.append({"cell_id": cid, "task": task, "doc_id": d, "doc_hash": _h("doc", task, d),
                            "prompt_hash": _h("prompt", task, d), "target_hash": _h("target", task, d),
                            "score": float(s)})
    task = "task_mc"
    for model_name, moe in (("dense-a", False), ("moe-b", True)):
        base = rng.random(n_docs) < 0.55
        bid = _h("base", model_name)
        results.append(_row(bid, model_name, task, value=base.mean(), n=n_docs, passes=0, wall=10.0))
        add_samples(bid, task, base)
        def looped(tag, loop, gain, flip=0.15, **kw):
            cid = _h(model_name, tag)
            change = rng.random(n_docs) < flip
            new = np.where(change, rng.random(n_docs) < base.mean() + gain / flip, base)
            results.append(_row(cid, model_name, task, baseline_id=bid, loop=loop, value=new.mean(),
                                n=n_docs, **kw))
            add_samples(cid, task, new)
        if not moe:
            for centre, win in ((0.3, "5:7"), (0.5, "9:11"), (0.7, "13:15")):
                for integ in ("naive", "euler", "anchored"):
                    for k in range(1, 7):
                        loop = dict(integrator=integ, k=k, window=win, mode="block", kv="first",
                                    decode="full", routing="n/a", alpha=1.0,
                                    beta=0.5 if integ == "anchored" else np.nan)
                        kw = dict(passes=k, wall=10.0 * (1 + 0.1 * (k - 1)), centre=centre, width=2)
                        if (integ, k, centre) == ("euler", 5, 0.5):
                            results.append(_row(_h(model_name, "failed"), model_name, task,
                                                baseline_id=bid, status="failed",
                                                loop=dict(loop, window="c0.5w2"), passes=k))
                            continue
                        if (integ, k, centre) == ("anchored", 6, 0.7):
                            continue
                        gain = -0.03 * (k - 1) if integ == "naive" else 0.01 * (centre == 0.5)
                        looped(f"{integ}{k}{win}", loop, gain, centre=centre, width=2, passes=k,
                               wall=kw["wall"])
            for width in (2, 4):          # a window scan (anchored K = 3 over starts x widths)
                for start in range(0, 12, 2):
                    win = f"{start}:{start + width}"
                    loop = dict(integrator="anchored", k=3, window=win, mode="block", kv="first",
                                decode="full", routing="n/a", alpha=1.0, beta=0.5)
                    looped(f"scan{win}", loop, 0.02 * (start == 6) - 0.01 * (width == 4),
                           centre=(start + (width - 1) / 2) / 16, width=width, passes=3, wall=12.0)
            for integ, per in (("heun", 2), ("rk4", 4)):
                for k in (2, 4):
                    loop = dict(integrator=integ, k=k, window="9:11", mode="block", kv="first",
                                decode="full", routing="n/a", alpha=np.nan, beta=np.nan)
                    looped(f"{integ}{k}", loop, -0.01, centre=0.5, width=2, passes=per * k,
                           wall=10.0 * (1 + 0.1 * per * k))
        else:
            for mode in ("block", "layer"):
                for routing in ("recompute", "freeze"):
                    for k in (1, 3):
                        loop = dict(integrator="anchored", k=k, window="8:12", mode=mode, kv="first",
                                    decode="full", routing=routing, beta=0.5, alpha=1.0)
                        gain = 0.02 if (mode, routing) == ("layer", "freeze") else -0.02
                        looped(f"{mode}{routing}{k}", loop, gain, centre=0.5, width=4, passes=k,
                               wall=20.0 + k, rcr=0.3 if routing == "recompute" else np.nan)
    return (pd.DataFrame(results, columns=RESULT_COLUMNS),
            pd.DataFrame(samples, columns=SAMPLE_COLUMNS))


# ---- the hand-computed fixture -------------------------------------------------------------------------
BASE = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]          # 50 %
EULER2 = [1, 1, 1, 1, 0, 1, 1, 1, 0, 0]        # 70 %: up 5, 6, 7; down 4 -> McNemar(3, 1) = 0.625
EULER3 = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]        # 50 %
NAIVE2 = [1, 0, 0, 0, 0, 0, 0, 0, 0, 0]        # 10 %: down 1-4 -> McNemar(0, 4) = 0.125
LOOP = dict(window="15:19", mode="block", kv="first", decode="full", routing="n/a", alpha=1.0, beta=np.nan)


def hand_frames(with_task2=False):
    results, samples = [], []

    def cell(cid, scores, task="commonsense_qa", loop=None, status="ok", baseline_id="base"):
        n = len(scores)
        results.append(_row(cid, "qwen3-4b", task, baseline_id="" if loop is None else baseline_id,
                            status=status, loop=loop, value=np.mean(scores) if status == "ok" else np.nan,
                            n=n if status == "ok" else 0, passes=(loop or {}).get("k", 0), wall=10.0))
        if status == "ok":
            for d, s in enumerate(scores):
                samples.append({"cell_id": cid, "task": task, "doc_id": d, "doc_hash": _h("d", task, d),
                                "prompt_hash": _h("p", task, d), "target_hash": _h("y", task, d), "score": float(s)})

    cell("base", BASE)
    cell("e2", EULER2, loop=dict(LOOP, integrator="euler", k=2))
    cell("e3", EULER3, loop=dict(LOOP, integrator="euler", k=3))
    cell("n2", NAIVE2, loop=dict(LOOP, integrator="naive", k=2))
    cell("a2", [], loop=dict(LOOP, integrator="anchored", k=2, beta=0.5), status="failed")
    if with_task2:
        cell("base2", [0] * 10, task="openbookqa")
        cell("e2b", [1] + [0] * 9, task="openbookqa", loop=dict(LOOP, integrator="euler", k=2), baseline_id="base2")
        cell("e3b", [1, 1] + [0] * 8, task="openbookqa", loop=dict(LOOP, integrator="euler", k=3), baseline_id="base2")
    return pd.DataFrame(results, columns=RESULT_COLUMNS), pd.DataFrame(samples, columns=SAMPLE_COLUMNS)


def test_compare_to_baseline_by_hand():
    res, smp = hand_frames()
    cmp = report.compare_to_baseline(res, smp, n_boot=500).set_index("cell_id")
    e2 = cmp.loc["e2"]
    assert (e2["baseline_pp"], e2["value_pp"], e2["delta_pp"]) == pytest.approx((50.0, 70.0, 20.0))
    assert e2["p_mcnemar"] == pytest.approx(0.625)
    assert (e2["n_up"], e2["n_down"], e2["n_paired"], e2["n_dropped"]) == (3, 1, 10, 0)
    assert e2["ci_low_pp"] <= 20.0 <= e2["ci_high_pp"]
    assert cmp.loc["n2", "p_mcnemar"] == pytest.approx(0.125)
    assert cmp.loc["n2", "delta_pp"] == pytest.approx(-40.0)
    assert cmp.loc["a2", "status"] == "failed" and np.isnan(cmp.loc["a2", "delta_pp"])


def test_compare_without_baseline_or_samples():
    res, smp = hand_frames()
    no_base = report.compare_to_baseline(res[res["cell_id"] != "base"], smp).set_index("cell_id")
    assert no_base.loc["e2", "status"] == "baseline missing"
    no_samples = report.compare_to_baseline(res, None).set_index("cell_id")
    assert no_samples.loc["e2", "delta_pp"] == pytest.approx(20.0)
    assert np.isnan(no_samples.loc["e2", "ci_low_pp"]) and "no per-sample rows" in no_samples.loc["e2", "note"]


def test_delta_table_by_hand():
    res, smp = hand_frames()
    only_ours = report.delta_table(res, smp, reference=report.load_reference(), n_boot=500)
    assert set(only_ours["model_name"]) == set(res["model_name"])   # no unrun published rows
    dt = report.delta_table(res, smp, reference=report.load_reference(), unrun=True, n_boot=500)
    ours = dt[dt["model_name"] == "qwen3-4b"].set_index(["task", "method"])
    e = ours.loc[("commonsense_qa", "euler")]
    assert e["status"] == "ok" and e["cell_id"] == "e2"
    assert bool(e["best_of_grid"]) and e["n_grid"] == 2                  # chosen from k = 2, 3
    assert (e["baseline_pp"], e["naive_pp"], e["value_pp"], e["delta_pp"]) == pytest.approx((50, 10, 70, 20))
    assert e["p_mcnemar"] == pytest.approx(0.625) and e["p_holm"] == pytest.approx(0.625)  # family of one
    assert (e["published_baseline"], e["published_looped"], e["published_delta"]) == (78.87, 79.93, 1.06)
    assert e["published_benchmark"] == "CommonsenseQA" and e["published_config"] == "unknown"
    a = ours.loc[("commonsense_qa", "anchored")]
    assert a["status"] == "failed" and not bool(a["best_of_grid"])
    # the published cells we have not run are rows marked missing, with the published numbers
    mmlu = ours.loc[("mmlu_pro", "-")]
    assert mmlu["status"] == "missing" and mmlu["published_delta"] == 2.64
    assert "K=3" in mmlu["published_config"]
    assert (dt["status"] == "missing").sum() == 9
    shown = report.to_markdown(report.format_table(dt))
    assert "failed" in shown and "missing" in shown


def test_holm_over_the_table():
    res, smp = hand_frames()
    dt = report.delta_table(res, smp, methods=("euler", "naive"), n_boot=200)
    ok = dt[dt["status"] == "ok"].set_index("method")
    # p 0.625 (euler) and 0.125 (naive): Holm 0.25, 0.625
    assert ok.loc["naive", "p_holm"] == pytest.approx(0.25)
    assert ok.loc["euler", "p_holm"] == pytest.approx(0.625)
    assert dt["p_holm"].notna().sum() == 2
    assert report.delta_table(res, smp, holm_adjust=False, n_boot=200)["p_holm"].isna().all()


def test_collapse_marks_failed_and_missing():
    res, smp = hand_frames()
    col = report.collapse_table(res, smp, n_boot=200)
    st = {(r.integrator, int(r.k)): r.status for r in col.itertuples()}
    assert st == {("euler", 2): "ok", ("euler", 3): "ok", ("naive", 2): "ok", ("naive", 3): "missing",
                  ("anchored", 2): "failed", ("anchored", 3): "missing"}
    assert col.loc[(col["integrator"] == "naive") & (col["k"] == 2), "value_pp"].item() == pytest.approx(10)
    wide = report.collapse_wide(col).set_index("integrator")
    assert wide.loc["naive", "3"] == "missing" and wide.loc["anchored", "2"] == "failed"
    assert wide.loc["euler", "2"] == "70.00" and wide.loc["euler", "baseline"] == "50.00"


def test_strategy_ranks_and_views():
    res, smp = hand_frames()
    st = report.strategy_table(res, smp, n_boot=200)
    ok = st[st["status"] == "ok"].set_index(["integrator", "k"])
    assert ok.loc[("euler", 2), "rank_at_k"] == 1 and ok.loc[("naive", 2), "rank_at_k"] == 2
    by_passes = report.strategy_wide(st, by="window_passes").set_index("integrator")
    assert by_passes.loc["euler", "2"] == "20.00" and by_passes.loc["naive", "2"] == "-40.00"
    with pytest.raises(ValueError):
        report.strategy_wide(st, by="wall")


def test_select_then_confirm_on_documents_by_hand():
    res, smp = hand_frames()
    out = report.select_then_confirm(res, smp, select_docs=set(range(5)), n_boot=200).iloc[0]
    # on docs 0-4: euler k=2 -20, euler k=3 0, naive -80 -> euler k=3; on docs 5-9 it gains 0
    assert out["cell_id"] == "e3" and out["select_delta_pp"] == pytest.approx(0)
    assert out["confirm_delta_pp"] == pytest.approx(0) and out["confirm_n"] == 5
    assert out["best_of_grid_on_confirm_pp"] == pytest.approx(60)       # euler k=2 on docs 5-9
    assert out["confirm_rank"] == 2


def test_select_then_confirm_breaks_ties_by_passes_not_record_order():
    """Two cells tie on the selection documents: the one with fewer window passes is chosen,
    whichever order the records come in."""
    res, smp = hand_frames()
    twin = res[res["cell_id"] == "e3"].assign(cell_id="e3x", window_passes=9)
    twin_s = smp[smp["cell_id"] == "e3"].assign(cell_id="e3x")
    for r, s in ((pd.concat([twin, res]), pd.concat([twin_s, smp])),
                 (pd.concat([res, twin]), pd.concat([smp, twin_s]))):
        out = report.select_then_confirm(r, s, select_docs=set(range(5)), n_boot=100).iloc[0]
        assert out["cell_id"] == "e3"


def test_select_then_confirm_across_tasks():
    res, smp = hand_frames(with_task2=True)
    out = report.select_then_confirm(res, smp, select_task="commonsense_qa", confirm_task="openbookqa",
                                     n_boot=200).iloc[0]
    assert out["cell_id"] == "e2" and out["confirm_cell_id"] == "e2b"
    assert out["confirm_delta_pp"] == pytest.approx(10) and out["best_of_grid_on_confirm_pp"] == pytest.approx(20)
    assert out["confirm_rank"] == 2
    miss = report.select_then_confirm(res[res["cell_id"] != "e2b"], smp, select_task="commonsense_qa",
                                      confirm_task="openbookqa", n_boot=200).iloc[0]
    assert miss["status"] == "missing"
    with pytest.raises(ValueError):
        report.select_then_confirm(res, smp)


def test_cost_table_by_hand():
    res, _ = hand_frames()
    res.loc[res["cell_id"] == "e2", "wall_time_s"] = 12.5
    ct = report.cost_table(res).set_index("cell_id")
    assert ct.loc["e2", "wall_ratio"] == pytest.approx(1.25) and ct.loc["e2", "overhead_pct"] == pytest.approx(25)
    assert ct.loc["base", "integrator"] == "baseline" and ct.loc["base", "window_passes"] == 0
    assert ct.loc["a2", "status"] == "failed"


def test_all_tables_on_the_synthetic_multi_model_frame():
    res, smp = make_frames(n_docs=60)
    tables = {t.name: t for t in report.build_tables(res, smp, reference=report.load_reference(), n_boot=200)}
    assert set(tables) == set(report.TABLE_NAMES)
    assert not [t.name for t in tables.values() if t.skipped]
    col = tables["collapse"].frame
    assert (col["status"] == "failed").sum() == 1 and (col["status"] == "missing").any()
    moe = tables["moe"].frame
    assert set(moe["model_name"]) == {"moe-b"}
    assert {(m, r) for m, r in zip(moe["mode"], moe["routing"])} == {
        (m, r) for m in ("block", "layer") for r in ("recompute", "freeze")}
    depth = tables["depth"].frame
    assert depth["in_band"].any() and (~depth["in_band"]).any()
    summ = tables["depth_summary"].frame
    assert {"n_positive", "best_centre", "mean_delta_in_band_pp"} <= set(summ.columns)
    for t in tables.values():
        assert report.to_latex(t.display).count(r"\\") == len(t.display) + 1
        assert report.to_markdown(t.display).count("\n") == len(t.display) + 2


def test_moe_missing_combination_and_skips():
    res, smp = make_frames(n_docs=40)
    drop = (res["model_name"] == "moe-b") & (res["mode"] == "block") & (res["routing"] == "freeze")
    moe = report.moe_table(res[~drop], smp, n_boot=100)
    gone = moe[(moe["mode"] == "block") & (moe["routing"] == "freeze")]
    assert len(gone) == 2 and (gone["status"] == "missing").all()          # at K 1 and 3
    only_base = res[res["is_baseline"]]
    tables = {t.name: t for t in report.build_tables(only_base, smp, n_boot=100)}
    assert tables["collapse"].skipped and tables["moe"].skipped and not tables["deltas"].skipped
    assert all(t.skipped for t in report.build_tables(res.iloc[:0], smp.iloc[:0]))


def test_baselines_table_wilson_interval_and_competence():
    from harness.report.tables import baselines_table
    from harness.stats import wilson_interval

    res, _ = make_frames(n_docs=40)
    bt = baselines_table(res)
    base = res[res["is_baseline"].astype(bool) & (res["status"] == "ok")]
    assert len(bt) == len(base) > 0
    for _, r in bt.iterrows():
        lo, hi = wilson_interval(r["value_pp"] / 100, int(r["n"]))
        assert (r["ci_low_pp"], r["ci_high_pp"]) == pytest.approx((lo * 100, hi * 100))
        assert r["ci_low_pp"] <= r["value_pp"] <= r["ci_high_pp"]
        if r["chance_pp"] == r["chance_pp"]:
            assert r["competence"] == ("competent" if r["ci_low_pp"] > r["chance_pp"]
                                       else "near chance")
    names = [t.name for t in report.build_tables(res, None, n_boot=50)]
    assert "baselines" in names
