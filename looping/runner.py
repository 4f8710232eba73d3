"""Runner: the looped schedule inside the model's own forward.

Owns `looped(model, cfg)`. Inside it, the window's entries of the model's own `layers` list are
swapped for thin wrappers; everything else (embedding, position ids, masks for full and sliding
layers, rotary embeddings per layer type, final norm, head with its logit scaling / soft-capping,
`generate`, lm-eval) stays the model's own code. On exit the original layers come back.

    block mode   positions s..e-2 hold `_Defer` (records the kwargs its position received, i.e. its
                 own mask / rotary / cache, and passes h through); position e-1 holds `_Block`,
                 which runs the integrator over g = L_{e-1} o ... o L_s.
    layer mode   every position holds `_Layer`, which runs the integrator over its own L_i.

One forward of the decoder (prefix layers run as usual, then):

    x0 = h                                     # (B, T, C) state entering the window
    out = integrator(g, x0, cfg)               # g(x) = for j in window: x = L_j(x)   (K passes)
    if kv == 'last': g(out) with writes kept    # one extra stash pass
    h = out                                    # suffix layers, norm, head as usual

Each evaluation of a window layer goes through `_call`, the single place where the evaluation
index (explicit, per layer per forward), the KV stash and the routing control meet.
"""
from __future__ import annotations

import dataclasses
import weakref
from typing import Any, Mapping

import torch
from torch import nn

from .arch import attention_slot, describe
from .config import LoopConfig
from .integrators import get_integrator
from .kv import KVStash, find_cache, past_length
from .moe import RoutingControl
from .trace import Trace, UnitTrace


@dataclasses.dataclass
class LoopStats:
    """Counters over the handle's lifetime (and the last forward)."""
    forwards: int = 0            # decoder forwards seen
    looped_forwards: int = 0     # forwards in which the window looped
    layer_calls: int = 0         # window-layer evaluations, stash passes included
    stash_calls: int = 0         # window-layer evaluations of kv='last' stash passes
    window_passes_last: float = 0.0   # window passes (evaluations of g) in the last forward
    steps_last: list = dataclasses.field(default_factory=list)  # per unit: (B,) steps with halting

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["steps_last"] = [s.tolist() for s in self.steps_last]
        return out


@dataclasses.dataclass
class _Forward:
    """State of one decoder forward (set by the decoder pre-hook)."""
    loop: bool = True
    mask2d: torch.Tensor | None = None
    kwargs: dict = dataclasses.field(default_factory=dict)    # window position j -> layer kwargs
    args: dict = dataclasses.field(default_factory=dict)      # window position j -> extra positional args
    caches: dict = dataclasses.field(default_factory=dict)    # window position j -> its Cache (or None)
    evals: dict = dataclasses.field(default_factory=dict)     # window position j -> evaluations so far
    x0: dict = dataclasses.field(default_factory=dict)        # unit start j -> its entry state
    calls: int = 0


class _Wrapper(nn.Module):
    """Window position j's stand-in: records what the position receives. Attribute reads it cannot
    answer go to the layer it replaces (decoders that read e.g. `layer.attention_type` /
    `layer.block_type` to pick a mask)."""

    def __init__(self, handle: "LoopHandle", j: int):
        super().__init__()
        self._handle = handle  # a plain attribute, not a submodule: the layers live in _Block / _Layer
        self.j = j

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("__") or "_handle" not in self.__dict__:
                raise
            return getattr(self._handle.window[self.j], name)


class _Defer(_Wrapper):
    """Block mode, window positions s..e-2: remember this position's kwargs, pass h through."""

    def forward(self, hidden_states, *args, **kwargs):
        self._handle._record(self.j, args, kwargs)
        return hidden_states


class _Block(_Wrapper):
    """Block mode, window position e-1: run the integrator over the whole window."""

    def __init__(self, handle: "LoopHandle", layers):
        super().__init__(handle, len(layers) - 1)
        self.inner = nn.ModuleList(layers)  # the original layers, registered once, here

    def forward(self, hidden_states, *args, **kwargs):
        self._handle._record(self.j, args, kwargs)
        return self._handle._run_unit(hidden_states, list(range(len(self.inner))))


class _Layer(_Wrapper):
    """Layer mode, window position j: run the integrator over this layer alone."""

    def __init__(self, handle: "LoopHandle", j: int, layer):
        super().__init__(handle, j)
        self.inner = layer

    def forward(self, hidden_states, *args, **kwargs):
        self._handle._record(self.j, args, kwargs)
        return self._handle._run_unit(hidden_states, [self.j])


