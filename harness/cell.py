"""cell: one sweep cell = (model, loop config or none, task, evaluation settings), a pure function
of a frozen spec.

    spec = CellSpec(model="Qwen/Qwen3-4B-Instruct-2507", task="commonsense_qa", num_fewshot=7,
                    loop=LoopConfig(window="15:19", k=3, integrator="euler"))
    result = run_cell(spec, store="results")        # -> CellResult; results/cells/<cell_id>.json

Owns: `CellSpec`, `ID_FIELDS` and `cell_id` (the identity of a cell's numbers), the baseline of a
spec (`spec.baseline()`: the same spec with loop=None), the in-process model cache (one model
loaded at a time, reused by every cell that shares it), and `run_cell` / `run_cells` (skip `ok`
records, retry failed ones, a per-cell lock so concurrent jobs never compute a cell twice, a
per-cell lm-eval request cache so a preempted cell resumes its finished requests).

ID_FIELDS, the fields that change the numbers and therefore the id (docs/sweeps.md repeats them):
    model               the Hugging Face id; for a local model folder its weights hash instead of
                        the path (moving the folder keeps the id, changing a weight changes it)
    revision            the Hub revision (null = default branch)
    weights_hash        sha256 over the files of a local model folder (null for Hub ids)
    dtype, attn_implementation
    loop                LoopConfig.to_dict() (null = the baseline)
    task, task_version  lm-eval task name(s); the task's metadata version + a hash of its resolved
                        YAML config and of any local data files it names
    num_fewshot, fewshot_seed, limit
    apply_chat_template, fewshot_as_multiturn, system_instruction
    gen_kwargs, max_length, batch_size, seed
    transformers_version, lm_eval_version, torch_version
Not in the id: output paths (store), logging / wandb settings, labels (model_name, task_name,
loop_name), metric / aggregate (how a result is summarised, not computed), device, include_path
(where the task file was found; its content is in task_version), trust_remote_code, unsafe_code.
"""
from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from looping import LoopConfig

from . import store as _store

ID_FIELDS: tuple[str, ...] = (
    "model", "revision", "weights_hash", "dtype", "attn_implementation", "loop", "task",
    "task_version", "num_fewshot", "fewshot_seed", "limit", "apply_chat_template",
    "fewshot_as_multiturn", "system_instruction", "gen_kwargs", "max_length", "batch_size", "seed",
    "transformers_version", "lm_eval_version", "torch_version",
)
ID_LENGTH = 12
EMBEDDED = "embedded"          # model path that names the project's embedded model


