"""Integrators: pure tensor maps that re-discretise the window's one residual step.

Owns: every looping strategy (docs/design.md), one registry by name, early halting.
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
- Integrators that accept `halt_tau` (spec.halting) produce a state per step; residual_scaled,
  poly_blend and norm_interp do not (their output is defined only by the full chain).

Formulas and defaults follow the authors' `loop_qwen3.py`
(github.com/L-z-Chen/Training-Free-Looped-Transformer, `_iterate_loop`, `_layer_anchored_frozen`),
cited per strategy. Two deliberate differences: reductions the authors do in fp32 (norms, Anderson's
least squares, Aitken's differences) run in `acc_dtype` (fp32 for half precision, float64 kept),
and Anderson solves its least squares per row over real tokens, not once over the whole batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch
from torch import Tensor

from .errors import LoopConfigError, did_you_mean

EPS = 1e-6


class Window(Protocol):
    """One evaluation of the window: `g(x)`. `layers[j](x)` runs only its j-th layer."""
    layers: Sequence[Callable[[Tensor], Tensor]]

    def __call__(self, x: Tensor) -> Tensor: ...


@dataclass
class LoopOutput:
    out: Tensor                 # (B, T, C) the window output
    steps: Tensor | None = None  # (B,) steps each row took when halting was on, else None


#: the strategy-specific options of LoopConfig; each integrator declares the ones it reads
STRATEGY_OPTIONS = ("alpha", "beta", "ema_alpha", "momentum", "anderson_m", "anderson_beta",
                    "schedule", "anchor_rescale")


@dataclass(frozen=True)
class IntegratorSpec:
    name: str
    fn: Callable[..., LoopOutput]        # fn(g, x0, cfg, valid) -> LoopOutput
    doc: str
    halting: bool = False                # supports halt_tau
    dense_only: bool = False             # refuses windows with MoE layers
    passes: Callable = lambda cfg: cfg.k  # evaluations of g a LoopConfig implies (no halting)
    check: Callable = lambda cfg: None   # extra constraints on a LoopConfig
    uses: frozenset = frozenset()        # the STRATEGY_OPTIONS it reads
    block_only: bool = False             # iterates the whole window (no per-layer form)


INTEGRATORS: dict[str, IntegratorSpec] = {}


def register(name: str, *, halting=False, dense_only=False, passes=lambda cfg: cfg.k, check=None,
             uses=(), block_only=False):
    unknown = set(uses) - set(STRATEGY_OPTIONS)
    assert not unknown, f"{name}: unknown options {unknown}"

    def deco(fn):
        INTEGRATORS[name] = IntegratorSpec(name, fn, (fn.__doc__ or "").strip(), halting, dense_only,
                                           passes, check or (lambda cfg: None), frozenset(uses),
                                           block_only)
        return fn
    return deco


def users_of(option: str) -> list[str]:
    """The integrators that read `option` (one of STRATEGY_OPTIONS)."""
    return [n for n, s in INTEGRATORS.items() if option in s.uses]


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


HALT_SCOPES = ("row", "batch")


class Halting:
    """Early stop. scope 'row': a row freezes once ||x_new - x|| / ||x|| < tau over its own real
    tokens (its result never depends on its batch-mates). scope 'batch' (the authors' rule): one
    ratio over every real token of the batch; all rows stop together. Either way the step that
    crosses the threshold is accepted, then the row stops."""

    def __init__(self, cfg, x0: Tensor, valid: Tensor | None):
        self.tau, self.valid = cfg.halt_tau, valid
        self.scope = getattr(cfg, "halt_scope", "row")
        if self.tau is not None:  # no per-row bookkeeping (and no allocations) when halting is off
            self.active = torch.ones(x0.shape[0], dtype=torch.bool, device=x0.device)
            self.steps = torch.zeros(x0.shape[0], dtype=torch.long, device=x0.device)

    def step(self, x: Tensor, x_new: Tensor) -> Tensor:
        """Accept `x_new` for active rows; return the state to continue from."""
        if self.tau is None:
            return x_new
        act = self.active
        out = torch.where(act[:, None, None], x_new, x)
        self.steps += act.long()
        dx, nx = row_norm(x_new - x, self.valid), row_norm(x, self.valid)
        if self.scope == "batch":   # one ratio over the batch's real tokens (norms pool as squares)
            ratio = (dx.square().sum().sqrt() / nx.square().sum().sqrt().clamp_min(EPS)).expand_as(dx)
        else:
            ratio = dx / nx.clamp_min(EPS)
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
    """x <- g(x), K times. Approximates time K, not 1: collapses as K grows.
    Source: authors' loop_qwen3.py, strategy 'naive'."""
    halt, x = Halting(cfg, x0, valid), x0
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


@register("euler", halting=True, uses=("alpha",))
def euler(g: Window, x0: Tensor, cfg, valid=None) -> LoopOutput:
    """Damped Euler: x <- x + h (g(x) - x), h = alpha/K, K times.
    Source: authors' loop_qwen3.py, strategy 'euler' (there alpha = 1, h = 1/K)."""
    halt = Halting(cfg, x0, valid)
    return halt.result(damped_euler(g, x0, cfg.k, cfg.alpha, halt))


def acc_dtype(x: Tensor) -> torch.dtype:
    """Accumulation dtype: at least fp32 (bf16/fp16 -> fp32); float64 stays float64."""
    return torch.promote_types(x.dtype, torch.float32)


def token_norm(x: Tensor) -> Tensor:
    """(..., 1) L2 norm of each token vector, in the accumulation dtype. Computed on the vector
    divided by its largest entry, so it stays finite wherever the plain sum of squares would
    overflow (entries ~1e20 and above in fp32) while the vector itself is finite."""
    acc = x.to(acc_dtype(x))
    scale = acc.abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(acc.dtype).tiny)
    return (acc / scale).norm(dim=-1, keepdim=True) * scale


