"""Latent-trajectory analysis: what the loop does to the residual stream.

Owns: per-sub-step metrics (logit lens, KL and top-1 agreement with the unlooped model, norms,
cosine between consecutive states, distance from the unlooped window output, next-token loss of
each state sent through the remaining layers) and the "latent loss landscape" (the plane of the
trajectories' two principal directions, with the next-token loss of grid points sent through the
remaining layers). Pure functions over a model and token batches; figures in `trajectory_figures`.

States are recorded with `looped(model, cfg, trace=True)` (looping.trace). "Through the remaining
layers" means: the plain model's own forward with the input of the first layer after the window
(or of the final norm) replaced, so suffix layers, norm, head and logit scaling are the model's own.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from looping import LoopConfig, looped
from looping.arch import describe


@contextlib.contextmanager
def _replace_input(module, value):
    def hook(mod, args, kwargs):
        if args:
            return (value,) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": value}
    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def through_suffix(model, input_ids, attention_mask, end: int, states: torch.Tensor,
                   chunk: int = 16) -> torch.Tensor:
    """Logits of window-output `states` (N, B, T, C) sent through layers end..L-1, norm and head.

    Returns (N, B, T, V). The prefix is recomputed by the plain model (cheap on small models) and
    its window output discarded; the suffix sees exactly the model's own masks and rotary."""
    info = describe(model)
    target = info.layers[end] if end < info.n_layers else info.decoder.norm
    n, b = states.shape[:2]
    outs = []
    for i in range(0, n, chunk):
        block = states[i:i + chunk]
        m = block.shape[0]
        ids = input_ids.repeat(m, 1)
        mask = attention_mask.repeat(m, 1) if attention_mask is not None else None
        with _replace_input(target, block.reshape(m * b, *block.shape[2:])):
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        outs.append(logits.reshape(m, b, *logits.shape[1:]))
    return torch.cat(outs)


def next_token_loss(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask) -> torch.Tensor:
    """Mean next-token cross-entropy over real tokens; logits (..., B, T, V) -> (...)."""
    lead = logits.shape[:-3]
    lg = logits[..., :-1, :].float()
    tgt = input_ids[:, 1:].expand(*lead, *input_ids[:, 1:].shape)
    ce = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tgt.reshape(-1), reduction="none").reshape(tgt.shape)
    if attention_mask is None:
        return ce.mean(dim=(-1, -2))
    w = (attention_mask[:, 1:] * attention_mask[:, :-1]).float()
    return (ce * w).sum(dim=(-1, -2)) / w.sum()


@dataclass
class Trajectory:
    strategy: str
    states: torch.Tensor      # (S, B, T, C) x0, iterates, output
    config: LoopConfig


@torch.no_grad()
def record_trajectories(model, input_ids, attention_mask, configs: dict[str, LoopConfig]):
    """Run each config once with tracing (block mode) and return its trajectory."""
    out = {}
    for name, cfg in configs.items():
        with looped(model, cfg.replace(mode="block"), trace=True) as h:
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        unit = h.trace[-1]
        out[name] = Trajectory(name, torch.stack(unit.states()), cfg)
    return out


def _valid(attention_mask, shape):
    if attention_mask is None:
        return torch.ones(shape[:2], dtype=torch.bool)
    return attention_mask.bool()


@torch.no_grad()
def trajectory_metrics(model, input_ids, attention_mask, trajectories: dict[str, Trajectory]) -> pd.DataFrame:
    """One row per strategy x sub-step: logit-lens KL / top-1 agreement with the unlooped model,
    suffix next-token loss and KL, state norm, cosine to the previous state, distance from the
    unlooped window output (relative). Averages are over real tokens."""
    info = describe(model)
    plain = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits.float()
    p_plain = plain.log_softmax(-1)
    norm, head = info.decoder.norm, model.get_output_embeddings()
    valid = _valid(attention_mask, input_ids.shape)
    rows = []
    for name, traj in trajectories.items():
        s, e = traj.config.window.layers(info.n_layers)
        suffix = through_suffix(model, input_ids, attention_mask, e, traj.states)
        losses = next_token_loss(suffix, input_ids, attention_mask)
        # the unlooped window output: g(x0), i.e. the K = 1 trajectory's output
        plain_out = trajectories_plain_output(model, input_ids, attention_mask, traj.config)
        for i, st in enumerate(traj.states):
            lens = head(norm(st)).float().log_softmax(-1)
            kl_lens = (p_plain.exp() * (p_plain - lens)).sum(-1)[valid].mean().item()
            top1 = (lens.argmax(-1) == plain.argmax(-1))[valid].float().mean().item()
            sfx = suffix[i].float().log_softmax(-1)
            kl_sfx = (p_plain.exp() * (p_plain - sfx)).sum(-1)[valid].mean().item()
            nrm = st.float().norm(dim=-1)[valid].mean().item()
            cos = math.nan if i == 0 else F.cosine_similarity(
                st.float(), traj.states[i - 1].float(), dim=-1)[valid].mean().item()
            dist = ((st - plain_out).float().norm(dim=-1) / plain_out.float().norm(dim=-1).clamp_min(1e-6))[valid]
            rows.append(dict(strategy=name, step=i, k=traj.config.k, lens_kl=kl_lens, lens_top1=top1,
                             suffix_kl=kl_sfx, suffix_loss=losses[i].item(), norm=nrm, cos_prev=cos,
                             dist_from_plain=dist.mean().item()))
    return pd.DataFrame(rows)


