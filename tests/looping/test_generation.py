"""Generation with looping: the two-phase KV stash, decode modes, cache size flat in K.

Three kinds of evidence, strongest first:
- checks that need no reference: K = 1 equals the plain model bit for bit; after prefill the
  kv='first' cache equals the plain model's in the prefix and window slots; the kv='last' window
  slots equal one plain pass of the window layers on the post-loop state (captured by a hook);
  kv='per_pass' cached decoding equals re-running the whole sequence without a cache; cache shapes
  equal the plain model's for any K; call counts of the original layer modules.
- the explicit slow reference of the protocol (tests/looping/reference.py: hand-called layers,
  explicit masks, no HF cache), teacher-forced on the tokens generate produced.
- self-consistency: each left-padded row equals its prompt run alone; direct step-by-step
  `model(..., past_key_values=DynamicCache(...))` calls equal `generate`; seeded sampling repeats.

Beam search is checked against the reference without re-implementing beam search: generate returns
`beam_indices`, so for every returned hypothesis we know which beam row produced each of its tokens.
The raw logits of that row at that step must equal the reference's logits for the hypothesis's own
prefix (teacher-forced). That is exactly what a correct cache reorder under the stash protocol gives,
and it fails if a reorder mixed rows or if the stash kept the wrong K/V.

Tiny random models from real configs (fp32, eval, seeded). Window 2:4 of 6 layers throughout: layer 0
(and layer 1, the first full-attention layer of the alternating families) size the masks.
"""
from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache, GenerationConfig, StaticCache
from transformers.cache_utils import QuantizedCache

from looping import LoopConfig, LoopConfigError, looped
from looping.arch import describe
from tests.looping.reference import StashReference, reference_decode

BASE = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=256)
ALTERNATING = ["sliding_attention", "full_attention"] * 3
FAMILY_OPTIONS = {
    "llama": {},
    "qwen3": {},
    "mistral": dict(sliding_window=5),
    "gemma3_text": dict(sliding_window=5, layer_types=ALTERNATING),
    "olmo2": {},
    "gpt_neox": dict(rotary_pct=0.25, use_parallel_residual=True),   # cache passed as `layer_past`
    "qwen3_moe": dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32),
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    "deepseek_v3": dict(kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16,
                        head_dim=8, n_routed_experts=8, n_group=1, topk_group=1, n_shared_experts=1,
                        moe_intermediate_size=32, num_key_value_heads=4, first_k_dense_replace=1,
                        num_experts_per_tok=2),
    "gpt_oss": dict(num_local_experts=4, num_experts_per_tok=2, sliding_window=5, layer_types=ALTERNATING),
    # hybrid: gated-delta-net linear attention (a recurrent state in its cache slot) on even layers,
    # so the window 2:4 holds one recurrent and one attention layer
    "qwen3_5_text": dict(layer_types=["linear_attention", "full_attention"] * 3, linear_num_value_heads=4,
                         linear_num_key_heads=2, linear_key_head_dim=16, linear_value_head_dim=16),
    # DSA: MLA plus a lightning indexer whose keys are cached beside K/V (DynamicIndexedLayer). Its
    # top-k over keys makes the plain model depend on left padding unless k covers every key, which
    # the padded-row-vs-alone checks need: index_topk 64 > any sequence here
    "deepseek_v32": dict(kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16,
                         head_dim=8, n_routed_experts=8, n_group=1, topk_group=1, n_shared_experts=1,
                         moe_intermediate_size=32, num_key_value_heads=4, first_k_dense_replace=1,
                         num_experts_per_tok=2, index_n_heads=2, index_head_dim=16, index_topk=64),
}
DENSE = ["llama", "qwen3", "mistral", "gemma3_text", "olmo2", "gpt_neox", "qwen3_5_text"]
MOE = ["qwen3_moe", "mixtral", "deepseek_v3", "gpt_oss", "deepseek_v32"]
FAMILIES = DENSE + MOE
S, E = 2, 4
WINDOW = f"{S}:{E}"
N_NEW = 5
TOL = 1e-5
_MODELS: dict = {}


