"""run: computing cells in this process.

    result = run_cell(spec, store="results")        # -> CellResult; results/cells/<cell_id>.json
    run_cells([(spec, label), ...], store="results")   # one model cache, one progress line per cell
    run_job(job)                                    # a launcher job: its cells, its settings

Owns: the in-process model cache (one model loaded at a time, reused by every cell that shares
it), loading a model, one lm-eval call per cell through the project's adapter, and `run_cell` /
`run_cells` / `run_job`: skip `ok` records, retry failed ones, a per-cell lock so concurrent jobs
never compute a cell twice (a cell another live process holds is waited for at the end:
`wait_for_others`), a per-cell lm-eval request cache so a preempted cell resumes its finished
requests. The record itself is `harness.record`'s.
"""
from __future__ import annotations

import gc
import json
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from . import store as _store
from .record import CellRecord, build_record
from .spec import CellSpec, cell_id, describe


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
    print(f"[loopsweep] loading {spec.model_name or spec.model} ({spec.model}, {spec.dtype}) on "
          f"{device}", flush=True)
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


# ---- one cell ----------------------------------------------------------------------------------
@dataclass
class CellResult:
    cell_id: str
    status: str         # ok | failed | oom (computed or found); busy: another process has it
    computed: bool              # computed in this call (False: skipped or busy)
    path: Path
    record: CellRecord | None = None
    wall_time_s: float = 0.0

    @property
    def error(self) -> str | None:
        return self.record.error if self.record is not None else None


def reset_peak_rss() -> bool:
    """Reset the kernel's resident high-water mark (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def proc_kib(path: str, key: str) -> int | None:
    """Bytes of a `key: N kB` line of a /proc file (/proc/meminfo, /proc/self/status); None where
    there is no such file or line."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int | None:
    """VmHWM: the resident high-water mark since start or since the last `reset_peak_rss`."""
    return proc_kib("/proc/self/status", "VmHWM")


def reset_peak_mem(device: str) -> None:
    """Start a cell's peak-memory window: CUDA's peak allocation, or the process's VmHWM."""
    try:
        import torch
        if str(device).startswith("cuda") and torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
            return
    except Exception:
        pass
    reset_peak_rss()


def _peak_mem(device: str) -> int | None:
    """The cell's peak memory since reset_peak_mem: CUDA's max allocated bytes on a GPU; on CPU
    the process's resident high-water mark during the cell (the loaded model included), or,
    where /proc is not there, the process's peak so far (ru_maxrss)."""
    try:
        import torch
        if str(device).startswith("cuda") and torch.cuda.is_available():
            return int(torch.cuda.max_memory_allocated())
    except Exception:
        pass
    hwm = peak_rss_bytes()
    if hwm is not None:
        return hwm
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


def make_lm(spec: CellSpec, model, tokenizer, shared=None):
    """The adapter over an already loaded model, looped as the spec says (plain for a baseline);
    `shared` = (SharedPass, setting index) scores its loglikelihood requests in a shared pass."""
    from harness.adapter import LoopedLM

    lm = LoopedLM(pretrained=model, tokenizer=tokenizer, loop=spec.loop,
                  batch_size=spec.batch_size, max_length=spec.max_length)
    lm.weights_id = spec.weights_hash          # the cell's weights, already hashed at planning
    if shared is not None:
        lm.share(*shared)
    return lm


def share_groups(cells: list[tuple[CellSpec, str]], todo: set[str]) -> dict[str, tuple]:
    """cell id -> (SharedPass, setting index) for the cells in `todo` that share their requests
    and batching with at least one other (CellSpec.share_key); the others score alone."""
    from harness.scoring import SharedPass

    groups: dict[tuple, list[CellSpec]] = {}
    for spec, _ in cells:
        if cell_id(spec) in todo:
            groups.setdefault(spec.share_key(), []).append(spec)
    out = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        shared = SharedPass([s.loop for s in members])
        for i, s in enumerate(members):
            out[cell_id(s)] = (shared, i)
    return out


