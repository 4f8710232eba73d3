"""Latent-trajectory figures for a model and window (the embedded default without arguments).

    python scripts/trajectory.py                       # embedded model, window c0.5w1 (layer 4:5, as its preset), K = 6
    python scripts/trajectory.py --model Qwen/Qwen3-4B-Instruct-2507 --window 15:19 --k 3 --dtype bfloat16

Writes results/figures/trajectory_metrics.{png,pdf,csv} and results/figures/loss_landscape.{png,pdf,csv}.
"""
from __future__ import annotations

import argparse
import pathlib
import sysconfig

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from harness.trajectory import loss_landscape, record_trajectories, trajectory_figures, trajectory_metrics
from looping import LoopConfig


def default_prompts(n: int, n_chars: int) -> list[str]:
    """Chunks of a standard-library file (on every machine)."""
    text = (pathlib.Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text()
    step = max(1, (len(text) - n_chars) // n)
    return [text[i * step:i * step + n_chars] for i in range(n)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="HF id or path (default: the embedded model)")
    ap.add_argument("--window", default="c0.5w1", help="'s:e' (half-open) or 'c<centre>w<width>'")
    ap.add_argument("--k", type=int, default=6)
    ap.add_argument("--strategies", default="naive,euler,anchored")
    ap.add_argument("--prompts", type=int, default=8, help="number of prompt chunks")
    ap.add_argument("--chars", type=int, default=96, help="characters per prompt chunk")
    ap.add_argument("--grid", type=int, default=13, help="landscape grid points per axis")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="results/figures")
    args = ap.parse_args(argv)

    path = args.model
    if path is None:
        from harness.embedded import embedded_model_path
        path = str(embedded_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, args.dtype)).to(args.device).eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    enc = tok(default_prompts(args.prompts, args.chars), return_tensors="pt", padding=True).to(args.device)
    configs = {s: LoopConfig(window=args.window, k=args.k, integrator=s, mode="block")
               for s in args.strategies.split(",")}
    trajs = record_trajectories(model, enc.input_ids, enc.attention_mask, configs)
    metrics = trajectory_metrics(model, enc.input_ids, enc.attention_mask, trajs)
    land = loss_landscape(model, enc.input_ids, enc.attention_mask, trajs, grid=args.grid)
    fig1, fig2 = trajectory_figures(metrics, land)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for fig, name, frame in ((fig1, "trajectory_metrics", metrics), (fig2, "loss_landscape", land.frame())):
        fig.savefig(out / f"{name}.png", dpi=130)
        fig.savefig(out / f"{name}.pdf")
        frame.to_csv(out / f"{name}.csv", index=False)
        print(f"wrote {out / name}.png/.pdf/.csv")
    last = metrics.groupby("strategy").tail(1)[["strategy", "k", "suffix_loss", "suffix_kl", "dist_from_plain"]]
    print(last.to_string(index=False))


if __name__ == "__main__":
    main()
