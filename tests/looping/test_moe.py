"""MoE and MLA+MoE families: layer / block mode with frozen or recomputed routing.

Every MoE family of tests/looping/families.py (qwen3_moe, qwen2_moe with its shared expert and
gate, mixtral, olmoe, deepseek_v2 and deepseek_v3 with MLA attention, gpt_oss, glm4_moe,
granitemoe, llama4_text), as a tiny random model from its real config. The window `1:4` mixes dense
and MoE layers where the family has dense layers (qwen*_moe `mlp_only_layers=[1]`, deepseek
`first_k_dense_replace=2`, llama4 interleaved MoE), and is all-MoE elsewhere.

The reference (`hand_logits`) never goes through looping's wrappers or looping.moe: it takes the
embedding output and the kwargs every decoder layer receives in a plain forward (the model's own
masks, rotary embeddings and positions), calls all decoder layers by hand with the strategy written
out here, and injects the routing itself: for `freeze` a forward hook on each router module keeps a
copy of the natural pass's output (evaluation 0 of that layer in that forward) and returns a fresh
copy of it at every later evaluation; for `recompute` the routers run untouched. The logits come
from the plain model with the final norm's input replaced by the hand-computed state.
"""
from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from looping import LoopConfig, looped
from looping.arch import describe, find_routers
from looping import LoopConfigError
from tests.looping.families import DENSE, FAMILIES, MOE, tiny_model
from tests.looping.manual import batch, layer_inputs, replace_input
from tests.looping.manual import plain_logits as logits_of

WINDOW = (1, 4)
_MODELS: dict[str, torch.nn.Module] = {}


def model_of(family: str):
    """One tiny model per family and test session (tests that change weights build their own)."""
    if family not in _MODELS:
        torch.manual_seed(0)
        _MODELS[family] = tiny_model(family)
    return _MODELS[family]


def window_routers(model, start=WINDOW[0], end=WINDOW[1]):
    """{layer index: [router modules]} for the window (found from the model's router class)."""
    info = describe(model)
    return {i: [r for _, _, r in find_routers(info.layers[i], info.router_class)] for i in range(start, end)}


# ---- the hand-written reference --------------------------------------------------------------

def _copy(out):
    return tuple(t.clone() for t in out) if isinstance(out, tuple) else out.clone()


def strategy(G, x0, cfg):
    """The strategy written out; G(x, p) is evaluation p (p = 0: the natural pass g(x0))."""
    K, name = cfg.k, cfg.integrator
    if name == "naive":
        x = x0
        for p in range(K):
            x = G(x, p)
        return x
    if name in ("euler", "anchored"):
        if K == 1:
            return G(x0, 0)
        natural = None
        x = x0
        for p in range(K):
            y = G(x, p)
            natural = y if p == 0 else natural
            x = x + (cfg.alpha / K) * (y - x)
        return x if name == "euler" else cfg.beta * natural + (1 - cfg.beta) * x
    if name == "norm_interp":  # the authors' _layer_anchored_frozen
        def rescale(a, n):
            return a * (n / a.norm(dim=-1, keepdim=True).clamp_min(1e-6))
        natural = G(x0, 0)
        n_in, n_nat = x0.norm(dim=-1, keepdim=True), natural.norm(dim=-1, keepdim=True)
        h = rescale((1 - 1 / K) * x0 + natural / K, n_in + (n_nat - n_in) / K)
        for p in range(1, K):
            h = (1 - 1 / K) * h + G(h, p) / K
            if p < K - 1:
                h = rescale(h, n_in + (n_nat - n_in) * (p + 1) / K)
        return cfg.beta * natural + (1 - cfg.beta) * h
    raise ValueError(f'no written-out reference for {name!r}')


_SEEN: dict = {}