def rescale(a: Tensor, n: Tensor) -> Tensor:
    """Scale each token vector of `a` to L2 norm `n` (math in >= fp32, cast back)."""
    acc = a.to(acc_dtype(a))
    return (acc * (n / token_norm(acc).clamp_min(EPS))).to(a.dtype)


@register("anchored", halting=True, passes=lambda cfg: 1 if cfg.beta == 1.0 else cfg.k,
          uses=("alpha", "beta", "anchor_rescale"))
def anchored(g: Window, x0: Tensor, cfg, valid=None) -> LoopOutput:
    """The paper's 'K-stage Runge-Kutta': beta*g(x0) + (1-beta)*E_K(x0), E_K the K-step damped
    Euler endpoint whose first evaluation is the natural pass g(x0) (K passes in total).
    beta = 0 is euler, beta = 1 the plain model. Source: authors' loop_qwen3.py, strategies
    'block_anchored' (block mode) / 'per_layer_anchored' (layer mode).
    `anchor_rescale` rescales the output to the natural pass's token norms."""
    natural = g(x0)
    halt = Halting(cfg, x0, valid)
    if cfg.beta == 1.0:
        halt.step(x0, natural)
        out = natural
    else:
        e_k = damped_euler(g, x0, cfg.k, cfg.alpha, halt, first=natural)
        out = cfg.beta * natural + (1.0 - cfg.beta) * e_k
    if cfg.anchor_rescale:
        out = rescale(out, token_norm(natural))
    return halt.result(out)


# ---- helpers for the ablations --------------------------------------------------------------

def _chain(g: Window, x0: Tensor, cfg, valid, step) -> LoopOutput:
    """K steps x <- step(x, g(x), i), halting per row after each step."""
    halt, x = Halting(cfg, x0, valid), x0
    for i in range(cfg.k):
        x = halt.step(x, step(x, g(x), i))
        if halt.done:
            break
    return halt.result(x)


def _need_schedule(cfg, length: int, what: str) -> tuple[float, ...]:
    if cfg.schedule is None or len(cfg.schedule) != length:
        got = "none" if cfg.schedule is None else f"{len(cfg.schedule)} values {list(cfg.schedule)}"
        raise LoopConfigError(
            f"integrator {cfg.integrator!r} with k={cfg.k} needs schedule of length {length} "
            f"({what}); got {got}.")
    return cfg.schedule


# ---- classical Runge-Kutta on F(x) = g(x) - x -----------------------------------------------

