"""LoopConfig parsing and validation; the depth-fraction window rule against the paper's table."""
import csv
import pathlib
import re

import pytest

from looping import RECIPES, LoopConfig, LoopConfigError, WindowSpec, looped
from looping.config import window_centre, window_from_centre

PAPER = pathlib.Path(__file__).resolve().parents[2] / "harness" / "data" / "windows.csv"


def paper_rows():
    with open(PAPER) as f:
        rows = [r for r in csv.DictReader(f)]
    out = []
    for r in rows:
        for span in re.findall(r"(\d+):(\d+)", r["window_half_open"]):
            out.append((r["model"], int(r["layers"]), int(span[0]), int(span[1]), float(r["depth_fraction_centre"])))
    return out


@pytest.mark.parametrize("model,n_layers,start,end,centre", paper_rows())
def test_depth_fraction_reproduces_paper_windows(model, n_layers, start, end, centre):
    # forward: layers -> centre (the table rounds to 2 decimals)
    assert round(window_centre(start, end, n_layers), 2) == pytest.approx(centre, abs=0.011)
    # back: the published centre and width give the published layers
    exact = window_centre(start, end, n_layers)
    assert window_from_centre(exact, end - start, n_layers) == (start, end)
    assert window_from_centre(centre, end - start, n_layers) == (start, end), model


def test_window_forms():
    assert WindowSpec.parse("15:19").layers(36) == (15, 19)
    assert WindowSpec.parse((15, 19)).layers(36) == (15, 19)
    assert WindowSpec.parse("c0.46w4").layers(36) == (15, 19)
    assert str(WindowSpec.parse("c0.5w4")) == "c0.5w4"
    # clamped into [0, L-W]
    assert window_from_centre(0.99, 4, 8) == (4, 8)
    assert window_from_centre(0.01, 4, 8) == (0, 4)


def test_round_trip_dict():
    cfg = LoopConfig(window="3:5", k=4, integrator="euler", alpha=0.5, halt_tau=1e-3)
    again = LoopConfig.from_dict(cfg.to_dict())
    assert again == cfg


def test_strings_are_cast_like_model_args():
    cfg = LoopConfig.from_dict({"window": "2:4", "k": "3", "beta": "0.25", "anchor_rescale": "true"})
    assert cfg.k == 3 and cfg.beta == 0.25 and cfg.anchor_rescale is True


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipes_build(name):
    cfg = LoopConfig.from_dict({"recipe": name})
    assert cfg == RECIPES[name].config
    assert RECIPES[name].source and RECIPES[name].certainty


BAD = [
    (dict(window="5:3"), r"window '5:3' is empty"),
    (dict(window="4:4"), r"empty"),
    (dict(window="-1:3"), r"start -1 must be >= 0"),
    (dict(window="3-5"), r"malformed window '3-5'.*start:end"),
    (dict(window="c1.5w4"), r"centre 1.5 must lie in \(0, 1\)"),
    (dict(window="c0w4"), r"must lie in \(0, 1\)"),
    (dict(window="c0.5w0"), r"width 0 must be >= 1"),
    (dict(k=0), r"k=0 must be >= 1"),
    (dict(k=-2), r"k=-2 must be >= 1"),
    (dict(k=2.5), r"k=2.5 must be an integer"),
    (dict(k="three"), r"k='three' must be an integer"),
    (dict(integrator="eulr"), r"unknown integrator 'eulr'.*Did you mean 'euler'"),
    (dict(mode="blok"), r"unknown mode 'blok'.*block, layer.*Did you mean 'block'"),
    (dict(kv="fist"), r"unknown kv 'fist'.*first, last, none, per_pass.*Did you mean 'first'"),
    (dict(decode="fulll"), r"unknown decode 'fulll'.*Did you mean 'full'"),
    (dict(routing="frozen"), r"unknown routing 'frozen'.*Did you mean 'freeze'"),
    (dict(beta=1.5), r"beta=1.5 must lie in \[0, 1\]"),
    (dict(beta=-0.1), r"beta=-0.1 must lie in \[0, 1\]"),
    (dict(alpha=0), r"alpha=0.0 must lie in \(0, 2\]"),
    (dict(halt_tau=-1, integrator="euler"), r"halt_tau=-1.0 must be > 0"),
    (dict(kv="per_pass", decode="bypass"), r"per_pass.*needs decode='full'"),
    (dict(kv="per_pass", halt_tau=0.01, integrator="euler"), r"per_pass.*halt_tau"),
    (dict(decode_n=-1), r"decode_n=-1 must be >= 0"),
]


@pytest.mark.parametrize("kwargs,message", BAD, ids=[str(b[0]) for b in BAD])
def test_bad_config_is_refused_with_a_clear_message(kwargs, message):
    with pytest.raises(LoopConfigError, match=message):
        LoopConfig(**kwargs)


def test_unknown_option_is_refused_with_did_you_mean():
    with pytest.raises(LoopConfigError, match=r"unknown loop option 'integrater'.*Did you mean 'integrator'"):
        LoopConfig.from_dict({"integrater": "euler"})
    with pytest.raises(LoopConfigError, match=r"unknown recipe 'paper-mmlu'.*Did you mean 'paper-mmlu-pro'"):
        LoopConfig.from_dict({"recipe": "paper-mmlu"})


def test_bad_window_for_a_model(tiny):
    model = tiny("llama")  # 6 layers
    with pytest.raises(LoopConfigError, match=r"outside the model's layers: valid windows are within \[0, 6\)"):
        looped(model, LoopConfig(window="4:8"))
    with pytest.raises(LoopConfigError, match=r"width 9 exceeds the model's 6 layers"):
        looped(model, LoopConfig(window="c0.5w9"))
    with pytest.raises(LoopConfigError, match=r"kv='none'.*layer 0.*sizes the attention masks"):
        looped(model, LoopConfig(window="0:2", kv="none"))


def test_uniform_refused_on_moe_window(tiny):
    model = tiny("qwen3_moe")
    with pytest.raises(LoopConfigError, match=r"'uniform' is for dense windows only.*MoE layers"):
        looped(model, LoopConfig(window="2:4", k=2, integrator="uniform"))


def test_not_a_decoder_stack_is_refused():
    import torch
    with pytest.raises(LoopConfigError, match=r"not a decoder stack"):
        looped(torch.nn.Linear(2, 2), LoopConfig(window="0:1"))