@torch.no_grad()
def hand_logits(model, ids, mask, cfg, mode, routing, start=WINDOW[0], end=WINDOW[1]):
    """Logits of the looped model computed by calling every decoder layer by hand."""
    key = (id(model), ids.data_ptr(), mask.data_ptr())
    if key not in _SEEN:  # the plain forward's layer inputs; `batch()` tensors are made per call
        _SEEN.clear()
        _SEEN[key] = (layer_inputs(model, ids, mask), ids, mask)
    seen = _SEEN[key][0]
    layers = describe(model).layers
    routers = window_routers(model, start, end)
    phase: dict[int, int] = {}        # layer -> evaluation index, set explicitly below
    natural: dict[int, object] = {}   # id(router) -> copy of its natural-pass output
    hooks = []
    if routing == "freeze":
        for i, rs in routers.items():
            for r in rs:
                def hook(mod, args, out, i=i):
                    if phase[i] == 0:
                        natural[id(mod)] = _copy(out)
                        return None
                    return _copy(natural[id(mod)])
                hooks.append(r.register_forward_hook(hook))

    def evaluate(i, x, p):
        phase[i] = p
        return layers[i](x, **seen[i][1])

    try:
        x = seen[0][0]  # the embedding output (scaled where the family scales it)
        for i in range(start):
            x = layers[i](x, **seen[i][1])
        if mode == "block":
            def G(x, p):
                for i in range(start, end):
                    x = evaluate(i, x, p)
                return x
            x = strategy(G, x, cfg)
        else:
            for i in range(start, end):
                x = strategy(lambda x, p, i=i: evaluate(i, x, p), x, cfg)
        for i in range(end, len(layers)):
            x = layers[i](x, **seen[i][1])
    finally:
        for h in hooks:
            h.remove()
    with replace_input(describe(model).decoder.norm, x):
        return model(input_ids=ids, attention_mask=mask, use_cache=False).logits


# ---- an independent count of router computations ----------------------------------------------

class CountWeightUse(TorchFunctionMode):
    """Counts torch calls that take a given router's weight tensor as an argument: each router
    computation touches its weight, a replayed (frozen) output does not."""

    def __init__(self, routers):
        super().__init__()
        self.weights = {id(r.weight): r for r in routers}
        self.counts = {id(r): 0 for r in routers}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        touched = {id(self.weights[id(a)]) for a in (*args, *kwargs.values()) if id(a) in self.weights}
        for k in touched:
            self.counts[k] += 1
        return func(*args, **kwargs)


def router_computations(model, routers, fn):
    with CountWeightUse(routers) as mode:
        fn()
    return [mode.counts[id(r)] for r in routers]


# ---- the families --------------------------------------------------------------------------

@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_builds_from_its_real_config(family):
    model = model_of(family)
    info = describe(model)
    assert info.n_layers == 6 and info.model_type == model.config.model_type
    assert info.is_moe == (family in MOE), info.moe_layers
    out = logits_of(model, *batch())
    assert out.shape == (3, 10, 128) and torch.isfinite(out).all()


def test_windows_mix_dense_and_moe_layers_where_the_family_has_both():
    mixed = {f: describe(model_of(f)).moe_layers[WINDOW[0]:WINDOW[1]] for f in MOE}
    for f in ("qwen3_moe", "qwen2_moe", "deepseek_v2", "deepseek_v3", "llama4_text"):
        assert any(mixed[f]) and not all(mixed[f]), (f, mixed[f])
    assert all(any(m) for m in mixed.values())


# ---- K = 1 parity ----------------------------------------------------------------------------

@pytest.mark.parametrize("family", MOE)
def test_k1_equals_the_plain_model_in_both_modes_with_every_routing(family):
    model = model_of(family)
    ids, mask = batch()
    ref = logits_of(model, ids, mask)
    for mode in ("block", "layer"):
        for routing in ("freeze", "recompute", "auto"):
            for integrator in ("naive", "euler"):
                cfg = LoopConfig(window="1:4", k=1, integrator=integrator, mode=mode, routing=routing)
                with looped(model, cfg) as h:
                    out = logits_of(model, ids, mask)
                diff = (out - ref).abs().max().item()
                assert diff <= 1e-6, f"{family} {mode} {routing} {integrator}: max |diff| {diff:.3g}"
                assert h.resolved.routing == (routing if routing != "auto" else
                                              {"layer": "freeze", "block": "recompute"}[mode])
    assert torch.equal(logits_of(model, ids, mask), ref)  # restored


# ---- freeze: the router runs once per layer per forward -----------------------------------------

