"""scoring: lm-eval's loglikelihood requests answered as HFLM answers them, with the LM head applied
only where lm-eval reads it, and several loop settings of one model sharing what lies below their
windows.

    answers = loglikelihoods(model, requests, [None, cfg_a, cfg_b], batch_size=16, max_length=2048)
    answers[i]          # [(logprob, is_greedy), ...] for settings[i], in request order
    shared = SharedPass([None, cfg_a, cfg_b])      # a sweep's cells: computed once, served to each
    shared.get(1, lm, requests)                    # (the adapter's LoopedLM calls this)

`requests` are what HFLM's `_loglikelihood_tokens` receives: `((context, continuation),
context_tokens, continuation_tokens)`. Batching follows HFLM exactly (the same `Collator` order,
the same one-token-continuation grouping, left truncation to `max_length`, right padding), so a
setting's answers equal `--model hf` / `--model looped` scoring of the same requests within
floating-point noise (tests pin <= 1e-5 in fp32, identical greedy flags).

Two savings, both exact:
- **the head only where read**: lm-eval reads the log-probabilities of the continuation tokens
  only; the final norm runs over the sequence as usual, then a pre-hook on the output embedding
  keeps each row's last `P` positions that hold its continuation (P = the longest continuation of
  the batch). With a 262k vocabulary (Gemma 3) the head costs more than the layers; this also
  keeps a (B, T, V) logits tensor out of memory.
- **shared prefix and natural pass** (several settings): per batch, one plain forward records the
  state entering every window start and every block window's end (`looping.prefix.
  capture_inputs`) and stops there; the baseline continues from the highest of them, and each
  looped setting starts at its window (`start_at`) with, in block mode, its first evaluation
  g(x0) provided (`LoopHandle.natural_output`): the plain model's state entering the window's
  end. What a setting computes after that is what it computes alone.

Only one batch of states is held at a time. Settings with `routing=freeze` in block mode compute
their own natural pass (freezing needs its routing).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from lm_eval.models.utils import Collator
from lm_eval.models.utils_hf import pad_and_concat
from tqdm import tqdm

from looping import LoopConfig, LoopHandle, looped
from looping.prefix import capture_inputs, start_at

Request = tuple  # ((context, continuation), context_tokens, continuation_tokens)


@contextlib.contextmanager
def head_at(model: torch.nn.Module, index: torch.Tensor) -> Iterator[None]:
    """While active, the output embedding (LM head) sees only the positions `index` (B, P) of
    each row: the model returns logits of shape (B, P, V)."""
    head = model.get_output_embeddings()

    def gather(module, args):
        h = args[0]
        idx = index.to(h.device)[..., None].expand(-1, -1, h.shape[-1])
        return (h.gather(1, idx),) + tuple(args[1:])
    handle = head.register_forward_pre_hook(gather)
    try:
        yield
    finally:
        handle.remove()


@dataclass
class _Setting:
    loop: LoopConfig | None
    handle: object = None            # LoopHandle (not applied between batches)
    start: int = 0
    end: int | None = None           # window end whose natural pass is shared (block mode)


def _plan(model, loops: Sequence) -> tuple[list[_Setting], list[int]]:
    """Each setting's handle and shared states; the layers whose entering state a batch records.
    A setting is None (the plain model), a LoopConfig, or a LoopHandle (not applied)."""
    settings, points = [], set()
    n_layers = None
    for cfg in loops:
        if cfg is None:
            settings.append(_Setting(None))
            continue
        h = cfg if isinstance(cfg, LoopHandle) else looped(model, cfg)
        cfg = h.config
        n_layers = h.resolved.n_layers
        s, e = h.resolved.start, h.resolved.end
        share_natural = (h.resolved.mode == "block" and e < n_layers
                         and not h.routing.replays_natural)
        settings.append(_Setting(cfg, h, s, e if share_natural else None))
        points.add(s)
        if share_natural:
            points.add(e)
    if len(loops) < 2:                # nothing to share: one plain or looped forward per batch
        points = set()
    return settings, sorted(points)


def _forward(model, ids, index, autocast_dtype) -> torch.Tensor:
    device = ids.device
    with (torch.no_grad(), head_at(model, index),
          torch.autocast(device_type=device.type, dtype=autocast_dtype,
                         enabled=autocast_dtype is not None)):
        return model(ids, use_cache=False).logits


def loglikelihoods(model: torch.nn.Module, requests: Sequence[Request],
                   loops: Sequence[LoopConfig | LoopHandle | None], *, batch_size: int,
                   max_length: int,
                   logits_cache: bool = True, softmax_dtype=None, autocast_dtype=None,
                   progress: bool = True) -> list[list[tuple[float, bool]]]:
    """Answer `requests` under every setting in `loops` (None = the plain model; a LoopConfig, or
    a LoopHandle that is not applied): one list of (sum of continuation log-probs, continuation
    is greedy) per setting, in request order."""
    if not loops:
        return []
    settings, points = _plan(model, loops)
    device = next(model.parameters()).device

    def collate(req):
        toks = req[1] + req[2]
        return -len(toks), tuple(toks)

    re_ord = Collator(list(requests), sort_fn=collate,
                      group_by="contexts" if logits_cache else None,
                      group_fn=lambda req: req[-2] + req[-1][:-1])
    results: list[list[tuple[float, bool]]] = [[] for _ in settings]
    pbar = tqdm(total=len(requests), disable=not progress,
                desc=f"Scoring loglikelihood requests ({len(settings)} setting(s))")
    for chunk in re_ord.get_batched(n=batch_size):
        inps, inplens, conts = [], [], []
        for _, context_enc, continuation_enc in chunk:
            inp = torch.tensor((context_enc + continuation_enc)[-(max_length + 1):][:-1],
                               dtype=torch.long, device=device)
            inps.append(inp)
            inplens.append(inp.shape[0])
            conts.append(continuation_enc)
        ids = pad_and_concat(max(inplens), inps, padding_side="right")
        width = max(len(c) for c in conts)
        index = torch.stack([(torch.arange(width) + n - width).clamp_min(0) for n in inplens])
        # the siblings (one-token continuations of a shared context) are the same under every
        # setting; lm-eval's Collator hands them out once per request
        family = [[c for _, c, _ in re_ord.get_cache(req_str=request_str, cxt_toks=ctx_tokens,
                                                     cont_toks=cont, logits=_NO_LOGITS)]
                  for (request_str, ctx_tokens, _), cont in zip(chunk, conts)]
        # one setting's (B, P, V) log-probabilities at a time: with many settings (a grid) and a
        # large vocabulary, holding them all would take many GB (16 x Gemma-3's 262k x P x B)
        for k, logits in enumerate(_batch_logits(model, ids, index, settings, points,
                                                 autocast_dtype)):
            logp = F.log_softmax(logits, dim=-1, dtype=softmax_dtype)
            del logits
            for i, cont in enumerate(conts):
                row = logp[i, width - len(cont):].unsqueeze(0)                 # [1, cont, V]
                greedy = row.argmax(dim=-1)
                for cont_toks in family[i]:
                    toks = torch.tensor(cont_toks, dtype=torch.long, device=row.device)[None]
                    n = toks.shape[1]
                    is_greedy = bool((greedy[:, -n:] == toks).all())
                    logprob = float(torch.gather(row[:, -n:], 2, toks[..., None]).sum())
                    results[k].append((logprob, is_greedy))
            del logp
        pbar.update(sum(len(f) for f in family))
    pbar.close()
    return [re_ord.get_original(r) for r in results]


def _batch_logits(model, ids, index, settings: list[_Setting], points: list[int],
                  autocast_dtype) -> Iterator[torch.Tensor]:
    """Logits (B, P, V) of one batch under each setting in turn, sharing the recorded states
    (a generator: the caller drops one setting's logits before the next is computed)."""
    if not points:
        for s in settings:
            with s.handle if s.handle is not None else contextlib.nullcontext():
                out = _forward(model, ids, index, autocast_dtype)
            yield out
        return
    with torch.no_grad(), capture_inputs(model, points) as seen:
        model(ids, use_cache=False)
    top = points[-1]
    for s in settings:
        if s.handle is None:                          # the plain model: continue from the top
            with start_at(model, top, seen[top]):
                out = _forward(model, ids, index, autocast_dtype)
            yield out
            continue
        with s.handle, start_at(model, s.start, seen[s.start]):
            natural = (s.handle.natural_output(seen[s.end]) if s.end is not None
                       else contextlib.nullcontext())
            with natural:
                out = _forward(model, ids, index, autocast_dtype)
        yield out


_NO_LOGITS = torch.empty(1, 1, 1)   # lm-eval's get_cache expands it; the rows come per setting


def requests_key(requests: Sequence[Request]) -> str:
    """A digest of a request list's token content (what the answers depend on)."""
    import hashlib
    h = hashlib.sha256()
    for _, context, continuation in requests:
        h.update(repr((tuple(context), tuple(continuation))).encode())
    return h.hexdigest()


class SharedPass:
    """The loglikelihood answers of several settings of one model on one request list: computed
    in one shared pass the first time any of them asks, then served to each (a sweep's cells
    that share model, task and evaluation settings; `harness.run` forms the groups).

    `get(i, lm, requests)` returns setting i's answers, or None when `requests` differ from the
    list the pass was computed for (that cell then scores alone). The batching settings are the
    asking adapter's (batch size, max length, logits_cache, softmax / autocast dtypes)."""

    def __init__(self, loops: Sequence[LoopConfig | None]):
        self.loops = list(loops)
        self.handles: list | None = None
        self.key: str | None = None
        self.answers: list | None = None
        self.wall_time_s: float | None = None
        self.layer_passes: list[int] | None = None     # per setting, per token of a full forward

    def handle(self, i: int, model):
        """Setting i's LoopHandle on `model` (None for the plain model), made once."""
        if self.handles is None:
            self.handles = [None if cfg is None else looped(model, cfg) for cfg in self.loops]
        return self.handles[i]

    def get(self, i: int, lm, requests: Sequence[Request], batch_size: int,
            progress: bool = True) -> list | None:
        import time
        key = requests_key(requests)
        if self.answers is None:
            handles = [self.handle(j, lm.model) for j in range(len(self.loops))]
            t0 = time.perf_counter()
            self.answers = loglikelihoods(
                lm.model, requests, handles, batch_size=batch_size, max_length=lm.max_length,
                logits_cache=lm.logits_cache, softmax_dtype=lm.softmax_dtype,
                autocast_dtype=lm.mixed_precision_dtype, progress=progress)
            self.wall_time_s = time.perf_counter() - t0
            self.key = key
        return self.answers[i] if key == self.key else None

    def share_of_time(self, i: int) -> float:
        """Setting i's share of the pass's wall time, in proportion to the layer passes per token
        it would cost alone (the plain model: the layer count)."""
        if not self.wall_time_s or self.handles is None:
            return 0.0
        costs = []
        for h in self.handles:
            costs.append(h.resolved.layer_passes if h is not None else None)
        n_layers = next((h.resolved.n_layers for h in self.handles if h is not None), 1)
        costs = [n_layers if c is None else c for c in costs]
        return self.wall_time_s * costs[i] / sum(costs)
