"""record: the typed result of one cell, the one home of the record schema (docs/results-schema.md).

    rec = build_record(spec, results, status="ok", error=None, wall_time_s=12.3, device="cpu",
                       lm=lm)
    text = rec.to_json()                       # what <store>/cells/<cell_id>.json holds
    CellRecord.from_json(text) == rec          # True: every record round-trips
    rec.status, rec["status"]                  # typed fields; the JSON keys read the same

Owns: `CellRecord` (schema version, identity, status, the spec as `CellSpec.to_dict()`, the
resolved loop, the baseline's id, metrics, per-sample rows, cost, diagnostics, environment,
lm-eval's config), its validation (`RecordError` names what is wrong) and `build_record`, which
makes one from a finished (or failed) lm-eval call. The writer (harness.run), the store reader
(harness.store) and through it the report all use this type; nothing else parses records.
"""
from __future__ import annotations

import dataclasses
import json
import platform
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .spec import CellSpec, cell_id, package_version

SCHEMA_VERSION = 2          # 2: canonical, location-free cell ids (1: harness.store.migrate_ids)
STATUSES = ("ok", "failed", "oom")
REQUIRED = ("schema_version", "cell_id", "status", "spec")


class RecordError(ValueError):
    """A cell record cannot be read or written; the message names the file or the field."""


@dataclass(frozen=True)
class CellRecord:
    """One cell's result. Field names are the JSON keys; `rec["key"]` reads a field too."""
    cell_id: str
    status: str                                 # ok | failed | oom
    spec: dict                                  # CellSpec.to_dict()
    schema_version: int = SCHEMA_VERSION
    error: str | None = None                    # traceback text when not ok
    loop_resolved: dict | None = None           # ResolvedLoop.record(); None for baselines
    baseline_id: str | None = None              # cell id of CellSpec.baseline(); None: a baseline
    metrics: dict = field(default_factory=dict)         # task -> {metric: value}
    primary_metric: str | None = None
    samples: dict = field(default_factory=dict)         # task -> [{doc_id, hashes, score}]
    cost: dict = field(default_factory=dict)            # wall_time_s, peak_mem_bytes, passes
    diagnostics: dict = field(default_factory=dict)     # routing_change_rate
    env: dict = field(default_factory=dict)             # package versions, git sha, device, host
    lm_eval_config: dict | None = None
    model_provenance: dict | None = None        # what a fetched asset model is (harness.assets);
                                                # written only when set

    def __post_init__(self):
        if not isinstance(self.cell_id, str) or not self.cell_id:
            raise RecordError(f"record cell_id {self.cell_id!r}: a non-empty string")
        if self.status not in STATUSES:
            raise RecordError(f"record status {self.status!r}; valid: {', '.join(STATUSES)}")
        if isinstance(self.schema_version, bool) or not isinstance(self.schema_version, int):
            raise RecordError(f"record schema_version {self.schema_version!r}: an integer")
        if self.schema_version > SCHEMA_VERSION:
            raise RecordError(f"record schema_version {self.schema_version} is newer than this "
                              f"loopsweep's ({SCHEMA_VERSION}); update loopsweep to read it")
        for name in ("spec", "metrics", "samples", "cost", "diagnostics", "env"):
            if not isinstance(getattr(self, name), Mapping):
                raise RecordError(f"record {name}: a mapping, not "
                                  f"{type(getattr(self, name)).__name__}")
        for name in ("loop_resolved", "lm_eval_config", "model_provenance"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, Mapping):
                raise RecordError(f"record {name}: a mapping or null, not {type(v).__name__}")

    # ---- the spec's view ------------------------------------------------------------------
    @property
    def loop(self) -> dict | None:
        """The spec's loop fields (LoopConfig.to_dict()), None for a baseline."""
        return self.spec.get("loop")

    @property
    def is_baseline(self) -> bool:
        return self.loop is None

    @property
    def tasks(self) -> list[str]:
        return [t for t in str(self.spec.get("task") or "").split(",") if t]

    def cell_spec(self) -> CellSpec:
        """The spec as a CellSpec (needs every field: records written by run_cell have them)."""
        return CellSpec.from_dict(self.spec)

    # ---- mapping-style reads of the JSON keys ----------------------------------------------
    def __getitem__(self, key: str) -> Any:
        if key not in _FIELDS:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in _FIELDS else default

    # ---- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The JSON object, keys in schema order (optional keys only when set)."""
        return {name: getattr(self, name) for name in _ORDER
                if name not in OPTIONAL or getattr(self, name) is not None}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, default=json_default, allow_nan=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str | None = None) -> "CellRecord":
        """A record from its JSON object. Missing required keys, unknown keys and bad values raise
        RecordError naming `source` (a file) when given."""
        where = f"cell record {source}: " if source else ""
        if not isinstance(d, Mapping):
            raise RecordError(f"{where}not a cell record (a JSON object is needed)")
        missing = [k for k in REQUIRED if k not in d]
        if missing:
            raise RecordError(f"{where}record lacks {missing}; see docs/results-schema.md")
        unknown = sorted(set(d) - set(_FIELDS))
        if unknown:
            raise RecordError(f"{where}unknown record key(s) {unknown}; valid: {list(_ORDER)}")
        kwargs = {k: v for k, v in d.items()}
        for name in ("metrics", "samples", "cost", "diagnostics", "env"):
            if kwargs.get(name, 0) is None:         # written as null: the empty mapping
                kwargs[name] = {}
        try:
            return cls(**kwargs)
        except RecordError as e:
            raise RecordError(f"{where}{e}") from None

    @classmethod
    def from_json(cls, text: str, *, source: str | None = None) -> "CellRecord":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise RecordError(f"broken cell record {source or '(text)'}: not valid JSON ({e})"
                              ) from None
        return cls.from_dict(d, source=source)