@pytest.mark.parametrize("family", MOE)
def test_freeze_runs_each_window_router_once_and_replays_its_output(family):
    model = model_of(family)
    ids, mask = batch()
    routers = [r for rs in window_routers(model).values() for r in rs]
    assert routers, f"{family}: no router found in window {WINDOW}"
    plain = router_computations(model, routers, lambda: logits_of(model, ids, mask))
    assert all(c >= 1 for c in plain), plain

    K = 3
    seen = {id(r): [] for r in routers}
    hooks = [r.register_forward_hook(lambda mod, a, out: seen[id(mod)].append(out)) for r in routers]
    try:
        cfg = LoopConfig(window="1:4", k=K, integrator="euler", mode="layer", routing="freeze")
        with looped(model, cfg) as h:
            looped_counts = router_computations(model, routers, lambda: logits_of(model, ids, mask))
    finally:
        for hk in hooks:
            hk.remove()
    # computed once per forward, exactly as in the plain model ...
    assert looped_counts == plain, (looped_counts, plain)
    assert h.routing.router_calls == len(routers)
    assert h.routing.replays == (K - 1) * len(routers)
    # ... while every evaluation went through the router module and got the natural pass's output
    for r in routers:
        outs = seen[id(r)]
        assert len(outs) == K, f"{family}: router hook fired {len(outs)} times, expected {K}"
        assert all(o is outs[0] for o in outs[1:])
    assert h.routing.changed == 0 and h.routing.compared > 0

    # recompute, for contrast: one computation per evaluation
    with looped(model, cfg.replace(routing="recompute")) as h:
        counts = router_computations(model, routers, lambda: logits_of(model, ids, mask))
    assert counts == [K * c for c in plain]
    assert h.routing.router_calls == K * len(routers) and h.routing.replays == 0


def test_freeze_serves_the_kv_last_stash_pass_from_the_natural_pass():
    """With a cache and kv='last', each looped forward evaluates every window layer K times plus
    once in the stash pass; under freeze the router still computes once per layer per forward (the
    stash pass reuses the natural pass's routing), in prefill and in every decode step."""
    model = model_of("qwen3_moe")
    ids, mask = batch()
    routers = [r for rs in window_routers(model).values() for r in rs]
    plain = router_computations(model, routers, lambda: model(input_ids=ids, attention_mask=mask))
    K, new = 3, 3
    cfg = LoopConfig(window="1:4", k=K, integrator="anchored", mode="layer", routing="freeze", kv="last")
    seen = {id(r): [] for r in routers}
    hooks = [r.register_forward_hook(lambda mod, a, out: seen[id(mod)].append(out)) for r in routers]
    try:
        with looped(model, cfg) as h, torch.no_grad():
            counts = router_computations(model, routers, lambda: model.generate(
                ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False))
    finally:
        for hk in hooks:
            hk.remove()
    forwards = h.stats.forwards
    assert forwards == new and h.stats.stash_calls == forwards * (WINDOW[1] - WINDOW[0])
    assert counts == [forwards * c for c in plain], (counts, plain, forwards)
    for r in routers:
        outs = seen[id(r)]
        assert len(outs) == forwards * (K + 1)  # K loop evaluations + the stash pass
        for f in range(forwards):
            per_forward = outs[f * (K + 1):(f + 1) * (K + 1)]
            assert all(o is per_forward[0] for o in per_forward)


# ---- the routing-change diagnostic ----------------------------------------------------------

def crafted(family):
    """A fresh model whose window routers have rank-1 weights W[e] = c_e u (c descending): a token
    picks the top-k experts {0..k-1} if x.u > 0 and the last k experts if x.u < 0, so its expert set
    switches exactly when the sign of its router input's projection on u flips."""
    torch.manual_seed(0)
    model = tiny_model(family)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for rs in window_routers(model).values():
            for r in rs:
                E, C = r.weight.shape
                u = torch.randn(C, generator=g)
                u = u / u.norm()
                r.weight.copy_(torch.linspace(3.0, -3.0, E)[:, None] * u[None, :])
    return model


