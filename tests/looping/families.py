"""Tiny random models built from the real configs of the families looping supports.

Reusable by every test (dense and MoE): `FAMILIES` maps a transformers `model_type` to the keyword
arguments of a tiny config (vocab 128, hidden 64, 6 layers, 4 heads, a few experts), and
`tiny_model(model_type, **overrides)` builds `AutoModelForCausalLM.from_config(...)` in fp32, eval
mode, on CPU. Seeding is the caller's (the `tiny` fixture in conftest.py seeds with 0).

Family-specific keys only say how that family's config names its sizes (expert counts, MLA ranks,
which layers are MoE); nothing here reaches into modeling code. Every entry is checked to build and
run in tests/looping/test_moe.py (`test_every_family_builds`).
"""
from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM

# shared by every family
BASE = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
            tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)

# few experts, small experts: what each MoE family calls them
_MOE = dict(num_experts_per_tok=2, moe_intermediate_size=32)

DENSE_FAMILIES: dict[str, dict] = {
    "llama": {},
    "mistral": dict(sliding_window=8),
    "qwen2": {},
    "qwen3": {},
    "gemma2": dict(sliding_window=4, query_pre_attn_scalar=16),
    "gemma3_text": dict(sliding_window=4, sliding_window_pattern=2, query_pre_attn_scalar=16),
    "olmo2": {},
    "phi3": {},
    "granite": {},
    "smollm3": {},
    "cohere": {},
    "glm4": {},
    "ernie4_5": {},
    # sliding window on three of every four layers (layer 3 full), as in the real config
    "olmo3": dict(sliding_window=4),
    "exaone4": dict(sliding_window=4),
    # dense MLA
    "minicpm3": dict(kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16,
                     head_dim=8, num_key_value_heads=4),
    # Pythia: parallel residual, partial rotary, the cache reaches its layers as `layer_past`
    "gpt_neox": dict(rotary_pct=0.25, use_parallel_residual=True),
}

MOE_FAMILIES: dict[str, dict] = {
    # layer 1 is a dense MLP (mlp_only_layers), so windows mix dense and MoE layers
    "qwen3_moe": dict(_MOE, num_experts=8, norm_topk_prob=True, mlp_only_layers=[1]),
    # shared expert with its sigmoid gate, beside the routed experts
    "qwen2_moe": dict(_MOE, num_experts=8, shared_expert_intermediate_size=48, mlp_only_layers=[1]),
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    "olmoe": dict(num_experts=8, num_experts_per_tok=2),
    # MLA + MoE; the first two layers are dense (first_k_dense_replace), shared experts
    "deepseek_v2": dict(_MOE, n_routed_experts=8, n_shared_experts=1, first_k_dense_replace=2,
                        kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8, qk_nope_head_dim=8,
                        v_head_dim=16, head_dim=8, num_key_value_heads=4, topk_method="greedy"),
    "deepseek_v3": dict(_MOE, n_routed_experts=8, n_shared_experts=1, first_k_dense_replace=2,
                        n_group=2, topk_group=1, kv_lora_rank=16, q_lora_rank=24,
                        qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, head_dim=8,
                        num_key_value_heads=4),
    # alternating sliding / full attention; yarn rope scaled to this tiny context
    "gpt_oss": dict(num_local_experts=4, num_experts_per_tok=2, sliding_window=4,
                    rope_parameters=dict(rope_type="yarn", factor=32.0, beta_fast=32.0, beta_slow=1.0,
                                         truncate=False, original_max_position_embeddings=8,
                                         rope_theta=150000.0)),
    "glm4_moe": dict(_MOE, n_routed_experts=8, n_shared_experts=1, first_k_dense_replace=1,
                     n_group=1, topk_group=1),
    "granitemoe": dict(num_local_experts=4, num_experts_per_tok=2),
    # MoE on odd layers only (interleave step 2), NoPE every 4th layer as in the real config
    "llama4_text": dict(num_local_experts=4, num_experts_per_tok=1, intermediate_size_mlp=128,
                        interleave_moe_layer_step=2, no_rope_layer_interval=4,
                        attention_chunk_size=64),
    # ERNIE-4.5 MoE: dense layers before moe_layer_start_index (2 here, so windows mix dense and MoE), one shared expert
    "ernie4_5_moe": dict(_MOE, moe_num_experts=8, moe_k=2, moe_layer_start_index=2,
                         moe_num_shared_experts=1),
    "phimoe": dict(num_local_experts=4, num_experts_per_tok=2),
    # MLA + MoE (GLM-4.7-Flash style)
    "glm4_moe_lite": dict(_MOE, n_routed_experts=8, n_shared_experts=1, first_k_dense_replace=1, n_group=1,
                          topk_group=1, kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8, qk_nope_head_dim=8,
                          v_head_dim=16, head_dim=8, num_key_value_heads=4),
    # DSA: MLA + a lightning indexer with its own cached keys (DynamicIndexedLayer)
    "deepseek_v32": dict(_MOE, n_routed_experts=8, n_shared_experts=1, first_k_dense_replace=1, n_group=1,
                         topk_group=1, kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8, qk_nope_head_dim=8,
                         v_head_dim=16, head_dim=8, num_key_value_heads=4, index_n_heads=2, index_head_dim=16,
                         index_topk=4),
}

FAMILIES: dict[str, dict] = {**DENSE_FAMILIES, **MOE_FAMILIES}
DENSE: list[str] = list(DENSE_FAMILIES)
MOE: list[str] = list(MOE_FAMILIES)


def tiny_config(model_type: str, **overrides):
    if model_type not in FAMILIES:
        raise KeyError(f"no tiny config for {model_type!r}; known: {', '.join(FAMILIES)}")
    kwargs = {**BASE, **FAMILIES[model_type], **overrides}
    return AutoConfig.for_model(model_type, **kwargs)


def tiny_model(model_type: str, **overrides):
    """A small random fp32 causal LM of `model_type` in eval mode (seed before calling)."""
    cfg = tiny_config(model_type, **overrides)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    return model.eval()