def tiny(family: str):
    """A small random model of `family` (built once per test session; looped() restores it)."""
    if family not in _MODELS:
        torch.manual_seed(0)
        config = AutoConfig.for_model(family, **{**BASE, **FAMILY_OPTIONS[family]})
        model = AutoModelForCausalLM.from_config(config).eval()
        model.generation_config.eos_token_id = None  # every row generates exactly max_new_tokens
        model.generation_config.pad_token_id = 0
        _MODELS[family] = model
    return _MODELS[family]


def prompts(batch=3, length=8, seed=1):
    """Left-padded prompts of different lengths (8, 5, 2 real tokens)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 128, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    for r, real in enumerate([8, 5, 2][:batch]):
        mask[r, :length - real] = 0
    ids = ids.masked_fill(mask == 0, 0)
    return ids, mask


def cfg(k=3, integrator="anchored", mode="block", kv="first", decode="full", **extra):
    if decode != "first_n":            # decode_n is read by decode='first_n' only
        extra.pop("decode_n", None)
    return LoopConfig(window=WINDOW, k=k, integrator=integrator, mode=mode, kv=kv, decode=decode, **extra)


@torch.no_grad()
def generate(model, ids, mask, n=N_NEW, **kw):
    kw.setdefault("do_sample", False)
    return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, return_dict_in_generate=True,
                          output_logits=True, output_scores=True, **kw)


def generate_positions(mask):
    """Position ids as `generate` builds them for a left-padded prompt."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)


@torch.no_grad()
def direct_decode(model, ids, mask, new_tokens, cache=None):
    """Teacher-forced step-by-step `model(...)` calls with a cache: list of (B, V) logits per step."""
    cache = DynamicCache(config=model.config) if cache is None else cache
    pos = generate_positions(mask)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
    logits = [out.logits[:, -1]]
    for t in range(new_tokens.shape[1] - 1):
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        pos = pos[:, -1:] + 1
        out = model(input_ids=new_tokens[:, t:t + 1], attention_mask=mask, position_ids=pos,
                    past_key_values=cache, use_cache=True)
        logits.append(out.logits[:, -1])
    return logits, cache


@torch.no_grad()
def recompute_decode(model, ids, mask, new_tokens):
    """Teacher-forced logits re-computing the whole sequence without a cache at every step."""
    logits = []
    for t in range(new_tokens.shape[1]):
        seq = torch.cat([ids, new_tokens[:, :t]], dim=1)
        m = torch.cat([mask, torch.ones_like(new_tokens[:, :t])], dim=1)
        out = model(input_ids=seq, attention_mask=m, position_ids=generate_positions(m), use_cache=False)
        logits.append(out.logits[:, -1])
    return logits


def max_diff(a, b, rows=None) -> float:
    if rows is not None:
        a, b = [x[rows] for x in a], [x[rows] for x in b]
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def routing_of(model, mode):
    return "freeze" if (describe(model).is_moe and mode == "layer") else ("recompute" if describe(model).is_moe
                                                                         else "n/a")


def slot_tensors(cache):
    return [(layer.keys, layer.values) for layer in cache.layers]


# ---- K = 1 is the plain model ----------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_k1_kv_first_generate_equals_plain_model(family):
    model = tiny(family)
    ids, mask = prompts()
    plain = generate(model, ids, mask)
    for integrator, mode in (("naive", "block"), ("euler", "layer")):
        for kv, decode in (("first", "full"), ("first", "bypass"), ("first", "first_n"), ("per_pass", "full")):
            c = cfg(k=1, integrator=integrator, mode=mode, kv=kv, decode=decode, decode_n=2)
            with looped(model, c):
                out = generate(model, ids, mask)
            tag = f"{family} {integrator} {mode} kv={kv} decode={decode}"
            assert torch.equal(out.sequences, plain.sequences), tag
            d = max(max_diff(out.logits, plain.logits), max_diff(out.scores, plain.scores))
            assert d == 0.0, f"{tag}: max |diff| {d:.3g}"