def _runge_kutta(g: Window, x0: Tensor, cfg, valid, stages) -> LoopOutput:
    """K steps of size h = alpha/K (alpha = 1: the window's one unit of virtual time) of an explicit
    RK scheme `stages(F, x, h) -> x_next`."""
    h = cfg.alpha / cfg.k

    def F(z):
        return g(z) - z
    halt, x = Halting(cfg, x0, valid), x0
    for _ in range(cfg.k):
        x = halt.step(x, stages(F, x, h))
        if halt.done:
            break
    return halt.result(x)


def _heun_step(F, x, h):
    k1 = F(x)
    k2 = F(x + h * k1)
    return x + (h / 2.0) * (k1 + k2)


def _midpoint_step(F, x, h):
    k1 = F(x)
    k2 = F(x + (h / 2.0) * k1)
    return x + h * k2


def _rk4_step(F, x, h):
    k1 = F(x)
    k2 = F(x + (h / 2.0) * k1)
    k3 = F(x + (h / 2.0) * k2)
    k4 = F(x + h * k3)
    return x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


@register("heun", halting=True, passes=lambda cfg: 2 * cfg.k, uses=("alpha",))
def heun(g: Window, x0: Tensor, cfg, valid=None) -> LoopOutput:
    """Heun (explicit trapezoid) on F(x) = g(x) - x, K steps of h = alpha/K, 2 passes per step:
    k1 = F(x), k2 = F(x + h k1), x <- x + (h/2)(k1 + k2). Second order in h.
    Halting is checked after each full step (a step's endpoint is a state; steps count steps, not
    passes). Source: authors' loop_qwen3.py, strategy 'heun'."""
    return _runge_kutta(g, x0, cfg, valid, _heun_step)


@register("midpoint", halting=True, passes=lambda cfg: 2 * cfg.k, uses=("alpha",))
def midpoint(g: Window, x0: Tensor, cfg, valid=None) -> LoopOutput:
    """Explicit midpoint on F(x) = g(x) - x, K steps of h = alpha/K, 2 passes per step:
    x <- x + h F(x + (h/2) F(x)). Second order in h. Halting after each full step.
    Source: authors' loop_qwen3.py, strategy 'midpoint'."""
    return _runge_kutta(g, x0, cfg, valid, _midpoint_step)


@register("rk4", halting=True, passes=lambda cfg: 4 * cfg.k, uses=("alpha",))
def rk4(g: Window, x0: Tensor, cfg, valid=None) -> LoopOutput:
    """Classical fourth-order Runge-Kutta on F(x) = g(x) - x, K steps of h = alpha/K, 4 passes per
    step (stages at x, x + (h/2)k1, x + (h/2)k2, x + h k3; weights 1, 2, 2, 1 over 6).
    Halting after each full step. Source: authors' loop_qwen3.py, strategy 'rk4' (there h = 1/K;
    alpha = 1 is theirs, other alphas integrate to virtual time alpha)."""
    return _runge_kutta(g, x0, cfg, valid, _rk4_step)


# ---- damped / anchored fixed-point iterations ------------------------------------------------

@register("ema", halting=True, uses=("ema_alpha",))
def ema(g: Window, x0: Tensor, cfg, valid=None) -> LoopOutput:
    """Damped Picard: x <- a g(x) + (1 - a) x, K times, a = ema_alpha (0.5). Equals euler with
    alpha = a*K. Source: authors' loop_qwen3.py, strategy 'ema'."""
    a = cfg.ema_alpha
    return _chain(g, x0, cfg, valid, lambda x, y, i: a * y + (1.0 - a) * x)


def _check_ema_sched(cfg):
    _need_schedule(cfg, cfg.k, "one step size a_i per step")


@register("ema_sched", halting=True, check=_check_ema_sched, uses=("schedule",))
def ema_sched(g: Window, x0: Tensor, cfg, valid=None) -> LoopOutput:
    """ema with a per-step schedule: step i uses x <- a_i g(x) + (1 - a_i) x, a = schedule
    (length K). Source: authors' loop_qwen3.py, strategy 'ema_sched' (per_step_alphas)."""
    sched = _need_schedule(cfg, cfg.k, "one step size a_i per step")
    return _chain(g, x0, cfg, valid, lambda x, y, i: sched[i] * y + (1.0 - sched[i]) * x)


