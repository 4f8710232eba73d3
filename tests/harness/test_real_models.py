"""The real models (harness.assets: SmolLM2-135M-Instruct and Gemma-3-270M, dequantised from GGUF)
on real items: their provenance, K = 1 looped == `--model hf` per sample on 20 items of two real
tasks, a looped K = 3 anchored run differs, and a sweep cell's record carries the provenance.
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
MODELS = {"smollm2-135m": {"window": "c0.5w3", "quant": "Q4_1", "adds_bos": False,
                           "class": "LlamaForCausalLM"},
          "gemma3-270m": {"window": "c0.5w2", "quant": "Q4_K_M", "adds_bos": True,
                          "class": "Gemma3ForCausalLM"}}


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


def test_sweep_cell_record_carries_provenance(real_asset, tmp_path):
    """model=<preset> resolves the asset; the record names the dequantisation twice: in its
    model_name label (every table row) and in model_provenance. (SmolLM2 only: the path is the
    same for both models, Gemma's provenance is checked above.)"""
    from harness.config import compose, hydra_session
    from harness.run import run_cell
    from harness.spec import spec_from_config
    name = "smollm2-135m"
    real_asset("tasks")
    folder = real_asset(name)
    with hydra_session():
        cfg = compose([f"model={name}", "loop=anchored", "loop.k=3", "task=arc-easy-val-local",
                       "task.limit=5", f"eval.batch_size={BATCH}"])
    spec = spec_from_config(cfg, loop_name="anchored", store=str(tmp_path))
    assert spec.model == str(folder.resolve()) and spec.weights_hash
    assert spec.model_name.endswith(f"dequantised-from-GGUF-{MODELS[name]['quant']}")
    r = run_cell(spec, store=tmp_path, device="cpu")
    assert r.status == "ok", r.error
    rec = r.record
    assert rec["model_provenance"]["label"] == f"dequantised from GGUF {MODELS[name]['quant']}"
    assert rec["lm_eval_config"]["config"]["model_provenance"] == rec["model_provenance"]
    assert rec["loop_resolved"]["window"] == MODELS[name]["window"]
    assert len(rec["samples"]["local_arc_easy_val"]) == 5
