"""LoopConfig: the frozen, validated description of one looped inference setting.

Owns: field names (shared with lm-eval `model_args` and Hydra `loop.*`), parsing from strings,
validation against a model, the window arithmetic (explicit `s:e` or depth fraction), and the
named recipes of DESIGN.md. Nothing here touches tensors.

Window notation is half-open: `"15:19"` loops layers 15, 16, 17, 18 (the paper writes "15-18").
A depth-fraction window `"c0.46w4"` has centre `c = (s + (W-1)/2) / L`, so
`s = round_half_up(c*L - (W-1)/2)`, clamped into `[0, L-W]`.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

from .errors import LoopConfigError, check_choice, did_you_mean

MODES = ("auto", "block", "layer")
KV_POLICIES = ("first", "last", "none", "per_pass")
DECODE_MODES = ("full", "bypass", "first_n")
ROUTINGS = ("auto", "freeze", "recompute")


def round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5 + 1e-9))


def window_from_centre(centre: float, width: int, n_layers: int) -> tuple[int, int]:
    """Half-open window of `width` layers whose mean layer index over `n_layers` is ~`centre`."""
    s = round_half_up(centre * n_layers - (width - 1) / 2)
    s = min(max(s, 0), n_layers - width)
    return s, s + width


def window_centre(start: int, end: int, n_layers: int) -> float:
    """Depth fraction of a half-open window: mean layer index divided by the layer count."""
    return (start + (end - start - 1) / 2) / n_layers


_SPAN = re.compile(r"^\s*(-?\d+)\s*:\s*(-?\d+)\s*$")
_FRACTION = re.compile(r"^\s*c\s*([-+0-9.eE]+)\s*w\s*(-?\d+)\s*$")


@dataclass(frozen=True)
class WindowSpec:
    """Either explicit layers (`start`, `end`) or a depth fraction (`centre`, `width`)."""
    start: int | None = None
    end: int | None = None
    centre: float | None = None
    width: int | None = None

    @classmethod
    def parse(cls, value: Any) -> "WindowSpec":
        if isinstance(value, WindowSpec):
            return value
        if isinstance(value, (tuple, list)) and len(value) == 2:
            return cls._span(value[0], value[1], value)
        if isinstance(value, str):
            if m := _SPAN.match(value):
                return cls._span(int(m.group(1)), int(m.group(2)), value)
            if m := _FRACTION.match(value):
                try:
                    centre = float(m.group(1))
                except ValueError:
                    centre = math.nan
                width = int(m.group(2))
                if not 0.0 < centre < 1.0:
                    raise LoopConfigError(
                        f"window {value!r}: depth-fraction centre {m.group(1)} must lie in (0, 1).")
                if width < 1:
                    raise LoopConfigError(f"window {value!r}: width {width} must be >= 1.")
                return cls(centre=centre, width=width)
        raise LoopConfigError(
            f"malformed window {value!r}; write explicit layers as 'start:end' (half-open, e.g. "
            f"'15:19' loops layers 15-18) or a depth fraction as 'c<centre>w<width>' (e.g. 'c0.5w4').")

    @classmethod
    def _span(cls, s, e, raw) -> "WindowSpec":
        if isinstance(s, bool) or isinstance(e, bool) or int(s) != s or int(e) != e:
            raise LoopConfigError(f"window {raw!r}: layer indices must be integers.")
        s, e = int(s), int(e)
        if e <= s:
            raise LoopConfigError(
                f"window {raw!r} is empty: end {e} must be greater than start {s} (half-open 'start:end').")
        if s < 0:
            raise LoopConfigError(f"window {raw!r}: start {s} must be >= 0.")
        return cls(start=s, end=e)

    def layers(self, n_layers: int) -> tuple[int, int]:
        if self.start is not None:
            if self.end > n_layers:
                raise LoopConfigError(
                    f"window {self} lies outside the model's layers: valid windows are within "
                    f"[0, {n_layers}) (half-open end <= {n_layers}).")
            return self.start, self.end
        if self.width > n_layers:
            raise LoopConfigError(
                f"window {self}: width {self.width} exceeds the model's {n_layers} layers.")
        return window_from_centre(self.centre, self.width, n_layers)

    def __str__(self) -> str:
        if self.start is not None:
            return f"{self.start}:{self.end}"
        return f"c{self.centre:g}w{self.width}"


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise LoopConfigError(f"{name}={value!r} must be an integer.")
    if isinstance(value, str):
        value = value.strip()
        if not re.fullmatch(r"-?\d+", value):
            raise LoopConfigError(f"{name}={value!r} must be an integer.")
        return int(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise LoopConfigError(f"{name}={value!r} must be an integer.")
        return int(value)
    if isinstance(value, int):
        return value
    raise LoopConfigError(f"{name}={value!r} must be an integer.")


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise LoopConfigError(f"{name}={value!r} must be a number.")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise LoopConfigError(f"{name}={value!r} must be a number.") from None
    if not math.isfinite(out):
        raise LoopConfigError(f"{name}={value!r} must be finite.")
    return out


def _as_floats(name: str, value: Any) -> tuple[float, ...] | None:
    if value is None or value == "" or value == "none":
        return None
    if isinstance(value, str):
        value = [v for v in re.split(r"[\s;/|]+", value.strip("[]() ")) if v]
    return tuple(_as_float(name, v) for v in value)


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise LoopConfigError(f"{name}={value!r} must be true or false.")


@dataclass(frozen=True)
class LoopConfig:
    """One looped-inference setting. Field names equal the lm-eval `model_args` keys.

    window      'start:end' (half-open) or 'c<centre>w<width>' (depth fraction).
    k           sub-steps / iterations K >= 1 (K = 1 with naive/euler is the plain model).
    integrator  strategy name (see `looping.integrators.INTEGRATORS`).
    mode        'block' (iterate the whole window), 'layer' (iterate each layer), 'auto'
                (layer for MoE models, block for dense ones).
    kv          KV written during generation: 'first' (the natural pass's), 'last' (one extra
                window pass from the post-loop state), 'none', 'per_pass' (one slot per pass).
    decode      'full' (every decode token loops), 'bypass' (prefill only), 'first_n'.
    decode_n    with decode='first_n': loop the first N decode tokens after each prefill.
    routing     MoE routing in the window: 'freeze', 'recompute', 'auto' (freeze in layer mode).
    alpha       euler step scale: h = alpha / K.
    beta        anchored / norm_interp mix: out = beta*g(x0) + (1-beta)*E_K(x0).
    halt_tau    early halting: stop a row once ||dx|| / ||x|| < halt_tau (None = never).
    ema_alpha   the 'a' of ema, input_anchor, norm_stab and heavy_ball (authors' default 0.5).
    momentum    heavy_ball's mu (0.3).
    anderson_m  Anderson history size m (2).
    anderson_beta  Anderson damping (1.0).
    schedule    ema_sched: K per-step alphas; poly_blend: K+1 weights w_0..w_K summing to 1.
    anchor_rescale  anchored / norm_interp: rescale the output to the natural pass's token norms.
    """
    window: Any = "c0.5w4"
    k: int = 1
    integrator: str = "anchored"
    mode: str = "auto"
    kv: str = "first"
    decode: str = "full"
    decode_n: int = 64
    routing: str = "auto"
    alpha: float = 1.0
    beta: float = 0.5
    halt_tau: float | None = None
    ema_alpha: float = 0.5
    momentum: float = 0.3
    anderson_m: int = 2
    anderson_beta: float = 1.0
    schedule: tuple[float, ...] | None = None
    anchor_rescale: bool = False

    def __post_init__(self):
        from .integrators import get_integrator  # local: integrators imports this module

        set_ = lambda n, v: object.__setattr__(self, n, v)  # noqa: E731 (frozen dataclass)
        set_("window", WindowSpec.parse(self.window))
        set_("k", _as_int("k", self.k))
        if self.k < 1:
            raise LoopConfigError(f"k={self.k} must be >= 1 (k = 1 is the plain model for naive/euler).")
        spec = get_integrator(self.integrator)
        set_("integrator", spec.name)
        check_choice("mode", self.mode, MODES)
        check_choice("kv", self.kv, KV_POLICIES)
        check_choice("decode", self.decode, DECODE_MODES)
        check_choice("routing", self.routing, ROUTINGS)
        set_("decode_n", _as_int("decode_n", self.decode_n))
        if self.decode_n < 0:
            raise LoopConfigError(f"decode_n={self.decode_n} must be >= 0.")
        for name in ("alpha", "beta", "ema_alpha", "momentum", "anderson_beta"):
            set_(name, _as_float(name, getattr(self, name)))
        if not 0.0 <= self.beta <= 1.0:
            raise LoopConfigError(f"beta={self.beta} must lie in [0, 1] (1 = plain model, 0 = euler).")
        if not 0.0 < self.alpha <= 2.0:
            raise LoopConfigError(f"alpha={self.alpha} must lie in (0, 2] (step h = alpha / K).")
        if not 0.0 < self.ema_alpha <= 1.0:
            raise LoopConfigError(f"ema_alpha={self.ema_alpha} must lie in (0, 1].")
        set_("anderson_m", _as_int("anderson_m", self.anderson_m))
        if self.anderson_m < 1:
            raise LoopConfigError(f"anderson_m={self.anderson_m} must be >= 1.")
        if self.halt_tau in ("", "none", "None"):
            set_("halt_tau", None)
        if self.halt_tau is not None:
            set_("halt_tau", _as_float("halt_tau", self.halt_tau))
            if self.halt_tau <= 0:
                raise LoopConfigError(f"halt_tau={self.halt_tau} must be > 0 (or None to disable).")
            if not spec.halting:
                raise LoopConfigError(
                    f"integrator {spec.name!r} does not support early halting (halt_tau); "
                    f"integrators that do: {', '.join(halting_integrators())}.")
            if self.kv == "per_pass":
                raise LoopConfigError(
                    "kv='per_pass' cannot be combined with halt_tau: rows that halt early would leave "
                    "their per-pass cache slots unwritten.")
        if self.kv == "per_pass" and self.decode != "full":
            raise LoopConfigError(
                f"kv='per_pass' needs decode='full' (got decode={self.decode!r}): its private per-pass cache "
                f"slots must receive every token.")
        set_("schedule", _as_floats("schedule", self.schedule))
        set_("anchor_rescale", _as_bool("anchor_rescale", self.anchor_rescale))
        spec.check(self)  # strategy-specific constraints (aitken even K, schedule lengths, ...)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "LoopConfig":
        """Build from a mapping (lm-eval model_args, Hydra `loop`): unknown keys are refused."""
        values = dict(values)
        recipe = values.pop("recipe", None)
        base = dict(RECIPES[check_choice("recipe", recipe, RECIPES)].values) if recipe else {}
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in values if k not in names]
        if unknown:
            raise LoopConfigError(
                f"unknown loop option {unknown[0]!r}; valid options: {', '.join(names + ['recipe'])}."
                + did_you_mean(unknown[0], names + ["recipe"]))
        base.update(values)
        if isinstance(base.get("window"), dict):
            base["window"] = WindowSpec(**base["window"])
        return cls(**base)

    def replace(self, **changes) -> "LoopConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-safe dict with the window as its string form (round-trips via from_dict)."""
        out = dataclasses.asdict(self)
        out["window"] = str(self.window)
        out["schedule"] = list(self.schedule) if self.schedule is not None else None
        return out

    # ---- resolution against a model ------------------------------------------------------
    def resolve(self, model) -> "ResolvedLoop":
        """Check this config against `model` (a model, or the `ArchInfo` of one, e.g. from
        `looping.arch.describe_config(config)` without weights) and fix every 'auto' choice."""
        from .arch import describe

        info = describe(model)
        start, end = self.window.layers(info.n_layers)
        if info.tuple_outputs:
            raise LoopConfigError(
                f"{info.model_type}: the decoder's forward unpacks a tuple from each layer "
                f"(`{type(info.decoder).__name__}.forward`), but a looped window returns the hidden-state "
                f"tensor, the transformers 5.x convention that llama, qwen3, gemma3, mixtral, deepseek_v3 "
                f"and most families follow. This family cannot be looped.")
        shared = [i for i in info.kv_sharing if start <= i < end]
        if shared:
            raise LoopConfigError(
                f"window {start}:{end} of this {info.model_type} model holds layer(s) {shared} that store "
                f"or reuse K/V shared across layers (KV sharing: layers {info.kv_sharing[0]}.."
                f"{info.kv_sharing[-1]}); looping them would hand the sharing layers the K/V of whichever "
                f"pass ran last. Choose a window that ends at or before layer {info.kv_sharing[0]}.")
        mode = self.mode
        if mode == "auto":
            mode = "layer" if info.is_moe else "block"
        moe_in_window = any(info.moe_layers[i] for i in range(start, end))
        if not info.is_moe:
            routing = "n/a"
        elif self.routing == "auto":
            routing = "freeze" if mode == "layer" else "recompute"
        else:
            routing = self.routing
        spec = get_integrator_spec(self.integrator)
        if spec.dense_only and moe_in_window:
            raise LoopConfigError(
                f"integrator {self.integrator!r} is for dense windows only, but window {start}:{end} "
                f"of this {info.model_type} model holds MoE layers "
                f"{[i for i in range(start, end) if info.moe_layers[i]]}.")
        if self.kv == "none":
            bad = sorted(set(info.mask_layers) & set(range(start, end)))
            if bad:
                raise LoopConfigError(
                    f"kv='none' leaves the window's cache slots empty, but window {start}:{end} holds "
                    f"layer {bad[0]}, whose cache slot sizes the attention masks and positions; choose "
                    f"a window that starts after layer {max(bad)} or another kv policy "
                    f"({', '.join(k for k in KV_POLICIES if k != 'none')}).")
        return ResolvedLoop(config=self, start=start, end=end, mode=mode, routing=routing,
                            n_layers=info.n_layers, centre=window_centre(start, end, info.n_layers),
                            model_type=info.model_type, is_moe=info.is_moe)


def get_integrator_spec(name: str):
    from .integrators import get_integrator
    return get_integrator(name)


def halting_integrators() -> list[str]:
    from .integrators import INTEGRATORS
    return [n for n, s in INTEGRATORS.items() if s.halting]


@dataclass(frozen=True)
class ResolvedLoop:
    """A LoopConfig fixed against one model: concrete layers, mode and routing."""
    config: LoopConfig
    start: int
    end: int
    mode: str
    routing: str
    n_layers: int
    centre: float
    model_type: str
    is_moe: bool

    @property
    def width(self) -> int:
        return self.end - self.start

    @property
    def passes(self) -> int:
        """Evaluations of the window per looped forward, as the integrator implies (no halting;
        kv stash passes of generation not included)."""
        return get_integrator_spec(self.config.integrator).passes(self.config)

    @property
    def layer_passes(self) -> int:
        """Decoder-layer evaluations per token of one full-sequence (scoring) forward: the layers
        outside the window once, the window `passes` times. The plain model: n_layers."""
        return self.n_layers - self.width + self.width * self.passes

    def record(self) -> dict[str, Any]:
        """Everything a result must carry about the loop (resolved values included)."""
        out = self.config.to_dict()
        out.update(window_layers=f"{self.start}:{self.end}", window_centre=round(self.centre, 4),
                   window_width=self.width, mode_resolved=self.mode, routing_resolved=self.routing,
                   n_layers=self.n_layers, model_type=self.model_type)
        return out


@dataclass(frozen=True)
class Recipe:
    values: dict
    source: str
    certainty: str

    @property
    def config(self) -> LoopConfig:
        return LoopConfig(**self.values)


RECIPES: dict[str, Recipe] = {
    "paper-mmlu-pro": Recipe(
        dict(window="15:19", k=3, integrator="euler", mode="block", kv="first", decode="full"),
        source="TFLT paper Table 6 (MMLU-Pro, Qwen3-4B-Instruct), third-party transcription",
        certainty="transcribed; window 15-18 inclusive as published"),
    "paper-fixed": Recipe(
        dict(window="c0.5w4", k=3, integrator="anchored", beta=0.5, mode="block", kv="first",
                   decode="full"),
        source="TFLT paper: out-of-the-box '3-stage RK, mid-4 layers'",
        certainty="inferred: read as anchored K=3 beta=0.5, width 4 at depth fraction 0.5"),
    "code-dense": Recipe(
        dict(window="c0.5w4", k=6, integrator="anchored", beta=0.5, mode="block", kv="first",
                   decode="bypass"),
        source="authors' code (L-z-Chen/Training-Free-Looped-Transformer), dense recipe",
        certainty="from code"),
    "code-moe-frozen": Recipe(
        dict(window="c0.5w4", k=6, integrator="norm_interp", beta=0.5, mode="layer",
                   routing="freeze", kv="first", decode="bypass"),
        source="authors' code, layer_anchored_frozen (loop_qwen3.py)",
        certainty="from code"),
}


def recipe(name: str) -> LoopConfig:
    return RECIPES[check_choice("recipe", name, RECIPES)].config
