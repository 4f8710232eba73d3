"""store: one JSON record per sweep cell, written atomically, and the tidy tables read from them.

Owns the on-disk layout under a results root (default `results/`):

    cells/<cell_id>.json    one record per cell (harness.record.CellRecord), tmp + os.replace
    locks/<cell_id>.lock    held while a process computes the cell (O_CREAT|O_EXCL): JSON with
                            its pid, host, time and Slurm job id (null outside Slurm)
    cache/<cell_id>/        lm-eval's per-cell request cache (resume after preemption)

Invariants: a record file is either absent or complete (never half written, also under SIGKILL);
a cell is computed by at most one process at a time (the lock); `load_results` never crashes on a
broken record: it skips the file and names it (`strict=True` raises instead). Every record is
read through `CellRecord`; the tables' rows come from its fields.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

from .record import SCHEMA_VERSION, STATUSES, CellRecord, RecordError, json_default

__all__ = ["SCHEMA_VERSION", "STATUSES", "RESULT_COLUMNS", "SAMPLE_COLUMNS", "RecordError",
           "CellRecord", "cells_dir", "record_path", "cache_dir", "lock_path", "write_json_atomic",
           "write_record", "read_json", "read_record", "status_of", "iter_records", "cell_lock",
           "result_rows", "load_results", "load_samples"]

RESULT_COLUMNS = [
    "cell_id", "baseline_id", "status", "error", "model", "model_name", "task", "task_name",
    "num_fewshot", "limit", "batch_size", "seed", "is_baseline", "integrator", "k", "window",
    "window_centre", "window_width", "mode", "kv", "decode", "routing", "beta", "alpha", "metric",
    "value", "stderr", "n", "window_passes", "wall_time_s", "peak_mem_bytes", "routing_change_rate",
]
SAMPLE_COLUMNS = ["cell_id", "task", "doc_id", "doc_hash", "prompt_hash", "target_hash", "score"]


# ---- paths ---------------------------------------------------------------------------------
def cells_dir(root: str | os.PathLike) -> Path:
    return Path(root) / "cells"


def record_path(root: str | os.PathLike, cell_id: str) -> Path:
    return cells_dir(root) / f"{cell_id}.json"


def cache_dir(root: str | os.PathLike, cell_id: str) -> Path:
    """lm-eval's request cache of ONE cell: its key has no model identity, so never share it."""
    return Path(root) / "cache" / cell_id


def lock_path(root: str | os.PathLike, cell_id: str) -> Path:
    return Path(root) / "locks" / f"{cell_id}.lock"


# ---- atomic JSON -----------------------------------------------------------------------------
def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write `obj` as JSON to `path` so that readers see the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, default=json_default, allow_nan=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_record(root: str | os.PathLike, record: CellRecord | Mapping) -> Path:
    """Write a record (a CellRecord, or its JSON object: validated as one) atomically."""
    if not isinstance(record, CellRecord):
        record = CellRecord.from_dict(record)
    return write_json_atomic(record_path(root, record.cell_id), record.to_dict())


def read_json(path: str | os.PathLike) -> CellRecord:
    """The record in one file; a broken or malformed file raises RecordError naming it."""
    path = Path(path)
    with open(path) as f:
        text = f.read()
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordError(f"broken cell record {path}: not valid JSON ({e}); delete it to recompute "
                          f"the cell") from None
    if not isinstance(raw, dict) or "cell_id" not in raw or "status" not in raw:
        raise RecordError(f"broken cell record {path}: not a cell record (no cell_id / status)")
    return CellRecord.from_dict(raw, source=str(path))


def read_record(root: str | os.PathLike, cell_id: str) -> CellRecord | None:
    """The cell's record, or None if there is none. A broken file raises RecordError."""
    path = record_path(root, cell_id)
    if not path.exists():
        return None
    return read_json(path)


def status_of(root: str | os.PathLike, cell_id: str) -> str | None:
    """'ok' / 'failed' / 'oom', None when missing, 'broken' when the file cannot be read."""
    try:
        rec = read_record(root, cell_id)
    except RecordError:
        return "broken"
    return None if rec is None else rec.status


def iter_records(root: str | os.PathLike, *, strict: bool = False,
                 errors: list | None = None) -> Iterator[CellRecord]:
    """Every record under `<root>/cells`. Broken files are skipped and reported on stderr (and
    appended to `errors`), or raise with `strict=True`."""
    d = cells_dir(root)
    if not d.is_dir():
        return
    for path in sorted(d.glob("*.json")):
        try:
            yield read_json(path)
        except (RecordError, OSError) as e:
            if strict:
                raise
            if errors is not None:
                errors.append(str(e))
            print(f"[loopsweep] skipping {e}", file=sys.stderr)


# ---- the cell lock ---------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock_is_stale(path: Path, stale_s: float) -> bool:
    """A lock is stale when its process is gone (same host: pid check) or it is older than stale_s
    (another host, or a recycled pid)."""
    age = 0.0
    try:
        age = time.time() - path.stat().st_mtime
        info = json.loads(path.read_text() or "{}")
    except FileNotFoundError:
        return True
    except (OSError, ValueError):
        info = {}
    if age > stale_s:
        return True
    if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int):
        return not _pid_alive(info["pid"])
    return False


