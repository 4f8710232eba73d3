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
slot exactly, at no copy cost. Any other cache layer class (static layers write in place; quantized
layers subclass DynamicLayer but keep extra state) and offloaded caches are refused with a TypeError.
"""
from __future__ import annotations

import contextlib
import copy

from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

PRIVATE_ATTR = "_loopsweep_private_slots"


# Exactly these classes: their `update` only rebinds attributes, so a shallow snapshot of the
# attribute dict restores a slot. Subclasses are not trusted (the quantized layers subclass
# DynamicLayer but keep quantized copies and a frozen scale beside `keys`/`values`).
SUPPORTED_LAYERS = (DynamicLayer, DynamicSlidingWindowLayer)


def _check_cache(cache) -> None:
    if getattr(cache, "offloading", False):
        raise TypeError(
            "the loop stash does not support an offloaded DynamicCache (offloading=True): prefetching moves "
            "slots between devices behind the stash's back. Pass a DynamicCache without offloading.")


def _check_layer(layer, slot: int):
    if type(layer) not in SUPPORTED_LAYERS:
        raise TypeError(
            f"cache slot {slot} is a {type(layer).__name__}; the loop stash supports only the layers of a plain "
            f"DynamicCache (DynamicLayer, DynamicSlidingWindowLayer), the default of `generate` and of "
            f"`model(..., use_cache=True)`. Static caches write keys/values in place and quantized / offloaded "
            f"caches keep state the stash cannot restore. Pass a DynamicCache (or no cache) instead, and do not "
            f"use cache_implementation='static' / 'quantized' / 'offloaded' while looping.")
    if getattr(layer, "record_past", False):
        raise TypeError(f"cache slot {slot} records past states (assisted decoding); not supported while looping.")


def snapshot(layer) -> dict:
    return dict(layer.__dict__)


def restore(layer, state: dict) -> None:
    if layer.__dict__ is not state:
        layer.__dict__.clear()
        layer.__dict__.update(state)


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
        if getattr(cache, "layer_class_to_replicate", None) is not None:
            while len(cache.layers) <= slot:
                cache.layers.append(cache.layer_class_to_replicate())
        _check_cache(cache)
        layer = cache.layers[slot]
        _check_layer(layer, slot)
        return layer

    def _private(self, cache, slot: int, p: int):
        slots = cache.__dict__.setdefault(PRIVATE_ATTR, {})
        if (slot, p) not in slots:
            fresh = copy.copy(cache.layers[slot])
            fresh.__dict__.update(keys=None, values=None, is_initialized=False)
            if hasattr(fresh, "cumulative_length"):
                fresh.cumulative_length = 0
            slots[(slot, p)] = fresh
        return slots[(slot, p)]

    @contextlib.contextmanager
    def evaluation(self, cache, slot: int, p: int, keep: bool, kwargs: dict, q: int):
        """Run one evaluation of the layer owning `slot`; yields the kwargs to call it with."""
        if cache is None:
            yield kwargs
            return
        layer = self._slot(cache, slot)
        if self.policy == "per_pass" and p > 0:
            cache.layers[slot] = self._private(cache, slot, p)
            try:
                yield kwargs
            finally:
                cache.layers[slot] = layer
            return
        pre = self.pre.setdefault(slot, snapshot(layer))
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
