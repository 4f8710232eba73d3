"""KV policies: what a looped window writes into the model's cache during generation.

Owns the two-phase stash protocol (docs/kv-cache.md) and one small policy object per `kv` choice.
Every cache layer class of transformers 5.x *appends* on each `update`, so calling a window layer
K times would write K copies. Here:

1. Every evaluation of a window layer starts from the slot's pre-forward state (the cached past),
   attends to past + its own current tokens, and the slot is put back afterwards: loop
   iterations read the cache but never append.
2. Exactly one evaluation per window layer per forward is *kept* (the policy decides which):
   - `first`    the plain model's window K/V: a window pass seeded from the pre-loop state x0.
                Block mode: that pass is the natural pass (evaluation 0 of the window), free.
                Layer mode: layer s+1's first evaluation already sees layer s's looped output,
                so one extra whole-window pass from x0 runs (as the authors' generic code does).
   - `last`     one extra whole-window pass seeded from the post-loop state (both modes).
   - `chain`    each layer keeps its own first evaluation (free). Block mode: equal to `first`.
                Layer mode: the first evaluation of layer j on the already-looped chain; what
                the authors' frozen-routing MoE recipe and their vLLM port (`kv="natural"`) keep.
   - `none`     nothing is kept; window layers then attend to the current tokens only (their
                masks are cut to the last q columns).
   - `per_pass` every evaluation p > 0 keeps its K/V in a private slot (p, layer) stored on the
                cache object, so memory grows with the passes; evaluation 0 uses the real slot.
   A forward that does not loop (decode=bypass) keeps its single evaluation (except `none`).

Snapshots are shallow copies of the cache layer's attributes: Dynamic layers never mutate their
tensors in place (`update` rebinds `keys`/`values`), so restoring the attribute dict restores the
slot exactly, at no copy cost. `LinearAttentionLayer` slots (the recurrent conv / SSM states of
mamba and of hybrids' linear-attention layers) update their tensors in place, so their snapshots
are copies. A `DummyLayer` slot (a block without attention, e.g. nemotron_h's MLP blocks) holds
nothing and is left alone. Any other cache layer class (static layers write in place; quantized
layers subclass DynamicLayer but keep extra state; mixed K/V + recurrent layers), any cache class
other than DynamicCache (subclasses such as MiniMaxCache keep state outside `layers`) and
offloaded caches are refused with a TypeError.

The cache is found by type, not by name (`find_cache`): families pass it to their layers as
`past_key_values`, `layer_past` (gpt_neox) or `cache_params` (mamba).
"""
from __future__ import annotations

import contextlib
import copy

import torch
from transformers.cache_utils import (Cache, DummyLayer, DynamicCache, DynamicIndexedLayer,
                                      DynamicLayer, DynamicSlidingWindowLayer,
                                      LinearAttentionCacheLayerMixin, LinearAttentionLayer)

from .errors import LoopConfigError, did_you_mean

PRIVATE_ATTR = "_loopsweep_private_slots"


# Exactly these classes. The dynamic ones only rebind attributes on update (`torch.cat`), so a
# shallow snapshot of the attribute dict restores a slot; DynamicIndexedLayer (DSA, e.g.
# deepseek_v32) adds indexer keys grown the same way. LinearAttentionLayer (recurrent conv / SSM
# states) updates in place: its snapshots are copies. DummyLayer (a block without attention)
# holds nothing. Subclasses are not trusted (the quantized layers subclass DynamicLayer but keep
# quantized copies and a frozen scale beside `keys`/`values`).
SUPPORTED_LAYERS = (DynamicLayer, DynamicSlidingWindowLayer, DynamicIndexedLayer, LinearAttentionLayer,
                    DummyLayer)


def find_cache(kwargs: dict):
    """The `Cache` among a forward's keyword arguments, whatever the family names it; None if
    there is none. Two different caches in one call are refused (looping could not tell which
    one holds the window's slots)."""
    found = None
    for name, value in kwargs.items():
        if isinstance(value, Cache):
            if found is not None and value is not found[1]:
                raise TypeError(f"two caches passed to one call ({found[0]!r} and {name!r}); the loop "
                                f"stash handles a single cache per forward.")
            found = (name, value)
    return None if found is None else found[1]


def past_length(cache) -> int:
    """Tokens already in `cache` (0 without one). A cache of recurrent layers only (mamba) has no
    length to ask: it counts 1 once any layer holds a state (all the runner needs: past > 0)."""
    if cache is None:
        return 0
    layers = getattr(cache, "layers", [])
    if layers and all(type(layer) is LinearAttentionLayer for layer in layers):
        return int(any(any(layer.has_previous_state.values()) for layer in layers))
    return cache.get_seq_length()