@torch.no_grad()
def trajectories_plain_output(model, input_ids, attention_mask, cfg: LoopConfig) -> torch.Tensor:
    with looped(model, cfg.replace(k=1, integrator="naive", mode="block", halt_tau=None, schedule=None),
                trace=True) as h:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return h.trace[-1].out


@dataclass
class Landscape:
    a: np.ndarray          # (G,) coordinates along the first principal direction
    b: np.ndarray          # (G,)
    loss: np.ndarray       # (G, G) next-token loss at origin + a*u1 + b*u2 (rows: b, cols: a)
    paths: dict            # strategy -> (S, 2) projected trajectory
    explained: tuple       # variance fraction of the two directions

    def frame(self) -> pd.DataFrame:
        aa, bb = np.meshgrid(self.a, self.b)
        grid = pd.DataFrame(dict(kind="grid", strategy="", step=-1, a=aa.ravel(), b=bb.ravel(), loss=self.loss.ravel()))
        paths = [pd.DataFrame(dict(kind="path", strategy=n, step=np.arange(len(p)), a=p[:, 0], b=p[:, 1], loss=np.nan))
                 for n, p in self.paths.items()]
        return pd.concat([grid] + paths, ignore_index=True)


@torch.no_grad()
def loss_landscape(model, input_ids, attention_mask, trajectories: dict[str, Trajectory], grid: int = 13,
                   margin: float = 0.25) -> Landscape:
    """Next-token loss over the plane of the trajectories' two principal directions."""
    cfgs = [t.config for t in trajectories.values()]
    info = describe(model)
    ends = {c.window.layers(info.n_layers)[1] for c in cfgs}
    if len(ends) != 1:
        raise ValueError(f"trajectories must share one window end to share a plane, got ends {sorted(ends)}")
    end = ends.pop()
    pts = torch.cat([t.states for t in trajectories.values()]).double()
    shape = pts.shape[1:]
    flat = pts.reshape(pts.shape[0], -1)
    origin = flat.mean(0)
    _, sv, vh = torch.linalg.svd(flat - origin, full_matrices=False)
    u = vh[:2]
    total = (sv ** 2).sum().clamp_min(1e-12)
    explained = tuple(float(v) for v in (sv[:2] ** 2 / total))
    paths = {n: ((t.states.double().reshape(t.states.shape[0], -1) - origin) @ u.T).numpy()
             for n, t in trajectories.items()}
    allp = np.concatenate(list(paths.values()))
    lo, hi = allp.min(0), allp.max(0)
    span = np.maximum(hi - lo, 1e-6)
    a = np.linspace(lo[0] - margin * span[0], hi[0] + margin * span[0], grid)
    b = np.linspace(lo[1] - margin * span[1], hi[1] + margin * span[1], grid)
    aa, bb = np.meshgrid(a, b)
    coords = torch.tensor(np.stack([aa.ravel(), bb.ravel()], 1))
    states = (origin + coords @ u).reshape(-1, *shape).to(pts.dtype)
    dtype = next(model.parameters()).dtype
    logits = through_suffix(model, input_ids, attention_mask, end, states.to(dtype))
    loss = next_token_loss(logits, input_ids, attention_mask).reshape(grid, grid).cpu().numpy()
    return Landscape(a, b, loss, paths, explained)


def trajectory_figures(metrics: pd.DataFrame, land: Landscape):
    """(metrics figure, landscape figure) as matplotlib Figures."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import colour

    names = list(dict.fromkeys(metrics["strategy"]))
    fig1, axes = plt.subplots(2, 3, figsize=(13, 7), constrained_layout=True)
    panels = [("suffix_loss", "next-token loss via remaining layers (nats)"),
              ("suffix_kl", "KL(unlooped || state) via remaining layers (nats)"),
              ("lens_top1", "logit-lens top-1 agreement with unlooped"),
              ("norm", "mean token L2 norm"),
              ("cos_prev", "cosine to previous state"),
              ("dist_from_plain", "||state - g(x0)|| / ||g(x0)||")]
    for ax, (col, label) in zip(axes.ravel(), panels):
        for name, grp in metrics.groupby("strategy", sort=False):
            ax.plot(grp["step"], grp[col], marker="o", label=name, color=colour(name, names))
        ax.set_xlabel("sub-step (0 = window entry x0, last = window output)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(title="strategy")
    fig1.suptitle("What the loop does to the residual stream")

    fig2, ax = plt.subplots(figsize=(7, 6), constrained_layout=True)
    cs = ax.contourf(land.a, land.b, land.loss, levels=20, cmap="viridis")
    fig2.colorbar(cs, ax=ax, label="next-token loss (nats)")
    for name, p in land.paths.items():
        ax.plot(p[:, 0], p[:, 1], marker="o", ms=4, label=name, color=colour(name, names))
        ax.scatter(p[-1, 0], p[-1, 1], marker="*", s=160, edgecolor="white", zorder=5)
    ax.scatter(*next(iter(land.paths.values()))[0], marker="s", s=80, c="white", edgecolor="black",
               zorder=6, label="window entry x0")
    ax.set_xlabel(f"PC1 ({land.explained[0]:.0%} of variance)")
    ax.set_ylabel(f"PC2 ({land.explained[1]:.0%} of variance)")
    ax.set_title("Latent loss landscape (stars: window outputs)")
    ax.legend(loc="best", fontsize=9)
    return fig1, fig2