_ORDER = ("schema_version", "cell_id", "status", "error", "spec", "loop_resolved", "baseline_id",
          "metrics", "primary_metric", "samples", "cost", "diagnostics", "env", "lm_eval_config",
          "model_provenance")
OPTIONAL = frozenset({"model_provenance"})
_FIELDS = frozenset(f.name for f in dataclasses.fields(CellRecord))
assert _FIELDS == set(_ORDER), "CellRecord's fields and the schema order must name the same keys"


def json_default(o):
    if hasattr(o, "item"):          # numpy / torch scalars
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    return repr(o)


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item")
                                 else repr(o)))


# ---- building a record from a run ----------------------------------------------------------------
def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except Exception:
        return None


def environment(device: str) -> dict:
    return {"transformers": package_version("transformers"), "lm_eval": package_version("lm_eval"),
            "torch": package_version("torch"), "python": platform.python_version(),
            "git_sha": _git_sha(), "device": device, "hostname": socket.gethostname()}


def build_record(spec: CellSpec, results: dict | None, *, status: str, error: str | None,
                 wall_time_s: float, device: str, lm=None,
                 peak_mem_bytes: int | None = None) -> CellRecord:
    """The record of one cell. The resolved loop and its window passes come from the adapter's
    loop handle (`lm.handle.resolved`: resolved once, against the model that ran); a cell that
    failed before the loop was applied records the passes its integrator implies and no resolved
    loop."""
    loop_resolved = None
    window_passes = 0 if spec.loop is None else None
    handle = getattr(lm, "handle", None)
    if handle is not None:
        loop_resolved = handle.resolved.record()
        window_passes = handle.resolved.passes
    elif spec.loop is not None:
        from looping import get_integrator
        window_passes = get_integrator(spec.loop.integrator).passes(spec.loop)
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
            except Exception as e:   # a task without this per-sample metric keeps its metrics
                print(f"[loopsweep] no per-sample rows for {t}: {e}", file=sys.stderr)
        if spec.aggregate:
            name, agg_metric = spec.aggregate
            vals = [(metrics.get(t) or {}).get(agg_metric) for t in spec.tasks]
            vals = [float(v) for v in vals if isinstance(v, (int, float))]
            metrics[name] = {agg_metric: sum(vals) / len(vals) if vals else None,
                             "n_tasks": len(vals)}
        lm_eval_config = {k: results.get(k) for k in ("config", "configs", "versions", "n-shot",
                                                      "n-samples", "higher_is_better", "git_hash",
                                                      "date", "lm_eval_version",
                                                      "transformers_version", "max_length")
                          if k in results}
    for holder in (lm, handle):
        stats = getattr(holder, "loop_stats", None) or getattr(holder, "stats", None)
        if stats is not None and hasattr(stats, "layer_calls"):
            layer_calls = int(stats.layer_calls)
            break
    for holder in (lm, handle):
        rc = getattr(holder, "routing_change_rate", None)
        if isinstance(rc, (int, float)):
            routing_change = float(rc)
    return CellRecord.from_dict(_jsonable({
        "schema_version": SCHEMA_VERSION,
        "cell_id": cell_id(spec),
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
        "env": environment(device),
        "lm_eval_config": lm_eval_config,
        "model_provenance": _model_provenance(spec.model),
    }))


def _model_provenance(path: str) -> dict | None:
    """provenance.json of a model folder fetched by harness.assets (dequantised GGUF models: what
    they are and where they came from); None for any other model."""
    from harness.assets import read_provenance
    return read_provenance(path)
