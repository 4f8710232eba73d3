"""LoopConfig: the frozen, validated description of one looped inference setting, and its
resolution against a model.

Owns: field names (shared with lm-eval `model_args` and Hydra `loop.*`), parsing from strings,
range checks, the rule for options a setting does not use (below), the window arithmetic
(explicit `s:e` or depth fraction), resolution against a model or its `ArchInfo` (done once:
`ResolvedLoop` carries the architecture facts the runner and the records reuse), and the named
recipes. Nothing here touches tensors.

Unused options (one rule, docs/design.md): an option that the chosen integrator, mode, decode
setting or model does not read changes no number. Built directly (`LoopConfig(...)`, `looped()`,
lm-eval `model_args`), a non-default value of such an option is refused with the integrators
that do read it. Built for a sweep (`LoopConfig.from_dict(values, strict=False)`), such options
are reset to their defaults before anything is computed (`config.normalised` lists them), so a
grid can cross e.g. `integrator` with `beta` and equivalent cells share one identity.

Window notation is half-open: `"15:19"` loops layers 15, 16, 17, 18 (the paper writes "15-18").
A depth-fraction window `"c0.46w4"` has centre `c = (s + (W-1)/2) / L`, so
`s = round_half_up(c*L - (W-1)/2)`, clamped into `[0, L-W]`.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from .arch import ArchInfo, describe
from .errors import LoopConfigError, check_choice, did_you_mean
from .integrators import HALT_SCOPES, INTEGRATORS, STRATEGY_OPTIONS, get_integrator, users_of
from .kv import kv_policy
from .moe import ROUTINGS, resolve_routing

MODES = ("auto", "block", "layer")
DECODE_MODES = ("full", "bypass", "first_n")
K_MAX = 1024
#: numeric bounds: name -> (low, low included, high, high included)
BOUNDS: dict[str, tuple[float, bool, float, bool]] = {
    "k": (1, True, K_MAX, True), "decode_n": (0, True, 1_000_000, True),
    "alpha": (0.0, False, 2.0, True), "beta": (0.0, True, 1.0, True),
    "ema_alpha": (0.0, False, 1.0, True), "momentum": (0.0, True, 1.0, False),
    "anderson_m": (1, True, 16, True), "anderson_beta": (0.0, False, 2.0, True),
    "halt_tau": (0.0, False, 1.0, True),
}


_COUNTS = ("k", "decode_n", "anderson_m", "halt_tau")   # reported as one-sided bounds


def check_bounds(name: str, value) -> None:
    lo, lo_in, hi, hi_in = BOUNDS[name]
    low_ok = value >= lo if lo_in else value > lo
    high_ok = value <= hi if hi_in else value < hi
    if low_ok and high_ok:
        return
    if name in _COUNTS:
        bound = (f">= {lo:g}" if lo_in else f"> {lo:g}") if not low_ok else \
            (f"<= {hi:g}" if hi_in else f"< {hi:g}")
        raise LoopConfigError(f"{name}={value!r} must be {bound}.")
    interval = f"{'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'}"
    raise LoopConfigError(f"{name}={value!r} must lie in {interval}.")


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
    k           sub-steps / iterations K, 1..1024 (K = 1 with naive/euler is the plain model).
    integrator  strategy name (see `looping.integrators.INTEGRATORS`).
    mode        'block' (iterate the whole window), 'layer' (iterate each layer), 'auto'
                (layer for MoE models, block for dense ones).
    kv          KV kept during generation (looping.kv): 'first' (the plain model's window K/V),
                'chain' (each layer's first evaluation), 'last' (an extra window pass from the
                post-loop state), 'none', 'per_pass' (one slot per pass).
    decode      'full' (every decode token loops), 'bypass' (prefill only), 'first_n'.
    decode_n    with decode='first_n': loop the first N decode tokens after each prefill.
    routing     MoE routing in the window: 'freeze', 'recompute', 'auto' (freeze in layer mode);
                recorded as 'n/a' on dense models.
    alpha       step scale of the ODE integrators (euler, anchored, heun, midpoint, rk4,
                norm_interp): K steps of h = alpha / K, i.e. virtual time alpha. (0, 2].
    beta        anchored / norm_interp mix: out = beta*g(x0) + (1-beta)*E_K(x0). [0, 1].
    halt_tau    early halting: stop once ||dx|| / ||x|| < halt_tau (None = never). (0, 1].
    halt_scope  'row' (each sequence stops on its own; default) or 'batch' (the authors' rule:
                one ratio over the batch's real tokens, every row stops together).
    ema_alpha   the 'a' of ema, input_anchor, norm_stab and heavy_ball (0.5). (0, 1].
    momentum    heavy_ball's mu (0.3). [0, 1).
    anderson_m  Anderson history size m (2). 1..16.
    anderson_beta  Anderson damping (1.0). (0, 2].
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
    halt_scope: str = "row"
    ema_alpha: float = 0.5
    momentum: float = 0.3
    anderson_m: int = 2
    anderson_beta: float = 1.0
    schedule: tuple[float, ...] | None = None
    anchor_rescale: bool = False
    #: (option, given value) reset by `from_dict(strict=False)`; empty otherwise (not a field)
    normalised: ClassVar[tuple] = ()

    def __post_init__(self):
        parsed = parse_fields({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        for name, value in parsed.items():
            object.__setattr__(self, name, value)  # frozen dataclass
        unused = unused_options(parsed)
        if unused:
            raise LoopConfigError(unused[0][2])
        kv_policy(self.kv).check_config(self)
        get_integrator(self.integrator).check(self)  # aitken even K, schedule lengths, ...

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, strict: bool = True) -> "LoopConfig":
        """Build from a mapping (lm-eval model_args, Hydra `loop`): unknown keys are refused.
        `recipe=<name>` starts from a named recipe. strict=False (sweeps) resets options this
        setting does not read to their defaults instead of refusing them; `.normalised` lists
        them as (option, given value)."""
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
        dropped: list[tuple[str, Any]] = []
        if not strict:
            defaults = {f.name: f.default for f in dataclasses.fields(cls)}
            for name, value, _ in unused_options(parse_fields({**defaults, **base})):
                dropped.append((name, value))
                base.pop(name, None)
                if name == "mode":
                    base["mode"] = "block"
        out = cls(**base)
        object.__setattr__(out, "normalised", tuple(dropped))
        return out

    def replace(self, **changes) -> "LoopConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-safe dict with the window as its string form (round-trips via from_dict)."""
        out = dataclasses.asdict(self)
        out["window"] = str(self.window)
        out["schedule"] = list(self.schedule) if self.schedule is not None else None
        return out

    # ---- resolution against a model ------------------------------------------------------
    def resolve(self, model, *, strict: bool = True) -> "ResolvedLoop":
        """Check this config against `model` (a model, or the `ArchInfo` of one, e.g. from
        `looping.arch.describe_config(config)` without weights) and fix every 'auto' choice.
        strict=False records routing on a dense model as 'n/a' instead of refusing it."""
        info = describe(model)
        start, end = self.window.layers(info.n_layers)
        if info.tuple_outputs:
            raise LoopConfigError(
                f"{info.model_type}: the decoder's forward unpacks a tuple from each layer "
                f"(`{type(info.decoder).__name__}.forward`), but a looped window returns the "
                f"hidden-state tensor, the transformers 5.x convention that llama, qwen3, gemma3, "
                f"mixtral, deepseek_v3 and most families follow. This family cannot be looped.")
        shared = [i for i in info.kv_sharing if start <= i < end]
        if shared:
            raise LoopConfigError(
                f"window {start}:{end} of this {info.model_type} model holds layer(s) {shared} "
                f"that store or reuse K/V shared across layers (KV sharing: layers "
                f"{info.kv_sharing[0]}..{info.kv_sharing[-1]}); looping them would hand the "
                f"sharing layers the K/V of whichever pass ran last. Choose a window that ends at "
                f"or before layer {info.kv_sharing[0]}.")
        spec = get_integrator(self.integrator)
        mode = self.mode
        if mode == "auto":
            mode = "layer" if info.is_moe and not spec.block_only else "block"
        routing = resolve_routing(self.routing, mode, info.is_moe, strict=strict)
        moe_layers = [i for i in range(start, end) if info.moe_layers[i]]
        if spec.dense_only and moe_layers:
            raise LoopConfigError(
                f"integrator {self.integrator!r} is for dense windows only, but window "
                f"{start}:{end} of this {info.model_type} model holds MoE layers {moe_layers}.")
        kv_policy(self.kv).check_window(start, end, info)
        return ResolvedLoop(config=self, start=start, end=end, mode=mode, routing=routing,
                            n_layers=info.n_layers, centre=window_centre(start, end, info.n_layers),
                            model_type=info.model_type, is_moe=info.is_moe, arch=info)


