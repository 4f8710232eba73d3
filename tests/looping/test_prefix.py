"""looping.prefix: the layers below a window computed once and reused (shared scoring)."""
import pytest
import torch

from looping import LoopConfig, looped
from looping.arch import describe
from looping.prefix import capture_inputs, start_at
from tests.looping.manual import batch, plain_logits


@pytest.mark.parametrize("family", ["qwen3", "gemma3_text", "qwen3_moe", "deepseek_v3"])
def test_start_at_the_window_equals_the_whole_forward(tiny, family):
    model = tiny(family)
    ids, mask = batch()
    layers = list(describe(model).layers)
    calls = [0] * len(layers)
    hooks = [m.register_forward_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1))
             for i, m in enumerate(layers)]
    try:
        with torch.no_grad(), capture_inputs(model, [2, 4]) as seen:
            model(input_ids=ids, attention_mask=mask, use_cache=False)
        assert calls == [1, 1, 1, 1, 0, 0] and set(seen) == {2, 4}     # stopped before layer 4
        for cfg in (LoopConfig(window="2:4", k=3, integrator="naive"),
                    LoopConfig(window="2:4", k=2, integrator="anchored", mode="layer"),
                    LoopConfig(window="2:4", k=1, integrator="naive", mode="block")):
            with looped(model, cfg):
                want = plain_logits(model, ids, mask)
                calls[:] = [0] * len(layers)
                with start_at(model, 2, seen[2]):
                    got = plain_logits(model, ids, mask)
            assert calls[:2] == [0, 0]                                   # the prefix did not run
            assert (got - want).abs().max().item() <= 1e-6, (family, cfg)
        with start_at(model, 4, seen[4]):                                 # the plain window's output
            got = plain_logits(model, ids, mask)
        assert (got - plain_logits(model, ids, mask)).abs().max().item() <= 1e-6
    finally:
        for h in hooks:
            h.remove()
    assert list(describe(model).layers) == layers


def test_refuses_a_looped_prefix_and_restores_after_errors(tiny):
    model = tiny("qwen3")
    ids, mask = batch()
    layers = list(describe(model).layers)
    with looped(model, LoopConfig(window="1:3", k=2, integrator="euler")):
        with pytest.raises(RuntimeError, match=r"layer 1 is already replaced"):
            with start_at(model, 3, torch.zeros(3, 10, 64)):
                pass
    with pytest.raises(ValueError, match=r"given state has shape"):
        with start_at(model, 2, torch.zeros(1, 4, 64)):
            plain_logits(model, ids, mask)
    assert list(describe(model).layers) == layers
    with pytest.raises(ValueError, match=r"must lie in \[0, 6\)"):
        with capture_inputs(model, [6]):
            pass