def hand_sets(router, x):
    """Top-k expert set per token from the router input, written out: softmax is monotone, so the
    top-k of the logits x W^T (both routers here have no bias)."""
    logits = x.reshape(-1, x.shape[-1]) @ router.weight.T
    return logits.topk(router.top_k, dim=-1).indices.sort(dim=-1).values


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral"])
@pytest.mark.parametrize("mode", ["layer", "block"])
def test_change_rate_equals_a_hand_count_under_recompute_and_is_zero_under_freeze(family, mode):
    model = crafted(family)
    ids, mask = batch()
    valid = mask.bool().reshape(-1)
    routers = [r for rs in window_routers(model).values() for r in rs]
    inputs = {id(r): [] for r in routers}
    hooks = [r.register_forward_pre_hook(lambda mod, args: inputs[id(mod)].append(args[0].detach()))
             for r in routers]
    K = 2  # one iteration after the natural pass
    cfg = LoopConfig(window="1:4", k=K, integrator="naive", mode=mode, routing="recompute")
    try:
        with looped(model, cfg) as h:
            logits_of(model, ids, mask)
    finally:
        for hk in hooks:
            hk.remove()
    switched, compared, switched_with_padding = 0, 0, 0
    for r in routers:
        first, second = inputs[id(r)]
        sets0, sets1 = hand_sets(r, first), hand_sets(r, second)
        # the crafted weights: the set is the top or the bottom block of experts
        k, E = r.top_k, r.weight.shape[0]
        assert all(s in (list(range(k)), list(range(E - k, E))) for s in sets0.tolist())
        flips = (sets0 != sets1).any(-1)
        switched += int(flips[valid].sum())
        compared += int(valid.sum())
        switched_with_padding += int(flips.sum())
    assert 0 < switched < compared, f"crafted weights should switch some tokens: {switched}/{compared}"
    assert (h.routing.changed, h.routing.compared) == (switched, compared), \
        (h.routing.changed, h.routing.compared, switched, compared, switched_with_padding)
    assert h.routing_change_rate == pytest.approx(switched / compared)
    assert h.routing.change_rate_at(1) == pytest.approx(switched / compared)
    stats = h.routing.as_dict()
    assert stats["routing"] == "recompute" and stats["by_eval"][1]["changed"] == switched

    with looped(model, cfg.replace(routing="freeze")) as h:
        logits_of(model, ids, mask)
    assert h.routing.changed == 0 and h.routing.compared == compared
    assert h.routing_change_rate == 0.0


def test_change_rate_is_none_on_a_dense_model():
    model = model_of("llama")
    with looped(model, LoopConfig(window="1:4", k=3, integrator="euler")) as h:
        logits_of(model, *batch())
    assert h.routing_change_rate is None and h.resolved.routing == "n/a"


# ---- looped outputs against the hand-written reference -------------------------------------------

FAST_CASES = [  # (integrator, k, mode, routing)
    ("anchored", 3, "layer", "freeze"), ("anchored", 3, "layer", "recompute"),
    ("euler", 2, "block", "freeze"), ("naive", 2, "block", "recompute"),
]
FULL_CASES = [(i, k, m, r) for i in ("naive", "euler", "anchored") for k in (2, 3)
              for m in ("block", "layer") for r in ("freeze", "recompute")]


def check_against_reference(family, cases):
    model = model_of(family)
    ids, mask = batch()
    plain = logits_of(model, ids, mask)
    refs = {}
    for integrator, k, mode, routing in cases:
        cfg = LoopConfig(window="1:4", k=k, integrator=integrator, mode=mode, routing=routing)
        ref = refs[integrator, k, mode, routing] = hand_logits(model, ids, mask, cfg, mode, routing)
        with looped(model, cfg) as h:
            out = logits_of(model, ids, mask)
        diff = (out - ref).abs().max().item()
        assert diff <= 1e-5, f"{family} {integrator} k={k} {mode} {routing}: max |diff| {diff:.3g}"
        assert (out - plain).abs().max().item() > 1e-4, "looping should change the logits"
        assert h.resolved.mode == mode and h.resolved.routing == routing
    # the reference's routing injection matters: frozen and recomputed routing give other logits
    frozen, recomputed = refs["anchored", 3, "layer", "freeze"], refs["anchored", 3, "layer", "recompute"]
    assert (frozen - recomputed).abs().max().item() > 1e-4


