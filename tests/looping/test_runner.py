"""looped(): parity with the plain model, schedules against manual layer calls, restoration.

The reference never goes through looping's wrappers: it records the kwargs each decoder layer
receives in a plain forward (its own mask, rotary embeddings), calls the window layers by hand with
the strategy's formula (tests/looping/formulas.py), and sends the result through the plain model's
suffix by replacing the input of the first suffix layer.
"""
import pytest
import torch

from looping import LoopConfig, looped
from looping.arch import describe
from tests.looping.manual import batch, layer_inputs, plain_logits, replace_input
from looping.integrators import get_integrator
from tests.looping.families import DENSE, MOE
from tests.looping.formulas import REFS, reference_cfgs

FAMILIES = DENSE + MOE


@torch.no_grad()
def reference_logits(model, ids, mask, cfg, start, end, mode):
    seen = layer_inputs(model, ids, mask)
    layers = describe(model).layers
    calls = {"n": 0}

    def run(i, x):
        calls["n"] += 1
        return layers[i](x, **seen[i][1])

    formula = REFS[cfg.integrator]
    extra = {"valid": mask.bool()} if cfg.integrator == "anderson" else {}
    x0 = seen[start][0]
    if mode == "block":
        block = [lambda x, i=i: run(i, x) for i in range(start, end)]
        out = formula(block, x0, cfg, **extra)
    else:
        out = x0
        for i in range(start, end):
            out = formula([lambda x, i=i: run(i, x)], out, cfg, **extra)
    if end == len(layers):
        final = model.get_decoder().norm
        with replace_input(final, out):  # the final norm takes the hidden state positionally
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    else:
        with replace_input(layers[end], out):
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    return logits, calls["n"]


def count_layer_calls(layers):
    counts = [0] * len(layers)
    hooks = [layer.register_forward_hook(lambda *a, j=j: counts.__setitem__(j, counts[j] + 1))
             for j, layer in enumerate(layers)]
    return counts, hooks


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["block", "layer"])
def test_k1_and_beta1_equal_the_plain_model(tiny, family, mode):
    model = tiny(family)
    ids, mask = batch()
    ref = plain_logits(model, ids, mask)
    for cfg in (LoopConfig(window="2:4", k=1, integrator="naive", mode=mode),
                LoopConfig(window="2:4", k=1, integrator="euler", mode=mode),
                LoopConfig(window="2:4", k=3, integrator="anchored", beta=1.0, mode=mode)):
        with looped(model, cfg):
            out = plain_logits(model, ids, mask)
        diff = (out - ref).abs().max().item()
        assert diff <= 1e-6, f"{family} {mode} {cfg.integrator} k={cfg.k}: max |diff| {diff:.3g}"


@pytest.mark.slow
@pytest.mark.parametrize("family", DENSE + ["qwen3_moe", "deepseek_v3"])  # MoE routing: test_moe.py
def test_every_strategy_equals_manual_reference(tiny, family):
    """K in {2, 3} (aitken {2, 4}), every strategy, both modes (uniform: block, dense only)."""
    model = tiny(family)
    ids, mask = batch()
    n_layers = describe(model).n_layers
    worst = {}
    for cfg in reference_cfgs(variants=False):
        for mode in ("block", "layer"):
            if cfg.integrator == "uniform" and (mode == "layer" or describe(model).is_moe):
                continue
            routing = "recompute" if describe(model).is_moe else "auto"   # freeze: test_moe.py
            cfg_m = cfg.replace(window="2:4", mode=mode, routing=routing)
            ref, _ = reference_logits(model, ids, mask, cfg_m, 2, 4, mode)
            window = [describe(model).layers[i] for i in (2, 3)]
            counts, hooks = count_layer_calls(window)
            try:
                with looped(model, cfg_m) as h:
                    out = plain_logits(model, ids, mask)
            finally:
                for hk in hooks:
                    hk.remove()
            diff = (out - ref).abs().max().item()
            worst[(cfg.integrator, cfg.k, mode)] = diff
            # Anderson solves a small least-squares problem per step whose conditioning amplifies
            # the last-bit differences between hand-called layers and the model's own forward
            # (1.8e-5 on minicpm3, CPU-dependent); every other strategy stays within 1e-5
            tol = 1e-4 if cfg.integrator == "anderson" else 1e-5
            assert diff <= tol, f"{family} {mode} {cfg.integrator} k={cfg.k}: max |diff| {diff:.3g}"
            passes = get_integrator(cfg.integrator).passes(cfg_m)
            assert counts == [passes, passes] and sum(counts) == h.stats.layer_calls, (counts, passes)
            assert h.stats.window_passes_last == passes
    assert n_layers >= 5 and worst


