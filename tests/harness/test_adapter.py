"""The `looped` lm-eval model on a tiny random Qwen3 and the offline fixture tasks.

- K = 1 (naive): per-sample loglikelihoods and generations equal `hf`'s, on every fixture task
  (paper shot counts), from Python and from the CLI (`loopsweep-eval`, a subprocess).
- K = 3 (euler, kv=first; anchored, kv=last): per-sample loglikelihoods equal a direct looped
  forward, generations equal `looped(model).generate`; loglikelihood, loglikelihood_rolling and
  generate_until each change some sample vs K = 1; forward hooks count K window passes per
  scoring forward (K + 1 with the kv='last' stash in generation); scoring builds no cache.
- model_args errors come before any weights load; args HFLM would ignore on a loaded model are
  refused; lm-eval's response cache never serves one loop setting to another.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from looping import LoopConfig, LoopConfigError, looped

WINDOW = "1:3"          # layers 1, 2 of the 4-layer tiny model
GEN = {"max_gen_toks": 8}
# every fixture task, with the paper's shot counts (num_fewshot applies to a whole call)
PAPER_CALLS = [(["fixture_mmlu_pro", "fixture_gpqa_main_zeroshot", "fixture_openbookqa"], None),
               (["fixture_commonsense_qa"], 7), (["fixture_arc_challenge"], 25)]
LOOP_FIELDS = [f.name for f in dataclasses.fields(LoopConfig)]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(k, "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="module")
def model_tok(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def hf_lm(model_tok, **kw):
    from lm_eval.models.huggingface import HFLM
    model, tok = model_tok
    return HFLM(pretrained=model, tokenizer=tok, max_length=2048, **{"batch_size": 2, **kw})


def looped_lm(model_tok, **kw):
    from harness.adapter import LoopedLM
    model, tok = model_tok
    kw = {"batch_size": 2, **kw}
    return LoopedLM(model, tokenizer=tok, max_length=2048, **kw)


def run(lm, tasks, num_fewshot=None, limit=2, **kw):
    from harness.adapter import evaluate
    return evaluate(lm, tasks, num_fewshot=num_fewshot, limit=limit, gen_kwargs=dict(GEN),
                    bootstrap_iters=0, **kw)


def by_sample(results) -> dict:
    """(task, doc_id, filter) -> (resps, filtered_resps) over every task of a results dict."""
    out = {}
    for task, samples in results["samples"].items():
        for s in samples:
            out[(task, s["doc_id"], s["filter"])] = (s["resps"], s["filtered_resps"])
    return out


def same_response(a, b, tol=1e-5) -> bool:
    """lm-eval responses equal: strings exactly, loglikelihoods within `tol` relative to
    max(1, |value|) (the head runs at the continuation positions only: the logits of a smaller
    matmul differ from the full one's in the last bits), greedy flags exactly."""
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= tol * max(1.0, abs(a))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_response(x, y, tol) for x, y in zip(a, b))
    return a == b


def window_layers(model):
    return [model.model.layers[i] for i in range(1, 3)]


class Counter:
    """Forward hooks on the original decoder layers: layer 0 counts decoder forwards (outside the
    window), the window layers count their evaluations; a model hook records cache use."""

    def __init__(self, model):
        self.calls = {i: 0 for i in range(4)}
        self.cache_seen = []
        self.handles = [model.model.layers[i].register_forward_hook(self._hook(i)) for i in range(4)]
        self.handles.append(model.register_forward_hook(self._model_hook, with_kwargs=True))

    def _hook(self, i):
        def hook(mod, args, out):
            self.calls[i] += 1
        return hook

    def _model_hook(self, mod, args, kwargs, out):
        self.cache_seen.append((kwargs.get("use_cache"), out.past_key_values))

    def close(self):
        for h in self.handles:
            h.remove()


# ---- K = 1 parity, Python route -----------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("tasks,shots", PAPER_CALLS, ids=["mmlu_pro+gpqa+obqa", "csqa-7", "arc-25"])
def test_k1_looped_equals_hf_on_every_fixture_task(model_tok, tasks, shots):
    ref = by_sample(run(hf_lm(model_tok), tasks, shots, limit=1))
    lm = looped_lm(model_tok, window=WINDOW, k=1, integrator="naive", kv="first")
    got = by_sample(run(lm, tasks, shots, limit=1))
    assert got.keys() == ref.keys() and len(ref) > 0
    diff = [key for key in ref if not same_response(got[key], ref[key])]
    assert not diff, f"{len(diff)} samples differ, e.g. {diff[0]}: {got[diff[0]]} vs {ref[diff[0]]}"
    assert lm.handle.stats.looped_forwards > 0


