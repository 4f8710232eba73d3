"""Grid: a K x strategy grid of one window scored in one shared pass vs cell by cell, and the LM head
applied only at the continuation positions vs over every position.

    python -m benchmarks.grid --clock cpu                      # SmolLM2-135M's shape, random weights
    python -m benchmarks.grid --model embedded --clock cpu     # the embedded 8-layer model
    python -m benchmarks.grid --model gemma3-270m-shape --head-only   # the 262k-vocabulary head

Grid part: the settings are the baseline plus {naive, euler, anchored} x K = 2..6 at one window
(`--window`, default c0.5w4): 16 settings. The same synthetic loglikelihood requests (random tokens;
contexts of 40-120 tokens, continuations of 1-4 tokens, a third of them one-token continuations
of a shared context, as multiple-choice letters are) are answered

    cell by cell   `harness.scoring.loglikelihoods(model, requests, [setting])` for each setting
    shared         one `loglikelihoods(model, requests, settings)` call

and the two runs' answers are checked equal (<= 1e-5). The predicted speed-up is the ratio of
decoder-layer evaluations the two runs make, counted by hooks on the original layer modules (every
evaluation, the prefix, natural and suffix passes included); non-layer work (embedding, masks, the
head at a few positions) is what the measured ratio shows beside it.

Head part (`--head-only`): the plain model's answers through HFLM's own path (full (B, T, V) logits,
log-softmax, then the continuation rows) vs `loglikelihoods` (the head at the continuation
positions only): time, the process's peak resident memory during each, and the largest answer
difference. Results go to benchmarks/results/grid[-<model>].json and a figure beside it.
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch

from benchmarks.common import (DEFAULT_OUT, Clock, LayerProbe, hardware, loadavg, model_record,
                               peak_rss_bytes, reset_peak_rss, settle, write_json)
from looping import LoopConfig

SCHEMA = "loopsweep.benchmarks.grid/1"
SHAPES = {   # random weights from the published configs' shapes
    "smollm2-135m-shape": dict(model_type="llama", hidden_size=576, intermediate_size=1536,
                               num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                               vocab_size=49152, max_position_embeddings=2048,
                               tie_word_embeddings=True, rope_theta=100000.0),
    "gemma3-270m-shape": dict(model_type="gemma3_text", hidden_size=640, intermediate_size=2048,
                              num_hidden_layers=18, num_attention_heads=4, num_key_value_heads=1,
                              head_dim=256, vocab_size=262144, max_position_embeddings=32768,
                              sliding_window=512, tie_word_embeddings=True),
}


def build_model(name: str, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModelForCausalLM
    torch.manual_seed(0)
    if name in SHAPES:
        spec = dict(SHAPES[name])
        cfg = AutoConfig.for_model(spec.pop("model_type"), **spec)
        cfg._attn_implementation = "sdpa"
        return AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
    if name == "embedded":
        from harness.embedded import embedded_model_path
        name = str(embedded_model_path())
    return AutoModelForCausalLM.from_pretrained(name, dtype=dtype, attn_implementation="sdpa").eval()


def synthetic_requests(n: int, vocab: int, seed: int = 0) -> list:
    """lm-eval-shaped loglikelihood requests: ((ctx, cont), ctx_tokens, cont_tokens)."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        ctx = [rng.randrange(3, vocab) for _ in range(rng.randrange(40, 121))]
        if rng.random() < 1 / 3:                 # a multiple-choice question: 4 one-token letters
            for letter in rng.sample(range(3, vocab), 4):
                out.append((("", ""), ctx, [letter]))
        else:
            out.append((("", ""), ctx, [rng.randrange(3, vocab) for _ in range(rng.randrange(1, 5))]))
    return out[:n]