def evaluate_spec(spec: CellSpec, lm, *, cache_path: str | None, allow_code_eval: bool) -> dict:
    """One lm-eval call for the spec's task(s) through the project's adapter: lm-eval's results
    dict (with samples)."""
    from harness.adapter import evaluate
    from harness.tasks import manager_for

    if spec.unsafe_code and not allow_code_eval:
        raise PermissionError(
            f"task {spec.task_name or spec.task} executes model-written code; run with "
            f"allow_code_eval=true to allow it (sets HF_ALLOW_CODE_EVAL=1 and "
            f"confirm_run_unsafe_code)")
    if spec.unsafe_code:
        os.environ["HF_ALLOW_CODE_EVAL"] = "1"
    kwargs = dict(
        task_manager=manager_for(spec.tasks, spec.include_path), num_fewshot=spec.num_fewshot,
        limit=spec.limit, apply_chat_template=spec.apply_chat_template,
        fewshot_as_multiturn=spec.fewshot_as_multiturn, system_instruction=spec.system_instruction,
        gen_kwargs=spec.gen_kwargs, random_seed=spec.seed, numpy_random_seed=spec.seed,
        torch_random_seed=spec.seed, fewshot_random_seed=spec.fewshot_seed, log_samples=True,
        use_cache=cache_path,
    )
    if spec.unsafe_code:
        kwargs["confirm_run_unsafe_code"] = True
    return evaluate(lm, spec.tasks, **kwargs)


def run_cell(spec: CellSpec, *, store: str | os.PathLike = "results",
             models: ModelCache | None = None, force: bool = False, device: str | None = None,
             allow_code_eval: bool = False, lock_stale_s: float = 86400, tracker=None,
             label: str = "", log=print, shared=None) -> CellResult:
    """Compute one cell unless its record is already `ok` (force=True recomputes). Failed / oom
    records are retried. Returns without computing when another live process holds the cell's
    lock (status 'busy'). The record is written atomically; the lm-eval request cache under
    <store>/cache/<cell_id> lets an interrupted cell resume its finished requests. `shared` =
    (SharedPass, index): its loglikelihood requests come from a pass shared with other cells; its
    wall time then includes its share of that pass (by layer passes)."""
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
        _drop_outdated_cache(cache / "lm", log)
        run = None if tracker is None else tracker.start_cell(
            spec.to_dict(), cell_id=cid, label=label,
            baseline_id=None if spec.is_baseline else cell_id(spec.baseline()))
        t0 = time.perf_counter()
        lm = results = None
        status, error = "ok", None
        try:
            reset_peak_mem(device)
            model, tok = models.get(spec, device)
            lm = make_lm(spec, model, tok, shared)
            pass_before = shared[0].wall_time_s if shared is not None else None
            results = evaluate_spec(spec, lm, cache_path=str(cache / "lm"),
                                    allow_code_eval=allow_code_eval)
        except Exception as e:        # a failed cell is a record, not a crash; KeyboardInterrupt,
            # SystemExit and a launcher task's stop signal (harness.slurm.TaskStop) propagate: the
            # cell stays missing (its request cache kept for the rerun), never `failed`
            status = "oom" if _is_oom(e) else "failed"
            error = "".join(traceback.format_exception(e))
        wall = time.perf_counter() - t0
        if shared is not None and shared[0].wall_time_s is not None:
            if pass_before is None:              # this cell ran the pass: keep only its share
                wall -= shared[0].wall_time_s
            wall += shared[0].share_of_time(shared[1])
        try:
            record = build_record(spec, results, status=status, error=error, wall_time_s=wall,
                                  device=device, lm=lm, peak_mem_bytes=_peak_mem(device))
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
            base = None if spec.is_baseline else _store.read_record(store, record.baseline_id)
            tracker.finish_cell(run, record, baseline=base if base and base.status == "ok"
                                else None)
        return CellResult(cid, status, True, path, record, wall)


# ---- a list of cells in one process ------------------------------------------------------------
def _drop_outdated_cache(prefix: Path, log=print) -> None:
    """Delete a cell's request-cache db stamped by an older loopsweep (a stamp without every
    field of harness.adapter.CACHE_FIELDS): the cell id covers those fields, so its requests are
    this cell's, but the new stamp would refuse the db and the cell would fail on every retry."""
    from .adapter import CACHE_FIELDS, stamped_response_caches

    for db, stamp in stamped_response_caches(str(prefix)).items():
        if not set(CACHE_FIELDS) <= set(stamp):
            log(f"[loopsweep] {db}: request cache of an older loopsweep (no "
                f"{', '.join(sorted(set(CACHE_FIELDS) - set(stamp)))} in its stamp): deleted, "
                f"its requests are recomputed", flush=True)
            Path(db).unlink(missing_ok=True)