def test_window_at_the_end_of_the_stack(tiny):
    model = tiny("qwen3")
    ids, mask = batch()
    cfg = LoopConfig(window="4:6", k=3, integrator="euler", mode="block")
    ref, _ = reference_logits(model, ids, mask, cfg, 4, 6, "block")
    with looped(model, cfg):
        out = plain_logits(model, ids, mask)
    assert (out - ref).abs().max().item() <= 1e-5


def test_padded_batch_rows_equal_rows_run_alone(tiny):
    model = tiny("llama")
    ids, mask = batch()
    cfg = LoopConfig(window="2:4", k=3, integrator="euler", halt_tau=0.05)
    with looped(model, cfg) as h:
        full = plain_logits(model, ids, mask)
        steps = h.stats.steps_last[0].tolist()
        for r in range(ids.shape[0]):
            keep = mask[r].bool()
            alone = plain_logits(model, ids[r:r + 1, keep], mask[r:r + 1, keep])
            diff = (alone[0] - full[r, keep]).abs().max().item()
            assert diff <= 1e-5, f"row {r}: {diff:.3g}"
            assert h.stats.steps_last[0].tolist() == [steps[r]]


def test_restores_the_model_exactly_also_after_an_exception(tiny):
    model = tiny("gemma3_text")
    ids, mask = batch()
    before = plain_logits(model, ids, mask)
    layers = list(describe(model).layers)
    keys = list(model.state_dict())
    hook_counts = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]
    dicts = [set(m.__dict__) for m in model.modules()]
    with pytest.raises(RuntimeError, match="boom"):
        with looped(model, LoopConfig(window="2:4", k=3, integrator="naive", kv="per_pass")):
            plain_logits(model, ids, mask)
            raise RuntimeError("boom")
    assert list(describe(model).layers) == layers
    assert list(model.state_dict()) == keys
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()] == hook_counts
    assert [set(m.__dict__) for m in model.modules()] == dicts
    assert "generate" not in model.__dict__
    assert torch.equal(plain_logits(model, ids, mask), before)


def test_non_context_form(tiny):
    model = tiny("qwen3")
    ids, mask = batch()
    ref = plain_logits(model, ids, mask)
    h = looped(model, LoopConfig(window="2:4", k=4, integrator="naive")).apply()
    try:
        changed = plain_logits(model, ids, mask)
    finally:
        h.remove()
    assert (changed - ref).abs().max() > 1e-3
    assert torch.equal(plain_logits(model, ids, mask), ref)


# ---- handles that overlap, threads, bad arguments --------------------------------------------------

def test_overlapping_handles_are_refused_in_any_order_and_form(tiny):
    """An overlap with an applied handle is refused, naming both windows; removal in any order
    restores the exact original layers (this sequence used to leave a wrapper in layer 3)."""
    model = tiny("qwen3")
    ids, mask = batch()
    before = plain_logits(model, ids, mask)
    layers = list(describe(model).layers)
    h1 = looped(model, window="2:4", k=2, integrator="naive").apply()
    with pytest.raises(RuntimeError, match=r"window 3:5.*window 2:4 of this model is already looped"):
        looped(model, window="3:5", k=2, integrator="naive").apply()
    with pytest.raises(RuntimeError, match=r"window 2:4.*window 2:4 of this model is already looped"):
        with looped(model, window="2:4", k=3, integrator="naive"):
            pass
    h1.remove()
    # made while nothing was applied, applied in the other order
    a = looped(model, window="3:5", k=2, integrator="naive")
    b = looped(model, window="2:4", k=2, integrator="naive")
    a.apply()
    with pytest.raises(RuntimeError, match=r"window 2:4.*window 3:5 of this model is already looped"):
        b.apply()
    # disjoint windows may stack; removal in either order restores the model
    c = looped(model, window="0:2", k=2, integrator="euler").apply()
    both = plain_logits(model, ids, mask)
    a.remove()
    c.remove()
    assert list(describe(model).layers) == layers
    assert torch.equal(plain_logits(model, ids, mask), before)
    assert (both - before).abs().max() > 1e-4


