"""spec: what one sweep cell is, and its identity.

    spec = CellSpec(model="Qwen/Qwen3-4B-Instruct-2507", task="commonsense_qa", num_fewshot=7,
                    loop=LoopConfig(window="15:19", k=3, integrator="euler", mode="block"))
    cell_id(spec)            # '3f2a9c1e0b7d': sha256 over ID_FIELDS
    spec.baseline()          # the same spec without looping: the one definition of a baseline

Owns: `CellSpec` (frozen), `ID_FIELDS` and `cell_id` (the identity of a cell's numbers), the
baseline of a spec, the identity helpers (`weights_hash` of a local model folder, `task_version`
of an lm-eval task, `model_arch` + `canonical_loop`: a loop in the one form every equivalent
setting shares), the checks of a cell's settings that need no weights (`check_dtype`,
`check_limit`, model folders), `resolve_model_path` (`embedded` -> the embedded model's folder) and
`spec_from_config` (one composed sweep config -> one canonical CellSpec). Nothing here loads
weights (architectures are read from configs on the meta device).

Canonical ids (docs/sweeps.md, "The cell id"): an id is location-free and equal for every spelling
of the same computation. A spec built by `spec_from_config` carries its loop in canonical form:
`ResolvedLoop.identity()` against the model's architecture (window as resolved layers, resolved
mode, block for one-layer windows, resolved routing with 'n/a' written 'auto'; options the setting
does not read at their defaults), and, for a cell whose tasks are all loglikelihood tasks, `kv`,
`decode` and `decode_n` at their defaults (scoring is one forward without a cache). No absolute
path enters a hash: a local model is its weights hash, a task its config with paths cut to their
last part plus the content of the files they name. A CellSpec built by hand is hashed as given
(`canonical_spec(spec, model_arch(spec))` makes it canonical).

ID_FIELDS, the fields that change the numbers and therefore the id (docs/sweeps.md repeats them):
    model               the Hugging Face id; for a local model folder its weights hash instead of
                        the path (moving the folder keeps the id, changing a weight changes it)
    revision            the Hub revision (null = default branch)
    weights_hash        sha256 over the files of a local model folder (null for Hub ids)
    dtype, attn_implementation
    loop                the canonical LoopConfig.to_dict() (null = the baseline)
    task, task_version  lm-eval task name(s); the task's metadata version + a location-free hash of
                        its resolved YAML config (a group's with its members') and of the content
                        of the local files it names
    num_fewshot, fewshot_seed, limit
    apply_chat_template, fewshot_as_multiturn, system_instruction
    gen_kwargs, max_length, batch_size, seed
    transformers_version, lm_eval_version, torch_version
Not in the id: output paths (store), logging / wandb settings, labels (model_name, task_name,
loop_name), metric / aggregate (how a result is summarised, not computed), device, include_path
(where the task file was found; its content is in task_version), trust_remote_code, unsafe_code,
the model folder's path.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from looping import LoopConfig

ID_FIELDS: tuple[str, ...] = (
    "model", "revision", "weights_hash", "dtype", "attn_implementation", "loop", "task",
    "task_version", "num_fewshot", "fewshot_seed", "limit", "apply_chat_template",
    "fewshot_as_multiturn", "system_instruction", "gen_kwargs", "max_length", "batch_size", "seed",
    "transformers_version", "lm_eval_version", "torch_version",
)
ID_LENGTH = 12
EMBEDDED = "embedded"          # model path that names the project's embedded model


def package_version(pkg: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(pkg)
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class CellSpec:
    """Everything one cell computes from. Frozen; build with `CellSpec(...)` or
    `spec_from_config`."""
    model: str                                  # HF id or local folder
    task: str                                   # lm-eval task; several joined by ','
    loop: LoopConfig | None = None              # None = the baseline
    revision: str | None = None
    weights_hash: str | None = None             # set for local folders (see weights_hash())
    dtype: str = "bfloat16"
    attn_implementation: str | None = "sdpa"
    trust_remote_code: bool = False
    task_version: str | None = None
    num_fewshot: int | None = None
    fewshot_seed: int = 1234
    limit: int | float | None = None
    apply_chat_template: bool | str = False
    fewshot_as_multiturn: bool = False
    system_instruction: str | None = None
    gen_kwargs: str | None = None
    max_length: int | None = None
    batch_size: int = 8
    seed: int = 1234
    transformers_version: str = field(default_factory=lambda: package_version("transformers"))
    lm_eval_version: str = field(default_factory=lambda: package_version("lm_eval"))
    torch_version: str = field(default_factory=lambda: package_version("torch"))
    # labels and summaries: recorded, not in the id
    model_name: str = ""
    task_name: str = ""
    loop_name: str = ""
    metric: str = "acc,none"
    aggregate: tuple | None = None              # (name, metric): mean of the tasks' metric
    unsafe_code: bool = False
    include_path: str | None = None

    def __post_init__(self):
        if isinstance(self.loop, Mapping):
            object.__setattr__(self, "loop", LoopConfig.from_dict(self.loop))
        if isinstance(self.aggregate, Mapping):
            object.__setattr__(self, "aggregate",
                               (self.aggregate["name"], self.aggregate["metric"]))
        elif isinstance(self.aggregate, list):
            object.__setattr__(self, "aggregate", tuple(self.aggregate))
        if self.batch_size is None or int(self.batch_size) < 1:
            raise ValueError(f"batch_size={self.batch_size!r}: a fixed integer >= 1 (batch size "
                             f"changes scores; 'auto' is not allowed in a sweep)")

    @property
    def tasks(self) -> list[str]:
        return [t for t in self.task.split(",") if t]

    @property
    def is_baseline(self) -> bool:
        return self.loop is None

    @property
    def is_local(self) -> bool:
        return self.weights_hash is not None

    def baseline(self) -> "CellSpec":
        """The baseline of this model x task: the same spec without looping. Records carry its
        id (`baseline_id`); the report pairs looped cells with baselines by that id only."""
        return dataclasses.replace(self, loop=None, loop_name="baseline")

    def model_key(self) -> tuple:
        """What one loaded model is: cells with equal keys share one load."""
        return (self.model, self.revision, self.weights_hash, self.dtype, self.attn_implementation,
                self.trust_remote_code)

    def share_key(self) -> tuple:
        """Cells with equal keys get the same lm-eval requests and batching (same model, task,
        shots, limit, prompt settings, batch size, max length, seeds): their loglikelihood
        requests can be scored in one shared pass (harness.scoring.SharedPass)."""
        return self.model_key() + (
            self.task, self.task_version, self.num_fewshot, self.fewshot_seed, self.limit,
            self.apply_chat_template, self.fewshot_as_multiturn, self.system_instruction,
            self.gen_kwargs, self.max_length, self.batch_size, self.seed, self.include_path)

    def id_payload(self) -> dict:
        out = {}
        for name in ID_FIELDS:
            v = getattr(self, name)
            if name == "model" and self.weights_hash is not None:
                v = None                        # local folder: the weights hash is its identity
            if name == "loop":
                v = None if v is None else v.to_dict()
            out[name] = v
        return out

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["loop"] = None if self.loop is None else self.loop.to_dict()
        out["aggregate"] = list(self.aggregate) if self.aggregate else None
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CellSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown CellSpec field(s) {unknown}; valid: {sorted(names)}")
        return cls(**dict(d))


def cell_id(spec: CellSpec) -> str:
    """Short sha256 of the ID_FIELDS (JSON, sorted keys)."""
    blob = json.dumps(spec.id_payload(), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:ID_LENGTH]


def loop_text(loop: LoopConfig | None) -> str:
    """'euler k=3 window=15:19 mode=block kv=first' (decode when not full), or 'baseline'."""
    if loop is None:
        return "baseline"
    what = f"{loop.integrator} k={loop.k} window={loop.window} mode={loop.mode} kv={loop.kv}"
    if loop.decode != "full":
        what += f" decode={loop.decode}" + (f"/{loop.decode_n}" if loop.decode == "first_n" else "")
    return what


def describe(spec: CellSpec) -> str:
    """A one-line human description of a cell: 'model | task | loop setting'."""
    return (f"{spec.model_name or spec.model} | {spec.task_name or spec.task} | "
            f"{loop_text(spec.loop)}")


# ---- identity helpers: local weights and task versions ---------------------------------------
_HASH_MEMO: dict[tuple, str] = {}
_HASHED_SUFFIXES = (".safetensors", ".bin", ".pt", ".json", ".model", ".txt", ".tiktoken", ".py")


def weights_hash(folder: str | os.PathLike, *, memo_file: str | os.PathLike | None = None) -> str:
    """sha256 over the (name, content) of a local model folder's weight, config and tokenizer
    files. Memoised per (path, sizes, mtimes) in-process and in `memo_file` (big checkpoints are
    hashed once)."""
    from .store import write_json_atomic

    folder = Path(folder).resolve()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in _HASHED_SUFFIXES
                   and ".cache" not in p.relative_to(folder).parts)   # the folder may lie in one
    if not files:
        raise FileNotFoundError(f"no model files under {folder}")
    key = (str(folder),) + tuple((str(p.relative_to(folder)), p.stat().st_size,
                                  p.stat().st_mtime_ns) for p in files)
    skey = hashlib.sha256(json.dumps(key).encode()).hexdigest()
    if key in _HASH_MEMO:
        return _HASH_MEMO[key]
    memo = {}
    if memo_file and Path(memo_file).exists():
        try:
            memo = json.loads(Path(memo_file).read_text())
        except (OSError, ValueError):
            memo = {}
    if skey in memo:
        _HASH_MEMO[key] = memo[skey]
        return memo[skey]
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(folder)).encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    out = "sha256:" + h.hexdigest()[:16]
    _HASH_MEMO[key] = out
    if memo_file:
        memo[skey] = out
        write_json_atomic(memo_file, memo)
    return out


def resolve_model_path(path: str) -> str:
    """`embedded` -> the embedded model's folder (built on first use); a model asset name
    (`smollm2-135m`, `gemma3-270m`: harness.assets) -> its fetched folder, or AssetMissing naming
    the fetch command; anything else unchanged."""
    if path != EMBEDDED:
        from harness import assets
        return assets.resolve_model(path) if assets.is_model_asset(path) else path
    try:
        from harness.embedded import embedded_model_path
    except ImportError as e:
        raise RuntimeError("model=embedded needs harness.embedded (the embedded model builder): "
                           f"{e}") from e
    return str(embedded_model_path())


_FILE_HASHES: dict[tuple, str] = {}


def content_hash(path: Path) -> str:
    """sha256 of a file's bytes, or of a folder's (relative name, bytes) pairs; memoised per
    (path, size, mtime) so a grid hashes each data file once."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key in _FILE_HASHES:
        return _FILE_HASHES[key]
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(q for q in path.rglob("*") if q.is_file()):
            h.update(str(f.relative_to(path)).encode() + b"\0" + content_hash(f).encode())
    else:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    _FILE_HASHES[key] = out = h.hexdigest()
    return out