def run_cells(cells: list[tuple[CellSpec, str]], *, store: str | os.PathLike = "results",
              force: bool = False, device: str | None = None, allow_code_eval: bool = False,
              lock_stale_s: float = 86400, tracker=None, log=print,
              models: ModelCache | None = None, sharing: bool = True,
              costs: list | None = None, wait: bool = True) -> dict[str, list[str]]:
    """Run (spec, label) cells in order in this process with one shared model cache; prints one
    line per cell, a progress line with the ETA (`costs`: each cell's estimated work, see
    summary.Progress) and, for a looped cell whose baseline is done, its paired delta. With
    `sharing`, cells that share requests and batching score their loglikelihood requests in one
    pass (share_groups). A cell another live process is computing is left for the end; then
    (`wait`) this process waits for it (wait_for_others): its record counts as done by the other
    process, and a cell whose holder died is computed here. Returns {'done': [...], 'skipped':
    [...], 'busy': [...], 'failed': [...]} of cell ids ('skipped': already ok, or finished by
    another process; 'busy': still held by another process, or by this one)."""
    from .summary import Progress

    models = models or ModelCache()
    summary = {"done": [], "skipped": [], "busy": [], "failed": []}
    n = len(cells)
    progress = Progress(costs or [None] * n)
    todo = {cell_id(s) for s, _ in cells if force or _store.status_of(store, cell_id(s)) != "ok"}
    groups = share_groups(cells, todo) if sharing else {}
    run = dict(store=store, models=models, force=force, device=device,
               allow_code_eval=allow_code_eval, lock_stale_s=lock_stale_s, tracker=tracker,
               log=log)
    waiting: list[tuple[str, CellSpec, str]] = []
    for i, (spec, label) in enumerate(cells, 1):
        cid = cell_id(spec)
        head = f"[cell {i}/{n}] {cid} {describe(spec)}"
        if not force and _store.status_of(store, cid) == "ok":
            log(f"{head}: skip (already ok)", flush=True)
            summary["skipped"].append(cid)
            progress.finished(i - 1, None)
            continue
        log(f"{head}: computing ...", flush=True)
        r = run_cell(spec, label=label, shared=groups.get(cid), **run)
        if r.status == "busy":
            log(f"{head}: another process is computing it ({lock_holder(store, cid)})"
                + ("; back to it after the other cells" if wait else "; left to it"), flush=True)
            waiting.append((head, spec, label))
            continue
        _report(head, spec, r, summary, log)
        progress.finished(i - 1, r.wall_time_s if r.computed else None)
        if i < n:
            log(progress.line(i, n), flush=True)
    if waiting and wait:
        wait_for_others(waiting, summary, run, log=log)
    else:
        summary["busy"] += [cell_id(spec) for _, spec, _ in waiting]
    return summary


def _report(head: str, spec: CellSpec, r: "CellResult", summary: dict, log) -> None:
    """One progress line for a cell's outcome (and a looped cell's paired delta vs its baseline
    when both are done), and its id in the summary."""
    from .summary import delta_line

    if not r.computed:
        log(f"{head}: skip (finished by another process)", flush=True)
        summary["skipped"].append(r.cell_id)
    elif r.status == "ok":
        vals = ", ".join(f"{t}={(m or {}).get(spec.metric, float('nan')):.4f}"
                         for t, m in r.record.metrics.items()
                         if isinstance((m or {}).get(spec.metric), (int, float)))
        log(f"{head}: ok in {r.wall_time_s:.1f}s  {spec.metric}: {vals}", flush=True)
        summary["done"].append(r.cell_id)
        line = delta_line(r.path.parent.parent, r.cell_id)
        if line:
            log(line, flush=True)
    else:
        last = (r.error or "").strip().splitlines()[-1:] or [""]
        log(f"{head}: {r.status.upper()} in {r.wall_time_s:.1f}s: {last[0]}", flush=True)
        summary["failed"].append(r.cell_id)


#: seconds between two looks at the cells another process computes; a waiting line every
#: WAIT_NOTE_S
WAIT_POLL_S = 3.0
WAIT_NOTE_S = 60.0


