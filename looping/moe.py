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
  `changed / compared` pools every later loop evaluation of every MoE window layer since the handle
  was made (or `reset_stats()`); `by_eval[p]` keeps evaluation p's own counts, so `by_eval[1]` is
  the paper's "after one iteration" rate. The kv='last' stash pass is not compared.

Mechanism: each router's `forward` is replaced on the instance (not a forward hook: a hook cannot
skip the computation), so forward hooks on the router still fire on every evaluation; under freeze
the later evaluations return the natural pass's output object itself. If a router the window holds
is never called (a hub kernel that bypasses `router`, e.g. gpt_oss with `use_kernels=True`), freeze
cannot apply and `check_fired` raises instead of silently recomputing.

The runner sets the evaluation index explicitly (`current`); nothing here counts calls to decide
what to do (the counters are diagnostics only).
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
        self.router_calls = 0   # router computations (a frozen replay is not one)
        self.replays = 0        # evaluations served the natural pass's routing (freeze)
        self.changed = 0   # tokens whose top-k set differed from the natural pass (loop evaluations)
        self.compared = 0  # tokens compared
        self.by_eval: dict[int, list[int]] = {}  # evaluation index p -> [changed, compared]
        self.fired: set[int] = set()           # window layers whose routers ran in this forward
        self._installed: list[tuple[object, bool, object]] = []

    @property
    def active(self) -> bool:
        return any(self.routers)

    def install(self):
        for j, routers in enumerate(self.routers):
            for router in routers:
                # an instance-level forward may already be there (accelerate's device hooks): keep it
                had, prev = "forward" in router.__dict__, router.__dict__.get("forward")
                orig = router.forward

                def forward(*args, _j=j, _router=router, _orig=orig, **kwargs):
                    return self._route(_j, _router, _orig, *args, **kwargs)
                router.forward = forward
                self._installed.append((router, had, prev))

    def remove(self):
        for router, had, prev in reversed(self._installed):
            if had:
                router.forward = prev
            else:
                router.__dict__.pop("forward", None)
        self._installed.clear()

    def new_forward(self, valid):
        self.captured.clear()
        self.natural_sets.clear()
        self.fired.clear()
        self.valid = valid

    def reset_stats(self):
        self.router_calls = self.replays = self.changed = self.compared = 0
        self.by_eval.clear()

    def check_fired(self, js) -> None:
        """Raise if freeze is on and a window layer in `js` holds routers that were never called."""
        if self.policy != "freeze":
            return
        missing = [j for j in js if self.routers[j] and j not in self.fired]
        if missing:
            raise RuntimeError(
                f"routing='freeze': the routers of window layer(s) {missing} were never called, so their "
                f"routing cannot be frozen (a fused kernel forward that bypasses the router module? e.g. "
                f"use_kernels=True); load the model without kernels or use routing='recompute'.")

    def _route(self, j, router, orig, *args, **kwargs):
        p = self.current.get(j, 0)
        key = id(router)
        self.fired.add(j)
        if self.policy == "freeze" and p > 0 and key in self.captured:
            out = self.captured[key]
            self.replays += 1
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
        changed, compared = int(diff.sum()), int(diff.numel())
        self.changed += changed
        self.compared += compared
        tally = self.by_eval.setdefault(p, [0, 0])
        tally[0] += changed
        tally[1] += compared

    @property
    def change_rate(self) -> float | None:
        """Fraction of compared (real window token, later evaluation) pairs whose top-k expert set
        differs from the natural pass's; None before any MoE evaluation was compared."""
        return self.changed / self.compared if self.compared else None

    def change_rate_at(self, p: int) -> float | None:
        """The change rate of evaluation p alone (p = 1: after one iteration)."""
        changed, compared = self.by_eval.get(p, (0, 0))
        return changed / compared if compared else None

    def as_dict(self) -> dict:
        return {"routing": self.policy, "router_calls": self.router_calls, "replays": self.replays,
                "changed": self.changed, "compared": self.compared, "change_rate": self.change_rate,
                "by_eval": {p: {"changed": c, "compared": n, "rate": c / n if n else None}
                            for p, (c, n) in sorted(self.by_eval.items())}}
