"""Memory: cache size and peak memory of generation vs K, for kv=first/last (and per_pass).

    python -m benchmarks.memory                          # CPU, random mid-size Qwen3
    python -m benchmarks.memory --device cuda --dtype bfloat16 --model Qwen/Qwen3-4B-Instruct-2507

Every configuration (the plain model, then each kv policy x K) runs in a fresh subprocess, so one
configuration's allocations never raise another's high-water mark. In the child: build the model,
collect garbage, reset the peak, run one `generate` (min_new_tokens = max_new_tokens), then read

    cache_bytes      bytes of every distinct tensor reachable from the returned cache (window slots,
                     and kv=per_pass's private per-pass slots stored on the cache object)
    peak_gen_bytes   CPU: the resident high-water mark (VmHWM) since a reset just before `generate`
                     (/proc/self/clear_refs), i.e. the process's peak resident memory during
                     generation; CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats
    peak_gen_increment_bytes   peak_gen_bytes minus the memory in use just before `generate`
    ru_maxrss_bytes  resource.getrusage(RUSAGE_SELF).ru_maxrss: the whole process's peak (model
                     construction included), recorded for reference

kv=first and kv=last keep one K/V per window layer per token for any K, so their cache must not
grow with K; kv=per_pass keeps one per evaluation and grows (the contrast).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import (DEFAULT_OUT, REPO, add_model_args, hardware, load_model, loadavg, maxrss_bytes, model_record,
                               parse_list, peak_rss_bytes, random_ids, reset_peak_rss, rss_bytes, tensor_bytes,
                               write_json)

SCHEMA = "loopsweep.benchmarks.memory/1"
MARK = "@@MEMORY@@ "


def child(spec: dict) -> dict:
    """One configuration in this (fresh) process; returns its measurements."""
    from looping import LoopConfig, looped
    dev = spec["device"]
    if dev == "cpu":
        torch.set_num_threads(spec["threads"])
    model = load_model(spec["model"], dev, spec["dtype"])
    ids = random_ids(spec["batch"], spec["prompt"], model.config.vocab_size, dev, seed=4)
    loop = spec.get("loop")
    handle = looped(model, LoopConfig(**loop)) if loop else None
    n = spec["new_tokens"]
    gc.collect()
    cuda = dev.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        reset_ok = True
    else:
        before = rss_bytes()
        reset_ok = reset_peak_rss()
    t0 = time.perf_counter()
    with handle if handle is not None else contextlib.nullcontext():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, return_dict_in_generate=True)
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = peak_rss_bytes() if reset_ok else None
    wall = time.perf_counter() - t0
    rec = {"cache_bytes": tensor_bytes(out.past_key_values), "cache_seq_len": out.past_key_values.get_seq_length(),
           "peak_gen_bytes": peak, "mem_before_gen_bytes": before,
           "peak_gen_increment_bytes": None if peak is None else peak - before,
           "peak_reset_ok": reset_ok, "ru_maxrss_bytes": maxrss_bytes(), "generate_s": wall,
           "generated_tokens": int(out.sequences.shape[1] - ids.shape[1])}
    if handle is not None:
        rec["layer_calls"] = handle.stats.layer_calls
        rec["window_passes_last_forward"] = handle.stats.window_passes_last
        res = handle.resolved
        rec["resolved"] = {"window_layers": f"{res.start}:{res.end}", "mode": res.mode}
    return rec


def run_child(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--child", json.dumps(spec)],
                          cwd=REPO, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"memory child failed ({proc.returncode}) for {spec}:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(MARK):])


def evaluate_targets(records: list[dict], ks: list[int]) -> list[dict]:
    out = []
    lo, hi = min(ks), max(ks)
    for kv in ("first", "last"):
        a = next((r for r in records if r["kv"] == kv and r["k"] == lo), None)
        b = next((r for r in records if r["kv"] == kv and r["k"] == hi), None)
        if a is None or b is None or lo == hi:
            continue
        for key, what in (("cache_bytes", "cache size"), ("peak_gen_bytes", "peak memory")):
            if a.get(key) and b.get(key) is not None:
                v = b[key] / a[key]
                out.append({"target": f"kv={kv}: {what} at K={hi} within 5% of K={lo}", "kv": kv, "metric": key,
                            "value": v, "pass": abs(v - 1) <= 0.05})
    return out


def plot(records: list[dict], plain: dict, title: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    mb = 1 / 2 ** 20
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.9))
    panels = (("cache_bytes", "cache after generation (MiB)"),
              ("peak_gen_bytes", "peak memory during generation (MiB)"),
              ("peak_gen_increment_bytes", "peak minus memory before generate (MiB)"))
    for ax, (key, name) in zip(axes, panels):
        for kv in sorted({r["kv"] for r in records}):
            rs = sorted((r for r in records if r["kv"] == kv), key=lambda r: r["k"])
            if all(r.get(key) is not None for r in rs):
                ax.plot([r["k"] for r in rs], [r[key] * mb for r in rs], marker="o", label=f"kv={kv}")
        if plain.get(key) is not None:
            ax.axhline(plain[key] * mb, color="k", ls="--", lw=0.8, label="plain")
        ax.set_xlabel("K")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--k", default="1,2,4,8")
    p.add_argument("--kvs", default="first,last,per_pass")
    p.add_argument("--window", default="c0.5w4")
    p.add_argument("--integrator", default="euler")
    p.add_argument("--mode", default="block")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--tag", default="")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.child:
        print(MARK + json.dumps(child(json.loads(args.child))), flush=True)
        return {"child": True}
    t_start, load0 = time.time(), loadavg()
    ks, kvs = parse_list(args.k, int), parse_list(args.kvs)
    common = {"model": args.model, "device": args.device, "dtype": args.dtype, "threads": args.threads,
              "batch": args.batch, "prompt": args.prompt, "new_tokens": args.new_tokens}
    plain = {"kv": "plain", "k": 0, **run_child(common)}
    print(f"plain              cache {plain['cache_bytes'] / 2**20:8.2f} MiB  peak {plain['peak_gen_bytes'] / 2**20:8.1f} MiB",
          flush=True)
    records = []
    for kv in kvs:
        for k in ks:
            loop = {"window": args.window, "k": k, "integrator": args.integrator, "mode": args.mode,
                    "kv": kv, "decode": "full"}
            rec = {"kv": kv, "k": k, "loop": loop, **run_child({**common, "loop": loop})}
            records.append(rec)
            print(f"kv={kv:<9} K={k:<3} cache {rec['cache_bytes'] / 2**20:8.2f} MiB  peak "
                  f"{(rec['peak_gen_bytes'] or 0) / 2**20:8.1f} MiB  (+{(rec['peak_gen_increment_bytes'] or 0) / 2**20:.1f})"
                  f"  {rec['generate_s']:.1f}s", flush=True)
    targets = evaluate_targets(records, ks)
    hw_model = load_model(args.model, "cpu" if not args.device.startswith("cuda") else args.device, args.dtype)
    result = {"schema": SCHEMA, "hardware": hardware(args.device, args.dtype, args.threads),
              "model": model_record(hw_model, args.model),
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "child"},
              "peak_kind": "cuda max_memory_allocated" if args.device.startswith("cuda")
              else "process VmHWM (peak RSS) since reset before generate",
              "loadavg_start": load0, "loadavg_end": loadavg(), "wall_s": time.time() - t_start,
              "plain": plain, "records": records, "targets": targets}
    del hw_model
    stem = "memory" + (f"-{args.tag}" if args.tag else "")
    write_json(args.out / f"{stem}.json", result)
    if not args.no_plot:
        hw = result["hardware"]
        fig = plot(records, plain, f"{args.model}, batch {args.batch}, prompt {args.prompt}, {args.new_tokens} new "
                                   f"tokens, window {args.window} {args.integrator} {args.mode}, decode=full; "
                                   f"{hw['gpu']['name'] if hw['gpu'] else hw['cpu_model']} {args.device} {args.dtype}")
        fig.savefig(args.out / f"{stem}.png", dpi=110)
    for t in targets:
        print(f"{'PASS' if t['pass'] else 'MISS'} {t['target']:<48} {t['value']:.4f}")
    print(f"wrote {args.out / (stem + '.json')} in {result['wall_s']:.0f}s")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
