"""spec: what one sweep cell is, and its identity.

    spec = CellSpec(model="Qwen/Qwen3-4B-Instruct-2507", task="commonsense_qa", num_fewshot=7,
                    loop=LoopConfig(window="15:19", k=3, integrator="euler"))
    cell_id(spec)            # '3f2a9c1e0b7d': sha256 over ID_FIELDS
    spec.baseline()          # the same spec without looping: the one definition of a baseline

Owns: `CellSpec` (frozen), `ID_FIELDS` and `cell_id` (the identity of a cell's numbers), the
baseline of a spec, the identity helpers (`weights_hash` of a local model folder, `task_version`
of an lm-eval task), `resolve_model_path` (`embedded` -> the embedded model's folder) and
`spec_from_config` (one composed sweep config -> one CellSpec). Nothing here loads weights.

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
import hashlib
import json
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
    from harness.tasks import manager_for

    tasks = list(tasks)
    tm = manager_for(tasks, include_path)
    parts = []
    for t in tasks:
        entry = tm.task_index[t]
        cfg = entry.cfg or {}
        if not cfg and entry.yaml_path:
            from lm_eval.tasks._yaml_loader import load_yaml
            cfg = load_yaml(entry.yaml_path, resolve_func=False, recursive=True)
        version = ((cfg.get("metadata") or {}).get("version", "yaml") if isinstance(cfg, Mapping)
                   else "yaml")
        h = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode())
        for p in _local_files(cfg):
            h.update(p.read_bytes())
        parts.append(f"{version}+{h.hexdigest()[:8]}")
    return ",".join(parts)


# ---- from a composed sweep config --------------------------------------------------------------
def batch_size(value) -> int:
    """eval.batch_size as a number >= 1. 'auto' is refused: lm-eval picks it from the free memory
    of the moment, and the batch size changes padding and therefore scores, so it is part of the
    cell id and must be known before the cell runs."""
    text = str(value).strip()
    if text.startswith("auto"):
        raise ValueError(f"eval.batch_size={value}: not supported: the batch size changes "
                         f"padding and therefore the scores, and is part of the cell id; give "
                         f"a number (default 16; lower it if a cell runs out of memory)")
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"eval.batch_size={value}: a whole number >= 1")
    return int(text)


def spec_from_config(cfg, *, loop_name: str = "", store: str | os.PathLike | None = None
                     ) -> CellSpec:
    """The CellSpec of one composed sweep config (harness/configs/sweep.yaml). Resolves
    model=embedded and hashes local model folders; reads the task's version."""
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
    tasks = (t["task"] if isinstance(t["task"], list)
             else [x for x in str(t["task"]).split(",") if x])
    loop = c.get("loop")
    return CellSpec(
        model=str(Path(path).expanduser().resolve()) if local else path,
        revision=None if local else m.get("revision"), weights_hash=wh,
        dtype=m.get("dtype", "bfloat16"), attn_implementation=m.get("attn_implementation"),
        trust_remote_code=bool(m.get("trust_remote_code", False)),
        loop=None if loop is None else LoopConfig.from_dict(loop, strict=False),
        task=",".join(tasks), task_version=task_version(tasks, t.get("include_path")),
        num_fewshot=t.get("num_fewshot"), fewshot_seed=int(ev.get("fewshot_seed", 1234)),
        limit=t.get("limit"), apply_chat_template=t.get("apply_chat_template", False),
        fewshot_as_multiturn=bool(t.get("fewshot_as_multiturn", False)),
        system_instruction=t.get("system_instruction"), gen_kwargs=t.get("gen_kwargs"),
        max_length=ev.get("max_length"), batch_size=batch_size(ev.get("batch_size", 16)),
        seed=int(ev.get("seed", 1234)),
        model_name=str(m.get("name", "")), task_name=str(t.get("name", "")),
        loop_name="baseline" if loop is None else loop_name, metric=t.get("metric", "acc,none"),
        aggregate=t.get("aggregate"), unsafe_code=bool(t.get("unsafe_code", False)),
        include_path=t.get("include_path"),
    )