def location_free(obj, base: Path | None, files: list[str]):
    """`obj` (a task config) with every absolute path replaced by its last part, so that no
    checkout, venv or cache location enters a hash; the content hash of every file a path names
    is appended to `files` instead: absolute paths, `!function` references
    (`/dir/utils.load_local` -> utils.py) and paths relative to the task's YAML folder `base`."""
    if isinstance(obj, Mapping):
        return {str(k): location_free(v, base, files) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [location_free(v, base, files) for v in obj]
    if not isinstance(obj, str) or not obj or len(obj) > 4096 or "\n" in obj:
        return obj
    p = Path(obj)
    if p.is_absolute():
        target = p if p.exists() else None
        if target is None and p.suffix and p.with_suffix(".py").is_file():
            target = p.with_suffix(".py")           # a `!function` reference: module.function
        if target is not None:
            files.append(f"{p.name}:{content_hash(target)}")
        return p.name
    if base is not None and not obj.startswith("~"):
        try:
            rel = base / obj
            if rel.is_file():
                files.append(f"{obj}:{content_hash(rel)}")
        except (OSError, ValueError):
            pass
    return obj


def task_version(tasks: Iterable[str], include_path: str | None = None) -> str:
    """'<metadata.version>+<hash>' per task (joined by ','): the version lm-eval reports plus a
    hash of the task's resolved config (a group's: with its members') and of the content of every
    local file it names. Location-free: absolute paths enter as their last part only, so two
    checkouts, venvs or caches at different places give the same version (`location_free`)."""
    from harness.tasks import manager_for

    tasks = list(tasks)
    tm = manager_for(tasks, include_path)
    parts = []
    for t in tasks:
        files: list[str] = []
        cfgs = _task_configs(tm, t, set())
        first = cfgs[0][1] if cfgs else {}
        version = ((first.get("metadata") or {}).get("version", "yaml")
                   if isinstance(first, Mapping) else "yaml")
        canon = [[name, location_free(cfg, base, files)] for name, cfg, base in cfgs]
        h = hashlib.sha256(json.dumps(canon, sort_keys=True, default=str).encode())
        for f in files:
            h.update(f.encode() + b"\0")
        parts.append(f"{version}+{h.hexdigest()[:8]}")
    return ",".join(parts)


def _task_configs(tm, name: str, seen: set) -> list[tuple[str, Any, Path | None]]:
    """(name, raw config, YAML folder) of a task and, for a group, of its member tasks."""
    if name in seen:
        return []
    seen.add(name)
    entry = tm.task_index.get(name)
    if entry is None:
        return []
    cfg = entry.cfg or {}
    if not cfg and entry.yaml_path:
        from lm_eval.tasks._yaml_loader import load_yaml
        cfg = load_yaml(entry.yaml_path, resolve_func=False, recursive=True)
    base = Path(entry.yaml_path).parent if entry.yaml_path else None
    out = [(name, cfg, base)]
    members = cfg.get("task") if isinstance(cfg, Mapping) else None
    if isinstance(members, list):
        for m in members:
            if isinstance(m, str):
                out += _task_configs(tm, m, seen)
    return out


# ---- the model's architecture, read at planning (no weights) ------------------------------------
class SpecError(ValueError):
    """A sweep config names no valid cell (a bad value, a missing model folder, a window the model
    cannot hold); the message names the setting, the bad value and the valid choices."""


@dataclass(frozen=True)
class ModelArch:
    """What planning knows of a model's architecture: its ArchInfo (from its config, built on the
    meta device), or, when the config is not available, the preset's `n_layers` and `moe` facts
    (`approximate`)."""
    info: Any = None                    # looping.arch.ArchInfo, or None
    n_layers: int | None = None
    moe: bool = False
    approximate: bool = True
    source: str = ""                    # where the facts come from, for messages

    def text(self) -> str:
        return (f"{self.n_layers} layers{', MoE' if self.moe else ''}"
                + (", from the preset" if self.approximate else ""))


_ARCH_MEMO: dict[tuple, ModelArch] = {}


def model_arch(spec: "CellSpec", preset: Mapping | None = None) -> ModelArch:
    """The model's architecture from its config alone: a local folder's config.json (must be
    readable), or a Hub id's config when it is in the local cache (never downloaded); else the
    preset's `n_layers` / `moe` (approximate). Memoised per model."""
    preset = dict(preset or {})
    key = (spec.model, spec.revision, spec.weights_hash, spec.trust_remote_code,
           preset.get("n_layers"), bool(preset.get("moe")))
    if key in _ARCH_MEMO:
        return _ARCH_MEMO[key]
    from transformers import AutoConfig

    kw = dict(trust_remote_code=spec.trust_remote_code)
    if not spec.is_local:
        kw.update(revision=spec.revision, local_files_only=True)
    config = None
    try:
        config = AutoConfig.from_pretrained(spec.model, **kw)
    except Exception as e:      # noqa: BLE001 - not cached, remote code: the preset's facts
        if spec.is_local:
            raise SpecError(f"model.path={spec.model}: cannot read its config.json "
                            f"({' '.join(str(e).split())[:300]})") from None
    out = None
    if config is not None:
        try:
            from looping.arch import describe_config
            info = describe_config(config)
            out = ModelArch(info, info.n_layers, info.is_moe, approximate=False, source="config")
        except Exception:       # noqa: BLE001 - a family the meta build refuses: its config facts
            n = getattr(config, "num_hidden_layers", None)
            moe = any(getattr(config, a, None) for a in (
                "num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts"))
            if n:
                out = ModelArch(None, int(n), bool(moe), approximate=True, source="config.json")
    if out is None:
        n = preset.get("n_layers")
        out = ModelArch(None, int(n) if n else None, bool(preset.get("moe")), approximate=True,
                        source="preset")
    _ARCH_MEMO[key] = out
    return out


def resolve_on_facts(loop: LoopConfig, n_layers: int, moe: bool):
    """A ResolvedLoop from the layer count and the MoE flag alone (no architecture checks):
    window layers, mode ('auto': layer on MoE unless the integrator is block-only) and routing
    resolved exactly as `LoopConfig.resolve` does them."""
    from looping import ResolvedLoop, get_integrator
    from looping.config import window_centre
    from looping.moe import resolve_routing

    start, end = loop.window.layers(n_layers)
    mode = loop.mode
    if mode == "auto":
        mode = "layer" if moe and not get_integrator(loop.integrator).block_only else "block"
    routing = resolve_routing(loop.routing, mode, moe, strict=False)
    return ResolvedLoop(config=loop, start=start, end=end, mode=mode, routing=routing,
                        n_layers=n_layers, centre=window_centre(start, end, n_layers),
                        model_type="?", is_moe=moe)


#: loop options that change nothing in a loglikelihood scoring forward (one full-sequence forward
#: with use_cache=False: no cache to keep K/V in, no decode step)
DECODE_ONLY_OPTIONS = ("kv", "decode", "decode_n")


def canonical_loop(loop: LoopConfig, arch: ModelArch, *, scoring_only: bool = False
                   ) -> LoopConfig:
    """The one LoopConfig of every setting that computes the same numbers on this model:
    `ResolvedLoop.identity()` (window as resolved layers, resolved mode, block for one-layer
    windows, resolved routing; 'n/a' is kept as 'auto', which resolves to it) with, when
    `scoring_only` (every task of the cell is a loglikelihood task), `kv`, `decode` and
    `decode_n` at their defaults. Resolved against the ArchInfo when there is one (every check
    of `LoopConfig.resolve`), else on the preset's facts (`resolve_on_facts`). `.normalised`
    lists the options reset here or by `from_dict(strict=False)`. Raises LoopConfigError for a
    setting the model cannot run (e.g. a window beyond its layers)."""
    if arch.info is not None:
        r = loop.resolve(arch.info, strict=False)
    elif arch.n_layers is not None:
        r = resolve_on_facts(loop, arch.n_layers, arch.moe)
    else:
        raise SpecError("the model's layer count is unknown at planning: its config is not "
                        "available (not in the local cache) and its preset has no n_layers")
    ident = r.identity()
    if ident["routing"] == "n/a":
        ident["routing"] = "auto"
    dropped = list(loop.normalised)
    if scoring_only:
        defaults = {f.name: f.default for f in dataclasses.fields(LoopConfig)}
        for name in DECODE_ONLY_OPTIONS:
            if ident[name] != defaults[name]:
                dropped.append((name, ident[name]))
                ident[name] = defaults[name]
    out = LoopConfig.from_dict(ident, strict=False)
    object.__setattr__(out, "normalised", tuple(dropped) + tuple(out.normalised))
    return out


# ---- validation of the evaluation settings -----------------------------------------------------
#: model dtypes a sweep accepts (torch's floating dtypes by name, and 'auto')
DTYPES = ("auto", "bfloat16", "float16", "float32", "float64")
DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32",
                 "float": "float32", "fp64": "float64", "double": "float64"}