@register("residual_scaled")
def residual_scaled(g: Window, x0: Tensor, cfg, valid=None) -> LoopOutput:
    """x0 + (g^K(x0) - x0) / K: K plain iterations, their total displacement scaled by 1/K.
    No halting: only the endpoint of the plain chain is meaningful, not its iterates.
    Source: authors' loop_qwen3.py, strategy 'residual_scaled'."""
    y = x0
    for _ in range(cfg.k):
        y = g(y)
    return LoopOutput(x0 + (y - x0) / cfg.k)


@register("input_anchor", halting=True, uses=("ema_alpha",))
def input_anchor(g: Window, x0: Tensor, cfg, valid=None) -> LoopOutput:
    """Input-anchored damping: x <- a g(x) + (1 - a) x0, K times, a = ema_alpha (0.5); blends with
    the fixed entry state rather than the previous iterate. Source: authors' loop_qwen3.py,
    strategy 'input_anchor'."""
    a = cfg.ema_alpha
    return _chain(g, x0, cfg, valid, lambda x, y, i: a * y + (1.0 - a) * x0)


@register("heavy_ball", halting=True, uses=("ema_alpha", "momentum"))
def heavy_ball(g: Window, x0: Tensor, cfg, valid=None) -> LoopOutput:
    """Polyak momentum on the residual: x <- x + a (g(x) - x) + mu (x - x_prev), K times, with
    x_prev = x0 at the first step, a = ema_alpha (0.5), mu = momentum (0.3).
    Source: authors' loop_qwen3.py, strategy 'heavy_ball'."""
    a, mu = cfg.ema_alpha, cfg.momentum
    halt, x, prev = Halting(cfg, x0, valid), x0, x0
    for _ in range(cfg.k):
        x_new = halt.step(x, x + a * (g(x) - x) + mu * (x - prev))
        prev, x = x, x_new
        if halt.done:
            break
    return halt.result(x)


@register("norm_stab", halting=True, uses=("ema_alpha",))
def norm_stab(g: Window, x0: Tensor, cfg, valid=None) -> LoopOutput:
    """Norm-stabilised ema: x <- rescale(a g(x) + (1 - a) x, |x0|), K times, a = ema_alpha; every
    iterate keeps each token's entry L2 norm. Source: authors' loop_qwen3.py, strategy 'norm_stab'."""
    a = cfg.ema_alpha
    target = token_norm(x0).clamp_min(EPS)
    return _chain(g, x0, cfg, valid, lambda x, y, i: rescale(a * y + (1.0 - a) * x, target))


# ---- acceleration ----------------------------------------------------------------------------

ANDERSON_REG = 1e-6  # Tikhonov weight, relative to the largest diagonal entry of dF^T dF


def _anderson_coefficients(dF: Tensor, f: Tensor, valid: Tensor | None) -> Tensor:
    """Per-row least squares gamma_b = argmin ||f_b - dF_b gamma|| over row b's real tokens.

    dF: (B, T, C, m), f: (B, T, C), accumulation dtype. Returns gamma: (B, m). Each row solves its
    own regularised normal equations; a row whose system fails (or gives non-finite values) gets
    gamma = 0 (a plain damped Picard step), without touching the others."""
    if valid is not None:
        keep = valid[:, :, None].to(dF.dtype)
        dF, f = dF * keep[..., None], f * keep
    B, m = dF.shape[0], dF.shape[-1]
    dF, f = dF.reshape(B, -1, m), f.reshape(B, -1)
    A = dF.transpose(1, 2) @ dF                                            # (B, m, m)
    scale = A.diagonal(dim1=-2, dim2=-1).abs().amax(dim=-1).clamp_min(1e-8)  # (B,)
    A = A + (ANDERSON_REG * scale)[:, None, None] * torch.eye(m, dtype=A.dtype, device=A.device)
    b = (dF.transpose(1, 2) @ f[..., None]).squeeze(-1)                    # (B, m)
    gamma, info = torch.linalg.solve_ex(A, b)
    ok = (info == 0) & torch.isfinite(gamma).all(dim=-1)
    return torch.where(ok[:, None], gamma, torch.zeros_like(gamma))