@pytest.mark.parametrize("family", FAMILIES)
def test_k1_kv_last_and_none_prefill_logits_equal_plain_model(family):
    model = tiny(family)
    ids, mask = prompts()
    pos = generate_positions(mask)
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask, position_ids=pos,
                      past_key_values=DynamicCache(config=model.config)).logits
        for kv in ("last", "none"):
            for integrator in ("naive", "euler"):
                with looped(model, cfg(k=1, integrator=integrator, kv=kv)):
                    out = model(input_ids=ids, attention_mask=mask, position_ids=pos,
                                past_key_values=DynamicCache(config=model.config)).logits
                d = (out - plain)[mask.bool()].abs().max().item()
                assert d <= 1e-6, f"{family} kv={kv} {integrator}: max |diff| {d:.3g}"


# ---- the cache after prefill, without any reference ------------------------------------------

@pytest.mark.parametrize("family", ["llama", "mistral", "gemma3_text", "deepseek_v3", "gpt_oss"])
@pytest.mark.parametrize("mode", ["block", "layer"])
def test_kv_first_prefill_cache_equals_plain_in_prefix_and_window(family, mode):
    """kv='first' keeps the plain model's window K/V, tensor for tensor, in both modes (layer mode:
    through the extra window pass from the pre-loop state)."""
    model = tiny(family)
    ids, mask = prompts()
    pos = generate_positions(mask)
    with torch.no_grad():
        plain = DynamicCache(config=model.config)
        model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=plain)
        with looped(model, cfg(k=3, integrator="euler", kv="first", mode=mode)):
            cache = DynamicCache(config=model.config)
            model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache)
    for i, ((k, v), (pk, pv)) in enumerate(zip(slot_tensors(cache), slot_tensors(plain))):
        if i < E:
            assert torch.equal(k, pk) and torch.equal(v, pv), f"{family} slot {i} differs from the plain model"
        else:
            d = (k - pk).abs().max().item()
            assert d > 1e-4, f"{family} suffix slot {i} should differ from the plain model (max |diff| {d:.3g})"


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "deepseek_v3", "gpt_oss"])
@pytest.mark.parametrize("mode", ["block", "layer"])
def test_kv_first_window_cache_equals_plain_after_decode_steps(family, mode):
    """After a prefill and 5 teacher-forced decode steps, the kv='first' window slots equal the
    plain model's on the same tokens, tensor for tensor: every token's window K/V is the plain
    pass from its pre-loop state (prefix layers never see looped states). kv='chain' in layer
    mode keeps the looped chain's instead (it differs)."""
    model = tiny(family)
    ids, mask = prompts()
    new = torch.randint(3, 128, (ids.shape[0], 6), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        _, plain = direct_decode(model, ids, mask, new)
        with looped(model, cfg(k=3, integrator="euler", kv="first", mode=mode)):
            _, cache = direct_decode(model, ids, mask, new)
        with looped(model, cfg(k=3, integrator="euler", kv="chain", mode=mode)):
            _, chain = direct_decode(model, ids, mask, new)
    for i in range(S, E):
        for got, want in zip(slot_tensors(cache)[i], slot_tensors(plain)[i]):
            assert torch.equal(got, want), f"{family} {mode}: window slot {i} differs from the plain model"
    d = max((a - b).abs().max().item() for a, b in zip(slot_tensors(chain)[E - 1], slot_tensors(plain)[E - 1]))
    if mode == "layer":
        assert d > 1e-4, f"{family}: kv=chain should keep the looped chain's K/V in layer {E - 1}"
    else:
        assert d == 0.0, f"{family}: kv=chain equals kv=first in block mode"


@pytest.mark.parametrize("family", ["llama", "mistral", "gemma3_text", "deepseek_v3", "gpt_oss"])
@pytest.mark.parametrize("mode", ["block", "layer"])
def test_kv_last_window_slots_are_one_plain_pass_on_the_post_loop_state(family, mode):
    model = tiny(family)
    ids, mask = prompts()
    pos = generate_positions(mask)
    layers = list(describe(model).layers)
    seen, hooks = {}, []
    for i in range(len(layers)):  # what each original layer receives in a plain forward
        def grab(mod, args, kwargs, i=i):
            seen[i] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        hooks.append(layers[i].register_forward_pre_hook(grab, with_kwargs=True))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=DynamicCache(config=model.config))
    for h in hooks:
        h.remove()
    post = {}
    with torch.no_grad(), looped(model, cfg(k=3, integrator="anchored", mode=mode, kv="last")):
        # the post-loop state: the input of the first suffix layer (both modes: the extra pass
        # runs the whole window from the window's output)
        live = describe(model).layers
        watch = [E]
        hooks = [live[i].register_forward_pre_hook(
            lambda mod, args, kwargs, i=i: post.__setitem__(i, args[0] if args else kwargs["hidden_states"]),
            with_kwargs=True) for i in watch]
        try:
            cache = DynamicCache(config=model.config)
            model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache)
        finally:
            for h in hooks:
                h.remove()
        fresh = DynamicCache(config=model.config)
        x = post[E]
        for i in range(S, E):
            x = layers[i](x, **{**seen[i], "past_key_values": fresh})
    for i in range(S, E):
        for got, want in zip((cache.layers[i].keys, cache.layers[i].values), (fresh.layers[i].keys, fresh.layers[i].values)):
            d = (got - want).abs().max().item()
            assert d <= 1e-6, f"{family} {mode}: window slot {i} vs one plain pass on the post-loop state: {d:.3g}"