def lock_holder(store, cid: str) -> str:
    """'pid 123 on host-a, Slurm job 456' from a cell's lock, for progress lines."""
    info = _store.read_lock(_store.lock_path(store, cid)) or {}
    if not info:
        return "its lock names no holder yet"
    out = f"pid {info.get('pid')} on {info.get('host')}"
    if info.get("slurm_job_id"):
        out += f", Slurm job {info['slurm_job_id']}"
    return out


def _held_here(store, cid: str) -> bool:
    """The cell's lock is held by this very process (waiting for it would never end)."""
    import socket

    info = _store.read_lock(_store.lock_path(store, cid)) or {}
    return info.get("pid") == os.getpid() and info.get("host") == socket.gethostname()


def wait_for_others(waiting: list[tuple[str, CellSpec, str]], summary: dict, run: dict, *,
                    log=print) -> None:
    """Wait for the cells other live processes are computing (their locks are judged by
    harness.store.judge_lock on every look). A cell whose holder ended with a record written
    while we waited is that process's result (ok: skipped here, 'finished by another process';
    failed: failed); a cell whose holder died without one is computed here. A lock held by this
    process itself is not waited for (busy)."""
    store = run["store"]
    started = time.time()
    pending = list(waiting)
    last_note = 0.0
    while pending:
        still = []
        for head, spec, label in pending:
            cid = cell_id(spec)
            if _held_here(store, cid):
                log(f"{head}: held by this process; left to it", flush=True)
                summary["busy"].append(cid)
                continue
            path = _store.record_path(store, cid)
            status = _store.status_of(store, cid)
            fresh = status is not None and path.exists() and path.stat().st_mtime >= started
            if fresh and not _store.lock_path(store, cid).exists():   # the other one's result
                if status == "ok":
                    log(f"{head}: skip (finished by another process)", flush=True)
                    summary["skipped"].append(cid)
                else:
                    rec = _store.read_record(store, cid) if status != "broken" else None
                    last = ((rec.error if rec else "") or "").strip().splitlines()[-1:] or [""]
                    log(f"{head}: {status.upper()} in another process: {last[0]}", flush=True)
                    summary["failed"].append(cid)
                continue
            r = run_cell(spec, label=label, **run)
            if r.status == "busy":
                still.append((head, spec, label))
            else:
                _report(head, spec, r, summary, log)
        pending = still
        if pending:
            if time.time() - last_note >= WAIT_NOTE_S:
                last_note = time.time()
                what = "; ".join(f"{cell_id(s)} ({lock_holder(store, cell_id(s))})"
                                 for _, s, _ in pending[:5])
                more = f" and {len(pending) - 5} more" if len(pending) > 5 else ""
                log(f"[loopsweep] waiting for {len(pending)} cell(s) another process is "
                    f"computing: {what}{more}; checking every {WAIT_POLL_S:g}s", flush=True)
            time.sleep(WAIT_POLL_S)


# ---- a launcher job ----------------------------------------------------------------------------
def run_job(job: Mapping[str, Any] | str | os.PathLike, *, models: ModelCache | None = None
            ) -> dict[str, list[str]]:
    """Run one job: a mapping (or the path of its JSON file, as launchers pass it) with the
    settings `grid_id, store, force, device, allow_code_eval, lock_stale_s, wandb` and `cells`
    (`{cell_id, label, spec}` each, in run order). Returns run_cells' summary."""
    from .tracking import Tracker

    if not isinstance(job, Mapping):
        job = json.loads(Path(job).read_text())
    cells = [(CellSpec.from_dict(c["spec"]), c["label"]) for c in job["cells"]]
    store = job["store"]
    tracker = Tracker.from_config(job.get("wandb"), group=job["grid_id"],
                                  dir=Path(store) / "wandb")
    summary = run_cells(cells, store=store, force=job["force"], device=job.get("device"),
                        allow_code_eval=job["allow_code_eval"], lock_stale_s=job["lock_stale_s"],
                        tracker=tracker, models=models, sharing=job.get("sharing", True),
                        costs=[c.get("cost") for c in job["cells"]])
    print(f"[loopsweep] job done: {len(summary['done'])} computed, {len(summary['skipped'])} "
          f"skipped, {len(summary['busy'])} left to another process, {len(summary['failed'])} "
          f"failed", flush=True)
    return summary


if __name__ == "__main__":   # a worker process of the local launcher: python -m harness.run JOB
    import sys

    sys.exit(0 if not run_job(sys.argv[1])["failed"] else 1)