@register("anderson", halting=True, uses=("anderson_m", "anderson_beta"))
def anderson(g: Window, x0: Tensor, cfg, valid=None) -> LoopOutput:
    """Walker-Ni type-II Anderson acceleration of damped Picard, m = anderson_m (2) differences,
    damping beta = anderson_beta (1.0), K passes. With f_i = g(x_i) - x_i, dF_i = f_{i+1} - f_i,
    dX_i = x_{i+1} - x_i over the last m+1 iterates:
        gamma = argmin ||f_t - dF gamma||   (normal equations + 1e-6 * max diag Tikhonov, >= fp32)
        x <- (1 - beta)(x_t - dX gamma) + beta (g(x_t) - dF gamma);
    the first step (no history) is damped Picard x <- (1 - beta) x + beta g(x).
    Source: authors' loop_qwen3.py, strategy 'anderson'.

    Deviation from the authors: they solve ONE least-squares problem over the whole batch (every
    row's tokens flattened together), so a row's update depends on the other rows it is batched
    with, and on padding. Here each row (sequence) solves its own problem over its real tokens
    (`valid`, (B, T) bool, or all tokens when None), so a row's result never depends on the batch;
    batch size 1 without padding is identical to the authors' formula."""
    beta, m_max = cfg.anderson_beta, cfg.anderson_m
    halt, x = Halting(cfg, x0, valid), x0
    xs: list[Tensor] = []
    fs: list[Tensor] = []  # residuals f_i = g(x_i) - x_i, accumulation dtype
    for _ in range(cfg.k):
        G = g(x)
        xs, fs = (xs + [x])[-(m_max + 1):], (fs + [(G - x).to(acc_dtype(x))])[-(m_max + 1):]
        m = len(xs) - 1
        if m == 0:
            x_new = (1.0 - beta) * x + beta * G
        else:
            acc = acc_dtype(x)
            dF = torch.stack([fs[i + 1] - fs[i] for i in range(m)], dim=-1)               # (B,T,C,m)
            dX = torch.stack([(xs[i + 1] - xs[i]).to(acc) for i in range(m)], dim=-1)   # (B,T,C,m)
            gamma = _anderson_coefficients(dF, fs[-1], valid)[:, None, None, :]         # (B,1,1,m)
            upd_x = (dX * gamma).sum(-1).to(x.dtype)
            upd_f = (dF * gamma).sum(-1).to(x.dtype)
            x_new = (1.0 - beta) * (x - upd_x) + beta * (G - upd_f)
        x = halt.step(x, x_new)
        if halt.done:
            break
    return halt.result(x)


def _check_aitken(cfg):
    if cfg.k % 2:
        raise LoopConfigError(
            f"integrator 'aitken' takes 2 passes per Aitken step, so k must be even; got k={cfg.k} "
            f"(use k={cfg.k - 1 if cfg.k > 1 else 2} or k={cfg.k + 1}).")