def _try_create(path: Path, payload: str) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(payload)
    return True


def _slurm_job() -> str | None:
    """The Slurm job holding a lock ('1234_5' for an array task), or None outside Slurm."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


@contextlib.contextmanager
def cell_lock(root: str | os.PathLike, cell_id: str, *, stale_s: float = 86400) -> Iterator[bool]:
    """Try to become the one process computing `cell_id`. Yields True when the lock is ours, False
    when a live process holds it. A lock left by a dead process on this host (SIGKILL,
    preemption), or older than `stale_s` from another host, is taken over."""
    path = lock_path(root, cell_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time(),
                          "slurm_job": _slurm_job()})
    acquired = _try_create(path, payload)
    if not acquired and _lock_is_stale(path, stale_s):
        # Break the stale lock under a second, short-lived lock, re-checking staleness once we hold
        # it: two processes that both saw it stale cannot both unlink and both win.
        breaker = path.with_suffix(".break")
        if breaker.exists() and time.time() - breaker.stat().st_mtime > 60:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(breaker)          # left by a process killed while breaking
        if _try_create(breaker, payload):
            try:
                if _lock_is_stale(path, stale_s):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                    acquired = _try_create(path, payload)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(breaker)
    try:
        yield acquired
    finally:
        if acquired:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


# ---- tidy tables -------------------------------------------------------------------------------
def _num(x):
    if x is None:
        return math.nan
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def result_rows(record: CellRecord) -> list[dict]:
    """The load_results rows of one record: one per task (plus aggregates) in its metrics; a cell
    without metrics (failed / oom) gives one row per task of its spec with value NaN."""
    spec = record.spec
    loop = record.loop
    res = record.loop_resolved or {}
    cost = record.cost
    diag = record.diagnostics
    metric = record.primary_metric or spec.get("metric")
    base = {
        "cell_id": record.cell_id, "baseline_id": record.baseline_id or "",
        "status": record.status, "error": record.error or "",
        "model": spec.get("model"), "model_name": spec.get("model_name"),
        "task_name": spec.get("task_name"),
        "num_fewshot": spec.get("num_fewshot"), "limit": spec.get("limit"),
        "batch_size": spec.get("batch_size"), "seed": spec.get("seed"),
        "is_baseline": loop is None,
        "integrator": loop.get("integrator") if loop else None,
        "k": loop.get("k") if loop else None,
        "window": res.get("window_layers", loop.get("window")) if loop else None,
        "window_centre": _num(res.get("window_centre")) if loop else math.nan,
        "window_width": res.get("window_width") if loop else None,
        "mode": res.get("mode_resolved", loop.get("mode")) if loop else None,
        "kv": loop.get("kv") if loop else None,
        "decode": loop.get("decode") if loop else None,
        "routing": res.get("routing_resolved", loop.get("routing")) if loop else None,
        "beta": _num(loop.get("beta")) if loop else math.nan,
        "alpha": _num(loop.get("alpha")) if loop else math.nan,
        "metric": metric,
        "window_passes": cost.get("window_passes"),
        "wall_time_s": _num(cost.get("wall_time_s")),
        "peak_mem_bytes": _num(cost.get("peak_mem_bytes")),
        "routing_change_rate": _num(diag.get("routing_change_rate")),
    }
    if not record.metrics:
        tasks = record.tasks or [None]
        return [dict(base, task=t, value=math.nan, stderr=math.nan, n=0) for t in tasks]
    rows = []
    for task, m in record.metrics.items():
        m = m or {}
        name, _, filt = (metric or "").partition(",")
        stderr_key = f"{name}_stderr,{filt}" if filt else f"{name}_stderr"
        n = len(record.samples.get(task) or [])
        if not n and isinstance(m.get("n"), (int, float)):
            n = int(m["n"])
        rows.append(dict(base, task=task, value=_num(m.get(metric)), stderr=_num(m.get(stderr_key)),
                         n=n))
    return rows


def load_results(root: str | os.PathLike = "results", *, strict: bool = False,
                 status: str | None = None):
    """One row per cell x task (primary metric); columns RESULT_COLUMNS (docs/results-schema.md).
    Broken record files are skipped with a message naming them (`strict=True` raises)."""
    import pandas as pd

    rows = [r for rec in iter_records(root, strict=strict) for r in result_rows(rec)]
    df = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    if status is not None:
        df = df[df["status"] == status].reset_index(drop=True)
    return df


def load_samples(root: str | os.PathLike = "results", *, strict: bool = False):
    """One row per cell x task x document: cell_id, task, doc_id, doc_hash, prompt_hash,
    target_hash, score (the primary metric of that sample)."""
    import pandas as pd

    rows = []
    for rec in iter_records(root, strict=strict):
        for task, samples in rec.samples.items():
            for s in samples or []:
                rows.append({"cell_id": rec.cell_id, "task": task,
                             **{c: s.get(c) for c in SAMPLE_COLUMNS[2:]}})
    return pd.DataFrame(rows, columns=SAMPLE_COLUMNS)