# ---- against the explicit reference --------------------------------------------------------

def check_against_reference(family, c, n=6, rows_alone=True):
    """generate under `c` vs the stash reference (teacher-forced: the prefill and n - 1 = 5 cached
    decode steps), and each row vs its prompt alone."""
    model = tiny(family)
    ids, mask = prompts()
    with looped(model, c) as h:
        out = generate(model, ids, mask, n=n)
        new = out.sequences[:, ids.shape[1]:]
        alone = []
        if rows_alone:
            for r in range(ids.shape[0]):
                keep = mask[r].bool()
                alone.append(direct_decode(model, ids[r:r + 1, keep], mask[r:r + 1, keep], new[r:r + 1])[0])
    ref, _ = reference_decode(model, c, S, E, h.resolved.mode, ids, mask, new, routing=h.resolved.routing)
    d_ref = max_diff(out.logits, ref)
    tag = f"{family} k={c.k} {c.integrator} {h.resolved.mode} kv={c.kv} decode={c.decode} routing={h.resolved.routing}"
    assert d_ref <= TOL, f"{tag}: generate vs reference max |diff| {d_ref:.3g}"
    d_alone = max((max_diff([x[r:r + 1] for x in out.logits], a) for r, a in enumerate(alone)), default=0.0)
    assert d_alone <= TOL, f"{tag}: padded batch row vs prompt alone max |diff| {d_alone:.3g}"
    return d_ref, d_alone


@pytest.mark.parametrize("integrator", ["naive", "euler", "anchored", "rk4"])
@pytest.mark.parametrize("mode", ["block", "layer"])
def test_cached_generation_equals_reference_llama(integrator, mode):
    worst = 0.0
    for k in (2, 3):
        for kv in ("first", "chain", "last", "none", "per_pass"):
            worst = max(worst, *check_against_reference("llama", cfg(k=k, integrator=integrator, mode=mode, kv=kv)))
    assert worst <= TOL


@pytest.mark.slow
@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "llama"])
def test_cached_generation_equals_reference_other_families(family):
    for integrator, k in (("anchored", 3), ("rk4", 2)):
        for mode in ("block", "layer"):
            for kv in ("first", "chain", "last", "none", "per_pass"):
                check_against_reference(family, cfg(k=k, integrator=integrator, mode=mode, kv=kv),
                                        rows_alone=kv in ("first", "chain", "last"))


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
@pytest.mark.parametrize("decode", ["bypass", "first_n"])
def test_decode_modes_equal_reference(family, decode):
    for mode in ("block", "layer"):
        for kv in ("first", "chain", "last", "none"):
            check_against_reference(family, cfg(k=3, mode=mode, kv=kv, decode=decode, decode_n=2), n=5,
                                    rows_alone=False)


def test_the_reference_tells_the_policies_apart():
    """Guards the reference checks against vacuity: on the same tokens, the policies (and the plain
    model) give logits that differ far beyond the tolerance."""
    model = tiny("llama")
    ids, mask = prompts()
    new = generate(model, ids, mask).sequences[:, ids.shape[1]:]
    logits = {kv: reference_decode(model, cfg(k=3, kv=kv), S, E, "block", ids, mask, new)[0]
              for kv in ("first", "last", "none", "per_pass")}
    logits["plain"] = reference_decode(model, cfg(k=1, integrator="naive"), S, E, "block", ids, mask, new)[0]
    names = list(logits)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            d = max_diff(logits[names[a]][1:], logits[names[b]][1:])  # decode steps
            assert d > 1e-3, f"{names[a]} vs {names[b]}: only {d:.3g} apart"


