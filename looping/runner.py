"""Runner: the looped schedule inside the model's own forward.

Owns `looped(model, cfg)` and `LoopHandle`. Inside it, the window's entries of the model's own
`layers` list are swapped for thin wrappers; everything else (embedding, position ids, masks for
full and sliding layers, rotary embeddings per layer type, final norm, head with its logit
scaling / soft-capping, `generate`, lm-eval) stays the model's own code. On exit the original
layers come back.

    positions s..e-2   `_Defer`: record the kwargs the position received (its own mask, rotary,
                       cache, ...) and pass h through
    position e-1       `_WindowRunner`: record its kwargs, then run `LoopHandle.run_window`

`LoopHandle.run_window` is the whole schedule of one forward through the window, in both modes:

    x = x0                                     # (B, T, C) state entering the window
    for unit in units:                         # block: [the whole window]; layer: [L_s], [L_s+1], ...
        x = integrator(g_unit, x, cfg)         # K passes; g_unit(x) evaluates the unit's layers once
    if cache and kv policy has a stash pass:   # kv='last' (from x); kv='first' in layer mode (from x0)
        g_window(x or x0) with its K/V kept
    return x                                   # suffix layers, norm, head as usual

and `LoopHandle.evaluate` is the one place a window layer runs: enter the kv policy (which K/V
the evaluation sees and whether it is kept), enter the routing policy (freeze / recompute), call
the layer.

Invariants: a handle applies to one model at a time and refuses any overlap with another applied
handle; removal restores the exact original layer objects (also after exceptions); one forward at
a time: a second thread entering a looped forward gets a RuntimeError (the per-forward state
lives on the handle), the plain model is unaffected after removal.
"""
from __future__ import annotations

import contextlib
import dataclasses
import threading
import weakref
from typing import Any, Mapping

import torch
from torch import nn

from .arch import attention_slot
from .config import LoopConfig
from .integrators import get_integrator
from .kv import find_cache, kv_policy, past_length
from .moe import routing_policy
from .trace import Trace, UnitTrace

#: decoder module -> the handles applied to it (overlap checks; removal in any order)
_APPLIED: "weakref.WeakKeyDictionary[nn.Module, list[LoopHandle]]" = weakref.WeakKeyDictionary()


@dataclasses.dataclass
class LoopStats:
    """Counters over the handle's lifetime (and the last forward)."""
    forwards: int = 0            # decoder forwards seen
    looped_forwards: int = 0     # forwards in which the window looped
    layer_calls: int = 0         # window-layer evaluations, stash passes included
    stash_calls: int = 0         # window-layer evaluations of kv stash passes
    window_passes_last: float = 0.0   # window passes (evaluations of g) in the last forward
    stash_passes_last: float = 0.0    # kv stash passes in the last forward
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
    x0: dict = dataclasses.field(default_factory=dict)        # unit's first position -> entry state
    calls: int = 0               # loop evaluations (stash passes excluded)
    stash_calls: int = 0
    natural: torch.Tensor | None = None   # a provided g(x0) for the first evaluation (block mode)


class StandIn(nn.Module):
    """A module put in place of a decoder layer in the model's `layers` list. Attribute reads it
    cannot answer go to the layer it replaces (decoders that read e.g. `layer.attention_type` /
    `layer.block_type` to pick a mask)."""

    def replaced(self) -> nn.Module:
        raise NotImplementedError   # abstract: each stand-in knows the layer it replaces

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("__") or name == "replaced":
                raise
            return getattr(self.replaced(), name)


class _Wrapper(StandIn):
    """Window position j's stand-in: records what the position receives."""

    def __init__(self, handle: "LoopHandle", j: int):
        super().__init__()
        self._handle = handle  # a plain attribute, not a submodule: the layers live in _WindowRunner
        self.j = j

    def replaced(self) -> nn.Module:
        return self._handle.window[self.j]


