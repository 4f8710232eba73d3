"""Trajectory recording is free of side effects and its states are the model's own."""
import pytest
import torch

from harness.trajectory import (loss_landscape, record_trajectories, through_suffix, trajectory_figures,
                                trajectory_metrics)
from looping import LoopConfig, looped
from tests.looping.formulas import reference_cfgs


@pytest.fixture(scope="module")
def model():
    from transformers import AutoConfig, AutoModelForCausalLM
    torch.manual_seed(0)
    cfg = AutoConfig.for_model("llama", vocab_size=96, hidden_size=48, intermediate_size=96, num_hidden_layers=5,
                               num_attention_heads=4, num_key_value_heads=2)
    return AutoModelForCausalLM.from_config(cfg).eval()


def inputs():
    ids = torch.randint(3, 96, (2, 9), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    return ids, mask


@pytest.mark.parametrize("cfg", reference_cfgs() +
                         [LoopConfig(window="0:1", k=3, integrator="euler", mode="layer")], ids=str)
def test_recording_changes_nothing_and_states_are_the_models_own(model, cfg):
    ids, mask = inputs()
    cfg = cfg.replace(window="1:3")
    with torch.no_grad():
        with looped(model, cfg) as off:
            ref = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        with looped(model, cfg, trace=True) as on:
            out = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    assert torch.equal(out, ref)
    assert off.trace is None and len(on.trace) == (1 if on.resolved.mode == "block" else 2)
    last = on.trace[-1]
    # the recorded window output, sent through the remaining layers, norm and head = the model's logits
    sent = through_suffix(model, ids, mask, 3, last.out[None])[0]
    diff = (sent - ref).abs().max().item()
    assert diff <= 1e-5, f"{cfg.integrator}: {diff:.3g}"
    assert torch.equal(last.x0, on.trace[0].x0) or on.resolved.mode == "layer"


def test_metrics_and_landscape_figures(model):
    ids, mask = inputs()
    configs = {s: LoopConfig(window="1:3", k=4, integrator=s) for s in ("naive", "euler", "anchored")}
    trajs = record_trajectories(model, ids, mask, configs)
    assert trajs["naive"].states.shape[0] == 4 + 1  # x0, 3 iterates, output
    m = trajectory_metrics(model, ids, mask, trajs)
    assert set(m.strategy) == set(configs) and len(m) == 3 * 5
    # step 0 is the window entry for every strategy
    assert m[m.step == 0].suffix_loss.nunique() == 1
    land = loss_landscape(model, ids, mask, trajs, grid=5)
    assert land.loss.shape == (5, 5) and all(p.shape == (5, 2) for p in land.paths.values())
    f1, f2 = trajectory_figures(m, land)
    assert f1.axes[0].get_xlabel() and f2.axes[0].get_ylabel().startswith("PC2")