class _Window:
    """The callable an integrator sees: g(x) runs every layer of the unit once."""

    def __init__(self, handle: "LoopHandle", js: list[int], record: UnitTrace | None = None):
        self.layers = [lambda x, j=j: handle._call(j, x) for j in js]
        self.record = record

    def __call__(self, x):
        x_in = x
        for layer in self.layers:
            x = layer(x)
        if self.record is not None:
            self.record.inputs.append(x_in.detach())
            self.record.outputs.append(x.detach())
        return x


class LoopHandle:
    """Looping applied to one model. Use as a context manager, or `apply()` / `remove()`."""

    def __init__(self, model: nn.Module, cfg: LoopConfig | Mapping[str, Any] | str | None = None, *,
                 trace: bool = False, **options):
        if cfg is None:
            cfg = LoopConfig.from_dict(options)
        elif isinstance(cfg, str):
            cfg = LoopConfig.from_dict({"recipe": cfg, **options})
        elif isinstance(cfg, Mapping):
            cfg = LoopConfig.from_dict({**cfg, **options})
        elif options:
            cfg = cfg.replace(**options)
        self.model, self.config = model, cfg
        self.resolved = cfg.resolve(model)
        self.info = describe(model)
        self.integrator = get_integrator(cfg.integrator)
        s, e = self.resolved.start, self.resolved.end
        self.window = [self.info.layers[i] for i in range(s, e)]
        self.slots = [attention_slot(layer) for layer in self.window]
        self.kv = KVStash(cfg.kv)
        self.routing = RoutingControl(self.window, self.info.router_class, self.resolved.routing)
        self.stats = LoopStats()
        self._fwd = _Forward()
        self._decode_steps: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
        self._applied = False
        self._hooks = []
        self.trace: Trace | None = Trace() if trace else None

    # ---- install / restore -------------------------------------------------------------------
    def apply(self) -> "LoopHandle":
        if self._applied:
            raise RuntimeError("this LoopHandle is already applied")
        layers, s, e = self.info.layers, self.resolved.start, self.resolved.end
        for i in range(s, e):
            if not any(layers[i] is w for w in self.window):
                raise RuntimeError(f"layer {i} is already wrapped (nested `looped` on one model is not supported)")
        try:
            if self.resolved.mode == "block":
                for j in range(e - s - 1):
                    layers[s + j] = _Defer(self, j)
                layers[e - 1] = _Block(self, self.window)
            else:
                for j in range(e - s):
                    layers[s + j] = _Layer(self, j, self.window[j])
            self._hooks.append(self.info.decoder.register_forward_pre_hook(self._on_forward, with_kwargs=True))
            self.routing.install()
            if self.config.kv == "per_pass":
                self.model.generate = self._generate_per_pass
        except BaseException:
            self._restore()
            raise
        self._applied = True
        return self

    def remove(self) -> None:
        if self._applied:
            self._restore()
            self._applied = False

    def _restore(self):
        layers, s = self.info.layers, self.resolved.start
        for j, layer in enumerate(self.window):
            layers[s + j] = layer
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self.routing.remove()
        self.model.__dict__.pop("generate", None)
        self._fwd = _Forward()

    @property
    def routing_change_rate(self) -> float | None:
        """MoE diagnostic: fraction of real window tokens whose top-k expert set differs from the
        natural pass's, pooled over later loop evaluations (None on dense windows); details in
        `self.routing.as_dict()` (see looping.moe)."""
        return self.routing.change_rate

    def __enter__(self) -> "LoopHandle":
        return self.apply()

    def __exit__(self, *exc) -> None:
        self.remove()

    def _generate_per_pass(self, *args, **kwargs):
        gen_cfg = kwargs.get("generation_config") or self.model.generation_config
        beams = kwargs.get("num_beams", getattr(gen_cfg, "num_beams", 1)) or 1
        if beams > 1:
            raise ValueError(
                f"kv='per_pass' keeps private cache slots that beam search cannot reorder (num_beams={beams}); "
                f"use kv='first' or kv='last' with beam search.")
        return type(self.model).generate(self.model, *args, **kwargs)

    # ---- one forward ---------------------------------------------------------------------------
    def _on_forward(self, module, args, kwargs):
        cache = find_cache(kwargs)
        past = past_length(cache)
        # a decode step: one new token per row after a non-empty cache. A multi-token forward on
        # top of a cache (chunked prefill, `prefill_chunk_size`) is prefill and always loops.
        new = next((t.shape[1] for t in (kwargs.get("input_ids"), kwargs.get("inputs_embeds"))
                    if torch.is_tensor(t) and t.dim() >= 2), None)
        decode = past > 0 and new in (1, None)
        if decode:
            n = self._decode_steps.get(cache, 0) + 1
            self._decode_steps[cache] = n
        elif cache is not None and past == 0:
            self._decode_steps[cache] = 0
        mode = self.config.decode
        loop = (not decode) or mode == "full" or (mode == "first_n" and n <= self.config.decode_n)
        mask = kwargs.get("attention_mask")
        self._fwd = _Forward(loop=loop,
                             mask2d=mask if torch.is_tensor(mask) and mask.dim() == 2 else None)
        self.kv.reset()
        self.stats.forwards += 1
        self.stats.looped_forwards += int(loop)
        self.stats.steps_last = []
        self.routing.new_forward(None)

    def _record(self, j: int, args: tuple, kwargs: dict) -> None:
        """What window position j received in this forward (its mask, rotary, cache, ...)."""
        fwd = self._fwd
        fwd.kwargs[j], fwd.args[j], fwd.caches[j] = kwargs, args, find_cache(kwargs)

    def _valid(self, q: int):
        m = self._fwd.mask2d
        return None if m is None else m[:, -q:].bool()

    def _call(self, j: int, x: torch.Tensor, stash: bool = False) -> torch.Tensor:
        """Evaluate window layer j once on x (the one place evaluations happen)."""
        fwd = self._fwd
        p = fwd.evals.get(j, 0)
        fwd.evals[j] = p + 1
        if p == 0 and j in fwd.x0 and x is not fwd.x0[j]:
            raise RuntimeError(f"integrator {self.config.integrator!r} did not start with the natural pass g(x0)")
        kv = self.config.kv
        keep = stash or (not fwd.loop and kv != "none") or (kv == "first" and p == 0) or kv == "per_pass"
        kwargs, args = fwd.kwargs[j], fwd.args[j]
        self.routing.current[j], self.routing.stash = p, stash
        self.stats.layer_calls += 1
        self.stats.stash_calls += int(stash)
        fwd.calls += int(not stash)
        with self.kv.evaluation(fwd.caches[j], self.slots[j], p, keep, kwargs, x.shape[1]) as kw:
            y = self.window[j](x, *args, **kw)
        if not torch.is_tensor(y):
            raise TypeError(
                f"{type(self.window[j]).__name__} returned a {type(y).__name__}, not the hidden-state tensor; "
                f"looping supports decoder layers that return their output tensor (the transformers 5.x "
                f"convention). This family's layers return tuples and cannot be looped.")
        return y.to(x.device) if y.device != x.device else y

    def _run_unit(self, x0: torch.Tensor, js: list[int]) -> torch.Tensor:
        """Run one unit (the whole window in block mode, one layer in layer mode)."""
        fwd = self._fwd
        fwd.x0[js[0]] = x0
        if self.routing.valid is None:
            self.routing.valid = self._valid(x0.shape[1])
        record = None
        if self.trace is not None:
            s = self.resolved.start
            record = UnitTrace(self.stats.forwards - 1, tuple(s + j for j in js), x0.detach())
            self.trace.append(record)
        g = _Window(self, js, record)
        cache = fwd.caches[js[0]]
        if fwd.loop:
            res = self.integrator.fn(g, x0, self.config, self._valid(x0.shape[1]))
            out = res.out
            if res.steps is not None:
                self.stats.steps_last.append(res.steps)
            if self.config.kv == "last" and cache is not None:
                y = out
                for j in js:
                    y = self._call(j, y, stash=True)
        else:
            out = g(x0)
        self.routing.check_fired(js)
        for j in js:
            self.kv.finish(cache, self.slots[j])
        self.stats.window_passes_last = fwd.calls / len(self.window)
        if record is not None:
            record.out = out.detach()
        return out


def looped(model: nn.Module, cfg: LoopConfig | Mapping[str, Any] | str | None = None, *,
           trace: bool = False, **options) -> LoopHandle:
    """Loop a window of `model` (see LoopConfig). Returns a handle: use `with looped(...) as h:`
    or `h = looped(...).apply(); ...; h.remove()`. `cfg` may be a LoopConfig, a dict of its fields,
    or a recipe name; keyword options override fields. `trace=True` records the window's
    trajectory in `handle.trace` (see looping.trace)."""
    return LoopHandle(model, cfg, trace=trace, **options)
