"""Overhead: wall clock of looped vs plain inference, measured beside the predicted ratio.

    python -m benchmarks.overhead                       # CPU, random mid-size Qwen3, default grid
    python -m benchmarks.overhead --device cuda --dtype bfloat16 --model Qwen/Qwen3-4B-Instruct-2507

Three workloads on the same model and inputs:
    scoring   one full-sequence forward, use_cache=False (loglikelihood tasks)
    prefill   one forward of a long prompt into a fresh DynamicCache, logits of the last token only
    decode    `generate` with min_new_tokens = max_new_tokens = N; the decode time is the span between
              the first and the last logits-processor call (forwards 1..N-1), tokens/s from it

For each loop configuration and workload: a plain and a looped warm-up (the looped one counts every
call of every original layer module per forward), then `--repeats` plain/looped pairs in alternating
order (drift cancels within a pair), and `--hooked` plain runs with per-layer timing hooks. Reported:
the median of the pairwise ratios looped/plain (and its spread), and the predicted ratio
1 + sum_{f,i} t[f,i] (n[f,i] - 1) / T (benchmarks/common.py), median over the hooked runs.

Default grid: a K sweep of the base configuration (first value of every axis list), plus each other
value of each axis, one at a time, at `--vary-k`. `--full-grid` runs the cartesian product instead.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import (DEFAULT_OUT, Clock, add_model_args, LayerProbe, hardware, load_model, loadavg, median,
                               model_record, parse_list, predicted_ratio, quantile, random_ids, settle,
                               write_json)
from looping import LoopConfig, looped

SCHEMA = "loopsweep.benchmarks.overhead/1"
PHASES = ("scoring", "prefill", "decode")
AXES = ("window", "integrator", "mode", "kv", "decode")
# which workloads an axis can change: decode mode acts on decode only, kv only where there is a cache
AXIS_PHASES = {"decode": ("decode",), "kv": ("prefill", "decode")}


# ---- workloads -------------------------------------------------------------------------------

class Workloads:
    """The three timed calls on fixed inputs. Each returns (seconds, forward indices timed)."""

    def __init__(self, model, args, clock: Clock):
        v, dev = model.config.vocab_size, args.device
        self.model, self.clock = model, clock
        self.scoring_ids = random_ids(args.score_batch, args.score_len, v, dev, seed=1)
        self.prefill_ids = random_ids(args.prefill_batch, args.prefill_len, v, dev, seed=2)
        self.decode_ids = random_ids(args.decode_batch, args.decode_prompt, v, dev, seed=3)
        self.new_tokens = args.new_tokens
        self.shapes = {"scoring": [args.score_batch, args.score_len],
                       "prefill": [args.prefill_batch, args.prefill_len],
                       "decode": {"batch": args.decode_batch, "prompt": args.decode_prompt,
                                  "new_tokens": args.new_tokens}}

    def run(self, phase: str):
        return getattr(self, phase)()

    @torch.inference_mode()
    def scoring(self):
        t0 = self.clock()
        self.model(input_ids=self.scoring_ids, use_cache=False)
        return self.clock() - t0, [0]

    @torch.inference_mode()
    def prefill(self):
        from transformers import DynamicCache
        cache = DynamicCache(config=self.model.config)
        t0 = self.clock()
        self.model(input_ids=self.prefill_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        return self.clock() - t0, [0]

    def decode(self):
        from transformers import LogitsProcessor, LogitsProcessorList
        stamps, clock = [], self.clock

        class Stamp(LogitsProcessor):   # called once after every forward of `generate`
            def __call__(self, input_ids, scores):
                stamps.append(clock())
                return scores

        n = self.new_tokens
        self.model.generate(self.decode_ids, attention_mask=torch.ones_like(self.decode_ids),
                            max_new_tokens=n, min_new_tokens=n, do_sample=False,
                            logits_processor=LogitsProcessorList([Stamp()]))
        assert len(stamps) == n, (len(stamps), n)
        return stamps[-1] - stamps[0], list(range(1, n))


# ---- the grid --------------------------------------------------------------------------------

def axis_lists(args) -> dict:
    return {"window": parse_list(args.windows), "integrator": parse_list(args.integrators),
            "mode": parse_list(args.modes), "kv": parse_list(args.kvs), "decode": parse_list(args.decodes)}


def base_config(args) -> dict:
    return {a: v[0] for a, v in axis_lists(args).items()}


def build_grid(args) -> list[dict]:
    lists, base = axis_lists(args), base_config(args)
    ks = parse_list(args.k, int)
    phases = parse_list(args.phases)
    cells = []
    if args.full_grid:
        for k, *values in itertools.product(ks, *(lists[a] for a in AXES)):
            cells.append({"group": "grid", "axis": None, "cfg": {**dict(zip(AXES, values)), "k": k},
                          "phases": phases})
        return cells
    for k in ks:
        cells.append({"group": "k_sweep", "axis": "k", "cfg": {**base, "k": k}, "phases": phases})
    for axis in AXES:
        for value in lists[axis][1:]:
            use = [p for p in phases if p in AXIS_PHASES.get(axis, PHASES)]
            if use:
                cells.append({"group": "vary", "axis": axis, "cfg": {**base, axis: value, "k": args.vary_k},
                              "phases": use})
    return cells


def loop_config(cfg: dict, args) -> LoopConfig:
    return LoopConfig(window=cfg["window"], k=cfg["k"], integrator=cfg["integrator"], mode=cfg["mode"],
                      kv=cfg["kv"], decode=cfg["decode"],
                      **({"decode_n": args.decode_n} if cfg["decode"] == "first_n" else {}))


# ---- one cell x one workload -----------------------------------------------------------------

def bench(model, work: Workloads, handle, phase: str, args, clock: Clock) -> dict:
    run = lambda: work.run(phase)  # noqa: E731

    def looped_run():
        handle.apply()
        try:
            return run()
        finally:
            handle.remove()

    # warm-up; the looped one counts layer calls per forward on the original modules
    for _ in range(args.warmup):
        run()
        looped_run()
    calls0 = handle.stats.layer_calls
    with LayerProbe(model, "count", clock) as probe:
        _, fwds = looped_run()
    counts = probe.data
    runner_calls = handle.stats.layer_calls - calls0
    window_passes_last = handle.stats.window_passes_last

    plain, loop, hooked = [], [], []
    for r in range(args.repeats):
        order = ("plain", "looped") if r % 2 == 0 else ("looped", "plain")
        for which in order:
            settle()
            (plain if which == "plain" else loop).append(run()[0] if which == "plain" else looped_run()[0])
        if r < args.hooked:
            settle()
            with LayerProbe(model, "time", clock) as tp:
                total, fwds = run()
            hooked.append(predicted_ratio(tp.data, counts, total, fwds))

    ratios = [lo / pl for lo, pl in zip(loop, plain)]
    pred = median([h["ratio"] for h in hooked])
    m = median(ratios)
    s, e = handle.resolved.start, handle.resolved.end
    probe_window = sum(n for f in counts for i, n in counts[f].items() if s <= i < e)
    out = {
        "phase": phase, "plain_s": median(plain), "looped_s": median(loop),
        "ratio": m, "ratio_q25": quantile(ratios, 0.25), "ratio_q75": quantile(ratios, 0.75),
        "ratio_min": min(ratios), "ratio_max": max(ratios), "ratio_of_medians": median(loop) / median(plain),
        "predicted_ratio": pred, "predicted_min": min(h["ratio"] for h in hooked),
        "predicted_max": max(h["ratio"] for h in hooked), "measured_over_predicted": m / pred,
        "nonlayer_fraction": median([h["nonlayer_time_s"] / (h["nonlayer_time_s"] + h["layer_time_s"])
                                     for h in hooked]),
        "layer_passes_plain": hooked[0]["plain_layer_calls"], "layer_passes_looped": hooked[0]["layer_passes"],
        "window_passes_last_forward": window_passes_last,
        "runner_layer_calls": runner_calls, "probe_window_calls": probe_window,
        "plain_runs_s": plain, "looped_runs_s": loop, "ratios": ratios,
        "predicted_runs": [h["ratio"] for h in hooked],
    }
    if phase == "decode":
        toks = args.decode_batch * (args.new_tokens - 1)
        out["tokens_per_s_plain"] = toks / out["plain_s"]
        out["tokens_per_s_looped"] = toks / out["looped_s"]
        out["tokens_per_s_ratio"] = 1.0 / m
    return out


# ---- targets -------------------------------------------------------------------------------

def is_base(rec, base: dict) -> bool:
    return all(rec["config"][a] == base[a] for a in AXES)


def evaluate_targets(records: list[dict], base: dict) -> list[dict]:
    out = []
    for r in records:
        c, ph = r["config"], r["phase"]
        if c["k"] == 1 and is_base(r, base) and ph in ("scoring", "prefill", "decode"):
            out.append({"target": "K=1 wrapper overhead: looped/plain <= 1.02", "phase": ph,
                        "value": r["ratio"], "pass": r["ratio"] <= 1.02})
        if c["k"] > 1 and ph in ("scoring", "prefill") and c["decode"] == base["decode"]:
            v = r["measured_over_predicted"]
            out.append({"target": "K>1: measured/predicted within 5%", "phase": ph, "k": c["k"],
                        "config": r["label"], "value": v, "pass": abs(v - 1) <= 0.05})
        if ph == "decode" and c["decode"] == "bypass":
            v = r["tokens_per_s_ratio"]
            out.append({"target": "decode=bypass: tokens/s within 3% of plain", "phase": ph, "k": c["k"],
                        "value": v, "pass": abs(v - 1) <= 0.03})
    return out


def label(cell: dict, base: dict) -> str:
    c = cell["cfg"]
    diff = [f"{a}={c[a]}" for a in AXES if c[a] != base[a]]
    return f"K={c['k']}" + (" " + " ".join(diff) if diff else "")


# ---- plot ------------------------------------------------------------------------------------

def plot(records: list[dict], base: dict, title: str):
    """Ratio looped/plain vs K: measured (median, IQR bars) and predicted, one panel per workload;
    the one-at-a-time variations as labelled points."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    phases = [p for p in PHASES if any(r["phase"] == p for r in records)]
    fig, axes = plt.subplots(1, len(phases), figsize=(4.6 * len(phases), 4.0), squeeze=False)
    for ax, ph in zip(axes[0], phases):
        sweep = sorted((r for r in records if r["phase"] == ph and is_base(r, base)), key=lambda r: r["config"]["k"])
        if sweep:
            ks = [r["config"]["k"] for r in sweep]
            ax.errorbar(ks, [r["ratio"] for r in sweep],
                        yerr=[[r["ratio"] - r["ratio_q25"] for r in sweep], [r["ratio_q75"] - r["ratio"] for r in sweep]],
                        marker="o", capsize=3, label="measured (median, IQR)")
            ax.plot(ks, [r["predicted_ratio"] for r in sweep], "k--", marker="x", label="predicted (layer passes)")
        for r in records:
            if r["phase"] == ph and not is_base(r, base):
                ax.scatter([r["config"]["k"]], [r["ratio"]], marker="s", s=18, zorder=3)
                ax.scatter([r["config"]["k"]], [r["predicted_ratio"]], marker="x", c="grey", s=18, zorder=3)
                ax.annotate(r["label"].split(" ", 1)[-1], (r["config"]["k"], r["ratio"]), fontsize=6,
                            xytext=(3, 2), textcoords="offset points")
        ax.axhline(1.0, color="grey", lw=0.6)
        ax.set_title(ph)
        ax.set_xlabel("K")
        ax.set_ylabel("wall time looped / plain")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig


