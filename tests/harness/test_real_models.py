"""The real models (harness.assets: SmolLM2-135M-Instruct and Gemma-3-270M, dequantised from GGUF)
on real items: their provenance, K = 1 looped == `--model hf` per sample on 20 items of two real
tasks, a looped K = 3 anchored run differs, and the real-smoke preset's records carry the
provenance.
Needs the fetched models (the session fixture fetches them: a fresh machine downloads 331 MB and
converts for about 5 minutes). Cheap by design: 20 items per task, batch 8."""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# short prompts (the cost is ~3.4 ms per token for SmolLM2 on one thread; Gemma ~2.5x): CSQA's
# one-letter choices share one forward per item (lm-eval's logits cache), OBQA's are short
TASKS = ["local_commonsense_qa", "local_openbookqa_val"]
LIMIT, BATCH = 20, 8
MODELS = {"smollm2-135m": {"window": "c0.5w3", "layers": "14:17", "quant": "Q4_1",
                           "adds_bos": False, "class": "LlamaForCausalLM"},
          "gemma3-270m": {"window": "c0.5w2", "layers": "8:10", "quant": "Q4_K_M",
                          "adds_bos": True, "class": "Gemma3ForCausalLM"}}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request, real_asset):
    """(asset name, model folder); the task data too."""
    real_asset("tasks")
    return request.param, real_asset(request.param)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def test_provenance(model):
    import transformers

    from harness import assets
    name, folder = model
    want = MODELS[name]
    prov = assets.model_provenance(str(folder))
    assert prov == assets.model_provenance(name)
    assert prov == json.loads((folder / "provenance.json").read_text())
    a = assets.ASSETS[name]
    assert prov["label"] == f"dequantised from GGUF {want['quant']}" == a.label
    assert prov["gguf"]["quantisation"] == want["quant"]
    assert prov["gguf"]["file_type"] == f"MOSTLY_{want['quant']}"
    assert prov["packages"] == [{"package": w.package, "version": w.version, "wheel": w.filename,
                                 "size": w.size, "sha256": w.sha256} for w in a.wheels]
    assert prov["upstream"] == a.upstream and "not the published bf16" in prov["caveat"]
    conv = prov["conversion"]
    assert conv["dtype"] == "float32"
    assert conv["transformers"] == transformers.__version__, (
        f"{name} was converted with transformers {conv['transformers']}; re-run "
        f"`loopsweep-assets fetch --force {name}`")
    assert conv["checks"] == {"reload_logits_max_abs_diff": 0.0, "tokenizer_ids_equal": True,
                              "state_dict_strict": True}
    assert prov["model"]["class"] == want["class"]
    assert prov["model"]["num_hidden_layers"] == a.expected["num_hidden_layers"]
    assert prov["tokenizer"]["adds_bos"] is want["adds_bos"]
    # the files are the ones the provenance describes
    gguf = folder / prov["gguf"]["path"]
    assert gguf.parent.name == "gguf" and [p.name for p in gguf.parent.iterdir()] == [gguf.name]
    assert gguf.stat().st_size == prov["gguf"]["size"] and _sha256(gguf) == prov["gguf"]["sha256"]
    if a.gguf_sha256:
        assert prov["gguf"]["sha256"] == a.gguf_sha256
    for f, sha in prov["files"].items():
        assert _sha256(folder / f) == sha, f
    cfg = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["architectures"] == [want["class"]]
    assert cfg["dtype"] == "float32"
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok("Question: hi\nAnswer:").input_ids
    assert (ids[0] == tok.bos_token_id) is want["adds_bos"]


def _evaluate(lm, tm, tasks=TASKS) -> dict:
    import lm_eval
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=tm, limit=LIMIT,
                                      log_samples=True, num_fewshot=0, bootstrap_iters=0)
    return out


def _per_sample(results: dict) -> dict:
    """{(task, doc_id): (loglikelihoods, acc)} of a results dict."""
    out = {}
    for task, samples in results["samples"].items():
        for s in samples:
            out[(task, s["doc_id"])] = ([r[0][0] for r in s["resps"]], s["acc"])
    return out


