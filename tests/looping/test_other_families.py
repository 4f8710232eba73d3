"""Families beyond the standard attention stack (from a family audit over transformers 5.23's
causal LMs): what looping supports there, and the clear refusals where it cannot be right.

- The cache is found by type, not by argument name: gpt_neox passes it to its layers as
  `layer_past` (tested with the full stash reference in test_generation.py), mamba as
  `cache_params`.
- Recurrent state (mamba, the linear / SSM layers of jamba and qwen3_next) is stashed like K/V
  (copied, since those layers update it in place): a window holding such layers loops with a
  cache under every kv policy.
- Cache classes other than DynamicCache (MiniMaxCache keeps linear-attention state outside its
  layers) are refused.
- Decoders that unpack a tuple from each layer (falcon_h1, bamba) are refused at `looped()`.
- Gemma 4: layers receive a positional argument (per-layer input), supported; layers that store or
  reuse shared K/V are refused inside a window.
- nemotron_h: the decoder reads `layer.block_type` (the window wrappers forward attribute reads to
  the layer they replace) and its MLP blocks have cacheless `DummyLayer` slots (nothing to stash).
"""
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

from looping import LoopConfig, LoopConfigError, looped
from looping.arch import describe
from looping.kv import find_cache
from tests.looping.manual import plain_logits

BASE = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=64, pad_token_id=0)
SPECS = {
    "mamba": dict(state_size=8, expand=2, conv_kernel=4),
    # layers: mamba, attention, mamba, attention
    "jamba": dict(num_experts=4, num_experts_per_tok=2, attn_layer_period=2, attn_layer_offset=1,
                  expert_layer_period=2, expert_layer_offset=1, mamba_d_state=8, mamba_expand=2,
                  use_mamba_kernels=False),
    "qwen3_next": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                       layer_types=["linear_attention", "full_attention"] * 2, linear_num_value_heads=4,
                       linear_num_key_heads=2, linear_key_head_dim=16, linear_value_head_dim=16),
    "minimax": dict(num_local_experts=4, num_experts_per_tok=2, block_size=4,
                    layer_types=["linear_attention", "full_attention"] * 2),
    "falcon_h1": dict(mamba_d_ssm=64, mamba_n_heads=4, mamba_d_head=16, mamba_d_state=16, mamba_n_groups=1,
                      mamba_chunk_size=8),
    "bamba": dict(attn_layer_indices=[1], mamba_n_heads=4, mamba_d_head=32, mamba_d_state=16,
                  mamba_n_groups=1, mamba_chunk_size=8),
    # mamba, attention, MLP, attention
    "nemotron_h": dict(layers_block_type=["linear_attention", "full_attention", "mlp", "full_attention"],
                       ssm_state_size=8, mamba_num_heads=4, mamba_head_dim=16, n_groups=1, chunk_size=8,
                       n_routed_experts=4, moe_intermediate_size=32, num_experts_per_tok=2),
    # 6 layers, sliding / full alternating; layers 4-5 reuse the K/V that layers 2-3 store
    "gemma4_text": dict(num_hidden_layers=6, num_kv_shared_layers=2, sliding_window=4,
                        layer_types=["sliding_attention", "full_attention"] * 3, hidden_size_per_layer_input=16),
}
_MODELS: dict = {}


def tiny(family):
    if family not in _MODELS:
        torch.manual_seed(0)
        config = AutoConfig.for_model(family, **{**BASE, **SPECS[family]})
        _MODELS[family] = AutoModelForCausalLM.from_config(config).eval()
    return _MODELS[family]


def ids_and_mask():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 128, (2, 8), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    return ids, mask


@torch.no_grad()
def generate(model, ids, mask=None):
    return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False,
                          pad_token_id=0)


def recurrent_states(cache, slots) -> list:
    """The conv / recurrent state tensors of the given cache slots (linear-attention layers)."""
    return [t for i in slots for d in (cache.layers[i].conv_states, cache.layers[i].recurrent_states)
            for t in d.values() if t is not None]


@pytest.mark.parametrize("family, window", [("mamba", "1:3"), ("jamba", "0:2"), ("qwen3_next", "0:2")])
def test_windows_with_recurrent_layers_loop_with_a_cache(family, window):
    """A window holding recurrent (SSM / linear-attention) layers: their state is stashed like K/V.
    K = 1 generates the plain tokens; after a looped prefill with kv='first' the window's states
    are the plain model's (the natural pass); with kv='per_pass' cached decoding equals the looped
    model re-run on the whole sequence without a cache."""
    model = tiny(family)
    ids, _ = ids_and_mask()
    s, e = (int(x) for x in window.split(":"))
    assert any(t != "full_attention" for t in describe(model).layer_types[s:e])
    plain = generate(model, ids)
    with looped(model, LoopConfig(window=window, k=1, integrator="naive")):
        assert torch.equal(generate(model, ids), plain)

    def prefill_cache(**loop):
        kw = dict(max_new_tokens=1, do_sample=False, pad_token_id=0, return_dict_in_generate=True)
        if not loop:
            return model.generate(input_ids=ids, **kw).past_key_values
        with torch.no_grad(), looped(model, LoopConfig(window=window, **loop)):
            return model.generate(input_ids=ids, **kw).past_key_values
    recurrent = [i for i in range(s, e) if hasattr(prefill_cache().layers[i], "recurrent_states")]
    want = recurrent_states(prefill_cache(), recurrent)
    got = recurrent_states(prefill_cache(k=3, kv="first"), recurrent)
    assert want and len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want))
    moved = recurrent_states(prefill_cache(k=3, kv="last"), recurrent)
    assert any(not torch.equal(a, b) for a, b in zip(moved, want))     # kv=last: the post-loop pass

    with torch.no_grad(), looped(model, LoopConfig(window=window, k=3, kv="per_pass")):
        out = model.generate(input_ids=ids, max_new_tokens=3, do_sample=False, pad_token_id=0,
                             output_logits=True, return_dict_in_generate=True)
        full = model(input_ids=out.sequences, use_cache=False).logits
    T = ids.shape[1]
    for t, step in enumerate(out.logits):
        diff = (step - full[:, T - 1 + t]).abs().max().item()
        assert diff <= 1e-4, f"{family} per_pass decode step {t}: max |diff| {diff:.3g}"


