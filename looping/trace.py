"""Trace: optional recording of the window's trajectory, for analysis (logit lens, drift).

Off by default and free when off (`looped(model, cfg, trace=True)` turns it on). When on, every
unit run (the whole window in block mode, each layer in layer mode) appends a `UnitTrace` holding
the entry state x0, the input and output of every evaluation of g (for euler / naive the inputs are
the iterates x_1..x_{K-1}; for RK methods they include the stage points) and the unit's output.
Recording never changes outputs: tensors are detached references, never modified.
`uniform` calls the layers one by one rather than g, so only x0 and the output are recorded for it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class UnitTrace:
    forward: int                   # index of the decoder forward (handle.stats.forwards - 1)
    layers: tuple[int, ...]        # model layer indices of this unit
    x0: torch.Tensor               # (B, T, C) entry state
    inputs: list[torch.Tensor] = field(default_factory=list)   # input of each evaluation of g
    outputs: list[torch.Tensor] = field(default_factory=list)  # g(input) of each evaluation
    out: torch.Tensor | None = None                             # the unit's output

    def states(self) -> list[torch.Tensor]:
        """The trajectory: x0, the later evaluation inputs (the iterates), and the output."""
        return [self.x0] + self.inputs[1:] + ([self.out] if self.out is not None else [])


class Trace(list):
    """A list of UnitTrace, in execution order."""

    def for_forward(self, forward: int) -> list[UnitTrace]:
        return [u for u in self if u.forward == forward]
