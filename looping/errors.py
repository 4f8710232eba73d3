"""Errors and name suggestions: the bottom of `looping` (imports nothing from the package).

Every refusal of a loop setting raises `LoopConfigError` with a message that names the bad value
and the valid choices; `did_you_mean` adds the closest valid name.
"""
from __future__ import annotations

import difflib
from typing import Any


class LoopConfigError(ValueError):
    """A loop setting is invalid; the message names the value and the valid choices."""


def did_you_mean(value: Any, choices) -> str:
    """' Did you mean 'x'?' for the closest of `choices`, or '' when none is close."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def check_choice(name: str, value: Any, choices) -> Any:
    """`value` if it is one of `choices`, else a LoopConfigError naming both."""
    if value not in choices:
        raise LoopConfigError(
            f"unknown {name} {value!r}; valid choices: {', '.join(map(str, choices))}."
            + did_you_mean(value, choices))
    return value