def parse_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    """Every LoopConfig field of `values` (all of them) parsed and checked on its own: types,
    choices, ranges, halting support. Combinations are checked by the constructor."""
    out = dict(values)
    out["window"] = WindowSpec.parse(out["window"])
    for name in ("k", "decode_n", "anderson_m"):
        out[name] = _as_int(name, out[name])
    spec = get_integrator(out["integrator"])
    out["integrator"] = spec.name
    check_choice("mode", out["mode"], MODES)
    kv_policy(out["kv"])
    check_choice("decode", out["decode"], DECODE_MODES)
    check_choice("routing", out["routing"], ROUTINGS)
    check_choice("halt_scope", out["halt_scope"], HALT_SCOPES)
    for name in ("alpha", "beta", "ema_alpha", "momentum", "anderson_beta"):
        out[name] = _as_float(name, out[name])
    if out["halt_tau"] in ("", "none", "None"):
        out["halt_tau"] = None
    if out["halt_tau"] is not None:
        out["halt_tau"] = _as_float("halt_tau", out["halt_tau"])
    for name in BOUNDS:
        if out[name] is not None:
            check_bounds(name, out[name])
    out["schedule"] = _as_floats("schedule", out["schedule"])
    out["anchor_rescale"] = _as_bool("anchor_rescale", out["anchor_rescale"])
    if out["halt_tau"] is not None and not spec.halting:
        raise LoopConfigError(
            f"integrator {spec.name!r} does not support early halting (halt_tau); "
            f"integrators that do: {', '.join(halting_integrators())}.")
    return out


