"""Shared harness fixtures: a tiny random Qwen3 checkpoint with a byte-level BPE tokenizer, saved
to a directory like any hub checkpoint (nothing is downloaded)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

EOS = "<|endoftext|>"


def corpus() -> list[str]:
    """Training text for the tokenizer: the fixture rows plus the prompt scaffolding."""
    from harness.tasks import DATA

    texts = ["Question:\nOptions:\nAnswer: Let's think step by step. The answer is (A).",
             "What is the correct answer to this question:\nChoices:\n(A) (B) (C) (D)\nAnswer:",
             "The following are multiple choice questions (with answers) about biology math "
             "computer science. Think step by step and then finish your answer with \"the answer "
             "is (X)\" where X is the correct letter choice."]
    for p in sorted(Path(DATA).glob("*.jsonl")):
        for line in p.read_text().splitlines():
            texts.append(" ".join(str(v) for v in json.loads(line).values()))
    return texts


def build_tokenizer(vocab_size: int = 2048):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)


def build_tiny_model(path: Path, *, num_hidden_layers: int = 4, seed: int = 0) -> Path:
    """Save a tiny random Qwen3 (fp32, hidden 64, `num_hidden_layers` layers) and its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = build_tokenizer()
    eos = tok.convert_tokens_to_ids(EOS)
    cfg = AutoConfig.for_model(
        "qwen3", vocab_size=len(tok), hidden_size=64, intermediate_size=128,
        num_hidden_layers=num_hidden_layers, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, max_position_embeddings=4096, eos_token_id=eos, pad_token_id=eos,
        bos_token_id=None, initializer_range=0.2, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = eos
    path = Path(path)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Directory of a tiny random Qwen3-architecture checkpoint (4 layers) with its tokenizer."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny_qwen3") / "model")


@pytest.fixture(scope="session")
def real_asset():
    """`real_asset(name)` -> the folder of a real asset (harness.assets), fetched on first use.

    The fetch is idempotent and holds one lock per asset, so parallel workers wait for each
    other; on a fresh machine it downloads from the package index. When that fails (no index,
    wrong hash) the test errors with the fetch's one-line reason: real-asset tests never skip."""
    import os

    from harness import assets

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")

    def get(name: str) -> Path:
        if not assets.is_fetched(name):
            assets.fetch([name])
        a = assets.get_asset(name)
        return Path(assets.resolve_model(name) if a.kind == "model" else assets.data_dir(name))
    return get


@pytest.fixture
def offline(monkeypatch):
    """No Hub: the three offline switches set for the test."""
    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(k, "1")


@pytest.fixture
def session():
    """An initialised Hydra over the sweep configs (harness.config.hydra_session)."""
    from harness import config

    with config.hydra_session():
        yield
