"""store: one JSON record per sweep cell, written atomically, and the tidy tables read from them.

Owns the on-disk layout under a results root (default `results/`):

    cells/<cell_id>.json    one record per cell (harness.record.CellRecord), tmp + os.replace
    locks/<cell_id>.lock    held while a process computes the cell: created with its content
                            (pid, host, time, Slurm job id) in one step, judged by it
    cache/<cell_id>/        lm-eval's per-cell request cache (resume after preemption)

Invariants: a record file is either absent or complete (never half written, also under SIGKILL);
a cell is computed by at most one process at a time (the lock); a lock is never trusted on no
evidence (judge_lock); reading never crashes on bytes: a file that does not decode, parse, fit the
record schema or match its own name is "broken" (one warning line naming it), recomputed by the
planner and skipped by `load_results` (`strict=True` raises instead). Every record is read through
`CellRecord`; the tables' rows come from its fields.
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
           "write_record", "read_json", "read_record", "check_record", "status_of", "iter_records",
           "cell_lock", "judge_lock", "read_lock", "lock_content", "slurm_job_state",
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
    """The record in one file. Anything that is not a whole record of this cell raises RecordError
    naming the file: bytes that are not UTF-8, text that is not JSON, a JSON value that does not
    fit the record schema, or a record whose `cell_id` is not the file's name (a record copied or
    renamed onto another cell's file must never stand for that cell)."""
    path = Path(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecordError(f"broken cell record {path}: not UTF-8 text (byte "
                          f"{data[e.start]:#04x} at offset {e.start})") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordError(f"broken cell record {path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict) or "cell_id" not in raw or "status" not in raw:
        raise RecordError(f"broken cell record {path}: not a cell record (no cell_id / status)")
    rec = CellRecord.from_dict(raw, source=str(path))
    if path.suffix == ".json" and rec.cell_id != path.stem:
        raise RecordError(f"broken cell record {path}: it holds cell {rec.cell_id!r}, not the "
                          f"cell its file is named after ({path.stem!r})")
    return rec


def read_record(root: str | os.PathLike, cell_id: str) -> CellRecord | None:
    """The cell's record, or None if there is none. A broken file raises RecordError."""
    path = record_path(root, cell_id)
    if not path.exists():
        return None
    return read_json(path)


def check_record(root: str | os.PathLike, cell_id: str) -> tuple[str | None, str | None]:
    """(status, problem): ('ok' / 'failed' / 'oom', None) for a readable record, (None, None) when
    there is none, ('broken', why) when the file cannot stand for the cell (read_json)."""
    try:
        rec = read_record(root, cell_id)
    except (RecordError, OSError) as e:
        return "broken", str(e)
    return (None if rec is None else rec.status), None


def status_of(root: str | os.PathLike, cell_id: str) -> str | None:
    """'ok' / 'failed' / 'oom', None when missing, 'broken' when the file cannot be read as this
    cell's record (it is recomputed and overwritten, atomically, like a failed one)."""
    return check_record(root, cell_id)[0]


def iter_records(root: str | os.PathLike, *, strict: bool = False,
                 errors: list | None = None, warn: bool = True) -> Iterator[CellRecord]:
    """Every record under `<root>/cells`. A broken file (read_json) is skipped with one warning
    line naming it on stderr (`warn=False`: no line) and its message appended to `errors`, or
    raises with `strict=True`."""
    d = cells_dir(root)
    if not d.is_dir():
        return
    for path in sorted(d.glob("*.json")):
        try:
            yield read_json(path)
        except (RecordError, OSError) as e:
            if strict:
                raise RecordError(str(e)) from None
            if errors is not None:
                errors.append(str(e))
            if warn:
                print(f"[loopsweep] skipping {' '.join(str(e).split())}", file=sys.stderr)


# ---- the cell lock ---------------------------------------------------------------------------
#: an empty or unreadable lock (an older loopsweep's, or a disk that filled while it was written)
#: is stale after this many seconds: locks are created with their content, so no live process
#: leaves one empty for longer
LOCK_GRACE_S = 60.0
#: Slurm environment -> lock content key (the job id is what squeue / sacct are asked about)
SLURM_VARS = {"slurm_job_id": "SLURM_JOB_ID", "slurm_array_job_id": "SLURM_ARRAY_JOB_ID",
              "slurm_array_task_id": "SLURM_ARRAY_TASK_ID"}
#: Slurm job states of a job that may still write (squeue / sacct)
SLURM_ALIVE = frozenset({"RUNNING", "PENDING", "CONFIGURING", "COMPLETING", "SUSPENDED",
                         "STOPPED", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
                         "SIGNALING", "STAGE_OUT"})


def slurm_job() -> str | None:
    """This process's Slurm job as scancel names it ('1234_5' in an array task), or None."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


def lock_content() -> dict:
    """What a lock says about its holder: pid, host, start time and, in a Slurm job, its ids
    (`slurm_job`: the scancel name, '1234_5' in an array; the raw SLURM_* ids beside it)."""
    info: dict[str, Any] = {"pid": os.getpid(), "host": socket.gethostname(),
                            "time": time.time(), "slurm_job": slurm_job()}
    for key, var in SLURM_VARS.items():
        if os.environ.get(var):
            info[key] = os.environ[var]
    return info


def read_lock(path: str | os.PathLike) -> dict | None:
    """The holder a lock file names, or None when it is missing, empty or unreadable."""
    try:
        info = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and isinstance(info.get("pid"), int) else None


def _pid_alive(pid: int, since: float | None = None) -> bool:
    """Whether process `pid` of this host lives (and, when /proc tells its start time, started
    before `since`: a recycled pid is not the lock's holder)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if since is not None:
        started = _process_start(pid)
        if started is not None and started > since + 2.0:
            return False
    return True


def _process_start(pid: int) -> float | None:
    """Start time (epoch seconds) of a process from /proc, or None where /proc does not say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime "))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def slurm_job_state(job_id: str, *, timeout: float = 10.0) -> str | None:
    """The Slurm state of `job_id` (RUNNING, PENDING, COMPLETED, CANCELLED, ...) from `squeue`,
    else `sacct`; 'NOT_QUEUED' when squeue answers that it does not know the job and sacct
    cannot say more; None when neither command is available or answers."""
    import shutil
    import subprocess

    queued = None                       # squeue answered: True (listed) / False (not listed)
    squeue = shutil.which("squeue")
    if squeue:
        try:
            r = subprocess.run([squeue, "-h", "-j", str(job_id), "-o", "%T"],
                               capture_output=True, text=True, timeout=timeout)
            if r.returncode == 0 and r.stdout.strip():
                return r.stdout.split()[0].upper()
            if r.returncode == 0 or "invalid job id" in r.stderr.lower():
                queued = False
        except (OSError, subprocess.SubprocessError):
            pass
    sacct = shutil.which("sacct")
    if sacct:
        try:
            r = subprocess.run([sacct, "-n", "-X", "-P", "-j", str(job_id), "-o", "State"],
                               capture_output=True, text=True, timeout=timeout)
            if r.returncode == 0 and r.stdout.strip():
                return r.stdout.split()[0].upper()
        except (OSError, subprocess.SubprocessError):
            pass
    return "NOT_QUEUED" if queued is False else None


def judge_lock(path: str | os.PathLike, stale_s: float = 86400) -> tuple[bool, str]:
    """(stale, why) of a lock file, judged by its content:
    - missing: stale (nothing holds it);
    - empty or unreadable: stale once older than LOCK_GRACE_S (by mtime);
    - this host: stale when its pid is dead (or recycled);
    - another host with a Slurm job id, where squeue / sacct answer: stale unless the job is
      running, pending or otherwise alive (SLURM_ALIVE);
    - another host and nothing to check: stale once older than `stale_s` (the last resort)."""
    path = Path(path)
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return True, "no lock"
    info = read_lock(path)
    if info is None:
        if not path.exists():
            return True, "no lock"
        if age > LOCK_GRACE_S:
            return True, f"an empty or unreadable lock, {age:.0f}s old"
        return False, (f"an empty or unreadable lock, {age:.0f}s old (taken over after "
                       f"{LOCK_GRACE_S:g}s)")
    pid, host = info["pid"], str(info.get("host"))
    holder = f"pid {pid} on {host}"
    if host == socket.gethostname():
        since = info.get("time") if isinstance(info.get("time"), (int, float)) else None
        if _pid_alive(pid, since):
            return False, f"{holder} (alive)"
        return True, f"{holder} is gone"
    job = info.get("slurm_job_id")
    if job:
        state = slurm_job_state(str(job))
        if state is not None:
            holder += f", Slurm job {job}"
            if state in SLURM_ALIVE:
                return False, f"{holder} ({state})"
            return True, f"{holder} is {state}"
    if age > stale_s:
        return True, f"{holder}, {age:.0f}s old (lock_stale_s={stale_s:g})"
    return False, (f"{holder}, {age:.0f}s old (cannot be checked from here: trusted until "
                   f"lock_stale_s={stale_s:g}s)")


def _try_create(path: Path, payload: str) -> bool:
    """Create `path` holding `payload` in one step (a temporary file hard-linked into place), so a
    lock is never seen without its content; False when `path` exists. Where hard links are not
    supported, falls back to O_CREAT|O_EXCL and a write."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError:             # no hard links on this filesystem
            pass
        try:
            fd2 = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd2, "w") as f:
            f.write(payload)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def cell_lock(root: str | os.PathLike, cell_id: str, *, stale_s: float = 86400) -> Iterator[bool]:
    """Try to become the one process computing `cell_id`. Yields True when the lock is ours, False
    when a live process holds it. The lock is created with its content (lock_content) in one step;
    a lock that judge_lock finds stale (dead pid on this host, a Slurm job that ended, an empty
    lock past its grace period, or another host's lock older than `stale_s`) is taken over."""
    path = lock_path(root, cell_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = json.dumps(lock_content())
    acquired = _try_create(path, payload)
    if not acquired and judge_lock(path, stale_s)[0]:
        # Break the stale lock under a second, short-lived lock, re-checking staleness once we hold
        # it: two processes that both saw it stale cannot both unlink and both win.
        breaker = path.with_suffix(".break")
        with contextlib.suppress(FileNotFoundError):
            if time.time() - breaker.stat().st_mtime > LOCK_GRACE_S:
                os.unlink(breaker)          # left by a process killed while breaking
        if _try_create(breaker, payload):
            try:
                if judge_lock(path, stale_s)[0]:
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
                 status: str | None = None, errors: list | None = None):
    """One row per cell x task (primary metric); columns RESULT_COLUMNS (docs/results-schema.md).
    Broken record files are skipped with a message naming them, also appended to `errors`
    (`strict=True` raises)."""
    import pandas as pd

    rows = [r for rec in iter_records(root, strict=strict, errors=errors)
            for r in result_rows(rec)]
    df = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    if status is not None:
        df = df[df["status"] == status].reset_index(drop=True)
    return df


def load_samples(root: str | os.PathLike = "results", *, strict: bool = False,
                 errors: list | None = None, warn: bool = True):
    """One row per cell x task x document: cell_id, task, doc_id, doc_hash, prompt_hash,
    target_hash, score (the primary metric of that sample). Broken files as in load_results."""
    import pandas as pd

    rows = []
    for rec in iter_records(root, strict=strict, errors=errors, warn=warn):
        for task, samples in rec.samples.items():
            for s in samples or []:
                rows.append({"cell_id": rec.cell_id, "task": task,
                             **{c: s.get(c) for c in SAMPLE_COLUMNS[2:]}})
    return pd.DataFrame(rows, columns=SAMPLE_COLUMNS)


ANSWERS_FILE = "answers.csv"
ANSWER_COLUMNS = ["cell_id", "task", "n", "correct", "scores", "answers_sha256"]


def answer_digests(samples):
    """One row per cell of a `load_samples` frame: its task(s), sample count, summed score,
    `scores` (one character per sample, '1' / '0', in task x doc_id order; empty when a score is
    not 0 or 1) and `answers_sha256`, the SHA-256 of the per-sample rows (task, doc_id, document,
    prompt and target hashes, score) in that order. Written by the report as `answers.csv`, so a
    committed report carries every cell's per-sample answers (scripts/compare_stores.py checks a
    regeneration against it) without the store's record files."""
    import hashlib

    import pandas as pd

    rows = []
    for cid, g in samples.groupby("cell_id", sort=True):
        g = g.sort_values(["task", "doc_id"], kind="stable")
        lines = "\n".join("\t".join([str(r.task), str(r.doc_id), str(r.doc_hash),
                                      str(r.prompt_hash), str(r.target_hash), repr(float(r.score))])
                          for r in g.itertuples())
        binary = g["score"].isin([0.0, 1.0]).all()
        rows.append({"cell_id": cid, "task": ",".join(dict.fromkeys(g["task"])), "n": len(g),
                     "correct": float(g["score"].sum()),
                     "scores": "".join("1" if s == 1.0 else "0" for s in g["score"]) if binary
                     else "",
                     "answers_sha256": hashlib.sha256(lines.encode()).hexdigest()})
    return pd.DataFrame(rows, columns=ANSWER_COLUMNS)


# ---- ids of older records ------------------------------------------------------------------------
_SCHEMA_RE = None


def legacy_records(root: str | os.PathLike) -> list[Path]:
    """Record files of an older schema (schema_version < SCHEMA_VERSION: schema 1 ids depended on
    where the checkout lay and on how a loop was spelled); read from each file's first bytes."""
    import re

    global _SCHEMA_RE
    _SCHEMA_RE = _SCHEMA_RE or re.compile(rb'"schema_version"\s*:\s*(\d+)')
    out = []
    d = cells_dir(root)
    for path in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            with open(path, "rb") as f:
                m = _SCHEMA_RE.search(f.read(256))
        except OSError:
            continue
        if m and int(m.group(1)) < SCHEMA_VERSION:
            out.append(path)
    return out


def migrated_record(rec: CellRecord) -> CellRecord:
    """A schema-1 record under its canonical (schema 2) id: the loop made canonical from the
    facts the record itself carries (`loop_resolved`: the layer count and resolved window, mode
    and routing of the model that ran; else the model's config), `task_version` recomputed
    location-free from the task as this checkout has it, `cell_id` and `baseline_id` recomputed.
    Raises RecordError when the record cannot be mapped (the reason)."""
    import dataclasses

    from looping import LoopConfig, LoopConfigError

    from .spec import (CellSpec, ModelArch, SpecError, canonical_loop, cell_id, model_arch,
                       scoring_only, task_version)

    spec = dict(rec.spec)
    tasks = [t for t in str(spec.get("task") or "").split(",") if t]
    include = spec.get("include_path")
    if include and not Path(include).exists():
        include = None                          # another checkout's folder: this one's tasks
    try:
        spec["task_version"] = task_version(tasks, include)
        draft = CellSpec.from_dict({**spec, "loop": None, "include_path": include})
    except (ValueError, FileNotFoundError) as e:
        raise RecordError(f"task {spec.get('task')!r} cannot be read here: {e}") from None
    if rec.loop is not None:
        res = rec.loop_resolved or {}
        try:
            loop = LoopConfig.from_dict(rec.loop, strict=False)
            if res.get("n_layers"):
                arch = ModelArch(None, int(res["n_layers"]),
                                 res.get("routing_resolved") not in (None, "n/a"),
                                 source="the record")
            else:
                arch = model_arch(draft, {})
            canon = canonical_loop(loop, arch, scoring_only=scoring_only(draft))
        except (LoopConfigError, SpecError, ValueError) as e:
            raise RecordError(f"its loop cannot be resolved: {e}") from None
        if res.get("window_layers") and str(canon.window) != res["window_layers"]:
            raise RecordError(f"its loop resolves to window {canon.window} here, but ran "
                              f"{res['window_layers']}")
        draft = dataclasses.replace(draft, loop=canon)
    new_spec = dict(draft.to_dict(), include_path=spec.get("include_path"))
    return dataclasses.replace(
        rec, schema_version=SCHEMA_VERSION, cell_id=cell_id(draft), spec=new_spec,
        baseline_id=None if draft.is_baseline else cell_id(draft.baseline()))


def migrate_ids(root: str | os.PathLike, *, dry_run: bool = False, log=print) -> dict:
    """Rewrite every older record under `<root>/cells` to its canonical id (migrated_record):
    the new file is written atomically, then the old one is removed; its lm-eval request cache
    folder follows it. Two records that map to one id (equivalent cells computed twice, or a
    record the store already holds) are a collision: the existing record is kept (an ok one wins
    over a failed one) and the other is moved to `<root>/superseded/`, never deleted. Returns
    {'migrated': [(old, new)], 'current': [...], 'collisions': [(old, new)], 'failed':
    [(file, reason)]}; `dry_run` writes nothing."""
    out: dict[str, list] = {"migrated": [], "current": [], "collisions": [], "failed": []}
    d = cells_dir(root)
    for path in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            rec = read_json(path)
        except (RecordError, OSError) as e:
            out["failed"].append((path.name, str(e)))
            log(f"[migrate] {path.name}: left as it is: {' '.join(str(e).split())}")
            continue
        if rec.schema_version >= SCHEMA_VERSION:
            out["current"].append(rec.cell_id)
            continue
        try:
            new = migrated_record(rec)
        except RecordError as e:
            out["failed"].append((path.name, str(e)))
            log(f"[migrate] {path.name}: left as it is: {e}")
            continue
        old_id, new_id = rec.cell_id, new.cell_id
        target = record_path(root, new_id)
        existing = None
        if new_id != old_id and target.exists():
            try:
                existing = read_json(target)
            except (RecordError, OSError):
                existing = None                 # a broken file there: replaced
        if existing is not None and not (existing.status != "ok" and new.status == "ok"):
            out["collisions"].append((old_id, new_id))
            log(f"[migrate] {old_id} -> {new_id}: collision, {new_id} is already in the store "
                f"({existing.status}); kept it, moved {path.name} to superseded/")
            if not dry_run:
                (Path(root) / "superseded").mkdir(parents=True, exist_ok=True)
                os.replace(path, Path(root) / "superseded" / path.name)
            continue
        if existing is not None:
            out["collisions"].append((new_id, new_id))
            log(f"[migrate] {old_id} -> {new_id}: collision, the store's {new_id} is "
                f"{existing.status}; replaced it with this ok record (the old one moved to "
                f"superseded/)")
            if not dry_run:
                (Path(root) / "superseded").mkdir(parents=True, exist_ok=True)
                os.replace(target, Path(root) / "superseded" / f"{new_id}.{existing.status}.json")
        out["migrated"].append((old_id, new_id))
        what = []
        if rec.spec.get("task_version") != new.spec.get("task_version"):
            what.append(f"task_version {rec.spec.get('task_version')} -> "
                        f"{new.spec.get('task_version')}")
        if rec.loop and rec.loop.get("window") != (new.loop or {}).get("window"):
            what.append(f"window {rec.loop.get('window')} -> {new.loop.get('window')}")
        log(f"[migrate] {old_id} -> {new_id}" + (f" ({'; '.join(what)})" if what else ""))
        if dry_run:
            continue
        write_record(root, new)
        if new_id != old_id:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            old_cache, new_cache = cache_dir(root, old_id), cache_dir(root, new_id)
            if old_cache.is_dir() and not new_cache.exists():
                os.replace(old_cache, new_cache)
    log(f"[migrate] {root}: {len(out['migrated'])} record(s) "
        f"{'would be ' if dry_run else ''}migrated to canonical ids, {len(out['current'])} "
        f"already current, {len(out['collisions'])} collision(s) (superseded/), "
        f"{len(out['failed'])} left as they are")
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m harness.store migrate-ids STORE [--dry-run]` (docs/results-schema.md)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m harness.store",
                                 description="Maintenance of a results store.")
    sub = ap.add_subparsers(dest="command", required=True)
    mig = sub.add_parser("migrate-ids", help="rewrite older records (schema 1: ids that depended "
                                             "on the checkout's location) to canonical ids")
    mig.add_argument("store", help="the results root (holds cells/)")
    mig.add_argument("--dry-run", action="store_true", help="say what would change; write nothing")
    args = ap.parse_args(argv)
    if not cells_dir(args.store).is_dir():
        print(f"python -m harness.store: {args.store}: no such store (no cells/ folder)",
              file=sys.stderr)
        return 2
    out = migrate_ids(args.store, dry_run=args.dry_run)
    return 1 if out["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