def unused_options(values: Mapping[str, Any]) -> list[tuple[str, Any, str]]:
    """(option, value, message) for the options in `values` (a full set of LoopConfig fields,
    already parsed) that are set away from their default but not read by this setting."""
    defaults = {f.name: f.default for f in dataclasses.fields(LoopConfig)}
    spec = INTEGRATORS[values["integrator"]]
    out = []
    for name in STRATEGY_OPTIONS:
        if name not in spec.uses and values.get(name) != defaults[name]:
            readers = users_of(name)
            out.append((name, values[name],
                        f"{name}={values[name]!r} has no effect with integrator {spec.name!r}; "
                        f"{name} is read by: {', '.join(readers)}. Drop it, or choose one of "
                        f"those integrators."))
    if values.get("halt_tau") is None and values.get("halt_scope") != defaults["halt_scope"]:
        out.append(("halt_scope", values["halt_scope"],
                    f"halt_scope={values['halt_scope']!r} has no effect without halt_tau (early "
                    f"halting is off); set halt_tau or drop halt_scope."))
    if values.get("decode") != "first_n" and values.get("decode_n") != defaults["decode_n"]:
        out.append(("decode_n", values["decode_n"],
                    f"decode_n={values['decode_n']!r} has no effect with decode="
                    f"{values.get('decode')!r}; it counts the looped decode tokens of "
                    f"decode='first_n' only."))
    if spec.block_only and values.get("mode") == "layer":
        out.append(("mode", "layer",
                    f"integrator {spec.name!r} iterates the whole window (block mode only, as "
                    f"the authors' code); mode='layer' has no per-layer form for it: use "
                    f"mode='block' or 'auto'."))
    return out