def _version(pkg: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(pkg)
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class CellSpec:
    """Everything one cell computes from. Frozen; build with `CellSpec(...)` or `spec_from_config`."""
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
    transformers_version: str = field(default_factory=lambda: _version("transformers"))
    lm_eval_version: str = field(default_factory=lambda: _version("lm_eval"))
    torch_version: str = field(default_factory=lambda: _version("torch"))
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
            object.__setattr__(self, "aggregate", (self.aggregate["name"], self.aggregate["metric"]))
        elif isinstance(self.aggregate, list):
            object.__setattr__(self, "aggregate", tuple(self.aggregate))
        if self.batch_size is None or int(self.batch_size) < 1:
            raise ValueError(f"batch_size={self.batch_size!r}: a fixed integer >= 1 (batch size changes "
                             f"scores; 'auto' is not allowed in a sweep)")

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
        """The baseline of this model x task: the same spec without looping."""
        return dataclasses.replace(self, loop=None, loop_name="baseline")

    def model_key(self) -> tuple:
        """What one loaded model is: cells with equal keys share one load."""
        return (self.model, self.revision, self.weights_hash, self.dtype, self.attn_implementation,
                self.trust_remote_code)

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


# ---- identity helpers: local weights and task versions ---------------------------------------
_HASH_MEMO: dict[tuple, str] = {}
_HASHED_SUFFIXES = (".safetensors", ".bin", ".pt", ".json", ".model", ".txt", ".tiktoken", ".py")


def weights_hash(folder: str | os.PathLike, *, memo_file: str | os.PathLike | None = None) -> str:
    """sha256 over the (name, content) of a local model folder's weight, config and tokenizer
    files. Memoised per (path, sizes, mtimes) in-process and in `memo_file` (big checkpoints are
    hashed once)."""
    folder = Path(folder).resolve()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in _HASHED_SUFFIXES
                   and ".cache" not in p.parts)
    if not files:
        raise FileNotFoundError(f"no model files under {folder}")
    key = (str(folder),) + tuple((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                                 for p in files)
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
        _store.write_json_atomic(memo_file, memo)
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


_TASK_MANAGERS: dict[tuple, Any] = {}


def task_manager(tasks: Iterable[str] = (), include_path: str | None = None):
    """An lm-eval TaskManager that knows `tasks`: the project's local tasks
    (harness.tasks.task_manager(): fixtures and embedded tasks) plus `include_path`, and lm-eval's
    own index only when a task is not local (that index takes ~12 s; built once per process)."""
    from harness.tasks import task_manager as project_tm

    tasks = list(tasks)
    extra = (include_path,) if include_path else ()
    key = (include_path, tuple(tasks))
    if key in _TASK_MANAGERS:
        return _TASK_MANAGERS[key]
    local = _TASK_MANAGERS.get(("__local__", include_path))
    if local is None:
        local = _TASK_MANAGERS[("__local__", include_path)] = project_tm(extra_paths=extra)
    tm = local
    if not all(t in local.task_index for t in tasks):
        tm = _TASK_MANAGERS.get(("__defaults__", include_path))
        if tm is None:
            tm = _TASK_MANAGERS[("__defaults__", include_path)] = project_tm(include_defaults=True,
                                                                            extra_paths=extra)
    unknown = [t for t in tasks if t not in tm.task_index]
    if unknown:
        from harness.tasks.real import missing_data_message
        if (msg := missing_data_message(unknown)) is not None:
            raise FileNotFoundError(msg)       # a real-data task before `loopsweep-assets fetch`
        import difflib
        close = difflib.get_close_matches(unknown[0], tm.all_tasks, n=3)
        raise ValueError(f"unknown lm-eval task {unknown[0]!r}" + (f"; did you mean {close}?" if close else ""))
    _TASK_MANAGERS[key] = tm
    return tm


def _local_files(obj) -> list[Path]:
    out = []
    if isinstance(obj, Mapping):
        for v in obj.values():
            out += _local_files(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            out += _local_files(v)
    elif isinstance(obj, str) and len(obj) < 4096 and ("/" in obj or os.sep in obj):
        p = Path(obj)
        if p.is_absolute() and p.is_file():
            out.append(p)
    return out


def task_version(tasks: Iterable[str], include_path: str | None = None) -> str:
    """'<metadata.version>+<hash>' per task (joined by ','): the version lm-eval reports plus a hash
    of the task's resolved YAML config and of the local data files it names (fixtures change)."""
    tasks = list(tasks)
    tm = task_manager(tasks, include_path)
    parts = []
    for t in tasks:
        entry = tm.task_index[t]
        cfg = entry.cfg or {}
        if not cfg and entry.yaml_path:
            from lm_eval.tasks._yaml_loader import load_yaml
            cfg = load_yaml(entry.yaml_path, resolve_func=False, recursive=True)
        version = (cfg.get("metadata") or {}).get("version", "yaml") if isinstance(cfg, Mapping) else "yaml"
        h = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode())
        for p in _local_files(cfg):
            h.update(p.read_bytes())
        parts.append(f"{version}+{h.hexdigest()[:8]}")
    return ",".join(parts)


# ---- from a composed Hydra config ------------------------------------------------------------
def spec_from_config(cfg, *, loop_name: str = "", store: str | os.PathLike | None = None) -> CellSpec:
    """The CellSpec of one composed sweep config (configs/sweep.yaml). Resolves model=embedded and
    hashes local model folders; reads the task's version."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):     # resolve the cell's nodes only (not hydra's own)
        c = {k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg[k], DictConfig)
             else cfg[k] for k in ("model", "task", "eval", "loop") if k in cfg}
    else:
        c = dict(cfg)
    m, t, ev = c["model"], c["task"], c.get("eval") or {}
    path = resolve_model_path(str(m["path"]))
    local = Path(path).expanduser().exists()
    memo = Path(store) / "cache" / "weights-hashes.json" if store else None
    wh = weights_hash(path, memo_file=memo) if local else None
    tasks = t["task"] if isinstance(t["task"], list) else [x for x in str(t["task"]).split(",") if x]
    loop = c.get("loop")
    return CellSpec(
        model=str(Path(path).expanduser().resolve()) if local else path,
        revision=None if local else m.get("revision"), weights_hash=wh,
        dtype=m.get("dtype", "bfloat16"), attn_implementation=m.get("attn_implementation"),
        trust_remote_code=bool(m.get("trust_remote_code", False)),
        loop=None if loop is None else LoopConfig.from_dict(loop),
        task=",".join(tasks), task_version=task_version(tasks, t.get("include_path")),
        num_fewshot=t.get("num_fewshot"), fewshot_seed=int(ev.get("fewshot_seed", 1234)),
        limit=t.get("limit"), apply_chat_template=t.get("apply_chat_template", False),
        fewshot_as_multiturn=bool(t.get("fewshot_as_multiturn", False)),
        system_instruction=t.get("system_instruction"), gen_kwargs=t.get("gen_kwargs"),
        max_length=ev.get("max_length"), batch_size=int(ev.get("batch_size", 8)),
        seed=int(ev.get("seed", 1234)),
        model_name=str(m.get("name", "")), task_name=str(t.get("name", "")),
        loop_name="baseline" if loop is None else loop_name, metric=t.get("metric", "acc,none"),
        aggregate=t.get("aggregate"), unsafe_code=bool(t.get("unsafe_code", False)),
        include_path=t.get("include_path"),
    )


# ---- the model cache ---------------------------------------------------------------------------
class ModelCache:
    """Holds at most one loaded (model, tokenizer); cells of the same model reuse it. Loading a
    different model frees the previous one first (a 30B model and a second one never coexist)."""

    def __init__(self):
        self.key = None
        self.model = None
        self.tokenizer = None
        self.loads = 0

    def get(self, spec: CellSpec, device: str):
        key = spec.model_key() + (device,)
        if key != self.key:
            self.clear()
            self.model, self.tokenizer = load_model(spec, device)
            self.key = key
            self.loads += 1
        return self.model, self.tokenizer

    def clear(self):
        self.model = self.tokenizer = self.key = None
        gc.collect()
        try:
            import torch
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:
            pass


def load_model(spec: CellSpec, device: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = dict(revision=spec.revision, trust_remote_code=spec.trust_remote_code)
    dtype = getattr(torch, spec.dtype) if spec.dtype not in (None, "auto") else "auto"
    mkw = dict(kw, dtype=dtype)
    if spec.attn_implementation:
        mkw["attn_implementation"] = spec.attn_implementation
    if str(device).startswith("cuda"):
        mkw["device_map"] = device
    print(f"[loopsweep] loading {spec.model_name or spec.model} ({spec.model}, {spec.dtype}) on {device}",
          flush=True)
    model = AutoModelForCausalLM.from_pretrained(spec.model, **mkw)
    if not str(device).startswith("cuda"):
        model = model.to(device)
    model.eval()
    tok = AutoTokenizer.from_pretrained(spec.model, **kw)
    return model, tok


def default_device(device: str | None = None) -> str:
    if device:
        return device
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


# ---- running a cell --------------------------------------------------------------------------
@dataclass
class CellResult:
    cell_id: str
    status: str                 # ok | failed | oom (computed or found), busy (another process has it)
    computed: bool              # computed in this call (False: skipped or busy)
    path: Path
    record: dict | None = None
    wall_time_s: float = 0.0

    @property
    def error(self) -> str | None:
        return (self.record or {}).get("error")


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except Exception:
        return None


def _env(device: str) -> dict:
    return {"transformers": _version("transformers"), "lm_eval": _version("lm_eval"),
            "torch": _version("torch"), "python": platform.python_version(), "git_sha": _git_sha(),
            "device": device, "hostname": socket.gethostname()}


def _peak_mem(device: str) -> int | None:
    try:
        import torch
        if str(device).startswith("cuda") and torch.cuda.is_available():
            return int(torch.cuda.max_memory_allocated())
    except Exception:
        pass
    try:
        import resource
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024   # process peak RSS
    except Exception:
        return None


def _is_oom(exc: BaseException) -> bool:
    try:
        import torch
        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except Exception:
        pass
    return isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else repr(o)))


def evaluate_spec(spec: CellSpec, model, tokenizer, *, cache_path: str | None, allow_code_eval: bool):
    """One lm-eval call for the spec's task(s) through the project's adapter. Returns (results,
    lm): lm-eval's results dict (with samples) and the adapter instance."""
    from harness.adapter import LoopedLM, evaluate

    if spec.unsafe_code and not allow_code_eval:
        raise PermissionError(
            f"task {spec.task_name or spec.task} executes model-written code; run with "
            f"allow_code_eval=true to allow it (sets HF_ALLOW_CODE_EVAL=1 and confirm_run_unsafe_code)")
    if spec.unsafe_code:
        os.environ["HF_ALLOW_CODE_EVAL"] = "1"
    lm = LoopedLM(pretrained=model, tokenizer=tokenizer, loop=spec.loop, batch_size=spec.batch_size,
                  max_length=spec.max_length)
    kwargs = dict(
        task_manager=task_manager(spec.tasks, spec.include_path), num_fewshot=spec.num_fewshot,
        limit=spec.limit, apply_chat_template=spec.apply_chat_template,
        fewshot_as_multiturn=spec.fewshot_as_multiturn, system_instruction=spec.system_instruction,
        gen_kwargs=spec.gen_kwargs, random_seed=spec.seed, numpy_random_seed=spec.seed,
        torch_random_seed=spec.seed, fewshot_random_seed=spec.fewshot_seed, log_samples=True,
        use_cache=cache_path,
    )
    if spec.unsafe_code:
        kwargs["confirm_run_unsafe_code"] = True
    return evaluate(lm, spec.tasks, **kwargs), lm


def build_record(spec: CellSpec, results: dict | None, *, status: str, error: str | None,
                 wall_time_s: float, device: str, model=None, lm=None,
                 peak_mem_bytes: int | None = None) -> dict:
    cid = cell_id(spec)
    loop_resolved = None
    window_passes = 0 if spec.loop is None else None
    if spec.loop is not None:
        from looping import get_integrator
        window_passes = get_integrator(spec.loop.integrator).passes(spec.loop)
        if model is not None:
            try:
                loop_resolved = spec.loop.resolve(model).record()
            except Exception:
                loop_resolved = None
    metrics, samples, lm_eval_config = {}, {}, None
    layer_calls, routing_change = None, None
    if results is not None:
        from harness.adapter import sample_rows
        res = results.get("results") or {}
        # every task lm-eval reports: the spec's tasks, and for a group its subtasks too
        for t in list(spec.tasks) + [t for t in res if t not in spec.tasks]:
            if t in res:
                metrics[t] = {k: v for k, v in (res.get(t) or {}).items() if k != "alias"}
        for t in (results.get("samples") or {}):
            try:
                samples[t] = sample_rows(results, t, spec.metric)
            except Exception as e:          # a task without this per-sample metric keeps its metrics
                print(f"[loopsweep] no per-sample rows for {t}: {e}", file=sys.stderr)
        if spec.aggregate:
            name, agg_metric = spec.aggregate
            vals = [(metrics.get(t) or {}).get(agg_metric) for t in spec.tasks]
            vals = [float(v) for v in vals if isinstance(v, (int, float))]
            metrics[name] = {agg_metric: sum(vals) / len(vals) if vals else None, "n_tasks": len(vals)}
        lm_eval_config = {k: results.get(k) for k in ("config", "configs", "versions", "n-shot",
                                                      "n-samples", "higher_is_better", "git_hash",
                                                      "date", "lm_eval_version",
                                                      "transformers_version", "max_length")
                          if k in results}
    for holder in (lm, getattr(lm, "handle", None)):
        stats = getattr(holder, "loop_stats", None) or getattr(holder, "stats", None)
        if stats is not None and hasattr(stats, "layer_calls"):
            layer_calls = int(stats.layer_calls)
            break
    for holder in (lm, getattr(lm, "handle", None)):
        rc = getattr(holder, "routing_change_rate", None)
        if isinstance(rc, (int, float)):
            routing_change = float(rc)
    return _jsonable({
        "schema_version": _store.SCHEMA_VERSION,
        "cell_id": cid,
        "status": status,
        "error": error,
        "spec": spec.to_dict(),
        "loop_resolved": loop_resolved,
        "baseline_id": None if spec.is_baseline else cell_id(spec.baseline()),
        "metrics": metrics,
        "primary_metric": spec.metric,
        "samples": samples,
        "cost": {"wall_time_s": round(wall_time_s, 3), "peak_mem_bytes": peak_mem_bytes,
                 "window_passes": window_passes, "layer_calls": layer_calls},
        "diagnostics": {"routing_change_rate": routing_change},
        "env": _env(device),
        "lm_eval_config": lm_eval_config,
        "model_provenance": _model_provenance(spec.model),
    })


def _model_provenance(path: str) -> dict | None:
    """provenance.json of a model folder fetched by harness.assets (dequantised GGUF models: what
    they are and where they came from); None for any other model."""
    from harness.assets import read_provenance
    return read_provenance(path)


def describe(spec: CellSpec) -> str:
    """A one-line human description of a cell."""
    if spec.loop is None:
        what = "baseline"
    else:
        lc = spec.loop
        what = f"{lc.integrator} k={lc.k} window={lc.window} mode={lc.mode} kv={lc.kv}"
        if lc.decode != "full":
            what += f" decode={lc.decode}" + (f"/{lc.decode_n}" if lc.decode == "first_n" else "")
    return f"{spec.model_name or spec.model} | {spec.task_name or spec.task} | {what}"


def run_cell(spec: CellSpec, *, store: str | os.PathLike = "results", models: ModelCache | None = None,
             force: bool = False, device: str | None = None, allow_code_eval: bool = False,
             lock_stale_s: float = 86400, tracker=None, label: str = "",
             log=print) -> CellResult:
    """Compute one cell unless its record is already `ok` (force=True recomputes). Failed / oom
    records are retried. Returns without computing when another live process holds the cell's
    lock (status 'busy'). The record is written atomically; the lm-eval request cache under
    <store>/cache/<cell_id> lets an interrupted cell resume its finished requests."""
    cid = cell_id(spec)
    path = _store.record_path(store, cid)
    prev = _store.status_of(store, cid)
    if prev == "ok" and not force:
        return CellResult(cid, "ok", False, path, None)
    with _store.cell_lock(store, cid, stale_s=lock_stale_s) as mine:
        if not mine:
            return CellResult(cid, "busy", False, path, None)
        if not force and _store.status_of(store, cid) == "ok":   # finished while we waited
            return CellResult(cid, "ok", False, path, None)
        models = models or ModelCache()
        device = default_device(device)
        cache = _store.cache_dir(store, cid)
        cache.mkdir(parents=True, exist_ok=True)
        if force:
            for f in cache.glob("*"):
                f.unlink()
        t0 = time.perf_counter()
        model = lm = results = None
        status, error = "ok", None
        try:
            try:
                import torch
                if device.startswith("cuda"):
                    torch.cuda.reset_peak_memory_stats()
            except Exception:
                pass
            model, tok = models.get(spec, device)
            results, lm = evaluate_spec(spec, model, tok, cache_path=str(cache / "lm"),
                                        allow_code_eval=allow_code_eval)
        except BaseException as e:       # noqa: BLE001 - a failed cell is a record, not a crash
            if isinstance(e, KeyboardInterrupt):
                raise
            status = "oom" if _is_oom(e) else "failed"
            error = "".join(traceback.format_exception(e))
        wall = time.perf_counter() - t0
        try:
            record = build_record(spec, results, status=status, error=error, wall_time_s=wall,
                                  device=device, model=model, lm=lm, peak_mem_bytes=_peak_mem(device))
        except Exception as e:
            status, error = "failed", "".join(traceback.format_exception(e))
            record = build_record(spec, None, status=status, error=error, wall_time_s=wall,
                                  device=device, peak_mem_bytes=_peak_mem(device))
        _store.write_record(store, record)
        if status == "ok":
            for f in cache.glob("*"):
                f.unlink()
            try:
                cache.rmdir()
            except OSError:
                pass
        if status == "oom":
            models.clear()
        if tracker is not None:
            tracker.log_cell(record, name=label or describe(spec))
        return CellResult(cid, status, True, path, record, wall)


# ---- a list of cells in one process ------------------------------------------------------------
def order_cells(specs: Iterable[CellSpec], *, baselines: bool = True) -> list[CellSpec]:
    """Unique cells grouped by model (so each model loads once), each model's baselines first."""
    seen, out = set(), []
    specs = list(specs)
    if baselines:
        specs = [s.baseline() for s in specs if not s.is_baseline] + specs
    groups: dict[tuple, list[CellSpec]] = {}
    for s in specs:
        cid = cell_id(s)
        if cid in seen:
            continue
        seen.add(cid)
        groups.setdefault(s.model_key(), []).append(s)
    for g in groups.values():
        out += sorted(g, key=lambda s: not s.is_baseline)
    return out


def run_cells(cells: list[tuple[CellSpec, str]], *, store: str | os.PathLike = "results",
              force: bool = False, device: str | None = None, allow_code_eval: bool = False,
              lock_stale_s: float = 86400, tracker=None, log=print,
              models: ModelCache | None = None) -> dict[str, list[str]]:
    """Run (spec, label) cells in order in this process with one shared model cache; prints one
    progress line per cell. Returns {'done': [...], 'skipped': [...], 'busy': [...],
    'failed': [...]} of cell ids."""
    models = models or ModelCache()
    summary = {"done": [], "skipped": [], "busy": [], "failed": []}
    n = len(cells)
    for i, (spec, label) in enumerate(cells, 1):
        cid = cell_id(spec)
        head = f"[cell {i}/{n}] {cid} {describe(spec)}"
        if not force and _store.status_of(store, cid) == "ok":
            log(f"{head}: skip (already ok)", flush=True)
            summary["skipped"].append(cid)
            continue
        log(f"{head}: computing ...", flush=True)
        r = run_cell(spec, store=store, models=models, force=force, device=device,
                     allow_code_eval=allow_code_eval, lock_stale_s=lock_stale_s, tracker=tracker,
                     label=label, log=log)
        if r.status == "busy":
            log(f"{head}: skip (another process is computing it)", flush=True)
            summary["busy"].append(cid)
        elif not r.computed:
            log(f"{head}: skip (finished by another process)", flush=True)
            summary["skipped"].append(cid)
        elif r.status == "ok":
            vals = ", ".join(f"{t}={(m or {}).get(spec.metric, float('nan')):.4f}"
                             for t, m in r.record["metrics"].items()
                             if isinstance((m or {}).get(spec.metric), (int, float)))
            log(f"{head}: ok in {r.wall_time_s:.1f}s  {spec.metric}: {vals}", flush=True)
            summary["done"].append(cid)
        else:
            last = (r.error or "").strip().splitlines()[-1:] or [""]
            log(f"{head}: {r.status.upper()} in {r.wall_time_s:.1f}s: {last[0]}", flush=True)
            summary["failed"].append(cid)
    return summary
