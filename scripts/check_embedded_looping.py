"""Looping sanity check on the embedded model and its MC task, with a hand-written layer loop.

    python scripts/check_embedded_looping.py                    # window 3:5, K in 1 2 3 6
    python scripts/check_embedded_looping.py --window 4:6 --ks 6

Independent of `looping/` on purpose (a reference the demo grid can be compared with): embed, run
layers [0, s), loop the window block g = L_{e-1} o ... o L_s with the chosen integrator, run
layers [e, L), final norm, lm_head; score each option's summed log-probability like lm-eval's
`acc`. Strategies (docs/design.md): naive x <- g(x); euler x <- x + (g(x) - x)/K; anchored
0.5 g(x0) + 0.5 E_K(x0). Prints accuracy with a Wilson 95% interval and, against the plain model,
the paired difference with an exact two-sided McNemar (sign) test on the discordant items.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import embedded  # noqa: E402


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return c - h, c + h


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided sign test on b vs c discordant pairs."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(0, min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


@torch.no_grad()
def forward(model, ids: torch.Tensor, window: tuple[int, int], k: int, strategy: str) -> torch.Tensor:
    """Logits of right-padded `ids` (B, T) with the window looped (manual layer calls)."""
    m = model.model
    s, e = window
    x = m.embed_tokens(ids)                                   # (B, T, C)
    pos = torch.arange(ids.shape[1]).unsqueeze(0)
    pe = m.rotary_emb(x, pos)
    def layer(i, h):
        return m.layers[i](h, attention_mask=None, position_ids=pos, position_embeddings=pe)

    def g(h):
        for i in range(s, e):
            h = layer(i, h)
        return h
    for i in range(s):
        x = layer(i, x)
    if strategy == "naive":
        for _ in range(k):
            x = g(x)
    elif strategy in ("euler", "anchored"):
        first = None
        for _ in range(k):
            gx = g(x)
            first = gx if first is None else first
            x = x + (gx - x) / k
        if strategy == "anchored":
            x = 0.5 * first + 0.5 * x
    else:
        raise ValueError(strategy)
    for i in range(e, len(m.layers)):
        x = layer(i, x)
    return model.lm_head(m.norm(x))


def score(model, items, window, k, strategy, batch: int = 16) -> list[int]:
    """1/0 per item: does the gold option get the highest summed log-probability?"""
    correct = []
    for b0 in range(0, len(items), batch):
        seqs, spans, owners = [], [], []
        for j, it in enumerate(items[b0:b0 + batch]):
            ctx = list(it["context"].encode())
            for ch in it["choices"]:
                cont = list(ch.encode())
                seqs.append(ctx + cont)
                spans.append((len(ctx), len(ctx) + len(cont)))
                owners.append(j)
        T = max(map(len, seqs))
        ids = torch.full((len(seqs), T), embedded.PAD_ID)
        for r, sq in enumerate(seqs):
            ids[r, :len(sq)] = torch.tensor(sq)
        logp = forward(model, ids, window, k, strategy).log_softmax(-1)
        scores = []
        for r, (a, b) in enumerate(spans):
            tgt = ids[r, a:b]
            scores.append(logp[r, a - 1:b - 1].gather(-1, tgt[:, None]).sum().item())
        for j, it in enumerate(items[b0:b0 + batch]):
            opts = scores[4 * j:4 * j + 4]
            correct.append(int(max(range(4), key=opts.__getitem__) == it["label"]))
    return correct


def main(argv=None) -> int:
    from transformers import AutoModelForCausalLM

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--window", action="append", default=None, help="s:e half-open (repeatable)")
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3, 6])
    ap.add_argument("--strategies", nargs="+", default=["naive", "euler", "anchored"])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.model or embedded.embedded_model_path()).eval()
    items = [json.loads(line) for line in open(embedded.TASK_DIR / "mc.jsonl")]
    n = len(items)
    base = score(model, items, (0, 0), 1, "naive")
    lo, hi = wilson(sum(base), n)
    print(f"plain: acc {sum(base) / n:.3f} [{lo:.3f}, {hi:.3f}] (n={n}, chance 0.25)")
    for w in args.window or ["3:5"]:
        window = tuple(int(v) for v in w.split(":"))
        for strat in args.strategies:
            for k in args.ks:
                if k == 1 and strat != "naive":
                    continue
                cur = score(model, items, window, k, strat)
                b = sum(1 for x, y in zip(base, cur) if x and not y)   # lost
                c = sum(1 for x, y in zip(base, cur) if y and not x)   # gained
                lo, hi = wilson(sum(cur), n)
                print(f"{w} {strat:8s} K={k}: acc {sum(cur) / n:.3f} [{lo:.3f}, {hi:.3f}]  "
                      f"delta {(sum(cur) - sum(base)) / n:+.3f}  lost {b} gained {c}  "
                      f"McNemar p={mcnemar_p(b, c):.2g}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