def grid_settings(window: str, ks, integrators) -> list:
    """The baseline plus every strategy x K at `window`; window='demo': the demo grid's
    loglikelihood settings ({naive, euler, anchored} x K 1..6 x c0.3w1 / c0.5w1 / c0.7w1)."""
    windows = ["c0.3w1", "c0.5w1", "c0.7w1"] if window == "demo" else [window]
    ks = range(1, 7) if window == "demo" else ks
    return [None] + [LoopConfig(window=w, k=k, integrator=i, mode="block")
                     for i in integrators for k in ks for w in windows]


def timed(clock, fn):
    settle()
    t0 = clock()
    out = fn()
    return clock() - t0, out


def max_diff(a, b) -> float:
    return max(abs(x[0] - y[0]) for x, y in zip(a, b))


def run_grid(model, args, clock) -> dict:
    from harness.scoring import loglikelihoods
    reqs = synthetic_requests(args.requests, model.config.vocab_size)
    settings = grid_settings(args.window, args.ks, args.integrators)

    def score(loops):
        return loglikelihoods(model, reqs, loops, batch_size=args.batch_size,
                              max_length=4096, progress=False)
    peaks = []
    with LayerProbe(model, "count", clock) as probe:
        def alone_scores():
            out = []
            for s in settings:
                reset_peak_rss()
                out.append(score([s])[0])
                peaks.append(peak_rss_bytes())
            return out
        t_alone, alone = timed(clock, alone_scores)
        passes_alone = sum(sum(f.values()) for f in probe.data.values())
    reset_peak_rss()
    with LayerProbe(model, "count", clock) as probe:
        t_shared, shared = timed(clock, lambda: score(settings))
        passes_shared = sum(sum(f.values()) for f in probe.data.values())
    peak_shared = peak_rss_bytes()
    worst = max(max_diff(a, b) for a, b in zip(alone, shared))
    greedy_same = all([x[1] for x in a] == [x[1] for x in b] for a, b in zip(alone, shared))
    windows = sorted({f"{r.start}:{r.end}" for r in (s.resolve(model) for s in settings[1:])})
    return {"window": args.window, "window_layers": ", ".join(windows),
            "settings": ["baseline"] + [f"{s.integrator} k={s.k} {s.window}"
                                        for s in settings[1:]],
            "peak_rss_cell_max_bytes": max(peaks), "peak_rss_shared_bytes": peak_shared,
            "peak_rss_ratio": peak_shared / max(peaks),
            "requests": len(reqs), "tokens": sum(len(r[1]) + len(r[2]) for r in reqs),
            "batch_size": args.batch_size,
            "cell_by_cell_s": t_alone, "shared_s": t_shared, "speedup": t_alone / t_shared,
            "layer_passes_cell_by_cell": passes_alone, "layer_passes_shared": passes_shared,
            "predicted_speedup": passes_alone / passes_shared,
            "measured_over_predicted": (t_alone / t_shared) / (passes_alone / passes_shared),
            "max_answer_diff": worst, "greedy_flags_identical": greedy_same}


def run_head(model, args, clock) -> dict:
    """HFLM's full-logits path vs the head at the continuation positions, plain model."""
    from lm_eval.api.model import CacheHook
    from lm_eval.models.huggingface import HFLM

    from harness.scoring import loglikelihoods

    class Bare(HFLM):      # HFLM's own _loglikelihood_tokens on a model without a tokenizer
        def __init__(self, model, batch_size):
            self._model, self._batch_size, self.backend = model, batch_size, "causal"
            self.logits_cache, self.softmax_dtype, self.mixed_precision_dtype = True, None, None
            self._max_length, self._rank, self._world_size = 4096, 0, 1
            self._device = next(model.parameters()).device
            self.cache_hook = CacheHook(None)

        @property
        def batch_size(self):
            return self._batch_size

        def _model_call(self, inps, attn_mask=None, labels=None):
            with torch.no_grad():
                return self.model(inps, use_cache=False).logits
    reqs = synthetic_requests(args.requests, model.config.vocab_size, seed=1)
    bare = Bare(model, args.batch_size)
    out = {}
    for name, fn in (("full_logits", lambda: bare._loglikelihood_tokens(reqs, disable_tqdm=True)),
                     ("head_only", lambda: loglikelihoods(model, reqs, [None],
                                                          batch_size=args.batch_size,
                                                          max_length=4096, progress=False)[0])):
        settle()
        reset_peak_rss()
        t, answers = timed(clock, fn)
        out[name] = {"time_s": t, "peak_rss_bytes": peak_rss_bytes(), "answers": answers}
    worst = max_diff(out["full_logits"].pop("answers"), out["head_only"].pop("answers"))
    return {**out, "requests": len(reqs), "batch_size": args.batch_size,
            "time_ratio": out["head_only"]["time_s"] / out["full_logits"]["time_s"],
            "peak_rss_ratio": out["head_only"]["peak_rss_bytes"] / out["full_logits"]["peak_rss_bytes"],
            "max_answer_diff": worst}


