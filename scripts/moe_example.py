"""Worked example for docs/moe.md: routing freeze vs recompute on a tiny random MoE model.

    python scripts/moe_example.py

Builds a tiny Qwen3-MoE (random weights, 6 layers, 16 experts, top-4; CPU, fp32, seeded), loops the
window 2:5 (half-open: layers 2, 3, 4) with anchored K = 3 and K = 6 in block and layer mode, and
prints for each setting: the routing-change diagnostic under `recompute` (the fraction of real
window tokens whose top-k expert set differs from the natural pass's: pooled, after one iteration,
after the last one), the same under `freeze` (0 by construction), how often the routers computed,
and how far the logits move (from the plain model, and between the two routings / modes).
Random weights: the numbers show the mechanism, not what a trained model does.
"""
from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from looping import LoopConfig, looped


def tiny_qwen3_moe():
    cfg = AutoConfig.for_model(
        "qwen3_moe", vocab_size=128, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
        num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        num_experts=16, num_experts_per_tok=4, norm_topk_prob=True, tie_word_embeddings=False,
        pad_token_id=0)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()


def rate(x):
    return "   -  " if x is None else f"{100 * x:5.1f}%"


@torch.no_grad()
def main():
    model = tiny_qwen3_moe()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 128, (4, 24), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :6] = 0  # left padding (excluded from the diagnostic)
    mask[1, :2] = 0

    def logits():
        return model(input_ids=ids, attention_mask=mask, use_cache=False).logits

    plain = logits()
    print(f"tiny qwen3_moe: 6 layers, 16 experts, top-4; batch {tuple(ids.shape)}, "
          f"{int(mask.sum())} real tokens; window 2:5, anchored beta=0.5")
    print(f"{'K':>2} {'mode':<6} {'routing':<10} {'change':>7} {'after 1':>8} {'after K-1':>9} "
          f"{'router calls':>12} {'replays':>7}  {'max|logits-plain|':>17}")
    outs = {}
    for k in (3, 6):
        for mode in ("block", "layer"):
            for routing in ("recompute", "freeze"):
                cfg = LoopConfig(window="2:5", k=k, integrator="anchored", mode=mode, routing=routing)
                with looped(model, cfg) as h:
                    out = logits()
                outs[k, mode, routing] = out
                r = h.routing
                print(f"{k:>2} {mode:<6} {routing:<10} {rate(h.routing_change_rate):>7} "
                      f"{rate(r.change_rate_at(1)):>8} {rate(r.change_rate_at(k - 1)):>9} "
                      f"{r.router_calls:>12} {r.replays:>7}  {(out - plain).abs().max().item():>17.4f}")
    print()
    for k in (3, 6):
        d_route = {m: (outs[k, m, "freeze"] - outs[k, m, "recompute"]).abs().max().item()
                   for m in ("block", "layer")}
        d_mode = {r: (outs[k, "block", r] - outs[k, "layer", r]).abs().max().item()
                  for r in ("freeze", "recompute")}
        print(f"K={k}: max|freeze - recompute| block {d_route['block']:.4f}, layer {d_route['layer']:.4f}; "
              f"max|block - layer| freeze {d_mode['freeze']:.4f}, recompute {d_mode['recompute']:.4f}")
    cfg = LoopConfig.from_dict({"recipe": "code-moe-frozen", "window": "2:5"})
    with looped(model, cfg) as h:
        out = logits()
    print(f"code-moe-frozen (layer, freeze, norm_interp, K=6, beta=0.5): change {rate(h.routing_change_rate)}, "
          f"router calls {h.routing.router_calls}, max|logits-plain| {(out - plain).abs().max().item():.4f}")
    print("resolved:", {k: v for k, v in h.resolved.record().items()
                        if k in ("mode", "mode_resolved", "routing", "routing_resolved", "window_layers")})


if __name__ == "__main__":
    main()
