"""KV stash: what a looped window writes into the model's cache.

Owns the two-phase protocol of DESIGN.md ("KV cache during generation"). Every cache layer class
of transformers 5.x *appends* on each `update`, so calling a window layer K times would write K
copies. Here:

1. Every evaluation of a window layer starts from the slot's pre-forward state (the cached past),
   attends to past + its own current tokens, and the slot is put back afterwards: loop
   iterations read the cache but never append.
2. Exactly one evaluation per layer per forward is *kept* ("stash"):
   - `first`    the natural pass (evaluation 0, seeded from the pre-loop state x0): no extra cost,
                the window's cache equals the plain model's.
   - `last`     one extra evaluation seeded from the post-loop state (the runner runs it).
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
from transformers.cache_utils import (Cache, DummyLayer, DynamicCache, DynamicIndexedLayer, DynamicLayer,
                                     DynamicSlidingWindowLayer, LinearAttentionCacheLayerMixin,
                                     LinearAttentionLayer)

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


class KVStash:
    """Per-forward bookkeeping of the window slots under one policy."""

    def __init__(self, policy: str):
        self.policy = policy
        self.pre: dict[int, dict] = {}    # slot -> state before this forward touched it
        self.kept: dict[int, dict] = {}   # slot -> state after the kept evaluation

    def reset(self):
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

    def _private(self, cache, slot: int, p: int):
        slots = cache.__dict__.setdefault(PRIVATE_ATTR, {})
        if (slot, p) not in slots:
            layer = cache.layers[slot]
            if type(layer) is LinearAttentionLayer:   # its reset() zeroes shared tensors in place
                fresh = LinearAttentionLayer(number_of_states=layer.number_of_states)
            else:                                     # dynamic layers' reset() rebinds: K/V, indexer -> None
                fresh = copy.copy(layer)
                fresh.reset()
            slots[(slot, p)] = fresh
        return slots[(slot, p)]

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
        if self.policy == "per_pass" and p > 0:
            cache.layers[slot] = self._private(cache, slot, p)
            try:
                yield kwargs
            finally:
                cache.layers[slot] = layer
            return
        if slot not in self.pre:
            self.pre[slot] = snapshot(layer)
        pre = self.pre[slot]
        restore(layer, pre)
        if self.policy == "none":
            kwargs = {**kwargs, "attention_mask": slice_mask(kwargs.get("attention_mask"), q)}
        try:
            yield kwargs
        finally:
            if keep:
                self.kept[slot] = snapshot(layer)
            restore(layer, pre)

    def finish(self, cache, slot: int) -> None:
        """End of the forward for `slot`: leave the kept evaluation's K/V (or the past alone)."""
        if cache is not None and slot in self.kept:
            restore(cache.layers[slot], self.kept[slot])