@register("aitken", halting=True, check=_check_aitken)
def aitken(g: Window, x0: Tensor, cfg, valid=None) -> LoopOutput:
    """Per-coordinate Aitken delta-squared (Steffensen), K/2 steps of 2 passes (K even):
    g1 = g(x), g2 = g(g1), d1 = g1 - x, d2 = g2 - 2 g1 + x (>= fp32);
    step = d1^2 / d2 where |d2| > 1e-3 |d1| + 1e-4 (safeguard), else -d1 (plain Picard, x <- g1);
    step clipped to [-|d1|, |d1|]; x <- x - step. With halting, steps count Aitken steps
    (2 passes each). Source: authors' loop_qwen3.py, strategy 'aitken'."""
    _check_aitken(cfg)
    halt, x = Halting(cfg, x0, valid), x0
    for _ in range(cfg.k // 2):
        g1 = g(x)
        g2 = g(g1)
        acc = acc_dtype(x)
        d1 = (g1 - x).to(acc)
        d2 = (g2 - 2.0 * g1 + x).to(acc)
        use = d2.abs() > (1e-3 * d1.abs() + 1e-4)
        step = torch.where(use, d1 * d1 / torch.where(use, d2, torch.ones_like(d2)), -d1)
        bound = d1.abs()
        step = torch.maximum(torch.minimum(step, bound), -bound)
        x = halt.step(x, (x.to(acc) - step).to(x.dtype))
        if halt.done:
            break
    return halt.result(x)


# ---- per-layer and norm-scheduled recipes ----------------------------------------------------

@register("uniform", halting=True, dense_only=True, block_only=True)
def uniform(g: Window, x0: Tensor, cfg, valid=None) -> LoopOutput:
    """Uniform (running-mean) interpolation over the window's layers: K sweeps of
    `g.layers[0..W-1]`; after layer j in sweep t, the state handed on is the mean of layer j's
    outputs over sweeps 1..t (running sum / t). K passes (one sweep = one pass); K = 1 is g(x0).
    Halting compares the state after consecutive sweeps. Dense windows only (as the authors).
    Block mode only: the authors' `uniform` always iterates the whole window (a per-layer form
    would be a different strategy). Source: authors' loop_qwen3.py, strategy 'uniform'
    (in `_looped_forward`)."""
    layers = list(g.layers)
    sums: list[Tensor | None] = [None] * len(layers)
    halt, x = Halting(cfg, x0, valid), x0
    for t in range(cfg.k):
        y = x
        for j, layer in enumerate(layers):
            out = layer(y)
            sums[j] = out if sums[j] is None else sums[j] + out
            y = sums[j] / (t + 1)
        x = halt.step(x, y)
        if halt.done:
            break
    return halt.result(x)


@register("norm_interp", uses=("alpha", "beta", "anchor_rescale"))
def norm_interp(g: Window, x0: Tensor, cfg, valid=None) -> LoopOutput:
    """The authors' frozen-routing recipe as an integrator over g (K passes), step s = alpha/K:
        natural = g(x0);  N_k = |x0| + (|natural| - |x0|) k/K   (per-token L2 norms)
        h = rescale((1 - s) x0 + s natural, N_1)
        for k = 1..K-1:  h = (1 - s) h + s g(h);  if k < K-1: h = rescale(h, N_{k+1})
        out = beta natural + (1 - beta) h;  if anchor_rescale: out = rescale(out, |natural|).
    alpha = 1 (s = 1/K) is loop_qwen3.py's fixed step; the authors' vLLM port exposes the step
    (`step`, default 1/K) and reports a "T = 2" setting, s = 2/K: alpha = 2 here.
    Damped Euler whose iterates' norms follow the straight line from the entry norm to the natural
    pass's norm. No halting: the norm schedule is pinned to step K, so an early stop would leave h
    at an intermediate target rather than at a converged state.
    Source: authors' loop_qwen3.py, `_layer_anchored_frozen` (strategy 'layer_anchored_frozen';
    there per layer with MoE routing frozen, which the runner's mode/routing options supply)."""
    K, step = cfg.k, cfg.alpha / cfg.k
    natural = g(x0)
    n_in, n_nat = token_norm(x0), token_norm(natural)

    def target(k):
        return n_in + (n_nat - n_in) * (k / K)
    h = rescale((1.0 - step) * x0 + step * natural, target(1))
    for k in range(1, K):
        h = (1.0 - step) * h + step * g(h)
        if k < K - 1:
            h = rescale(h, target(k + 1))
    out = cfg.beta * natural + (1.0 - cfg.beta) * h
    if cfg.anchor_rescale:
        out = rescale(out, n_nat)
    return LoopOutput(out)


def _check_poly_blend(cfg):
    w = _need_schedule(cfg, cfg.k + 1, "weights w_0..w_K of g^0(x0)..g^K(x0)")
    if abs(sum(w) - 1.0) > 1e-6:
        raise LoopConfigError(
            f"integrator 'poly_blend' needs schedule weights that sum to 1 (within 1e-6); "
            f"{list(w)} sums to {sum(w):.9g}.")


@register("poly_blend", check=_check_poly_blend, uses=("schedule",))
def poly_blend(g: Window, x0: Tensor, cfg, valid=None) -> LoopOutput:
    """Polynomial blend: sum_{k=0..K} w_k g^k(x0), w = schedule (K+1 weights summing to 1), K passes:
    a point of the convex hull of the plain iterates x0, g(x0), ..., g^K(x0). No halting (a weighted
    sum over the whole chain). Source: authors' loop_qwen3.py, strategy 'poly_blend'."""
    _check_poly_blend(cfg)
    w = cfg.schedule
    y = x0
    out = w[0] * y
    for k in range(1, cfg.k + 1):
        y = g(y)
        out = out + w[k] * y
    return LoopOutput(out)