def _check_cache(cache) -> None:
    if type(cache) is not DynamicCache:
        raise TypeError(
            f"the cache is a {type(cache).__name__}; the loop stash supports only a plain DynamicCache (the "
            f"default of `generate` and of `model(..., use_cache=True)` for attention models). Other cache "
            f"classes write in place or keep state the stash cannot restore (recurrent states, quantized or "
            f"static buffers). Pass a DynamicCache (or no cache).")
    if getattr(cache, "offloading", False):
        raise TypeError(
            "the loop stash does not support an offloaded DynamicCache (offloading=True): prefetching moves "
            "slots between devices behind the stash's back. Pass a DynamicCache without offloading.")


def _check_layer(layer, slot: int):
    if getattr(layer, "record_past", False):
        raise TypeError(f"cache slot {slot} records past states (assisted decoding); not supported while looping.")
    if type(layer) in SUPPORTED_LAYERS:
        return
    if isinstance(layer, LinearAttentionCacheLayerMixin):
        raise TypeError(
            f"cache slot {slot} is a {type(layer).__name__}, which keeps attention K/V and a recurrent state "
            f"in one slot; the loop stash handles pure recurrent slots (LinearAttentionLayer) and pure K/V "
            f"slots, not this mix. Loop a window without such layers, or run without a cache.")
    raise TypeError(
        f"cache slot {slot} is a {type(layer).__name__}; the loop stash supports only the layers of a plain "
        f"DynamicCache ({', '.join(c.__name__ for c in SUPPORTED_LAYERS)}), the default of `generate` and "
        f"of `model(..., use_cache=True)`. Static caches write keys/values in place and quantized / "
        f"offloaded caches keep state the stash cannot restore. Pass a DynamicCache (or no cache) instead, "
        f"and do not use cache_implementation='static' / 'quantized' / 'offloaded' while looping.")


def _copied(state: dict) -> dict:
    """A copy of a recurrent layer's attribute dict whose tensors (and the dicts holding them) are
    new objects: those layers update their conv / recurrent states in place (`copy_`)."""
    def copy_value(v):
        if torch.is_tensor(v):
            return v.clone()
        if isinstance(v, dict):
            return {k: copy_value(x) for k, x in v.items()}
        return v
    return {k: copy_value(v) for k, v in state.items()}


def snapshot(layer) -> dict:
    if type(layer) is LinearAttentionLayer:
        return _copied(layer.__dict__)
    return dict(layer.__dict__)


def restore(layer, state: dict) -> None:
    if layer.__dict__ is not state:
        fresh = _copied(state) if type(layer) is LinearAttentionLayer else state
        layer.__dict__.clear()
        layer.__dict__.update(fresh)


def slice_mask(mask, q: int):
    """Cut an attention mask to the last q key positions (the current tokens)."""
    if mask is None:
        return None
    if not hasattr(mask, "dim"):
        raise TypeError(f"kv='none' needs tensor attention masks (sdpa/eager), got {type(mask).__name__}.")
    return mask[..., -q:]


class KVPolicy:
    """One `kv` choice: which evaluation of each window layer is kept, and whether an extra
    whole-window "stash" pass runs after the loop (seeded from `stash` = 'entry' (x0) or 'exit'
    (the window output)). One instance per handle; it holds the current forward's snapshots."""

    name = ""
    stash: str | None = None          # 'entry' | 'exit' | None
    summary = ""                      # one line for docs and error messages

    def __init__(self, mode: str):
        self.mode = mode              # the resolved mode ('block' | 'layer')
        self.pre: dict[int, dict] = {}    # slot -> state before this forward touched it
        self.kept: dict[int, dict] = {}   # slot -> state after the kept evaluation

    # ---- validation ------------------------------------------------------------------------
    @classmethod
    def check_config(cls, cfg) -> None:
        """Refuse model-independent combinations (a LoopConfig being built)."""

    @classmethod
    def check_window(cls, start: int, end: int, arch) -> None:
        """Refuse windows this policy cannot handle on this model."""

    # ---- the protocol ----------------------------------------------------------------------
    def keeps(self, p: int, stash: bool) -> bool:
        """In a looping forward: is evaluation p of a layer (or its stash-pass evaluation) the one
        whose K/V is kept?"""
        return stash

    #: a forward that does not loop (decode=bypass / first_n) keeps its single evaluation
    keeps_unlooped = True

    def new_forward(self) -> None:
        self.pre.clear()
        self.kept.clear()

    def _slot(self, cache, slot: int):
        _check_cache(cache)
        if getattr(cache, "layer_class_to_replicate", None) is not None:
            while len(cache.layers) <= slot:
                cache.layers.append(cache.layer_class_to_replicate())
        layer = cache.layers[slot]
        _check_layer(layer, slot)
        return layer

    @contextlib.contextmanager
    def evaluation(self, cache, slot: int, p: int, keep: bool, kwargs: dict, q: int):
        """Run one evaluation of the layer owning `slot`; yields the kwargs to call it with."""
        if cache is None:
            yield kwargs
            return
        layer = self._slot(cache, slot)
        if type(layer) is DummyLayer:      # nothing cached for this layer: nothing to stash
            yield kwargs
            return
        if slot not in self.pre:
            self.pre[slot] = snapshot(layer)
        pre = self.pre[slot]
        restore(layer, pre)
        try:
            yield self._kwargs(kwargs, q)
        finally:
            if keep:
                self.kept[slot] = snapshot(layer)
            restore(layer, pre)

    def _kwargs(self, kwargs: dict, q: int) -> dict:
        return kwargs

    def finish(self, cache, slot: int) -> None:
        """End of the forward for `slot`: leave the kept evaluation's K/V (or the past alone)."""
        if cache is not None and slot in self.kept:
            restore(cache.layers[slot], self.kept[slot])


