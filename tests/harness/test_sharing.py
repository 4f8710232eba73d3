"""A grid costs less than its cells: loglikelihood requests of cells that share model, task and
batching are scored in one pass (harness.scoring.SharedPass via harness.run.share_groups), and
each cell's record equals the one it gets scored alone."""
from __future__ import annotations

import json

import pytest
import torch

from looping import LoopConfig


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(k, "1")


def embedded_mc_requests(model, tok, limit):
    """The loglikelihood requests lm-eval builds for the embedded multiple-choice task."""
    from harness.adapter import LoopedLM, evaluate
    seen = []

    class Recording(LoopedLM):
        def _loglikelihood_tokens(self, requests, disable_tqdm=False, override_bs=None):
            seen.extend(requests)
            return [(0.0, False)] * len(requests)
    evaluate(Recording(model, tokenizer=tok, batch_size=16), ["embedded_mc"], limit=limit,
             bootstrap_iters=0)
    return seen


def demo_settings():
    return [None] + [LoopConfig(window=w, k=k, integrator=i, mode="block")
                     for i in ("naive", "euler", "anchored") for k in range(1, 7)
                     for w in ("c0.3w1", "c0.5w1", "c0.7w1")]


@pytest.mark.slow
def test_the_demo_grid_shared_equals_each_cell_alone():
    """Every loglikelihood cell of the demo grid (baseline + 54 loop settings, three windows) in
    one shared pass gives the answers each setting gets alone."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.embedded import embedded_model_path
    from harness.scoring import loglikelihoods
    path = embedded_model_path()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    requests = embedded_mc_requests(model, tok, limit=6)
    settings = demo_settings()
    shared = loglikelihoods(model, requests, settings, batch_size=16, max_length=2048,
                            progress=False)
    for cfg, got in zip(settings, shared):
        want, = loglikelihoods(model, requests, [cfg], batch_size=16, max_length=2048,
                               progress=False)
        d = max(abs(a[0] - b[0]) for a, b in zip(got, want))
        assert d <= 1e-5 and [a[1] for a in got] == [b[1] for b in want], (cfg, d)


def test_a_fifteen_cell_grid_on_a_real_config_shares_exactly():
    """3 strategies x K = 2..6 + the baseline at SmolLM2-135M's depth (30 layers, llama; small
    widths), window c0.5w3: shared equals alone, and the shared pass counts the layer passes the
    plan predicts."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from harness.scoring import loglikelihoods
    from benchmarks.common import LayerProbe, Clock
    from benchmarks.grid import synthetic_requests
    torch.manual_seed(0)
    cfg = AutoConfig.for_model("llama", hidden_size=64, intermediate_size=128, num_hidden_layers=30,
                               num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                               tie_word_embeddings=True)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    requests = synthetic_requests(12, 512)
    settings = [None] + [LoopConfig(window="c0.5w3", k=k, integrator=i)
                         for i in ("naive", "euler", "anchored") for k in range(2, 7)]
    with LayerProbe(model, "count", Clock("cpu", "cpu")) as probe:
        shared = loglikelihoods(model, requests, settings, batch_size=8, max_length=512,
                                progress=False)
    passes = sum(sum(f.values()) for f in probe.data.values())
    batches = len(probe.data) // (len(settings) + 1)        # a capture forward + one per setting
    s = settings[1].resolve(model)
    per_batch = s.end + sum((c.resolve(model).layer_passes - s.start - s.width) if c else
                            30 - s.end for c in settings)
    assert passes == batches * per_batch
    for c, got in zip(settings, shared):
        want, = loglikelihoods(model, requests, [c], batch_size=8, max_length=512, progress=False)
        d = max(abs(a[0] - b[0]) for a, b in zip(got, want))
        assert d <= 1e-5 and [a[1] for a in got] == [b[1] for b in want], (c, d)


def test_shared_cells_write_the_records_they_write_alone(tmp_path, tiny_model_dir):
    """run_cells with sharing on and off: the same metrics and per-sample rows (hashes and
    scores), cell by cell; the plan says how many cells share a pass."""
    from harness.run import run_cells
    from harness.spec import CellSpec, task_version, weights_hash
    from harness.tasks import fixture_dir

    def spec(loop):
        return CellSpec(model=str(tiny_model_dir), weights_hash=weights_hash(tiny_model_dir),
                        dtype="float32", attn_implementation="sdpa",
                        task="fixture_commonsense_qa",
                        task_version=task_version(["fixture_commonsense_qa"]), num_fewshot=0,
                        batch_size=3, limit=8, loop=loop, model_name="tiny", task_name="csqa")
    cells = [(spec(None), "baseline")] + [
        (spec(LoopConfig(window=w, k=k, integrator=i, mode=m)), f"{i} {k}")
        for i, k, w, m in (("euler", 3, "1:3", "block"), ("naive", 2, "1:3", "block"),
                           ("anchored", 3, "1:3", "layer"), ("euler", 2, "2:4", "block"))]
    del fixture_dir
    for sharing, store in ((True, tmp_path / "shared"), (False, tmp_path / "alone")):
        out = run_cells(cells, store=store, sharing=sharing, log=lambda *a, **k: None)
        assert len(out["done"]) == len(cells), out
    for p in sorted((tmp_path / "shared" / "cells").glob("*.json")):
        a = json.loads(p.read_text())
        b = json.loads((tmp_path / "alone" / "cells" / p.name).read_text())
        assert a["metrics"] == b["metrics"] and a["samples"] == b["samples"], p.name
        assert a["cost"]["window_passes"] == b["cost"]["window_passes"]