# ---- K = 3: equal to looping directly, different from K = 1, pass counts ---------------------------
@pytest.fixture(scope="module")
def baseline(model_tok):
    lm = hf_lm(model_tok, batch_size=1)
    return {"ll": run(lm, ["fixture_commonsense_qa"]), "gen": run(lm, ["fixture_mmlu_pro_biology"])}


K3 = [dict(integrator="euler", kv="first"), dict(integrator="anchored", beta=0.5, kv="last")]


@pytest.mark.slow
@pytest.mark.parametrize("opts", K3, ids=["euler-first", "anchored-last"])
def test_k3_loglikelihood_equals_direct_looping_and_counts_passes(model_tok, baseline, opts):
    model, tok = model_tok
    lm = looped_lm(model_tok, window=WINDOW, k=3, batch_size=1, **opts)
    counter = Counter(model)
    try:
        res = run(lm, ["fixture_commonsense_qa"])
    finally:
        counter.close()
    # hooks: K evaluations of each window layer per decoder forward, no stash, no cache built
    forwards = counter.calls[0]
    assert forwards > 0 and counter.calls[3] == forwards
    assert counter.calls[1] == counter.calls[2] == 3 * forwards, counter.calls
    assert lm.handle.stats.stash_calls == 0 and lm.handle.stats.layer_calls == 2 * 3 * forwards
    assert counter.cache_seen and all(uc is False and pkv is None for uc, pkv in counter.cache_seen)
    # per-sample loglikelihoods equal one looped forward over the same tokens
    cfg = LoopConfig(window=WINDOW, k=3, **opts)
    worst = 0.0
    for s in res["samples"]["fixture_commonsense_qa"]:
        for (ctx, cont), resp in zip(s["arguments"], s["resps"]):
            ctx_enc, cont_enc = lm._encode_pair(ctx, cont)
            inp = torch.tensor([(ctx_enc + cont_enc)[:-1]])
            with torch.no_grad(), looped(model, cfg):
                logits = model(inp, use_cache=False).logits
            logp = torch.log_softmax(logits[0, -len(cont_enc):], dim=-1)
            want = float(logp.gather(-1, torch.tensor(cont_enc)[:, None]).sum())
            worst = max(worst, abs(want - resp[0][0]))
    assert worst <= 1e-5, f"max |loglikelihood difference| = {worst:.3g}"
    ref = by_sample(baseline["ll"])
    assert any(v != ref[k] for k, v in by_sample(res).items()), "K=3 changed no loglikelihood"


@pytest.mark.slow
@pytest.mark.parametrize("opts", K3, ids=["euler-first", "anchored-last"])
def test_k3_generation_equals_looped_generate_and_counts_passes(model_tok, baseline, opts):
    model, tok = model_tok
    lm = looped_lm(model_tok, window=WINDOW, k=3, batch_size=1, **opts)
    counter = Counter(model)
    try:
        res = run(lm, ["fixture_mmlu_pro_biology"])
    finally:
        counter.close()
    forwards = counter.calls[0]
    per_forward = 3 + (opts["kv"] == "last")          # kv='last': one stash pass per forward
    assert forwards > 2 and counter.calls[1] == counter.calls[2] == per_forward * forwards, counter.calls
    cfg = LoopConfig(window=WINDOW, k=3, **opts)
    for s in res["samples"]["fixture_mmlu_pro_biology"]:
        (prompt, gen_kwargs), = s["arguments"]
        ids, mask = lm.tok_batch_encode([prompt])
        with torch.no_grad(), looped(model, cfg):
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=GEN["max_gen_toks"],
                                 do_sample=False, pad_token_id=tok.pad_token_id)
        text = lm.tok_decode(out[0, ids.shape[1]:].tolist())
        for stop in gen_kwargs["until"]:
            text = text.split(stop)[0]
        assert s["resps"] == [[text]], (s["resps"], text)
    ref = by_sample(baseline["gen"])
    assert any(v != ref[k] for k, v in by_sample(res).items()), "K=3 changed no generation"


