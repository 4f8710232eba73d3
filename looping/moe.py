"""MoE routing in the window: freeze or recompute, and the routing-change diagnostic.

Owns: the router modules of the window layers (found generically from the model's own
`_can_record_outputs["router_logits"]` class, see `arch.router_class`) while looping.

- `freeze`: the natural pass (evaluation 0 of a layer in a forward) runs the router as the stock
  block does and its whole output (logits, weights and expert indices, whatever the family's router
  returns) is kept; every later evaluation of that layer in the same forward (loop iterations and
  the kv='last' stash pass) gets that output back without running the router. The router runs
  exactly once per layer per forward; shared experts and their gates run as in the stock block.
- `recompute`: every evaluation routes afresh.
- Diagnostic (both): for each later evaluation, the fraction of real (unpadded) window tokens whose
  top-k expert *set* differs from the natural pass's (under freeze it is 0 by construction).

The runner sets the evaluation index explicitly (`current`); nothing here counts calls.
"""
from __future__ import annotations

import torch

from .arch import find_routers


def _topk_sets(router, out) -> torch.Tensor | None:
    """(N, k) sorted expert indices chosen by `router` given its output."""
    outs = out if isinstance(out, (tuple, list)) else (out,)
    for t in outs:
        if torch.is_tensor(t) and not t.is_floating_point() and t.dim() == 2:
            return t.sort(dim=-1).values
    k = getattr(router, "top_k", None)
    logits = next((t for t in outs if torch.is_tensor(t) and t.is_floating_point()), None)
    if k is None or logits is None:
        return None
    logits = logits.reshape(-1, logits.shape[-1])
    return logits.topk(int(k), dim=-1).indices.sort(dim=-1).values


class RoutingControl:
    def __init__(self, window_layers, router_cls, policy: str):
        self.policy = policy  # 'freeze' | 'recompute' | 'n/a'
        self.routers = [[r for _, _, r in find_routers(layer, router_cls)] for layer in window_layers]
        self.current: dict[int, int] = {}     # window layer j -> evaluation index p (set by the runner)
        self.stash = False                    # the current evaluation is the kv='last' stash pass
        self.valid: torch.Tensor | None = None  # (B, q) real tokens of this forward
        self.captured: dict[int, object] = {}
        self.natural_sets: dict[int, torch.Tensor] = {}
        self.router_calls = 0
        self.changed = 0   # tokens whose top-k set differed from the natural pass (loop evaluations)
        self.compared = 0  # tokens compared
        self._installed = []

    @property
    def active(self) -> bool:
        return any(self.routers)

    def install(self):
        for j, routers in enumerate(self.routers):
            for router in routers:
                orig = router.forward

                def forward(*args, _j=j, _router=router, _orig=orig, **kwargs):
                    return self._route(_j, _router, _orig, *args, **kwargs)
                router.forward = forward
                self._installed.append(router)

    def remove(self):
        for router in self._installed:
            router.__dict__.pop("forward", None)
        self._installed.clear()

    def new_forward(self, valid):
        self.captured.clear()
        self.natural_sets.clear()
        self.valid = valid

    def _route(self, j, router, orig, *args, **kwargs):
        p = self.current.get(j, 0)
        key = id(router)
        if self.policy == "freeze" and p > 0 and key in self.captured:
            out = self.captured[key]
        else:
            out = orig(*args, **kwargs)
            self.router_calls += 1
            if p == 0:
                self.captured[key] = out
        if not self.stash:
            self._diagnose(key, router, out, p)
        return out

    def _diagnose(self, key, router, out, p):
        sets = _topk_sets(router, out)
        if sets is None:
            return
        if p == 0:
            self.natural_sets[key] = sets
            return
        ref = self.natural_sets.get(key)
        if ref is None or ref.shape != sets.shape:
            return
        diff = (sets != ref).any(dim=-1)
        if self.valid is not None and self.valid.numel() == diff.numel():
            keep = self.valid.reshape(-1).to(diff.device)
            diff = diff[keep]
        self.changed += int(diff.sum())
        self.compared += int(diff.numel())

    @property
    def change_rate(self) -> float | None:
        return self.changed / self.compared if self.compared else None
