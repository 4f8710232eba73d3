"""Whole models in bfloat16 (the dtype the paper evaluates in), on CPU: looping keeps the model's
dtype through the wrappers, the integrators and the KV stash, K = 1 stays the plain model bit for
bit, and looped generation runs with a bf16 cache of the plain model's shape. The integrators'
own bf16 arithmetic is checked in test_integrators.py; this file checks the model plumbing."""
import pytest
import torch

from looping import LoopConfig, looped
from tests.looping.families import tiny_model
from tests.looping.manual import batch, plain_logits

FAMILIES = ["qwen3", "gemma3_text", "qwen3_moe", "deepseek_v3", "gpt_oss"]
GEN_WINDOW = (2, 4)   # layer 1 sizes the masks of the alternating families: kv=none refuses it
_MODELS: dict = {}


def bf16_model(family):
    if family not in _MODELS:
        torch.manual_seed(0)
        _MODELS[family] = tiny_model(family).to(torch.bfloat16)
    return _MODELS[family]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["block", "layer"])
def test_k1_is_the_plain_model_bit_for_bit(family, mode):
    model = bf16_model(family)
    ids, mask = batch()
    plain = plain_logits(model, ids, mask)
    assert plain.dtype == torch.bfloat16
    for integrator in ("naive", "euler", "anchored"):
        cfg = LoopConfig(window="1:3", k=1, integrator=integrator, mode=mode)
        with torch.no_grad(), looped(model, cfg):
            out = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        assert out.dtype == torch.bfloat16
        assert torch.equal(out, plain), f"{family} {mode} {integrator}: K=1 differs from plain"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("integrator", ["euler", "anchored", "naive"])
def test_looped_forward_stays_bf16_and_finite(family, integrator):
    model = bf16_model(family)
    ids, mask = batch()
    plain = plain_logits(model, ids, mask)
    cfg = LoopConfig(window="1:3", k=4, integrator=integrator)
    with torch.no_grad(), looped(model, cfg) as h:
        out = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    assert h.stats.window_passes_last == 4
    assert out.dtype == torch.bfloat16 and torch.isfinite(out[mask.bool()]).all()
    assert not torch.equal(out, plain)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters()), "looping changed a weight dtype"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kv", ["first", "last", "none", "per_pass"])
def test_generate_in_bf16(family, kv):
    """Greedy generation with a looped window: K = 1 gives the plain tokens (kv=first / per_pass
    keep the plain cache), K = 3 runs with a bf16 cache whose per-layer shape is the plain one's
    (kv=none: the window's slots stay empty, by design)."""
    model = bf16_model(family)
    ids, mask = batch()
    kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False,
              return_dict_in_generate=True, pad_token_id=0)
    with torch.no_grad():
        plain = model.generate(**kw)
        if kv in ("first", "per_pass"):
            with looped(model, LoopConfig(window="%d:%d" % GEN_WINDOW, k=1, integrator="anchored", kv=kv)):
                same = model.generate(**kw)
            assert torch.equal(same.sequences, plain.sequences), f"{family} kv={kv}: K=1 tokens differ"
        with looped(model, LoopConfig(window="%d:%d" % GEN_WINDOW, k=3, integrator="anchored", kv=kv)):
            out = model.generate(**kw)
    assert out.sequences.shape == plain.sequences.shape
    for i, (a, b) in enumerate(zip(out.past_key_values.layers, plain.past_key_values.layers)):
        for name in ("keys", "values"):
            ta, tb = getattr(a, name, None), getattr(b, name, None)
            if kv == "none" and i in range(*GEN_WINDOW):
                assert ta is None or ta.numel() == 0, (family, i, name)
            elif isinstance(tb, torch.Tensor) and tb.numel():
                assert ta.dtype == torch.bfloat16 and ta.shape == tb.shape, (family, kv, i, name)