def check_dtype(value) -> str | None:
    """The canonical dtype name (aliases such as 'bf16' -> 'bfloat16'); None stays None (auto)."""
    if value is None:
        return None
    name = str(value).removeprefix("torch.")
    name = DTYPE_ALIASES.get(name, name)
    if name not in DTYPES:
        from looping import did_you_mean
        raise SpecError(f"model.dtype={value}: not a dtype; valid: {', '.join(DTYPES)} (aliases: "
                        f"{', '.join(sorted(DTYPE_ALIASES))})."
                        + did_you_mean(value, DTYPES + tuple(DTYPE_ALIASES)))
    return name


def check_limit(value):
    """lm-eval's `limit`: None (every document), a count >= 1, or a fraction in (0, 1) of the
    documents; an integral float >= 1 is the count (lm-eval reads it so)."""
    if value is None:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and value >= 1 and float(value).is_integer():
        return int(value)
    if ok and 0 < value < 1:
        return float(value)
    raise SpecError(f"task.limit={value!r}: a number of documents >= 1 (an integer) or a fraction "
                    f"in (0, 1) of them; null for every document")


def looks_like_path(value: str) -> bool:
    """A model name meant as a local folder: it starts with '/', '.', '~', or has more separators
    than a Hub id ('namespace/name')."""
    v = str(value)
    return v.startswith(("/", ".", "~")) or v.count("/") > 1 or "\\" in v