# ---- per_pass: exactly the cache-free looped model --------------------------------------------

@pytest.mark.parametrize("family", ["llama", "gemma3_text", "deepseek_v3", "gpt_oss"])
def test_per_pass_cached_decoding_equals_recompute_without_cache(family):
    model = tiny(family)
    ids, mask = prompts()
    rows = mask[:, -1].bool()
    for c in (cfg(k=3, integrator="anchored", mode="block", kv="per_pass"),
              cfg(k=2, integrator="rk4", mode="layer", kv="per_pass"),
              cfg(k=3, integrator="naive", mode="block", kv="per_pass")):
        with looped(model, c):
            out = generate(model, ids, mask)
            new = out.sequences[:, ids.shape[1]:]
            full = recompute_decode(model, ids, mask, new)
        d = max_diff(out.logits, full, rows)
        assert d <= TOL, f"{family} {c.integrator} {c.mode}: per_pass vs recompute max |diff| {d:.3g}"
    # the stash approximation is visible with kv='first' (so the check above is not vacuous)
    with looped(model, cfg(k=3, integrator="anchored", mode="block", kv="first")):
        out = generate(model, ids, mask)
        full = recompute_decode(model, ids, mask, out.sequences[:, ids.shape[1]:])
    assert max_diff(out.logits[1:], full[1:]) > 1e-4


def test_per_pass_refuses_beam_search_and_halting():
    model = tiny("llama")
    ids, mask = prompts()
    with looped(model, cfg(kv="per_pass")):
        with pytest.raises(ValueError, match="per_pass.*beam"):
            generate(model, ids, mask, num_beams=2)
        with pytest.raises(ValueError, match="per_pass.*beam"):
            generate(model, ids, mask, generation_config=GenerationConfig(num_beams=2, max_new_tokens=3,
                                                                           pad_token_id=0))
    with pytest.raises(LoopConfigError, match="per_pass.*halt_tau"):
        cfg(integrator="euler", kv="per_pass", halt_tau=0.05)
    with pytest.raises(LoopConfigError, match="per_pass.*decode='full'"):
        cfg(kv="per_pass", decode="bypass")
    assert "generate" not in model.__dict__


# ---- beam search and sampling ----------------------------------------------------------------

@pytest.mark.parametrize("family", ["llama", "gemma3_text", pytest.param("qwen3_moe", marks=pytest.mark.slow)])
@pytest.mark.parametrize("kv", ["first", "last"])
def test_beam_search_equals_reference(family, kv):
    model = tiny(family)
    ids, mask = prompts(batch=2)
    beams, n = 3, 4
    for mode in ("block", "layer"):
        c = cfg(k=3, mode=mode, kv=kv)
        with looped(model, c) as h:
            out = generate(model, ids, mask, n=n, num_beams=beams, num_return_sequences=beams)
        new = out.sequences[:, ids.shape[1]:]
        hyp_ids, hyp_mask = ids.repeat_interleave(beams, 0), mask.repeat_interleave(beams, 0)
        ref, _ = reference_decode(model, c, S, E, h.resolved.mode, hyp_ids, hyp_mask, new, routing=h.resolved.routing)
        rows = out.beam_indices[:, :n]
        assert (rows >= 0).all()
        got = [out.logits[t][rows[:, t]] for t in range(n)]
        d = max_diff(got, ref)
        assert d <= TOL, f"{family} {mode} kv={kv}: beam search vs reference max |diff| {d:.3g}"
        assert len({tuple(s) for s in new.tolist()}) > 2  # the beams really differ


