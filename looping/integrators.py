"""Integrators: pure tensor maps that re-discretise the window's one residual step.

Owns: every looping strategy of DESIGN.md, one registry by name, early halting.
Never sees the model, the cache or the mask: the runner hands each integrator a `Window`,
a callable `g(x) -> x'` that runs one evaluation of the window (the whole block, or one layer in
layer mode), plus `g.layers` (the per-layer maps, used only by `uniform`). The runner counts the
evaluations ("passes"); an integrator just calls `g`.

Invariants (tests pin them):
- naive / euler (alpha = 1) with K = 1, and anchored with beta = 1 for any K, return `g(x0)` itself
  (bit-exact: a damped step `x + 1*(g(x)-x)` is *not* bit-equal to `g(x)`, so K = 1 short-circuits).
- The first evaluation of every integrator is `g(x0)` on the unchanged input tensor `x0` (the
  "natural pass"; kv='first' reuses its K/V).
- With halting, a row's result depends on that row alone (norms over its real tokens).

Formulas and defaults follow the authors' `loop_qwen3.py`
(github.com/L-z-Chen/Training-Free-Looped-Transformer, `_iterate_loop`), cited per strategy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch
from torch import Tensor

from .config import LoopConfigError, did_you_mean

EPS = 1e-6


class Window(Protocol):
    """One evaluation of the window: `g(x)`. `layers[j](x)` runs only its j-th layer."""
    layers: Sequence[Callable[[Tensor], Tensor]]

    def __call__(self, x: Tensor) -> Tensor: ...


@dataclass
class LoopOutput:
    out: Tensor                 # (B, T, C) the window output
    steps: Tensor | None = None  # (B,) steps each row took when halting was on, else None


@dataclass(frozen=True)
class IntegratorSpec:
    name: str
    fn: Callable[..., LoopOutput]        # fn(g, x0, cfg, valid) -> LoopOutput
    doc: str
    halting: bool = False                # supports halt_tau
    dense_only: bool = False             # refuses windows with MoE layers
    passes: Callable = lambda cfg: cfg.k  # evaluations of g a LoopConfig implies (no halting)
    check: Callable = lambda cfg: None   # extra constraints on a LoopConfig


INTEGRATORS: dict[str, IntegratorSpec] = {}


def register(name: str, *, halting=False, dense_only=False, passes=lambda cfg: cfg.k, check=None):
    def deco(fn):
        INTEGRATORS[name] = IntegratorSpec(name, fn, (fn.__doc__ or "").strip(), halting, dense_only,
                                           passes, check or (lambda cfg: None))
        return fn
    return deco


def get_integrator(name: str) -> IntegratorSpec:
    if name not in INTEGRATORS:
        raise LoopConfigError(
            f"unknown integrator {name!r}; valid choices: {', '.join(INTEGRATORS)}."
            + did_you_mean(name, INTEGRATORS))
    return INTEGRATORS[name]


# ---- early halting ---------------------------------------------------------------------------

def row_norm(x: Tensor, valid: Tensor | None) -> Tensor:
    """(B,) L2 norm of each row over its real tokens (fp32)."""
    x = x.float()
    if valid is not None:
        x = x * valid[..., None].to(x.dtype)
    return x.flatten(1).norm(dim=1)


class Halting:
    """Per-row early stop: a row freezes once ||x_new - x|| / ||x|| < tau over its real tokens."""

    def __init__(self, tau: float | None, x0: Tensor, valid: Tensor | None):
        self.tau, self.valid = tau, valid
        self.active = torch.ones(x0.shape[0], dtype=torch.bool, device=x0.device)
        self.steps = torch.zeros(x0.shape[0], dtype=torch.long, device=x0.device)

    def step(self, x: Tensor, x_new: Tensor) -> Tensor:
        """Accept `x_new` for active rows; return the state to continue from."""
        if self.tau is None:
            self.steps += 1
            return x_new
        act = self.active
        out = torch.where(act[:, None, None], x_new, x)
        self.steps += act.long()
        ratio = row_norm(x_new - x, self.valid) / row_norm(x, self.valid).clamp_min(EPS)
        self.active = act & ~(ratio < self.tau)
        return out

    @property
    def done(self) -> bool:
        return self.tau is not None and not bool(self.active.any())

    def result(self, out: Tensor) -> LoopOutput:
        return LoopOutput(out, self.steps if self.tau is not None else None)


# ---- the paper's main strategies -----------------------------------------------------------

@register("naive", halting=True)
def naive(g: Window, x0: Tensor, cfg, valid=None) -> LoopOutput:
    """x <- g(x), K times. Approximates time K, not 1: collapses as K grows (authors: 'naive')."""
    halt, x = Halting(cfg.halt_tau, x0, valid), x0
    for _ in range(cfg.k):
        x = halt.step(x, g(x))
        if halt.done:
            break
    return halt.result(x)


def damped_euler(g: Window, x0: Tensor, k: int, alpha: float, halt: Halting, first: Tensor | None = None):
    """K damped-Euler steps x <- x + (alpha/K)(g(x) - x); `first` = g(x0) if already computed."""
    if k == 1 and alpha == 1.0:
        y = first if first is not None else g(x0)
        return halt.step(x0, y)
    h, x = alpha / k, x0
    for i in range(k):
        y = first if (i == 0 and first is not None) else g(x)
        x = halt.step(x, x + h * (y - x))
        if halt.done:
            break
    return x


@register("euler", halting=True)
def euler(g: Window, x0: Tensor, cfg, valid=None) -> LoopOutput:
    """Damped Euler: x <- x + h (g(x) - x), h = alpha/K, K times (authors: 'euler', h = 1/K)."""
    halt = Halting(cfg.halt_tau, x0, valid)
    return halt.result(damped_euler(g, x0, cfg.k, cfg.alpha, halt))


def rescale(a: Tensor, n: Tensor) -> Tensor:
    """Scale each token vector of `a` to L2 norm `n` (fp32 math, cast back)."""
    cur = a.float().norm(dim=-1, keepdim=True).clamp_min(EPS)
    return (a.float() * (n / cur)).to(a.dtype)


@register("anchored", halting=True, passes=lambda cfg: 1 if cfg.beta == 1.0 else cfg.k)
def anchored(g: Window, x0: Tensor, cfg, valid=None) -> LoopOutput:
    """The paper's 'K-stage Runge-Kutta': beta*g(x0) + (1-beta)*E_K(x0), E_K the K-step damped
    Euler endpoint whose first evaluation is the natural pass g(x0) (K passes in total).
    beta = 0 is euler, beta = 1 the plain model. (Authors: 'block_anchored' / 'per_layer_anchored'.)
    `anchor_rescale` rescales the output to the natural pass's token norms."""
    natural = g(x0)
    halt = Halting(cfg.halt_tau, x0, valid)
    if cfg.beta == 1.0:
        halt.step(x0, natural)
        out = natural
    else:
        e_k = damped_euler(g, x0, cfg.k, cfg.alpha, halt, first=natural)
        out = cfg.beta * natural + (1.0 - cfg.beta) * e_k
    if cfg.anchor_rescale:
        out = rescale(out, natural.float().norm(dim=-1, keepdim=True))
    return halt.result(out)