# ---- from a composed sweep config --------------------------------------------------------------
def batch_size(value) -> int:
    """eval.batch_size as a number >= 1. 'auto' is refused: lm-eval picks it from the free memory
    of the moment, and the batch size changes padding and therefore scores, so it is part of the
    cell id and must be known before the cell runs."""
    text = str(value).strip()
    if text.startswith("auto"):
        raise SpecError(f"eval.batch_size={value}: not supported: the batch size changes "
                         f"padding and therefore the scores, and is part of the cell id; give "
                         f"a number (default 16; lower it if a cell runs out of memory)")
    if not text.isdigit() or int(text) < 1:
        raise SpecError(f"eval.batch_size={value}: a whole number >= 1")
    return int(text)


def spec_from_config(cfg, *, loop_name: str = "", store: str | os.PathLike | None = None,
                     arch: ModelArch | None = None) -> CellSpec:
    """The canonical CellSpec of one composed sweep config (harness/configs/sweep.yaml): resolves
    model=embedded and asset names, hashes local model folders, reads the task's version, checks
    every setting that can be checked without weights (dtype, limit, the model folder, the task
    names, the window against the model's layers) and makes the loop canonical against the
    model's architecture (`canonical_loop`; `arch` = model_arch(...) unless given). Raises
    SpecError / LoopConfigError naming the bad setting."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):     # resolve the cell's nodes only (not hydra's own)
        c = {k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg[k], DictConfig)
             else cfg[k] for k in ("model", "task", "eval", "loop") if k in cfg}
    else:
        c = dict(cfg)
    m, t, ev = c["model"], c["task"], c.get("eval") or {}
    path = resolve_model_path(str(m["path"]))
    local = Path(path).expanduser().exists()
    if not local and looks_like_path(path):
        raise SpecError(f"model.path={m['path']}: no such directory: {path}")
    if local and not Path(path).expanduser().is_dir():
        raise SpecError(f"model.path={m['path']}: not a directory: {path} (a model folder holds "
                        f"config.json and the weights)")
    memo = Path(store) / "cache" / "weights-hashes.json" if store else None
    try:
        wh = weights_hash(path, memo_file=memo) if local else None
    except FileNotFoundError as e:
        raise SpecError(f"model.path={m['path']}: not a model folder ({e})") from None
    tasks = (t["task"] if isinstance(t["task"], list)
             else [x for x in str(t["task"]).split(",") if x])
    try:
        version = task_version(tasks, t.get("include_path"))
    except (ValueError, FileNotFoundError) as e:
        raise SpecError(f"task={t.get('name') or ','.join(tasks)}: {e}") from None
    loop = c.get("loop")
    spec = CellSpec(
        model=str(Path(path).expanduser().resolve()) if local else path,
        revision=None if local else m.get("revision"), weights_hash=wh,
        dtype=check_dtype(m.get("dtype", "bfloat16")),
        attn_implementation=m.get("attn_implementation"),
        trust_remote_code=bool(m.get("trust_remote_code", False)),
        loop=None if loop is None else LoopConfig.from_dict(loop, strict=False),
        task=",".join(tasks), task_version=version,
        num_fewshot=t.get("num_fewshot"), fewshot_seed=int(ev.get("fewshot_seed", 1234)),
        limit=check_limit(t.get("limit")), apply_chat_template=t.get("apply_chat_template", False),
        fewshot_as_multiturn=bool(t.get("fewshot_as_multiturn", False)),
        system_instruction=t.get("system_instruction"), gen_kwargs=t.get("gen_kwargs"),
        max_length=ev.get("max_length"), batch_size=batch_size(ev.get("batch_size", 16)),
        seed=int(ev.get("seed", 1234)),
        model_name=str(m.get("name", "")), task_name=str(t.get("name", "")),
        loop_name="baseline" if loop is None else loop_name, metric=t.get("metric", "acc,none"),
        aggregate=t.get("aggregate"), unsafe_code=bool(t.get("unsafe_code", False)),
        include_path=t.get("include_path"),
    )
    return canonical_spec(spec, arch if arch is not None else model_arch(spec, m))


def scoring_only(spec: CellSpec) -> bool:
    """Whether every task of the cell is a loglikelihood task (harness.tasks.SHARED_OUTPUT_TYPES):
    its numbers come from full-sequence forwards without a cache, so kv / decode cannot change
    them."""
    from harness.tasks import SHARED_OUTPUT_TYPES, output_types

    kinds = output_types(spec.tasks, spec.include_path)
    return bool(kinds) and kinds <= SHARED_OUTPUT_TYPES


def canonical_spec(spec: CellSpec, arch: ModelArch) -> CellSpec:
    """`spec` with its loop made canonical for the model (`canonical_loop`); a baseline is
    returned unchanged. A loop the model cannot run raises SpecError naming the model, its
    layers and the bad value."""
    if spec.loop is None:
        return spec
    from looping import LoopConfigError

    try:
        loop = canonical_loop(spec.loop, arch, scoring_only=scoring_only(spec))
    except (LoopConfigError, SpecError) as e:
        where = spec.model_name or spec.model
        facts = f" ({arch.text()})" if arch.n_layers else ""
        # the cause only (the value names itself), so a grid's cells that share it give one line
        raise SpecError(f"model={where}{facts}: {e}") from None
    return dataclasses.replace(spec, loop=loop)