@pytest.mark.parametrize("kv", ["first", "last", "per_pass"])
def test_seeded_sampling_repeats_and_equals_reference(kv):
    model = tiny("gemma3_text")
    ids, mask = prompts()
    c = cfg(k=3, mode="block", kv=kv)
    runs = []
    with looped(model, c):
        for _ in range(2):
            torch.manual_seed(123)
            runs.append(generate(model, ids, mask, do_sample=True, top_k=0, temperature=1.0))
    assert torch.equal(runs[0].sequences, runs[1].sequences)
    new = runs[0].sequences[:, ids.shape[1]:]
    ref, _ = reference_decode(model, c, S, E, "block", ids, mask, new)
    assert max_diff(runs[0].logits, ref) <= TOL


# ---- decode modes count layer calls ------------------------------------------------------------

def count_calls_per_forward(model):
    """Per decoder forward, how often each original window layer module ran."""
    info = describe(model)
    log, hooks = [], []
    hooks.append(info.decoder.register_forward_pre_hook(lambda *a: log.append([0] * (E - S))))
    for j in range(E - S):
        def tick(*a, j=j):
            log[-1][j] += 1
        hooks.append(info.layers[S + j].register_forward_hook(tick))
    return log, hooks


@pytest.mark.parametrize("mode", ["block", "layer"])
def test_decode_bypass_and_first_n_call_counts(mode):
    model = tiny("qwen3")
    ids, mask = prompts()
    n = 6
    cases = [  # (decode, kv, per-forward evaluations of each window layer)
        ("bypass", "first", [3] + [1] * (n - 1)),
        ("bypass", "last", [4] + [1] * (n - 1)),
        ("full", "first", [3] * n),
        ("full", "last", [4] * n),
        ("first_n", "first", [3, 3, 3] + [1] * (n - 3)),
        ("first_n", "last", [4, 4, 4] + [1] * (n - 3)),
    ]
    for decode, kv, want in cases:
        if kv == "first" and mode == "layer":   # + the extra window pass from x0 when looping
            want = [w + 1 if w > 1 else w for w in want]
        log, hooks = count_calls_per_forward(model)
        try:
            with looped(model, cfg(k=3, integrator="euler", mode=mode, kv=kv, decode=decode, decode_n=2)):
                generate(model, ids, mask, n=n)
                generate(model, ids[:1], mask[:1], n=n)  # a new prefill restarts the first_n count
                new = torch.randint(3, 128, (3, n))
                direct_decode(model, ids, mask, new)      # so do direct calls with a new cache
        finally:
            for h in hooks:
                h.remove()
        assert len(log) == 3 * n
        for part in range(3):
            got = log[part * n:(part + 1) * n]
            assert got == [[w] * (E - S) for w in want], f"{mode} decode={decode} kv={kv}: {got}"


# ---- cache shapes, flat in K ---------------------------------------------------------------------

def slot_shapes(layer) -> tuple:
    """What a cache slot holds: K/V shapes, or a linear-attention slot's conv / recurrent state shapes
    (None where nothing is held)."""
    if hasattr(layer, "recurrent_states"):
        states = [*layer.conv_states.values(), *layer.recurrent_states.values()]
    else:
        states = [layer.keys, layer.values]
    return tuple(None if t is None or t.numel() == 0 else tuple(t.shape) for t in states)


@pytest.mark.parametrize("family", FAMILIES)
def test_cache_shapes_are_flat_in_k(family):
    model = tiny(family)
    ids, mask = prompts()
    plain = generate(model, ids, mask, n=6).past_key_values
    shapes = [slot_shapes(layer) for layer in plain.layers]
    modes = ("block", "layer") if family == "llama" else ("auto",)  # auto: layer for MoE, block for dense
    for mode in modes:
        for kv in ("first", "last", "none"):
            with looped(model, cfg(k=8, integrator="euler", mode=mode, kv=kv)):
                cache = generate(model, ids, mask, n=6).past_key_values
            assert len(cache.layers) == len(plain.layers)
            assert not getattr(cache, "_loopsweep_private_slots", None)
            for i, layer in enumerate(cache.layers):
                got = slot_shapes(layer)
                if kv == "none" and S <= i < E:
                    assert all(g is None for g in got), f"{family} kv=none: window slot {i} is not empty: {got}"
                else:
                    assert got == shapes[i], f"{family} {mode} kv={kv} slot {i}: {got} vs plain {shapes[i]}"