# ---- main ------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--clock", default="wall", choices=Clock.KINDS,
                   help="wall: perf_counter (CUDA: after synchronize); cpu: process CPU time, for shared CPUs")
    p.add_argument("--k", default="1,2,4,8", help="K values of the sweep (comma list)")
    p.add_argument("--vary-k", type=int, default=3, help="K of the one-at-a-time variations")
    p.add_argument("--windows", default="c0.5w4,c0.5w2", help="first = base ('s:e' or 'c<centre>w<width>')")
    p.add_argument("--integrators", default="euler,anchored")
    p.add_argument("--modes", default="block,layer")
    p.add_argument("--kvs", default="first,last")
    p.add_argument("--decodes", default="full,bypass,first_n")
    p.add_argument("--decode-n", type=int, default=8, help="N of decode=first_n")
    p.add_argument("--full-grid", action="store_true", help="cartesian product of all axis lists and K")
    p.add_argument("--phases", default=",".join(PHASES))
    p.add_argument("--repeats", type=int, default=7, help="plain/looped pairs per cell and workload")
    p.add_argument("--hooked", type=int, default=3, help="plain runs with per-layer timing hooks")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--score-batch", type=int, default=1)
    p.add_argument("--score-len", type=int, default=256)
    p.add_argument("--prefill-batch", type=int, default=1)
    p.add_argument("--prefill-len", type=int, default=256)
    p.add_argument("--decode-batch", type=int, default=1)
    p.add_argument("--decode-prompt", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--tag", default="", help="file name suffix: overhead[-TAG].json/.png")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                   help="merge the records of earlier runs (same model and base) into one JSON + plot; no timing")
    return p.parse_args(argv)


def merge(paths: list[Path], args) -> dict:
    """One report from several runs of this script (e.g. the K sweep and the variations run as
    separate processes); each part's hardware, settings and load are kept under `parts`."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    bases = {json.dumps(p["settings"]["base"], sort_keys=True) for p in parts}
    if len(bases) > 1 or len({p["model"]["name"] for p in parts}) > 1:
        raise SystemExit(f"--merge: runs differ in model or base configuration: {sorted(bases)}")
    base = parts[0]["settings"]["base"]
    records = [r for p in parts for r in p["records"]]
    return {"schema": SCHEMA, "hardware": parts[0]["hardware"], "model": parts[0]["model"],
            "settings": {**parts[0]["settings"], "merged_from": [str(p) for p in paths]},
            "parts": [{k: p[k] for k in ("hardware", "settings", "loadavg_start", "loadavg_end", "wall_s")}
                      for p in parts],
            "records": records, "targets": evaluate_targets(records, base)}


def finish(result: dict, args) -> None:
    base, hw, st = result["settings"]["base"], result["hardware"], result["settings"]
    stem = "overhead" + (f"-{args.tag}" if args.tag else "")
    write_json(args.out / f"{stem}.json", result)
    if not args.no_plot:
        fig = plot(result["records"], base,
                   f"{st['model']} ({result['model']['params'] / 1e6:.0f}M params) on "
                   f"{hw['gpu']['name'] if hw['gpu'] else hw['cpu_model']}, {hw['device']} {hw['dtype']}, "
                   f"{hw['torch_threads']} threads, {st['clock']} clock; base {base}")
        fig.savefig(args.out / f"{stem}.png", dpi=110)
    for t in result["targets"]:
        print(f"{'PASS' if t['pass'] else 'MISS'} {t['target']:<46} {t['phase']:<8} "
              f"{t.get('config', '')!s:<28} {t['value']:.3f}")
    print(f"wrote {args.out / (stem + '.json')}")


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.merge:
        result = merge(args.merge, args)
        finish(result, args)
        return result
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    clock = Clock(args.device, args.clock)
    t_start, load0 = time.time(), loadavg()
    model = load_model(args.model, args.device, args.dtype)
    work = Workloads(model, args, clock)
    cells = build_grid(args)
    base = base_config(args)
    records = []
    for n, cell in enumerate(cells):
        cfg = loop_config(cell["cfg"], args)
        handle = looped(model, cfg)
        res = handle.resolved
        name = label(cell, base)
        for phase in cell["phases"]:
            t0 = time.time()
            rec = {"label": name, "group": cell["group"], "axis": cell["axis"],
                   "config": {**cell["cfg"], "decode_n": args.decode_n},
                   "resolved": {"window_layers": f"{res.start}:{res.end}", "width": res.end - res.start,
                                "centre": res.centre, "mode": res.mode},
                   **bench(model, work, handle, phase, args, clock)}
            rec["seconds"] = time.time() - t0
            records.append(rec)
            write_json(args.out / f"overhead{'-' + args.tag if args.tag else ''}.partial.json",
                       {"schema": SCHEMA, "partial": True, "settings": {"base": base}, "records": records})
            print(f"[{n + 1}/{len(cells)}] {name:<28} {phase:<8} measured {rec['ratio']:.3f} "
                  f"[{rec['ratio_q25']:.3f}, {rec['ratio_q75']:.3f}]  predicted {rec['predicted_ratio']:.3f}  "
                  f"meas/pred {rec['measured_over_predicted']:.3f}  ({rec['seconds']:.0f}s)", flush=True)
    targets = evaluate_targets(records, base)
    result = {
        "schema": SCHEMA, "hardware": hardware(args.device, args.dtype, threads), "model": model_record(model, args.model),
        "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                     "workloads": work.shapes, "base": base},
        "loadavg_start": load0, "loadavg_end": loadavg(), "wall_s": time.time() - t_start,
        "records": records, "targets": targets,
    }
    finish(result, args)
    (args.out / f"overhead{'-' + args.tag if args.tag else ''}.partial.json").unlink(missing_ok=True)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