@pytest.mark.parametrize("family", MOE)
def test_looped_outputs_equal_the_hand_reference(family):
    check_against_reference(family, FAST_CASES)


@pytest.mark.slow
@pytest.mark.parametrize("family", MOE)
def test_looped_outputs_equal_the_hand_reference_full_grid(family):
    check_against_reference(family, FULL_CASES)


@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v3"])
def test_code_moe_frozen_recipe_equals_the_hand_reference(family):
    model = model_of(family)
    ids, mask = batch()
    cfg = LoopConfig.from_dict({"recipe": "code-moe-frozen", "window": "1:4"})
    assert (cfg.mode, cfg.routing, cfg.integrator, cfg.k) == ("layer", "freeze", "norm_interp", 6)
    ref = hand_logits(model, ids, mask, cfg, "layer", "freeze")
    with looped(model, cfg):
        out = logits_of(model, ids, mask)
    assert (out - ref).abs().max().item() <= 1e-5


def test_freeze_and_recompute_differ_when_routing_moves():
    model = crafted("qwen3_moe")
    ids, mask = batch()
    cfg = LoopConfig(window="1:4", k=3, integrator="euler", mode="layer")
    outs = {}
    for routing in ("freeze", "recompute"):
        with looped(model, cfg.replace(routing=routing)) as h:
            outs[routing] = logits_of(model, ids, mask)
        if routing == "recompute":
            assert h.routing.changed > 0
    assert (outs["freeze"] - outs["recompute"]).abs().max().item() > 1e-5


# ---- resolution and refusals -----------------------------------------------------------------

@pytest.mark.parametrize("family", MOE)
def test_uniform_is_refused_on_moe_windows(family):
    model = model_of(family)
    with pytest.raises(LoopConfigError, match="uniform.*MoE layers"):
        looped(model, LoopConfig(window="1:4", k=2, integrator="uniform", mode="block"))


def test_uniform_is_allowed_on_a_dense_window_of_an_moe_model():
    model = model_of("deepseek_v3")  # layers 0 and 1 are dense (first_k_dense_replace=2)
    h = looped(model, LoopConfig(window="0:2", k=2, integrator="uniform", mode="block"))
    assert h.resolved.routing == "recompute"


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3_text"])
def test_dense_models_resolve_to_block_and_routing_na(family):
    """Asked for directly, MoE routing on a dense model is an error; a sweep (strict=False) records
    it as 'n/a', so grids can cross dense and MoE models."""
    model = model_of(family)
    for routing in ("auto", "freeze", "recompute"):
        rec = LoopConfig(window="1:4", k=2, routing=routing).resolve(model, strict=False).record()
        assert (rec["mode_resolved"], rec["routing_resolved"], rec["routing"]) == ("block", "n/a", routing)
        if routing != "auto":
            with pytest.raises(LoopConfigError, match=rf"routing='{routing}' applies to MoE models only"):
                looped(model, LoopConfig(window="1:4", k=2, routing=routing))
    assert looped(model, LoopConfig(window="1:4", k=2)).resolved.record()["routing_resolved"] == "n/a"
    rec = LoopConfig(window="1:4", k=2, mode="layer", routing="freeze").resolve(model, strict=False).record()
    assert rec["routing_resolved"] == "n/a"


@pytest.mark.parametrize("family", MOE)
def test_moe_models_resolve_auto_to_layer_and_freeze(family):
    model = model_of(family)
    rec = looped(model, LoopConfig(window="1:4", k=2)).resolved.record()
    assert (rec["mode"], rec["mode_resolved"]) == ("auto", "layer")
    assert (rec["routing"], rec["routing_resolved"]) == ("auto", "freeze")
    rec = looped(model, LoopConfig(window="1:4", k=2, mode="block")).resolved.record()
    assert rec["routing_resolved"] == "recompute"
    rec = looped(model, LoopConfig(window="1:4", k=2, mode="block", routing="freeze")).resolved.record()
    assert (rec["mode_resolved"], rec["routing_resolved"]) == ("block", "freeze")


def test_dense_family_list_is_the_dense_part():
    assert set(DENSE) | set(MOE) == set(FAMILIES) and not set(DENSE) & set(MOE)
