"""harness.scoring: HFLM's loglikelihood answers with the head only at the continuation positions,
and several loop settings sharing the layers below their windows, on a tiny random Qwen3 and the
offline fixture tasks (real lm-eval requests: multiple-token and one-token continuations)."""
from __future__ import annotations

import pytest
import torch

from looping import LoopConfig

TASKS = ["fixture_commonsense_qa", "fixture_openbookqa", "fixture_arc_challenge"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(k, "1")


@pytest.fixture(scope="module")
def model_tok(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def requests_and_answers(model_tok, loop=None, batch_size=3):
    """The requests lm-eval builds for TASKS, and the answers HFLM's own path gives (the plain
    `hf` model for loop=None, else the `looped` adapter's full-logits path)."""
    from lm_eval.models.huggingface import HFLM

    from harness.adapter import LoopedLM, evaluate
    model, tok = model_tok
    seen = {}

    class Recording(LoopedLM):
        def _loglikelihood_tokens(self, requests, disable_tqdm=False, override_bs=None):
            out = HFLM._loglikelihood_tokens(self, requests, disable_tqdm=True)
            seen.setdefault("requests", []).extend(requests)
            seen.setdefault("answers", []).extend(out)
            return out
    lm = Recording(model, tokenizer=tok, max_length=2048, batch_size=batch_size, loop=loop)
    evaluate(lm, TASKS, limit=6, bootstrap_iters=0)
    return seen["requests"], seen["answers"]


def assert_same(got, want, tag):
    assert len(got) == len(want) > 0
    d = max(abs(a[0] - b[0]) for a, b in zip(got, want))
    assert d <= 1e-5, f"{tag}: max |loglikelihood diff| {d:.3g}"
    assert [a[1] for a in got] == [b[1] for b in want], f"{tag}: greedy flags differ"


def test_head_only_where_read_equals_hflm(model_tok):
    from harness.scoring import loglikelihoods
    model, _ = model_tok
    for batch_size in (1, 3, 8):
        requests, want = requests_and_answers(model_tok, batch_size=batch_size)
        assert any(len(r[2]) > 1 for r in requests) and any(len(r[2]) == 1 for r in requests)
        got, = loglikelihoods(model, requests, [None], batch_size=batch_size, max_length=2048,
                              progress=False)
        assert_same(got, want, f"batch {batch_size}")
    # max_length truncation from the left, as HFLM
    requests, _ = requests_and_answers(model_tok)
    short = max(len(r[1]) + len(r[2]) for r in requests) - 5
    from lm_eval.models.huggingface import HFLM
    model_, tok = model_tok
    lm = HFLM(pretrained=model_, tokenizer=tok, max_length=short, batch_size=3)
    want = lm._loglikelihood_tokens(requests, disable_tqdm=True)
    got, = loglikelihoods(model, requests, [None], batch_size=3, max_length=short, progress=False)
    assert_same(got, want, "truncated")


SETTINGS = [
    LoopConfig(window="1:3", k=3, integrator="euler", mode="block"),
    LoopConfig(window="1:3", k=2, integrator="naive", mode="block"),
    LoopConfig(window="1:3", k=4, integrator="anchored", mode="block"),
    LoopConfig(window="1:3", k=3, integrator="anchored", mode="layer"),
    LoopConfig(window="2:3", k=3, integrator="rk4", mode="block"),
    LoopConfig(window="0:2", k=2, integrator="euler", mode="block"),
    LoopConfig(window="2:4", k=2, integrator="heun", mode="block"),       # ends at the top
]


def test_shared_settings_equal_each_scored_alone(model_tok):
    """Every setting of a shared pass (the baseline included) equals the adapter's own scoring of
    that setting alone."""
    from harness.scoring import loglikelihoods
    model, _ = model_tok
    requests, base = requests_and_answers(model_tok)
    shared = loglikelihoods(model, requests, [None] + SETTINGS, batch_size=3, max_length=2048,
                            progress=False)
    assert_same(shared[0], base, "baseline in a shared pass")
    for cfg, got in zip(SETTINGS, shared[1:]):
        alone_requests, want = requests_and_answers(model_tok, loop=cfg)
        assert alone_requests == requests
        assert_same(got, want, f"{cfg.integrator} k={cfg.k} {cfg.window} {cfg.mode}")
        assert max(abs(a[0] - b[0]) for a, b in zip(got, base)) > 1e-4   # the setting matters