def test_k1_looped_equals_hf_and_k3_anchored_differs(model):
    """One loaded model: stock HFLM (`--model hf`) and looped K = 1 on 20 items of each task (must
    be equal per sample), looped K = 3 anchored on the first task's 20 (must differ). One test, so
    that pytest-xdist never splits the runs of one model over two workers."""
    import torch
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.adapter import LoopedLM
    from harness.tasks import task_manager
    name, folder = model
    tm = task_manager()
    m = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    kw = dict(tokenizer=AutoTokenizer.from_pretrained(folder), batch_size=BATCH)
    window = MODELS[name]["window"]
    hf = _per_sample(_evaluate(HFLM(pretrained=m, **kw), tm))
    k1 = _per_sample(_evaluate(LoopedLM(pretrained=m, window=window, k=1, integrator="naive",
                                        **kw), tm))
    res = _evaluate(LoopedLM(pretrained=m, window=window, k=3, integrator="anchored", **kw), tm,
                    TASKS[:1])
    k3 = _per_sample(res)

    assert set(hf) == set(k1) and len(hf) == LIMIT * len(TASKS)
    assert set(k3) == {key for key in hf if key[0] == TASKS[0]}
    # relative to max(1, |loglikelihood|): the looped adapter applies the head at the
    # continuation positions only, whose smaller matmul rounds the last bits differently (a
    # 262k-way log-softmax for Gemma); greedy flags, hence accuracies, must agree exactly
    d1 = [abs(a - b) / max(1.0, abs(a)) for key in hf for a, b in zip(hf[key][0], k1[key][0])]
    assert max(d1) <= 1e-5, f"K=1: max relative |loglik diff| {max(d1):.3g} over {len(d1)} choices"
    assert all(hf[key][1] == k1[key][1] for key in hf)
    d3 = [abs(a - b) for key in k3 for a, b in zip(hf[key][0], k3[key][0])]
    assert max(d3) > 1e-2, f"K=3 anchored equals the plain model (max diff {max(d3):.3g})"
    cfg = res["config"]
    assert cfg["loop"]["k"] == 3 and cfg["loop"]["integrator"] == "anchored"
    assert cfg["model_provenance"]["label"] == f"dequantised from GGUF {MODELS[name]['quant']}"
    print(f"{name}: K=1 max |diff| {max(d1):.2g}; K=3 anchored max |diff| {max(d3):.3g}, "
          f"acc flips {sum(hf[k][1] != k3[k][1] for k in k3)} of {len(k3)}")


def test_real_smoke_preset_runs_its_two_cells(real_asset, tmp_path):
    """The real-model experiments' smoke preset (CI): `python sweep.py experiment=real-smoke`
    with a tiny item limit computes its baseline and anchored K = 3 cell on SmolLM2 and ends with
    the paired delta in the summary; a second run computes nothing. `model=<preset>` resolves the
    asset, and the records name the dequantisation twice: in the model_name label (every table
    row) and in model_provenance. (SmolLM2 only: Gemma's provenance is checked above.)"""
    import csv
    import os
    import subprocess
    import sys

    real_asset("tasks")
    real_asset("smollm2-135m")
    args = [sys.executable, str(ROOT / "sweep.py"), "experiment=real-smoke", "task.limit=8",
            f"store={tmp_path}", "launcher.workers=1", "wandb.mode=disabled"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "2 done, 0 skipped" in r.stdout
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [x["loop"].split()[0] for x in rows] == ["baseline", "anchored"]
    assert rows[1]["delta_pp"] != "" and int(float(rows[1]["n"])) == 8
    again = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "nothing to compute" in again.stdout
    quant = MODELS["smollm2-135m"]["quant"]
    for f in (tmp_path / "cells").glob("*.json"):
        rec = json.loads(f.read_text())
        assert rec["spec"]["model"] == str(real_asset("smollm2-135m").resolve()) or \
            rec["spec"]["model"].endswith("smollm2-135m")
        assert rec["spec"]["model_name"].endswith(f"dequantised-from-GGUF-{quant}")
        assert rec["model_provenance"]["label"] == f"dequantised from GGUF {quant}"
        assert rec["lm_eval_config"]["config"]["model_provenance"] == rec["model_provenance"]
        if rec["spec"]["loop"]:
            assert rec["loop_resolved"]["window"] == MODELS["smollm2-135m"]["layers"]
        assert len(rec["samples"]["local_piqa500"]) == 8
