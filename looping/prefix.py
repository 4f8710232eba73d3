"""Prefix: stop a forward where a layer starts, or start one there from a given hidden state.

Owns two context managers over the model's own `layers` list, for computing the layers below a
window once and reusing them (shared scoring of a grid, see harness.scoring):

    with capture_inputs(model, [s, e]) as seen:     # the forward stops before layer max(s, e)
        model(ids, use_cache=False)
    seen[s]                                         # (B, T, C) the state entering layer s
    with start_at(model, s, seen[s]):               # layers [0, s) are skipped: layer s gets it
        model(ids, use_cache=False)                 # embedding, masks, rotary: the model's own

The embedding, masks and rotary embeddings still run (cheap); positions below the start are
stand-ins that pass the state through (the last one hands over the given state). Both refuse
layers already replaced by a looped window (`looping.runner.StandIn`), and restore the original
layers on exit, also after errors. Neither writes a cache: use them with `use_cache=False`.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from torch import nn

from .arch import describe
from .runner import StandIn


class _StopForward(Exception):
    """Raised inside a capture to end the forward early (caught by `capture_inputs`)."""


class _Skip(StandIn):
    """A layer below the start: passes the state through; the last one hands over `state`."""

    def __init__(self, layer: nn.Module, state: torch.Tensor | None):
        super().__init__()
        self.__dict__["_layer"] = layer       # not a submodule (the original stays where it was)
        self.__dict__["_state"] = state

    def replaced(self) -> nn.Module:
        return self.__dict__["_layer"]

    def forward(self, hidden_states, *args, **kwargs):
        state = self.__dict__["_state"]
        if state is None:
            return hidden_states
        if state.shape[:2] != hidden_states.shape[:2]:
            raise ValueError(f"start_at: the given state has shape {tuple(state.shape)}, but this "
                             f"forward's hidden states are {tuple(hidden_states.shape)}")
        return state


def _layers(model: nn.Module, upto: int) -> nn.ModuleList:
    layers = describe(model).layers
    taken = [i for i in range(min(upto, len(layers))) if isinstance(layers[i], StandIn)]
    if taken:
        raise RuntimeError(f"layer {taken[0]} is already replaced (a looped window or another "
                           f"prefix stand-in); the prefix [0, {upto}) must be the model's own "
                           f"layers")
    return layers


@contextlib.contextmanager
def start_at(model: nn.Module, layer: int, state: torch.Tensor) -> Iterator[None]:
    """Forwards inside skip layers [0, layer) and feed `state` (B, T, C) into `layer`.
    layer = 0 changes nothing (the state entering layer 0 is the embedding output)."""
    layers = _layers(model, layer)
    originals = [layers[i] for i in range(layer)]
    try:
        for i in range(layer):
            layers[i] = _Skip(originals[i], state if i == layer - 1 else None)
        yield
    finally:
        for i, original in enumerate(originals):
            layers[i] = original


@contextlib.contextmanager
def capture_inputs(model: nn.Module, at: Iterable[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Record the hidden state entering each layer in `at` (indices < the layer count); the
    forward stops right before the last of them runs, so nothing above it is computed."""
    at = sorted(set(at))
    layers = describe(model).layers
    if not at or at[0] < 0 or at[-1] >= len(layers):
        raise ValueError(f"capture_inputs: layers {at} must lie in [0, {len(layers)})")
    seen: dict[int, torch.Tensor] = {}

    def hook(i):
        def record(module, args, kwargs):
            seen[i] = args[0] if args else kwargs["hidden_states"]
            if i == at[-1]:
                raise _StopForward
        return record
    handles = [layers[i].register_forward_pre_hook(hook(i), with_kwargs=True) for i in at]
    try:
        try:
            yield seen
        except _StopForward:
            pass
    finally:
        for h in handles:
            h.remove()