def halting_integrators() -> list[str]:
    return [n for n, s in INTEGRATORS.items() if s.halting]


@dataclass(frozen=True)
class ResolvedLoop:
    """A LoopConfig fixed against one model: concrete layers, mode and routing, and the model's
    architecture facts (`arch`; reused by the runner, never looked up twice)."""
    config: LoopConfig
    start: int
    end: int
    mode: str
    routing: str
    n_layers: int
    centre: float
    model_type: str
    is_moe: bool
    arch: ArchInfo | None = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def width(self) -> int:
        return self.end - self.start

    @property
    def passes(self) -> int:
        """Evaluations of the window per looped forward, as the integrator implies (no halting;
        kv stash passes of generation not included: see `stash_passes`)."""
        return get_integrator(self.config.integrator).passes(self.config)

    @property
    def stash_passes(self) -> int:
        """Extra whole-window passes per looped forward that has a cache (generation): 1 for
        kv='last', and for kv='first' in layer mode; else 0."""
        return int(kv_policy(self.config.kv)(self.mode).stash is not None)

    @property
    def layer_passes(self) -> int:
        """Decoder-layer evaluations per token of one full-sequence (scoring) forward: the layers
        outside the window once, the window `passes` times. The plain model: n_layers."""
        return self.n_layers - self.width + self.width * self.passes

    def identity(self) -> dict[str, Any]:
        """What this loop's numbers depend on, model facts resolved: the config with the window
        as resolved layers, the resolved mode (block for a one-layer window, where both modes
        compute the same) and the resolved routing. Equal identities compute equal numbers."""
        out = self.config.to_dict()
        out.update(window=f"{self.start}:{self.end}", routing=self.routing,
                   mode=self.mode if self.width > 1 else "block")
        return out

    def record(self) -> dict[str, Any]:
        """Everything a result must carry about the loop (resolved values included)."""
        out = self.config.to_dict()
        out.update(window_layers=f"{self.start}:{self.end}", window_centre=round(self.centre, 4),
                   window_width=self.width, mode_resolved=self.mode, routing_resolved=self.routing,
                   n_layers=self.n_layers, model_type=self.model_type, passes=self.passes,
                   stash_passes=self.stash_passes)
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
        source="TFLT paper Table 6 (MMLU-Pro, Qwen3-4B-Instruct), third-party transcription; "
               "kv=first and decode=full as transcribed",
        certainty="transcribed; window 15-18 inclusive as published"),
    "paper-fixed": Recipe(
        dict(window="c0.5w4", k=3, integrator="anchored", beta=0.5, mode="block", kv="first",
             decode="full"),
        source="TFLT paper: out-of-the-box '3-stage RK, mid-4 layers'; kv=first is the paper's "
               "in-distribution cache",
        certainty="inferred: read as anchored K=3 beta=0.5, width 4 at depth fraction 0.5"),
    "code-dense": Recipe(
        dict(window="c0.5w4", k=6, integrator="anchored", beta=0.5, mode="block", kv="first",
             decode="bypass"),
        source="authors' code (L-z-Chen/Training-Free-Looped-Transformer), reproduce.py: "
               "block_anchored, K=6, beta=0.5, --cache-strategy first, decode bypass",
        certainty="from code"),
    "code-moe-frozen": Recipe(
        dict(window="c0.5w4", k=6, integrator="norm_interp", beta=0.5, mode="layer",
             routing="freeze", kv="chain", decode="bypass"),
        source="authors' code, loop_qwen3.py `layer_anchored_frozen`: per-layer norm-interpolated "
               "damped Euler, routing frozen, each layer's natural pass K/V kept on the looped "
               "chain (kv=chain; their vLLM port's kv='natural')",
        certainty="from code"),
}


def recipe(name: str) -> LoopConfig:
    return RECIPES[check_choice("recipe", name, RECIPES)].config
