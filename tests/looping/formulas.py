"""Plain, hand-written references of every strategy (no halting, no registry, no runner).

Written from docs/design.md and the formulas of the authors' loop_qwen3.py. Each reference takes `fns`
(per-layer maps; the window map g is their composition), the entry state x0 and a LoopConfig.
Used by the integrator tests (random tensors, float64) and the model-level schedule tests.
"""
import torch

from looping import LoopConfig
from looping.integrators import INTEGRATORS


def compose(fns):
    def g(x):
        for f in fns:
            x = f(x)
        return x
    return g


def tok_norm(x):
    return x.norm(dim=-1, keepdim=True)


def to_norm(x, n):
    return x * (n / tok_norm(x))


def ref_naive(fns, x0, c):
    x = x0
    for _ in range(c.k):
        x = compose(fns)(x)
    return x


def ref_euler(fns, x0, c):
    x, h = x0, c.alpha / c.k
    for _ in range(c.k):
        x = x + h * (compose(fns)(x) - x)
    return x


def ref_anchored(fns, x0, c):
    out = c.beta * compose(fns)(x0) + (1 - c.beta) * ref_euler(fns, x0, c)
    return to_norm(out, tok_norm(compose(fns)(x0))) if c.anchor_rescale else out


def rk_solve(fns, x0, c, tableau):
    """Explicit RK with Butcher tableau (a, b, cs) on F = g - id, K steps of 1/K."""
    a, b = tableau
    F, x, h = (lambda z: compose(fns)(z) - z), x0, c.alpha / c.k
    for _ in range(c.k):
        ks = []
        for i in range(len(b)):
            ks.append(F(x + h * sum(a[i][j] * ks[j] for j in range(i))))
        x = x + h * sum(bi * ki for bi, ki in zip(b, ks))
    return x


def ref_heun(fns, x0, c):
    return rk_solve(fns, x0, c, ([[], [1.0]], [0.5, 0.5]))


def ref_midpoint(fns, x0, c):
    return rk_solve(fns, x0, c, ([[], [0.5]], [0.0, 1.0]))


def ref_rk4(fns, x0, c):
    return rk_solve(fns, x0, c, ([[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]], [1 / 6, 1 / 3, 1 / 3, 1 / 6]))


def ref_ema(fns, x0, c):
    x = x0
    for _ in range(c.k):
        x = x + c.ema_alpha * (compose(fns)(x) - x)
    return x


def ref_ema_sched(fns, x0, c):
    x = x0
    for a in c.schedule:
        x = x + a * (compose(fns)(x) - x)
    return x


def ref_residual_scaled(fns, x0, c):
    return x0 + (ref_naive(fns, x0, c) - x0) / c.k


def ref_input_anchor(fns, x0, c):
    x = x0
    for _ in range(c.k):
        x = x0 + c.ema_alpha * (compose(fns)(x) - x0)
    return x


def ref_heavy_ball(fns, x0, c):
    xs = [x0, x0]
    for _ in range(c.k):
        x, prev = xs[-1], xs[-2]
        xs.append(x + c.ema_alpha * (compose(fns)(x) - x) + c.momentum * (x - prev))
    return xs[-1]


def ref_norm_stab(fns, x0, c):
    x = x0
    for _ in range(c.k):
        x = to_norm(x + c.ema_alpha * (compose(fns)(x) - x), tok_norm(x0))
    return x