def figure(result: dict, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    g = result.get("grid")
    if not g:
        return
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    labels = ["cell by cell", "shared"]
    ax.bar(labels, [g["cell_by_cell_s"], g["shared_s"]], color=["#999999", "#1f77b4"])
    ax.set_ylabel(f"{result['clock']} seconds")
    ax.set_title(f"{len(g['settings'])} settings, window {g['window_layers']}: "
                 f"{g['speedup']:.2f}x measured, {g['predicted_speedup']:.2f}x predicted",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-shape",
                   help=f"{', '.join(SHAPES)}, 'embedded', or a model folder")
    p.add_argument("--window", default="c0.5w4",
                   help="the grid's window, or 'demo' for the demo grid's 54 loop settings")
    p.add_argument("--ks", default="2,3,4,5,6")
    p.add_argument("--integrators", default="naive,euler,anchored")
    p.add_argument("--requests", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", default="cpu", choices=Clock.KINDS)
    p.add_argument("--head-only", action="store_true", help="only the head comparison")
    p.add_argument("--no-head", action="store_true", help="skip the head comparison")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    args.ks = [int(k) for k in args.ks.split(",")]
    args.integrators = args.integrators.split(",")
    torch.set_num_threads(args.threads)
    clock = Clock("cpu", args.clock)
    model = build_model(args.model, torch.float32)
    result = {"schema": SCHEMA, "clock": args.clock, "model": model_record(model, args.model),
              "hardware": hardware("cpu", "float32", args.threads), "loadavg_before": loadavg()}
    if not args.head_only:
        result["grid"] = run_grid(model, args, clock)
        g = result["grid"]
        print(f"grid: {len(g['settings'])} settings at {g['window_layers']}: cell by cell "
              f"{g['cell_by_cell_s']:.1f}s, shared {g['shared_s']:.1f}s -> {g['speedup']:.2f}x "
              f"(predicted from layer passes {g['predicted_speedup']:.2f}x); max answer diff "
              f"{g['max_answer_diff']:.2g}; peak RSS shared / largest single cell "
              f"{g['peak_rss_ratio']:.2f}", flush=True)
    if not args.no_head:
        result["head"] = run_head(model, args, clock)
        h = result["head"]
        print(f"head: full logits {h['full_logits']['time_s']:.1f}s / "
              f"{h['full_logits']['peak_rss_bytes'] / 2**20:.0f} MiB peak, head only "
              f"{h['head_only']['time_s']:.1f}s / {h['head_only']['peak_rss_bytes'] / 2**20:.0f} "
              f"MiB peak; max answer diff {h['max_answer_diff']:.2g}", flush=True)
    result["loadavg_after"] = loadavg()
    name = "grid" if args.model == "smollm2-135m-shape" else f"grid-{args.model}"
    if args.window == "demo":
        name += "-demo"
    out = DEFAULT_OUT / f"{name}.json" if args.out is None else Path(args.out)
    write_json(out, result)
    figure(result, out.with_suffix(".png"))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
