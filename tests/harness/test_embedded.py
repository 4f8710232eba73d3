"""The embedded default model and its tasks: deterministic build, committed weights that load with
plain `from_pretrained`, task files that are held out from the training corpus and load in lm-eval."""
import json
import hashlib
from collections import Counter

import pytest
import torch

from harness import embedded

MC = embedded.TASK_DIR / "mc.jsonl"
GEN = embedded.TASK_DIR / "gen.jsonl"


def _items(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def corpus():
    return embedded.training_corpus()


def test_reduced_build_is_bit_identical(tmp_path):
    threads = torch.get_num_threads()
    metas = [embedded.build(tmp_path / name, steps=4, seed=1, reduced=True, progress=False)
             for name in ("a", "b")]
    assert torch.get_num_threads() == threads, "build must restore the thread count"
    a, b = ((tmp_path / n / "model.safetensors").read_bytes() for n in ("a", "b"))
    assert a == b, "two reduced builds with the same seed differ"
    assert metas[0]["weights_sha256"] == metas[1]["weights_sha256"] == hashlib.sha256(a).hexdigest()
    meta = json.loads((tmp_path / "a" / "build.json").read_text())
    for key in ("seed", "steps", "torch", "threads", "train_files", "heldout_loss"):
        assert key in meta, key
    assert meta["seed"] == 1 and meta["steps"] == 4 and meta["reduced"] is True


def test_committed_model_round_trip():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = embedded.embedded_model_path()
    weights = path / "model.safetensors"
    assert weights.stat().st_size < 20 * 2**20, f"{weights.stat().st_size} bytes"
    meta = json.loads((path / "build.json").read_text())
    assert meta["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert meta["reduced"] is False and meta["seed"] == embedded.SEED and meta["steps"] == embedded.STEPS

    model = AutoModelForCausalLM.from_pretrained(path)
    cfg = model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size) == ("qwen3", 8, 128)
    assert model.dtype == torch.float32
    expected = embedded.model_config().to_dict()
    for key in ("vocab_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                "head_dim", "tie_word_embeddings", "eos_token_id", "pad_token_id"):
        assert getattr(cfg, key) == expected[key], key

    tok = AutoTokenizer.from_pretrained(path)
    text = "def f(x):\n    return x  # caf\u00e9 \u4e2d\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == list(text.encode()), "token id must equal the byte value"
    assert tok.decode(ids) == text
    assert (tok.eos_token_id, tok.pad_token_id) == (embedded.EOS_ID, embedded.PAD_ID)
    assert len(tok) == cfg.vocab_size

    # the model actually learned the corpus: greedy continuation of a stdlib-style line
    with torch.no_grad():
        x = torch.tensor([list(b"import os\nimport sys\n\n\ndef main():\n    ")])
        logits = model(input_ids=x).logits
    assert torch.isfinite(logits).all()


def test_mc_task_items(corpus):
    items = _items(MC)
    n = len(items)
    assert n >= 200
    assert all(len(it["choices"]) >= 4 and len(set(it["choices"])) == len(it["choices"]) for it in items)
    assert all(it["choices"][it["label"]] == it["gold"] for it in items)
    assert all(len({len(c) for c in it["choices"]}) == 1 for it in items), "options differ in length"
    counts = Counter(it["label"] for it in items)
    assert set(counts) == {0, 1, 2, 3} and max(counts.values()) - min(counts.values()) <= 1, counts
    seen = embedded.training_lines(corpus)
    for it in items:
        line = it["source_line"]
        assert (it["context"] + it["gold"]).rsplit("\n", 1)[-1] in line or "\n" in it["gold"]
        assert line.strip() not in seen, it["id"]
        assert (it["context"] + it["gold"]).encode() not in corpus, it["id"]


def test_gen_task_items(corpus):
    items = _items(GEN)
    assert len(items) >= 150  # the 200-item floor is the MC task's; gen keeps the demo fast
    seen = embedded.training_lines(corpus)
    for it in items:
        line = it["source_line"]
        assert line.startswith((it["prompt"] + it["answer"]).rsplit("\n", 1)[-1])
        assert it["answer"] and "\n" not in it["answer"]
        assert line.strip() not in seen, it["id"]
        assert (it["prompt"] + it["answer"]).encode() not in corpus, it["id"]


def test_tasks_load_through_task_manager():
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(embedded.TASK_DIR), include_defaults=False)
    tasks = tm.load(["embedded_mc", "embedded_gen"])["tasks"] if hasattr(tm, "load") else \
        tm.load_task_or_group(["embedded_mc", "embedded_gen"])
    mc, gen = tasks["embedded_mc"], tasks["embedded_gen"]
    assert mc.OUTPUT_TYPE == "multiple_choice" and gen.OUTPUT_TYPE == "generate_until"
    assert len(mc.test_docs()) == len(_items(MC)) and len(gen.test_docs()) == len(_items(GEN))
    doc = mc.test_docs()[0]
    assert mc.doc_to_text(doc) == doc["context"] and mc.doc_to_choice(doc) == doc["choices"]
    assert mc.doc_to_target(doc) == doc["label"]


@pytest.mark.slow
def test_tasks_run_on_the_committed_model_through_hflm():
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(embedded.TASK_DIR), include_defaults=False)
    lm = HFLM(pretrained=str(embedded.embedded_model_path()), device="cpu", dtype="float32",
              batch_size=16)
    out = lm_eval.simple_evaluate(model=lm, tasks=["embedded_mc", "embedded_gen"], task_manager=tm,
                                  limit=4, log_samples=False)
    res = out["results"]
    assert 0.0 <= res["embedded_mc"]["acc,none"] <= 1.0
    assert 0.0 <= res["embedded_gen"]["exact_match,none"] <= 1.0
