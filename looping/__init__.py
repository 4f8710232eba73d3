"""looping: training-free looped inference for Hugging Face causal LMs.

    from looping import LoopConfig, looped
    with looped(model, LoopConfig(window="15:19", k=3, integrator="anchored")):
        out = model.generate(**inputs)

Imports torch and transformers only (the harness floor sits above it).
"""
from .config import RECIPES, LoopConfig, ResolvedLoop, WindowSpec, recipe
from .errors import LoopConfigError, did_you_mean
from .integrators import INTEGRATORS, get_integrator
from .runner import LoopHandle, looped

__all__ = ["LoopConfig", "LoopConfigError", "did_you_mean", "ResolvedLoop", "WindowSpec", "RECIPES", "recipe",
           "INTEGRATORS", "get_integrator", "looped", "LoopHandle"]