class _Defer(_Wrapper):
    """Window positions s..e-2: remember this position's kwargs, pass h through."""

    def forward(self, hidden_states, *args, **kwargs):
        self._handle._record(self.j, args, kwargs)
        return hidden_states


class _WindowRunner(_Wrapper):
    """Window position e-1: run the looped window (both modes)."""

    def __init__(self, handle: "LoopHandle", layers):
        super().__init__(handle, len(layers) - 1)
        self.inner = nn.ModuleList(layers)  # the original layers, registered once, here

    def forward(self, hidden_states, *args, **kwargs):
        self._handle._record(self.j, args, kwargs)
        return self._handle.run_window(hidden_states)


class _Unit:
    """The callable an integrator sees: g(x) evaluates the unit's layers once, in order.
    `layers[i](x)` evaluates only its i-th layer (used by `uniform`)."""

    def __init__(self, handle: "LoopHandle", js: list[int], record: UnitTrace | None = None,
                 natural: torch.Tensor | None = None):
        self.layers = [lambda x, j=j: handle.evaluate(j, x) for j in js]
        self.record, self.natural = record, natural

    def __call__(self, x):
        x_in = x
        if self.natural is not None:       # the first evaluation g(x0), provided (shared scoring)
            x, self.natural = self.natural, None
        else:
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
        if not isinstance(model, nn.Module):
            raise TypeError(f"looped() takes a torch model (a transformers causal LM) as its first "
                            f"argument, not {type(model).__name__}.")
        if cfg is None:
            cfg = LoopConfig.from_dict(options)
        elif isinstance(cfg, str):
            cfg = LoopConfig.from_dict({"recipe": cfg, **options})
        elif isinstance(cfg, Mapping):
            cfg = LoopConfig.from_dict({**cfg, **options})
        elif isinstance(cfg, LoopConfig):
            cfg = cfg.replace(**options) if options else cfg
        else:
            raise TypeError(f"looped(model, cfg): cfg must be a LoopConfig, a dict of its fields or "
                            f"a recipe name, not {type(cfg).__name__} ({cfg!r}).")
        self.model, self.config = model, cfg
        self.resolved = cfg.resolve(model)
        self.info = self.resolved.arch
        self.integrator = get_integrator(cfg.integrator)
        s, e = self.resolved.start, self.resolved.end
        self.window = [self.info.layers[i] for i in range(s, e)]
        taken = next((w for w in self.window if isinstance(w, _Wrapper)), None)
        if taken is not None:
            raise RuntimeError(
                f"cannot loop window {s}:{e}: window {taken._handle.window_name} of this model is "
                f"already looped by an applied handle and the two overlap. Remove that handle "
                f"first (or loop disjoint windows).")
        self.slots = [attention_slot(layer) for layer in self.window]
        W = len(self.window)
        self.units = [list(range(W))] if self.resolved.mode == "block" else [[j] for j in range(W)]
        self.kv = kv_policy(cfg.kv)(self.resolved.mode)
        self.routing = routing_policy(self.resolved.routing, self.window, self.info.router_class)
        self.stats = LoopStats()
        self._fwd = _Forward()
        self._natural: torch.Tensor | None = None
        self._decode_steps: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
        self._applied = False
        self._owner: int | None = None      # the thread inside a looped forward
        self._guard = threading.Lock()
        self._hooks = []
        self.trace: Trace | None = Trace() if trace else None

    @property
    def window_name(self) -> str:
        return f"{self.resolved.start}:{self.resolved.end}"

    # ---- install / restore -------------------------------------------------------------------
    def apply(self) -> "LoopHandle":
        if self._applied:
            raise RuntimeError(f"this LoopHandle (window {self.window_name}) is already applied")
        layers, s, e = self.info.layers, self.resolved.start, self.resolved.end
        for other in _APPLIED.get(self.info.decoder, []):
            if other.resolved.start < e and s < other.resolved.end:
                raise RuntimeError(
                    f"cannot loop window {self.window_name}: window {other.window_name} of this "
                    f"model is already looped by another handle and the two overlap. Remove that "
                    f"handle first (or loop disjoint windows).")
        for i in range(s, e):
            if layers[i] is not self.window[i - s]:
                raise RuntimeError(
                    f"cannot loop window {self.window_name}: layer {i} is no longer the layer this "
                    f"handle was made for (a {type(layers[i]).__name__} sits there: another "
                    f"handle's wrapper, or a replaced layer). Make the handle after the other one "
                    f"is removed.")
        try:
            for j in range(e - s - 1):
                layers[s + j] = _Defer(self, j)
            layers[e - 1] = _WindowRunner(self, self.window)
            dec = self.info.decoder
            self._hooks.append(dec.register_forward_pre_hook(self._on_forward, with_kwargs=True))
            self._hooks.append(dec.register_forward_hook(self._after_forward, always_call=True))
            self.routing.install()
            if self.config.kv == "per_pass":
                self.model.generate = self._generate_per_pass
        except BaseException:
            self._restore()
            raise
        _APPLIED.setdefault(self.info.decoder, []).append(self)
        self._applied = True
        return self

    def remove(self) -> None:
        if self._applied:
            self._restore()
            self._applied = False
            handles = _APPLIED.get(self.info.decoder, [])
            if self in handles:
                handles.remove(self)

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
        self._owner = None

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
                f"kv='per_pass' keeps private cache slots that beam search cannot reorder "
                f"(num_beams={beams}); use kv='first', 'chain' or 'last' with beam search.")
        return type(self.model).generate(self.model, *args, **kwargs)

    @contextlib.contextmanager
    def natural_output(self, natural: torch.Tensor):
        """For the next forward, the window's first evaluation g(x0) is `natural` (already
        computed, e.g. by a shared scoring pass) instead of being run. Block mode only: in layer
        mode the first evaluation of a later layer depends on the loop."""
        if self.resolved.mode != "block":
            raise ValueError("natural_output: only block mode has a whole-window natural pass")
        if self.routing.replays_natural:
            raise ValueError("natural_output: routing='freeze' needs the natural pass's own routing")
        self._natural = natural
        try:
            yield
        finally:
            self._natural = None

    # ---- one forward ---------------------------------------------------------------------------
    def _on_forward(self, module, args, kwargs):
        me = threading.get_ident()
        with self._guard:
            if self._owner is not None and self._owner != me:
                raise RuntimeError(
                    f"a looped forward (window {self.window_name}) is already running in another "
                    f"thread; a looped model keeps per-forward state on its handle, so one model "
                    f"cannot serve concurrent forwards. Use one model (and handle) per thread.")
            self._owner = me
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
        self._fwd = _Forward(loop=loop, natural=self._natural,
                             mask2d=mask if torch.is_tensor(mask) and mask.dim() == 2 else None)
        self.kv.new_forward()
        self.stats.forwards += 1
        self.stats.looped_forwards += int(loop)
        self.stats.steps_last = []

    def _after_forward(self, module, args, output):
        with self._guard:                   # also runs when a refused thread's pre-hook raised
            if self._owner == threading.get_ident():
                self._owner = None

    def _record(self, j: int, args: tuple, kwargs: dict) -> None:
        """What window position j received in this forward (its mask, rotary, cache, ...)."""
        fwd = self._fwd
        fwd.kwargs[j], fwd.args[j], fwd.caches[j] = kwargs, args, find_cache(kwargs)

    def _valid(self, q: int):
        m = self._fwd.mask2d
        return None if m is None else m[:, -q:].bool()

    def run_window(self, x0: torch.Tensor) -> torch.Tensor:
        """The schedule of one forward through the window (see the module docstring)."""
        fwd, W = self._fwd, len(self.window)
        valid = self._valid(x0.shape[1])
        self.routing.new_forward(valid)
        if not fwd.loop:                         # a decode step that does not loop: the plain window
            out = self._window_pass(x0, stash=False)
        else:
            x = x0
            for unit in self.units:
                x = self._integrate(unit, x, valid)
            out = x
            source = {"entry": x0, "exit": out}.get(self.kv.stash)
            if source is not None and any(fwd.caches.get(j) is not None for j in range(W)):
                # the kv stash pass: its K/V are kept ('entry': the plain model's window pass)
                self._window_pass(source, stash=True, plain=self.kv.stash == "entry")
        self.routing.check_fired(range(W))
        for j in range(W):
            self.kv.finish(fwd.caches.get(j), self.slots[j])
        self.stats.window_passes_last = fwd.calls / W
        self.stats.stash_passes_last = fwd.stash_calls / W
        return out

    def _integrate(self, unit: list[int], x0: torch.Tensor, valid) -> torch.Tensor:
        """One unit's K-step chain: the integrator over g = the unit's layers."""
        record = None
        if self.trace is not None:
            s = self.resolved.start
            record = UnitTrace(self.stats.forwards - 1, tuple(s + j for j in unit), x0.detach())
            self.trace.append(record)
        fwd = self._fwd
        fwd.x0[unit[0]] = x0
        natural = fwd.natural if len(unit) == len(self.window) else None
        if natural is not None:                 # evaluation 0 of every layer is provided
            for j in unit:
                fwd.evals[j] = max(fwd.evals.get(j, 0), 1)
        res = self.integrator.fn(_Unit(self, unit, record, natural), x0, self.config, valid)
        if res.steps is not None:
            self.stats.steps_last.append(res.steps)
        if record is not None:
            record.out = res.out.detach()
        return res.out

    def _window_pass(self, x: torch.Tensor, *, stash: bool, plain: bool = False) -> torch.Tensor:
        for j in range(len(self.window)):
            x = self.evaluate(j, x, stash=stash, plain=plain)
        return x

    def evaluate(self, j: int, x: torch.Tensor, *, stash: bool = False,
                 plain: bool = False) -> torch.Tensor:
        """Evaluate window layer j once on x: the one place a window layer runs."""
        fwd = self._fwd
        p = fwd.evals.get(j, 0)
        fwd.evals[j] = p + 1
        if p == 0 and j in fwd.x0 and x is not fwd.x0[j]:
            raise RuntimeError(f"integrator {self.config.integrator!r} did not start with the "
                               f"natural pass g(x0)")
        keep = self.kv.keeps(p, stash) if fwd.loop else self.kv.keeps_unlooped
        self.stats.layer_calls += 1
        self.stats.stash_calls += int(stash)
        fwd.stash_calls += int(stash)
        fwd.calls += int(not stash)
        with (self.kv.evaluation(fwd.caches[j], self.slots[j], p, keep, fwd.kwargs[j], x.shape[1])
              as kwargs, self.routing.evaluation(j, p, stash, plain)):
            y = self.window[j](x, *fwd.args[j], **kwargs)
        if not torch.is_tensor(y):
            raise TypeError(
                f"{type(self.window[j]).__name__} returned a {type(y).__name__}, not the hidden-state "
                f"tensor; looping supports decoder layers that return their output tensor (the "
                f"transformers 5.x convention). This family's layers return tuples and cannot be "
                f"looped.")
        return y.to(x.device) if y.device != x.device else y


def looped(model: nn.Module, cfg: LoopConfig | Mapping[str, Any] | str | None = None, *,
           trace: bool = False, **options) -> LoopHandle:
    """Loop a window of `model` (see LoopConfig). Returns a handle: use `with looped(...) as h:`
    or `h = looped(...).apply(); ...; h.remove()`. `cfg` may be a LoopConfig, a dict of its fields,
    or a recipe name; keyword options override fields. `trace=True` records the window's
    trajectory in `handle.trace` (see looping.trace)."""
    return LoopHandle(model, cfg, trace=trace, **options)
