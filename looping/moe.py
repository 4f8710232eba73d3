"""MoE routing in the window: freeze or recompute, and the routing-change diagnostic.

Owns: the router modules of the window layers (found generically from the model's own
`_can_record_outputs["router_logits"]` class, see `arch.router_class`) while looping.

- `freeze`: the natural pass (evaluation 0 of a layer in a forward) runs the router as the stock
  block does and its whole output (logits, weights and expert indices, whatever the family's router
  returns) is kept; every later loop evaluation of that layer in the same forward gets that output
  back without running the router, the kv='last' stash pass included, so the router runs exactly
  once per layer per forward. The one exception is kv='first' in layer mode: its extra window
  pass reproduces the plain model from the pre-loop state and routes afresh, as the plain model
  would (so the window's cache is the plain model's). Shared experts and their gates run as in the
  stock block.
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

One policy object per handle (`routing_policy(name)`: `Freeze`, `Recompute`, or `NoRouting` for
dense windows, recorded as 'n/a'). The runner enters `policy.evaluation(j, p, stash)` around each
evaluation of window layer j, so the evaluation index is explicit; nothing here counts calls to
decide what to do (the counters are diagnostics only).
"""
from __future__ import annotations

import torch

import contextlib

from .arch import find_routers
from .errors import LoopConfigError, did_you_mean


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


ROUTINGS = ("auto", "freeze", "recompute")   # what a LoopConfig may ask for ('auto' resolves)


class Routing:
    """Routing of the window's MoE layers while looping. Subclasses decide whether a later
    evaluation reuses the natural pass's router output (`replays`)."""

    policy = ""
    replays_natural = False

    def __init__(self, window_layers, router_cls):
        self.routers = [[r for _, _, r in find_routers(layer, router_cls)] for layer in window_layers]
        self.current: dict[int, int] = {}     # window layer j -> evaluation index p of the running call
        self.stash = False                    # the running evaluation belongs to a kv stash pass
        self.plain = False                    # ... that reproduces the plain model (routes afresh)
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

    @contextlib.contextmanager
    def evaluation(self, j: int, p: int, stash: bool, plain: bool = False):
        """Evaluation p of window layer j runs inside. stash: a kv stash pass (not compared);
        plain: a pass that reproduces the plain model (kv='first' in layer mode), routed afresh."""
        self.current[j], self.stash, self.plain = p, stash, plain
        try:
            yield
        finally:
            self.stash = self.plain = False

    def reset_stats(self):
        self.router_calls = self.replays = self.changed = self.compared = 0
        self.by_eval.clear()

    def check_fired(self, js) -> None:
        """Raise if freeze is on and a window layer in `js` holds routers that were never called."""
        if not self.replays_natural:
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
        if self.replays_natural and p > 0 and not self.plain and key in self.captured:
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


class Freeze(Routing):
    """Every later evaluation of a layer in a forward reuses its natural pass's router output."""
    policy = "freeze"
    replays_natural = True


class Recompute(Routing):
    """Every evaluation routes afresh."""
    policy = "recompute"


class NoRouting(Routing):
    """A window without MoE layers: nothing to route (recorded as 'n/a')."""
    policy = "n/a"


ROUTING_POLICIES: dict[str, type[Routing]] = {c.policy: c for c in (Freeze, Recompute, NoRouting)}


def resolve_routing(asked: str, mode: str, is_moe: bool, strict: bool = True) -> str:
    """The routing a window runs: 'n/a' on a dense model (asking for freeze / recompute there is
    an error when `strict`, else normalised away so grids can cross dense and MoE models);
    'auto' = freeze in layer mode, recompute in block mode."""
    if asked not in ROUTINGS:
        raise LoopConfigError(f"unknown routing {asked!r}; valid choices: {', '.join(ROUTINGS)}."
                              + did_you_mean(asked, ROUTINGS))
    if not is_moe:
        if strict and asked != "auto":
            raise LoopConfigError(
                f"routing={asked!r} applies to MoE models only, and this model has no MoE layer "
                f"(its routing is recorded as 'n/a'); leave routing='auto'.")
        return "n/a"
    if asked == "auto":
        return "freeze" if mode == "layer" else "recompute"
    return asked


def routing_policy(name: str, window_layers, router_cls) -> Routing:
    return ROUTING_POLICIES[name](window_layers, router_cls)