class First(KVPolicy):
    name = "first"
    summary = "the plain model's window K/V (a window pass from the pre-loop state)"

    def __init__(self, mode: str):
        super().__init__(mode)
        # block mode: the natural pass is that pass; layer mode: an extra one from x0
        self.stash = None if mode == "block" else "entry"

    def keeps(self, p: int, stash: bool) -> bool:
        return stash or (self.stash is None and p == 0)


class Chain(KVPolicy):
    name = "chain"
    summary = "each layer's first evaluation (layer mode: on the looped chain)"

    def keeps(self, p: int, stash: bool) -> bool:
        return p == 0


class Last(KVPolicy):
    name = "last"
    stash = "exit"
    summary = "one extra window pass from the post-loop state"


class NoKV(KVPolicy):
    name = "none"
    summary = "nothing kept (window layers attend to the current tokens only; an ablation)"

    @classmethod
    def check_window(cls, start: int, end: int, arch) -> None:
        bad = sorted(set(arch.mask_layers) & set(range(start, end)))
        if bad:
            raise LoopConfigError(
                f"kv='none' leaves the window's cache slots empty, but window {start}:{end} holds "
                f"layer {bad[0]}, whose cache slot sizes the attention masks and positions; choose "
                f"a window that starts after layer {max(bad)} or another kv policy "
                f"({', '.join(k for k in KV_POLICIES if k != 'none')}).")

    keeps_unlooped = False

    def keeps(self, p: int, stash: bool) -> bool:
        return False

    def _kwargs(self, kwargs: dict, q: int) -> dict:
        return {**kwargs, "attention_mask": slice_mask(kwargs.get("attention_mask"), q)}


class PerPass(KVPolicy):
    name = "per_pass"
    summary = "a private slot per evaluation (memory grows with the passes; exact vs recompute)"

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.halt_tau is not None:
            raise LoopConfigError(
                "kv='per_pass' cannot be combined with halt_tau: rows that halt early would leave "
                "their per-pass cache slots unwritten.")
        if cfg.decode != "full":
            raise LoopConfigError(
                f"kv='per_pass' needs decode='full' (got decode={cfg.decode!r}): its private "
                f"per-pass cache slots must receive every token.")

    def keeps(self, p: int, stash: bool) -> bool:
        return p == 0

    def _private(self, cache, slot: int, p: int):
        slots = cache.__dict__.setdefault(PRIVATE_ATTR, {})
        if (slot, p) not in slots:
            layer = cache.layers[slot]
            if type(layer) is LinearAttentionLayer:   # its reset() zeroes shared tensors in place
                fresh = LinearAttentionLayer(number_of_states=layer.number_of_states)
            else:                                     # dynamic layers' reset() rebinds: K/V -> None
                fresh = copy.copy(layer)
                fresh.reset()
            slots[(slot, p)] = fresh
        return slots[(slot, p)]

    @contextlib.contextmanager
    def evaluation(self, cache, slot: int, p: int, keep: bool, kwargs: dict, q: int):
        if cache is None or p == 0:
            with super().evaluation(cache, slot, p, keep, kwargs, q) as kw:
                yield kw
            return
        layer = self._slot(cache, slot)
        if type(layer) is DummyLayer:
            yield kwargs
            return
        cache.layers[slot] = self._private(cache, slot, p)
        try:
            yield kwargs
        finally:
            cache.layers[slot] = layer


KV_POLICIES: dict[str, type[KVPolicy]] = {c.name: c for c in (First, Last, NoKV, PerPass, Chain)}


def kv_policy(name: str) -> type[KVPolicy]:
    """The policy class called `name`; a LoopConfigError names the valid ones."""
    if name not in KV_POLICIES:
        raise LoopConfigError(f"unknown kv {name!r}; valid choices: {', '.join(KV_POLICIES)}."
                              + did_you_mean(name, KV_POLICIES))
    return KV_POLICIES[name]