@pytest.mark.parametrize("family", FAMILIES)
def test_kv_none_refuses_windows_holding_a_mask_defining_layer(family):
    model = tiny(family)
    mask_layers = [0] + ([1] if family in ("gemma3_text", "gpt_oss", "qwen3_5_text") else [])
    assert list(describe(model).mask_layers) == mask_layers
    for first in mask_layers:
        with pytest.raises(LoopConfigError, match=f"kv='none'.*holds layer {first}"):
            looped(model, LoopConfig(window=f"{first}:{first + 2}", k=2, kv="none"))
    looped(model, LoopConfig(window=WINDOW, k=2, kv="none"))  # allowed


# ---- cache classes -------------------------------------------------------------------------------

def test_static_and_quantized_caches_are_refused_clearly():
    model = tiny("llama")
    ids, mask = prompts()
    with looped(model, cfg(k=3)):
        with pytest.raises(TypeError, match="StaticCache.*DynamicCache"):
            generate(model, ids, mask, cache_implementation="static")
        static = StaticCache(config=model.config, max_cache_len=32)
        with pytest.raises(TypeError, match="StaticCache.*DynamicCache"):
            with torch.no_grad():
                model(input_ids=ids, attention_mask=mask, past_key_values=static)
        quantized = QuantizedCache(backend="fp8", config=model.config)
        with pytest.raises(TypeError, match="QuantizedCache.*DynamicCache"):
            with torch.no_grad():
                model(input_ids=ids, attention_mask=mask, past_key_values=quantized)
    plain = generate(model, ids, mask)  # the model is intact afterwards
    assert plain.sequences.shape == (3, ids.shape[1] + N_NEW)


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "deepseek_v3"])
def test_direct_calls_with_a_dynamic_cache_equal_generate(family):
    model = tiny(family)
    ids, mask = prompts()
    for c in (cfg(k=3, kv="first"), cfg(k=2, integrator="rk4", mode="layer", kv="last"),
              cfg(k=3, kv="none"), cfg(k=3, kv="per_pass"), cfg(k=3, kv="last", decode="first_n", decode_n=2)):
        with looped(model, c):
            out = generate(model, ids, mask)
            new = out.sequences[:, ids.shape[1]:]
            direct, _ = direct_decode(model, ids, mask, new)
            lazy, _ = direct_decode(model, ids, mask, new, cache=DynamicCache())  # slots created on demand
        for name, got in (("DynamicCache(config)", direct), ("DynamicCache()", lazy)):
            d = max_diff(out.logits, got)
            assert d <= 1e-6, f"{family} kv={c.kv} decode={c.decode}: {name} vs generate max |diff| {d:.3g}"


def test_reference_counts_match_the_runner():
    """The reference and the runner agree on how often each window layer runs per forward."""
    model = tiny("llama")
    ids, mask = prompts()
    c = cfg(k=3, integrator="euler", kv="last", decode="first_n", decode_n=2)
    log, hooks = count_calls_per_forward(model)
    try:
        with looped(model, c):
            out = generate(model, ids, mask)
    finally:
        for h in hooks:
            h.remove()
    _, ref = reference_decode(model, c, S, E, "block", ids, mask, out.sequences[:, ids.shape[1]:])
    assert [f["calls"][S:E] for f in ref.forward_log] == log
    assert isinstance(ref, StashReference)


def test_chunked_prefill_loops_every_chunk_and_bypass_skips_decode_steps():
    """generate(prefill_chunk_size=3) on 8-token prompts: chunks of 3, 3, 2 tokens, each on top of
    the cache the previous chunk filled. They are prefill, not decode steps: with decode='bypass'
    all three loop and the N_NEW - 1 decode steps do not."""
    model = tiny("llama")
    ids, mask = prompts()
    with looped(model, cfg(k=3, decode="bypass")) as h:
        out = generate(model, ids, mask, prefill_chunk_size=3)
    assert out.sequences.shape == (3, ids.shape[1] + N_NEW)
    assert h.stats.forwards == 3 + N_NEW - 1
    assert h.stats.looped_forwards == 3
    with looped(model, cfg(k=3, decode="first_n", decode_n=2)) as h:
        generate(model, ids, mask, prefill_chunk_size=3)
    assert h.stats.looped_forwards == 3 + 2