def test_a_second_thread_in_a_looped_forward_gets_a_clear_error(tiny):
    """One looped model cannot serve concurrent forwards (per-forward state lives on the handle):
    a thread entering while another is inside is refused; no forward returns wrong logits."""
    import threading

    model = tiny("llama")
    ids, mask = batch()
    inside, release = threading.Event(), threading.Event()
    window = describe(model).layers[2]

    def hold(mod, args, kwargs):           # the first thread waits inside its looped forward
        if threading.current_thread() is worker:
            inside.set()
            release.wait(10)
    with looped(model, window="2:4", k=3, integrator="euler") as h:
        ref = plain_logits(model, ids, mask)
        hook = window.register_forward_pre_hook(hold, with_kwargs=True)
        out = {}
        worker = threading.Thread(target=lambda: out.setdefault("a", plain_logits(model, ids, mask)))
        worker.start()
        assert inside.wait(10)
        with pytest.raises(RuntimeError, match=r"already running in another thread"):
            plain_logits(model, ids, mask)
        release.set()
        worker.join(10)
        hook.remove()
        assert torch.equal(out["a"], ref)                     # the first thread's answer is right
        assert torch.equal(plain_logits(model, ids, mask), ref)   # and the handle is usable again
    assert h._owner is None


def test_wrong_argument_types_raise_type_error(tiny):
    model = tiny("llama")
    with pytest.raises(TypeError, match=r"cfg must be a LoopConfig.*not int"):
        looped(model, 3)
    with pytest.raises(TypeError, match=r"takes a torch model.*not NoneType"):
        looped(None, LoopConfig(window="2:4"))


# ---- equivalent settings: one identity, the same numbers -------------------------------------------

def test_equivalent_settings_share_identity_and_numbers(tiny):
    model = tiny("qwen3")          # 6 layers: c0.4w2 is layers 2:4
    ids, mask = batch()
    pairs = [
        (dict(window="c0.4w2", k=3, integrator="naive"), dict(window="2:4", k=3, integrator="naive")),
        (dict(window="2:4", k=3, integrator="naive", beta=0.7), dict(window="2:4", k=3, integrator="naive")),
        (dict(window="2:4", k=3, integrator="euler", decode_n=5), dict(window="2:4", k=3, integrator="euler")),
        (dict(window="2:4", k=3, integrator="euler", routing="freeze"), dict(window="2:4", k=3, integrator="euler")),
        (dict(window="2:3", k=3, integrator="euler", mode="layer"), dict(window="2:3", k=3, integrator="euler")),
    ]
    for a, b in pairs:
        ra = LoopConfig.from_dict(a, strict=False).resolve(model, strict=False)
        rb = LoopConfig.from_dict(b, strict=False).resolve(model, strict=False)
        assert ra.identity() == rb.identity(), (a, b)
        with looped(model, ra.config) if "routing" not in a else looped(model, rb.config):
            la = plain_logits(model, ids, mask)
        with looped(model, rb.config):
            lb = plain_logits(model, ids, mask)
        assert torch.equal(la, lb), (a, b)
    different = LoopConfig(window="2:4", k=3, integrator="euler", alpha=0.5).resolve(model)
    assert different.identity() != LoopConfig(window="2:4", k=3, integrator="euler").resolve(model).identity()


def test_provided_natural_pass_gives_the_same_output(tiny):
    """`natural_output(g(x0))` (shared scoring) equals running the first evaluation."""
    model = tiny("qwen3")
    ids, mask = batch()
    seen = layer_inputs(model, ids, mask)
    layers = describe(model).layers
    x = seen[2][0]
    for i in (2, 3):
        x = layers[i](x, **seen[i][1])
    for integrator in ("naive", "euler", "anchored", "rk4"):
        cfg = LoopConfig(window="2:4", k=3, integrator=integrator)
        with looped(model, cfg) as h:
            want = plain_logits(model, ids, mask)
            calls = h.stats.layer_calls
            with h.natural_output(x):
                got = plain_logits(model, ids, mask)
            assert h.stats.layer_calls - calls == calls - 2, integrator   # one pass (2 layers) fewer
        assert (got - want).abs().max().item() <= 1e-6, integrator
    with looped(model, LoopConfig(window="2:4", k=3, mode="layer")) as h:
        with pytest.raises(ValueError, match="only block mode"):
            with h.natural_output(x):
                pass