@pytest.mark.slow
def test_k3_loglikelihood_rolling(model_tok):
    from lm_eval.api.instance import Instance
    model, tok = model_tok
    texts = ["Which organelle produces most of a cell's ATP? Mitochondria make it.",
             "Quicksort sorts a list by partitioning it around a pivot."]
    reqs = lambda: [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)]  # noqa: E731
    base = hf_lm(model_tok, batch_size=1).loglikelihood_rolling(reqs())
    k1 = looped_lm(model_tok, window=WINDOW, k=1, integrator="naive").loglikelihood_rolling(reqs())
    assert k1 == base
    lm = looped_lm(model_tok, window=WINDOW, k=3, integrator="euler", kv="last", batch_size=1)
    counter = Counter(model)
    try:
        got = lm.loglikelihood_rolling(reqs())
    finally:
        counter.close()
    assert counter.calls[1] == 3 * counter.calls[0] and lm.handle.stats.stash_calls == 0
    assert all(uc is False and pkv is None for uc, pkv in counter.cache_seen)
    assert any(a != b for a, b in zip(got, base)), "K=3 changed no rolling loglikelihood"
    for text, ll in zip(texts, got):   # one window each: [prefix] + tokens, scored in one forward
        ids = [lm.prefix_token_id] + lm.tok_encode(text)
        with torch.no_grad(), looped(model, LoopConfig(window=WINDOW, k=3, integrator="euler")):
            logits = model(torch.tensor([ids[:-1]]), use_cache=False).logits
        want = float(torch.log_softmax(logits[0], -1).gather(-1, torch.tensor(ids[1:])[:, None]).sum())
        assert abs(want - ll) <= 1e-4, (want, ll)


# ---- what gets recorded -----------------------------------------------------------------------------
@pytest.mark.slow
def test_results_record_every_loop_option_settings_and_samples(model_tok):
    from harness.adapter import sample_rows
    lm = looped_lm(model_tok, window=WINDOW, k=2, integrator="anchored", beta=0.25, kv="last")
    res = run(lm, ["fixture_commonsense_qa", "fixture_mmlu_pro_math"], limit=2)
    loop = res["config"]["loop"]
    assert set(LOOP_FIELDS) <= set(loop)
    assert loop["k"] == 2 and loop["beta"] == 0.25 and loop["window_layers"] == WINDOW
    assert loop["mode_resolved"] == "block" and loop["routing_resolved"] == "n/a"
    assert res["config"]["loop_stats"]["layer_calls"] > 0
    settings = res["config"]["loopsweep"]
    assert settings["tasks"] == ["fixture_commonsense_qa", "fixture_mmlu_pro_math"]
    assert settings["limit"] == 2 and settings["gen_kwargs"] == GEN and settings["loop"] == loop
    assert settings["batch_size"] == 2 and settings["max_length"] == 2048
    rows = sample_rows(res, "fixture_commonsense_qa", "acc,none")
    assert [r["doc_id"] for r in rows] == [0, 1]
    assert set(rows[0]) == {"doc_id", "doc_hash", "prompt_hash", "target_hash", "score"}
    assert all(r["score"] in (0.0, 1.0) for r in rows)
    assert sample_rows(res, "fixture_commonsense_qa", "acc") == rows
    em = sample_rows(res, "fixture_mmlu_pro_math", "exact_match,custom-extract")
    assert len(em) == 2
    with pytest.raises(KeyError, match="acc_norm"):
        sample_rows(res, "fixture_commonsense_qa", "acc_norm")


# ---- model_args validation ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def weightless_dir(tiny_model_dir, tmp_path_factory):
    """The tiny checkpoint's config and tokenizer without weights: any attempt to load weights
    fails, so an error about a model_arg proves the check ran first."""
    d = tmp_path_factory.mktemp("weightless")
    for f in Path(tiny_model_dir).iterdir():
        if not f.name.endswith((".safetensors", ".bin")):
            shutil.copy(f, d / f.name)
    return d


BAD_ARGS = [
    ("kk=3", "unknown model_arg 'kk'", ["Did you mean 'k'", "Loop options: window, k, integrator"]),
    ("window=15-19", "malformed window '15-19'", ["start:end", "c<centre>w<width>"]),
    ("window=3:1", "window '3:1' is empty", []),
    ("k=0", "k=0 must be >= 1", []),
    ("integrator=rk5", "unknown integrator 'rk5'", ["valid choices: naive, euler, anchored", "rk4"]),
    ("kv=lastt", "unknown kv 'lastt'", ["first, last, none, per_pass"]),
    ("mode=blok", "unknown mode 'blok'", ["auto, block, layer"]),
    ("decode=some", "unknown decode 'some'", ["full, bypass, first_n"]),
    ("recipe=paper", "unknown recipe 'paper'", ["paper-mmlu-pro"]),
]


@pytest.mark.parametrize("arg,message,also", BAD_ARGS, ids=[a for a, _, _ in BAD_ARGS])
def test_bad_model_args_fail_before_weights_load(weightless_dir, arg, message, also):
    from harness.adapter import LoopedLM
    with pytest.raises((LoopConfigError, ValueError)) as info:
        LoopedLM.create_from_arg_string(f"pretrained={weightless_dir},window={WINDOW},k=3,{arg}",
                                        {"device": "cpu"})
    text = str(info.value)
    assert message in text, text
    for part in also:
        assert part in text, text


