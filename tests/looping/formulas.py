"""Straightforward references of every strategy, written from DESIGN.md / the authors' formulas.

Each takes `layers` (a list of per-layer callables; the window map is their composition), the entry
state `x0` and a LoopConfig, and returns the window output. No halting, no registry, no runner.
"""
import torch

from looping import LoopConfig


def compose(layers):
    def g(x):
        for f in layers:
            x = f(x)
        return x
    return g


def rescale(a, n):
    return (a.float() * (n / a.float().norm(dim=-1, keepdim=True).clamp_min(1e-6))).to(a.dtype)


def naive(layers, x0, c):
    g, x = compose(layers), x0
    for _ in range(c.k):
        x = g(x)
    return x


def euler(layers, x0, c):
    g, x = compose(layers), x0
    if c.k == 1 and c.alpha == 1.0:
        return g(x0)
    for _ in range(c.k):
        x = x + (c.alpha / c.k) * (g(x) - x)
    return x


def anchored(layers, x0, c):
    natural = compose(layers)(x0)
    if c.beta == 1.0:
        return natural
    # the K-step damped Euler endpoint, with its first evaluation being the natural pass
    g, x, h = compose(layers), x0, c.alpha / c.k
    x = x + h * (natural - x)
    for _ in range(c.k - 1):
        x = x + h * (g(x) - x)
    return c.beta * natural + (1 - c.beta) * x


def _rk(layers, x0, c, stages):
    g, x, h = compose(layers), x0, 1.0 / c.k
    F = lambda z: g(z) - z  # noqa: E731
    for _ in range(c.k):
        x = stages(F, x, h)
    return x


def heun(layers, x0, c):
    def step(F, x, h):
        k1 = F(x)
        k2 = F(x + h * k1)
        return x + h / 2 * (k1 + k2)
    return _rk(layers, x0, c, step)


def midpoint(layers, x0, c):
    return _rk(layers, x0, c, lambda F, x, h: x + h * F(x + h / 2 * F(x)))


def rk4(layers, x0, c):
    def step(F, x, h):
        k1 = F(x)
        k2 = F(x + h / 2 * k1)
        k3 = F(x + h / 2 * k2)
        k4 = F(x + h * k3)
        return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return _rk(layers, x0, c, step)


def ema(layers, x0, c):
    g, x = compose(layers), x0
    for _ in range(c.k):
        x = (1 - c.ema_alpha) * x + c.ema_alpha * g(x)
    return x


def ema_sched(layers, x0, c):
    g, x = compose(layers), x0
    for a in c.schedule:
        x = (1 - a) * x + a * g(x)
    return x


def residual_scaled(layers, x0, c):
    return x0 + (naive(layers, x0, c) - x0) / c.k


def input_anchor(layers, x0, c):
    g, x = compose(layers), x0
    for _ in range(c.k):
        x = c.ema_alpha * g(x) + (1 - c.ema_alpha) * x0
    return x


def heavy_ball(layers, x0, c):
    g, x, prev = compose(layers), x0, x0
    for _ in range(c.k):
        x, prev = x + c.ema_alpha * (g(x) - x) + c.momentum * (x - prev), x
    return x


def norm_stab(layers, x0, c):
    g, x = compose(layers), x0
    target = x0.float().norm(dim=-1, keepdim=True)
    for _ in range(c.k):
        x = rescale((1 - c.ema_alpha) * x + c.ema_alpha * g(x), target)
    return x


def aitken(layers, x0, c):
    g, x = compose(layers), x0
    for _ in range(c.k // 2):
        g1 = g(x)
        g2 = g(g1)
        d1 = (g1 - x).float()
        d2 = (g2 - 2 * g1 + x).float()
        use = d2.abs() > 1e-3 * d1.abs() + 1e-4
        step = torch.where(use, d1 * d1 / torch.where(use, d2, torch.ones_like(d2)), -d1)
        step = torch.maximum(torch.minimum(step, d1.abs()), -d1.abs())
        x = (x.float() - step).to(x.dtype)
    return x


def anderson(layers, x0, c):
    """Type-II Anderson, least squares per row (batch element), as the library documents."""
    g, x = compose(layers), x0
    xs, gs = [], []
    for _ in range(c.k):
        G = g(x)
        xs, gs = (xs + [x])[-(c.anderson_m + 1):], (gs + [G])[-(c.anderson_m + 1):]
        m = len(xs) - 1
        if m == 0:
            x = (1 - c.anderson_beta) * x + c.anderson_beta * G
            continue
        rows = []
        for b in range(x.shape[0]):
            f = [(gs[i][b] - xs[i][b]).float().reshape(-1) for i in range(m + 1)]
            dF = torch.stack([f[i + 1] - f[i] for i in range(m)], dim=1)
            dX = torch.stack([(xs[i + 1][b] - xs[i][b]).float().reshape(-1) for i in range(m)], dim=1)
            A = dF.T @ dF
            A = A + 1e-6 * A.diagonal().abs().max().clamp_min(1e-8) * torch.eye(m, dtype=A.dtype)
            gamma = torch.linalg.solve(A, dF.T @ f[-1])
            xb = (1 - c.anderson_beta) * (x[b].float().reshape(-1) - dX @ gamma) \
                + c.anderson_beta * (G[b].float().reshape(-1) - dF @ gamma)
            rows.append(xb.reshape(x[b].shape).to(x.dtype))
        x = torch.stack(rows)
    return x


def uniform(layers, x0, c):
    sums, x = [None] * len(layers), x0
    for t in range(c.k):
        for j, f in enumerate(layers):
            y = f(x)
            sums[j] = y if sums[j] is None else sums[j] + y
            x = sums[j] / (t + 1)
    return x


def norm_interp(layers, x0, c):
    g, K = compose(layers), c.k
    natural = g(x0)
    n0, n1 = x0.float().norm(dim=-1, keepdim=True), natural.float().norm(dim=-1, keepdim=True)
    target = lambda k: n0 + (n1 - n0) * (k / K)  # noqa: E731
    h = rescale((1 - 1 / K) * x0 + natural / K, target(1))
    for k in range(1, K):
        h = (1 - 1 / K) * h + g(h) / K
        if k < K - 1:
            h = rescale(h, target(k + 1))
    out = c.beta * natural + (1 - c.beta) * h
    return rescale(out, n1) if c.anchor_rescale else out


def poly_blend(layers, x0, c):
    g, y, out = compose(layers), x0, c.schedule[0] * x0
    for w in c.schedule[1:]:
        y = g(y)
        out = out + w * y
    return out


REFERENCES = {f.__name__: f for f in (
    naive, euler, anchored, heun, midpoint, rk4, ema, ema_sched, residual_scaled, input_anchor,
    heavy_ball, norm_stab, aitken, anderson, uniform, norm_interp, poly_blend)}


def reference_cfgs():
    """One LoopConfig per strategy and K in {2, 3} (aitken: K in {2, 4})."""
    out = []
    for name in REFERENCES:
        for k in ((2, 4) if name == "aitken" else (2, 3)):
            extra = {}
            if name == "ema_sched":
                extra["schedule"] = tuple([0.6, 0.4, 0.5][:k])
            if name == "poly_blend":
                extra["schedule"] = tuple([0.2, 0.5, 0.3] if k == 2 else [0.1, 0.4, 0.3, 0.2])
            if name == "euler" and k == 3:
                extra["alpha"] = 0.8
            if name == "norm_interp" and k == 3:
                extra["anchor_rescale"] = True
            out.append(LoopConfig(window="0:1", k=k, integrator=name, **extra))
    return out