def ref_aitken(fns, x0, c):
    x = x0.clone()
    for _ in range(c.k // 2):
        g1 = compose(fns)(x)
        g2 = compose(fns)(g1)
        new = g1.clone()  # coordinates without a meaningful second difference: plain Picard
        d1, d2 = g1 - x, g2 - 2 * g1 + x
        for idx in zip(*torch.nonzero(d2.abs() > 1e-3 * d1.abs() + 1e-4, as_tuple=True)):
            s = d1[idx] ** 2 / d2[idx]
            s = max(-abs(d1[idx]), min(abs(d1[idx]), s))
            new[idx] = x[idx] - s
        x = new
    return x


def ref_anderson(fns, x0, c, valid=None):
    """Anderson per row, on that row's real tokens only (indexed, not masked)."""
    g, beta = compose(fns), c.anderson_beta
    xs, gs, x = [], [], x0
    for _ in range(c.k):
        G = g(x)
        xs, gs = (xs + [x])[-(c.anderson_m + 1):], (gs + [G])[-(c.anderson_m + 1):]
        m = len(xs) - 1
        if m == 0:
            x = (1 - beta) * x + beta * G
            continue
        new = []
        for r in range(x.shape[0]):
            keep = valid[r] if valid is not None else torch.ones(x.shape[1], dtype=torch.bool)
            f = [(gs[i][r] - xs[i][r])[keep].reshape(-1) for i in range(m + 1)]
            dF = torch.stack([f[i + 1] - f[i] for i in range(m)], 1)
            M = dF.T @ dF
            M = M + 1e-6 * max(M.diagonal().abs().max().item(), 1e-8) * torch.eye(m)
            gamma = torch.linalg.solve(M, dF.T @ f[-1])
            dX = torch.stack([xs[i + 1][r] - xs[i][r] for i in range(m)], -1)  # all tokens
            dFr = torch.stack([(gs[i + 1][r] - xs[i + 1][r]) - (gs[i][r] - xs[i][r]) for i in range(m)], -1)
            new.append((1 - beta) * (x[r] - dX @ gamma) + beta * (G[r] - dFr @ gamma))
        x = torch.stack(new)
    return x


def ref_uniform(fns, x0, c):
    outs = [[] for _ in fns]  # every output of every layer so far
    x = x0
    for _ in range(c.k):
        for j, f in enumerate(fns):
            outs[j].append(f(x))
            x = sum(outs[j]) / len(outs[j])
    return x


def ref_norm_interp(fns, x0, c):
    g, K = compose(fns), c.k
    nat = g(x0)
    N = [tok_norm(x0) + (tok_norm(nat) - tok_norm(x0)) * k / K for k in range(K + 1)]
    step = c.alpha / K               # the damped-Euler step (1/K in loop_qwen3.py; vLLM `step`)
    h = to_norm(x0 + (nat - x0) * step, N[1])
    for k in range(1, K):
        h = h + (g(h) - h) * step
        if k < K - 1:
            h = to_norm(h, N[k + 1])
    out = c.beta * nat + (1 - c.beta) * h
    return to_norm(out, tok_norm(nat)) if c.anchor_rescale else out


def ref_poly_blend(fns, x0, c):
    powers = [x0]
    for _ in range(c.k):
        powers.append(compose(fns)(powers[-1]))
    return sum(w * p for w, p in zip(c.schedule, powers))


REFS = {name[4:]: f for name, f in globals().items() if name.startswith("ref_")}


def cfgs_for(name, k):
    extra = {}
    if name == "ema_sched":
        extra["schedule"] = (0.7, 0.4, 0.55)[:k]
    if name == "poly_blend":
        extra["schedule"] = (0.2, 0.5, 0.3) if k == 2 else (0.1, 0.4, 0.3, 0.2)
    if name == "norm_interp":
        return [dict(k=k, **extra), dict(k=k, beta=0.3, anchor_rescale=True), dict(k=k, alpha=2.0)]
    if name == "anchored":
        return [dict(k=k), dict(k=k, beta=0.2, alpha=0.8, anchor_rescale=True)]
    if name == "euler":
        return [dict(k=k), dict(k=k, alpha=0.7)]
    if name == "anderson":
        return [dict(k=k), dict(k=k, anderson_m=1, anderson_beta=0.7)]
    if name == "heavy_ball":
        return [dict(k=k), dict(k=k, ema_alpha=0.3, momentum=0.6)]
    if name in ("ema", "input_anchor", "norm_stab"):
        return [dict(k=k), dict(k=k, ema_alpha=0.3)]
    if name in ("heun", "midpoint", "rk4"):
        return [dict(k=k), dict(k=k, alpha=1.5)]
    return [dict(k=k, **extra)]


def all_cases():
    for name in INTEGRATORS:
        for k in ((2, 4) if name == "aitken" else (2, 3)):
            for extra in cfgs_for(name, k):
                yield name, extra




def reference_cfgs(variants: bool = True):
    """LoopConfigs covering every strategy at K in {2, 3} (aitken: {2, 4}); with `variants`, also
    each strategy's parameter variants (cfgs_for), else only its first setting per K."""
    seen, out = set(), []
    for name, extra in all_cases():
        if not variants and (name, extra["k"]) in seen:
            continue
        seen.add((name, extra["k"]))
        out.append(LoopConfig(window="0:1", integrator=name, **extra))
    return out