def test_good_model_args_reach_weight_loading(weightless_dir):
    """Control for the test above: the same checkpoint with valid args gets as far as loading
    weights (and fails there, since there are none)."""
    from harness.adapter import LoopedLM
    with pytest.raises(Exception) as info:
        LoopedLM.create_from_arg_string(f"pretrained={weightless_dir},window={WINDOW},k=3", {"device": "cpu"})
    assert not isinstance(info.value, LoopConfigError)
    assert "model.safetensors" in str(info.value), str(info.value)


def test_config_attributes_pass_through_as_hf_kwargs(tiny_model_dir):
    from harness.adapter import LoopedLM
    lm = LoopedLM.create_from_arg_string(
        f"pretrained={tiny_model_dir},window={WINDOW},k=2,dtype=float32,max_length=512,"
        f"attn_implementation=eager,rms_norm_eps=1e-5,batch_size=auto", {"device": "cpu"})
    assert lm.model.config._attn_implementation == "eager" and lm.model.config.rms_norm_eps == 1e-5
    assert lm.batch_size_per_gpu == "auto" and lm.max_length == 512 and lm.model.dtype == torch.float32
    assert lm.loop_config.k == 2 and str(lm.loop_config.window) == WINDOW


def test_loaded_model_refuses_args_hf_would_ignore(model_tok):
    from harness.adapter import LoopedLM, ModelArgsError
    model, tok = model_tok
    for kw, what in [(dict(device="cuda"), "device='cuda'"), (dict(dtype="bfloat16"), "dtype='bfloat16'"),
                     (dict(revision="v2"), "revision='v2'"), (dict(parallelize=True), "parallelize=True"),
                     (dict(peft="some/adapter"), "peft="), (dict(attn_implementation="eager"), "attn_implementation"),
                     (dict(trust_remote_code=True), "trust_remote_code")]:
        with pytest.raises(ModelArgsError, match="no effect on an already loaded model") as info:
            LoopedLM(model, tokenizer=tok, k=2, window=WINDOW, **kw)
        assert what in str(info.value)
    with pytest.raises(ModelArgsError, match="pass its tokenizer"):
        LoopedLM(model, k=2, window=WINDOW)
    # values that agree with the loaded model are fine
    lm = LoopedLM(model, tokenizer=tok, k=2, window=WINDOW, device="cpu", dtype="float32", batch_size=3)
    assert lm.batch_size_per_gpu == 3


def test_no_loop_options_is_plain_hflm_and_loop_object_is_accepted(model_tok):
    model, tok = model_tok
    plain = looped_lm(model_tok)
    assert plain.handle is None and plain.loop_record is None and plain.get_model_info()["loop"] is None
    lm = looped_lm(model_tok, loop=LoopConfig(window=WINDOW, k=2, integrator="euler"), k=4)
    assert lm.loop_config == LoopConfig(window=WINDOW, k=4, integrator="euler")
    r = looped_lm(model_tok, recipe="paper-fixed")
    assert r.loop_record["integrator"] == "anchored" and r.loop_record["window_width"] == 4
    assert model.model.layers[1].__class__.__name__ == "Qwen3DecoderLayer"   # restored between calls


# ---- response cache ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_response_cache_never_serves_another_loop_setting(model_tok, tmp_path):
    import lm_eval

    from harness.adapter import ModelArgsError
    from harness.tasks import task_manager
    tm = task_manager()
    common = dict(tasks=["fixture_commonsense_qa"], limit=1, task_manager=tm, bootstrap_iters=0)
    k1 = looped_lm(model_tok, window=WINDOW, k=1, integrator="naive")
    k3 = looped_lm(model_tok, window=WINDOW, k=3, integrator="euler")
    # lm-eval's own route: the db is stamped by its first writer, another setting is refused
    db = str(tmp_path / "shared")
    lm_eval.simple_evaluate(model=k1, use_cache=db, **common)
    with pytest.raises(ModelArgsError, match="response cache .* was written by"):
        lm_eval.simple_evaluate(model=k3, use_cache=db, **common)
    lm_eval.simple_evaluate(model=k1, use_cache=db, **common)          # same setting: reused
    # a db of unknown origin (here: written by the stock `hf` model) is refused too
    db2 = str(tmp_path / "from_hf")
    lm_eval.simple_evaluate(model=hf_lm(model_tok), use_cache=db2, **common)
    with pytest.raises(ModelArgsError, match="unknown origin"):
        lm_eval.simple_evaluate(model=k3, use_cache=db2, **common)
    # the Python helper keys the path by the loop setting: both run, each on its own db
    r1 = run(k1, ["fixture_commonsense_qa"], limit=2, use_cache=tmp_path / "cell")
    r3 = run(k3, ["fixture_commonsense_qa"], limit=2, use_cache=tmp_path / "cell")
    p1, p3 = r1["config"]["use_cache"], r3["config"]["use_cache"]
    assert p1 != p3 and p1.startswith(str(tmp_path / "cell-"))
    assert Path(p1 + "_rank0.db").exists() and Path(p3 + "_rank0.db").exists()
    assert by_sample(r1) != by_sample(r3)
    again = run(k3, ["fixture_commonsense_qa"], limit=2, use_cache=tmp_path / "cell")
    assert by_sample(again) == by_sample(r3)