def test_cache_classes_with_extra_state_are_refused():
    model = tiny("minimax")
    ids, _ = ids_and_mask()
    with looped(model, LoopConfig(window="1:2", k=3)):
        with pytest.raises(TypeError, match="MiniMaxCache.*only a plain DynamicCache"):
            generate(model, ids)


@pytest.mark.parametrize("family", ["falcon_h1", "bamba"])
def test_decoders_that_unpack_layer_tuples_are_refused(family):
    model = tiny(family)
    assert describe(model).tuple_outputs is True
    with pytest.raises(LoopConfigError, match=f"{family}: the decoder's forward unpacks a tuple"):
        looped(model, LoopConfig(window="1:3", k=3))


def test_gemma4_positional_layer_input_and_kv_sharing_refusal():
    model = tiny("gemma4_text")
    info = describe(model)
    assert info.kv_sharing == (2, 3, 4, 5) and info.tuple_outputs is False
    ids, mask = ids_and_mask()
    plain, plain_gen = plain_logits(model, ids, mask), generate(model, ids, mask)
    with looped(model, LoopConfig(window="1:2", k=1, integrator="naive")):
        assert torch.equal(plain_logits(model, ids, mask), plain)
        assert torch.equal(generate(model, ids, mask), plain_gen)
    with looped(model, LoopConfig(window="0:2", k=3, mode="block")) as h:
        assert (plain_logits(model, ids, mask) - plain).abs().max() > 1e-3
        assert h.stats.window_passes_last == 3
        assert generate(model, ids, mask).shape == plain_gen.shape
    with pytest.raises(LoopConfigError, match=r"holds layer\(s\) \[2\].*ends at or before layer 2"):
        looped(model, LoopConfig(window="1:3", k=3))


def test_find_cache_is_by_type_and_refuses_two():
    a, b = DynamicCache(), DynamicCache()
    assert find_cache({"layer_past": a, "attention_mask": None}) is a
    assert find_cache({"cache_params": a, "past_key_values": a}) is a
    assert find_cache({"x": torch.zeros(1)}) is None
    with pytest.raises(TypeError, match="two caches"):
        find_cache({"past_key_values": a, "layer_past": b})


@pytest.mark.parametrize("mode", ["block", "layer"])
def test_nemotron_h_attention_and_mlp_window(mode):
    model = tiny("nemotron_h")
    ids, mask = ids_and_mask()
    plain, plain_gen = plain_logits(model, ids, mask), generate(model, ids, mask)
    with looped(model, LoopConfig(window="1:3", k=1, integrator="naive", mode=mode)):
        assert torch.equal(plain_logits(model, ids, mask), plain)
        assert torch.equal(generate(model, ids, mask), plain_gen)
    with looped(model, LoopConfig(window="1:3", k=3, mode=mode)) as h:
        assert (plain_logits(model, ids, mask) - plain).abs().max() > 1e-3
        assert generate(model, ids, mask).shape == plain_gen.shape
        assert h.stats.window_passes_last == 3
    with looped(model, LoopConfig(window="0:2", k=3, mode=mode)):       # a mamba layer in the window
        assert generate(model, ids, mask).shape == plain_gen.shape


@pytest.mark.parametrize("family", ["gemma3", "gemma4"])
def test_multimodal_checkpoints_loop_their_text_decoder(family):
    """`AutoModelForCausalLM` loads gemma3 / gemma4 checkpoints as their ...ForConditionalGeneration
    classes (vision tower included); text-only inputs loop the language model's layers."""
    text = dict(BASE, vocab_size=300, num_hidden_layers=6, sliding_window=4, max_position_embeddings=256)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=28, patch_size=14)
    if family == "gemma3":
        extra = dict(mm_tokens_per_image=4, image_token_index=299, boi_token_index=297, eoi_token_index=298)
    else:
        text.update(SPECS["gemma4_text"])
        extra = dict(image_token_id=299)
    torch.manual_seed(0)
    config = AutoConfig.for_model(family, text_config=text, vision_config=vision, **extra)
    model = AutoModelForCausalLM.from_config(config).eval()
    info = describe(model)
    assert type(model).__name__.endswith("ForConditionalGeneration") and info.n_layers == 6
    assert type(info.decoder).__name__.endswith("TextModel")
    ids, mask = ids_and_mask()
    plain, plain_gen = plain_logits(model, ids, mask), generate(model, ids, mask)
    for mode in ("block", "layer"):
        with looped(model, LoopConfig(window="1:2", k=1, integrator="naive", mode=mode)):
            assert torch.equal(plain_logits(model, ids, mask), plain)
            assert torch.equal(generate(model, ids, mask), plain_gen)
    with looped(model, LoopConfig(window="1:2", k=3)):
        assert (plain_logits(model, ids, mask) - plain).abs().max() > 1e-3
        assert generate(model, ids, mask).shape == plain_gen.shape