# ---- the CLI ------------------------------------------------------------------------------------------
def cli_command() -> list[str]:
    exe = shutil.which("loopsweep-eval", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "harness.cli"]


def read_cli_output(out: Path):
    (results_file,) = out.glob("*/results_*.json")
    results = json.loads(results_file.read_text())
    samples = {}
    for f in out.glob("*/samples_*.jsonl"):
        for line in f.read_text().splitlines():
            s = json.loads(line)
            task = f.name[len("samples_"):].rsplit("_", 1)[0]
            samples[(task, s["doc_id"], s["filter"])] = (s["resps"], s["filtered_resps"])
    return results, samples


@pytest.mark.slow
def test_cli_k1_looped_equals_hf_and_records_every_loop_option(tiny_model_dir, tmp_path):
    # every local task is found without --include_path (fixtures and embedded tasks, one directory)
    tasks = ("fixture_mmlu_pro,fixture_gpqa_main_zeroshot,fixture_commonsense_qa,fixture_arc_challenge,"
             "fixture_openbookqa,embedded_mc,embedded_gen")
    common = ["--tasks", tasks, "--limit", "1", "--batch_size", "2", "--device", "cpu",
              "--gen_kwargs", "max_gen_toks=8", "--log_samples"]
    hf_args = f"pretrained={tiny_model_dir},dtype=float32,max_length=2048"
    loop_args = (f"{hf_args},window={WINDOW},k=1,integrator=naive,mode=block,kv=first,decode=full,"
                 f"routing=auto,alpha=1.0,beta=0.5,decode_n=64,anchor_rescale=false")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    runs = {
        "hf": ["--model", "hf", "--model_args", hf_args],
        "looped": ["run", "--model", "looped", "--model_args", loop_args,
                   "--use_cache", str(tmp_path / "lm_cache")],
    }
    procs = {name: subprocess.Popen(cli_command() + args + common + ["--output_path", str(tmp_path / name)],
                                    cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True) for name, args in runs.items()}
    logs = {name: p.communicate(timeout=600)[0] for name, p in procs.items()}
    for name, p in procs.items():
        assert p.returncode == 0, f"{name} failed:\n{logs[name][-4000:]}"
    hf_res, hf_samples = read_cli_output(tmp_path / "hf")
    lp_res, lp_samples = read_cli_output(tmp_path / "looped")
    assert hf_samples.keys() == lp_samples.keys()
    assert {t for t, _, _ in hf_samples} == {"fixture_mmlu_pro_biology", "fixture_mmlu_pro_computer_science",
                                             "fixture_mmlu_pro_math", "fixture_gpqa_main_zeroshot",
                                             "fixture_commonsense_qa", "fixture_arc_challenge", "fixture_openbookqa",
                                             "embedded_mc", "embedded_gen"}
    diff = [k for k in hf_samples if not same_response(hf_samples[k], lp_samples[k])]
    assert not diff, f"{len(diff)} samples differ, e.g. {diff[0]}"
    loop = lp_res["config"]["loop"]
    assert set(LOOP_FIELDS) <= set(loop), set(LOOP_FIELDS) - set(loop)
    assert loop["k"] == 1 and loop["integrator"] == "naive" and loop["kv"] == "first"
    assert lp_res["config"]["model_args"]["window"] == WINDOW
    assert hf_res["config"].get("loop") is None
    # the response cache db is stamped with the loop setting that wrote it
    from sqlitedict import SqliteDict

    from harness.adapter import CACHE_MARKER
    with SqliteDict(str(tmp_path / "lm_cache_rank0.db")) as db:
        assert json.loads(db[CACHE_MARKER])["loop"]["k"] == 1 and len(db) > 1
