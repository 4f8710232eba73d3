"""launch: where a plan's cells run, chosen by the `launcher` config group (`launcher.kind`).

    runner = get_runner(plan.settings.launcher)
    runner.run(plan)                    # returns when every job has ended

Runners:
    local           this machine: `workers=1`: this process, the plan's cells in order with one
                    model cache (each model loads once); `workers=N`: N worker processes with one
                    torch thread each, the cells split between them (a shared-scoring group stays
                    in one worker); `workers=auto` (default): one per CPU core while the models'
                    memory allows (see `auto_workers`)
    submitit_local  one local process per job through submitit (all at once): the Slurm code
                    path without a cluster
    slurm           ONE Slurm array through submitit, one task per job (group_by=model: per model)

A job is `Plan.jobs()`'s JSON, written to `<store>/plans/<grid_id>/NNNN-<model>.json`; its body is
`harness.run.run_job(path)`. submitit's pickles and logs go to
`<store>/sweeps/<time>_<grid_id>/.submitit/<job id>/`. `wait` is the one place that waits on
submitted jobs.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from looping import did_you_mean

from . import store as st
from .plan import Plan, items_of
from .run import proc_kib, run_job
from .slurm import ACTIVE_STATES as _ACTIVE, NEVER_REASONS as _NEVER

#: how the driver waits (both submitit launchers): poll the scheduler every `poll_s`, a one-line
#: summary every `summary_s`, a task ended without a result is dead after `dead_after_s`
WAIT_DEFAULTS = {"poll_s": 5, "summary_s": 60, "dead_after_s": 60}
#: timeout_min=auto: a task's minutes = its cells' layer passes x items x sec_per_pass_item / 60,
#: within [min_task_min, max_task_min] (and the partition's limit); group_by=cost fills tasks
#: up to max_task_min
TIME_DEFAULTS = {"timeout_min": "auto", "sec_per_pass_item": 0.02, "min_task_min": 30,
                 "max_task_min": 1440, "check_resources": True}
#: launcher.kind -> the launcher config keys it understands (besides `kind`)
SLURM_KEYS = ("partition", "account", "qos", "gpus_per_node", "cpus_per_task", "mem_gb",
              "timeout_min", "array_parallelism", "max_num_timeout", "signal_delay_s", "setup",
              "additional_parameters", *(k for k in TIME_DEFAULTS if k != "timeout_min"),
              *WAIT_DEFAULTS)
LOCAL_PROCESS_KEYS = ("timeout_min", "cpus_per_task", "gpus_per_node", "mem_gb", *WAIT_DEFAULTS)


class LaunchError(RuntimeError):
    """The jobs could not be submitted (the message says why); nothing of the grid ran."""


def write_jobs(plan: Plan, groups: list[list] | None = None) -> list[Path]:
    """One JSON file per job (the plan's jobs, or a job per group of planned cells): what each
    task runs; their absolute paths."""
    folder = Path(plan.settings.store) / "plans" / plan.grid_id
    jobs = plan.jobs() if groups is None else [plan.job(cells) for cells in groups]
    paths = []
    for n, job in enumerate(jobs):
        name = job["cells"][-1]["spec"].get("model_name") or "model"
        paths.append(st.write_json_atomic(folder / f"{n:04d}-{name}.json", job).resolve())
    return paths


def model_bytes(plan: Plan) -> int | None:
    """The largest model of the plan's cells to compute, in bytes of weights (from the models'
    configs on the meta device, as the plan's costs), or None when unknown."""
    from .spec import model_arch

    sizes = []
    for key in {c.spec.model_key() for c in plan.todo}:
        spec = next(c.spec for c in plan.todo if c.spec.model_key() == key)
        info = model_arch(spec, {}).info
        if info is None:
            return None
        n = sum(p.numel() for p in info.decoder.parameters())   # the head is tied or small
        dtype = {"float32": 4, "float64": 8}.get(str(spec.dtype), 2)
        sizes.append(n * dtype)
    return max(sizes) if sizes else 0


def available_memory() -> int | None:
    return proc_kib("/proc/meminfo", "MemAvailable")


def auto_workers(plan: Plan, *, cores: int | None = None, log: Callable = print) -> int:
    """One worker per CPU core (one torch thread each: measured faster than one process with a
    thread per core, see docs/benchmarks.md), capped so that every worker's model copy plus room
    for activations (3x the weights) fits in 60% of the available memory; 1 on a GPU."""
    import torch

    if torch.cuda.is_available():
        return 1
    if cores is None:
        cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                 else os.cpu_count() or 1)
    size, free = model_bytes(plan), available_memory()
    if not size or not free:
        return cores
    fit = max(1, int(0.6 * free // (3 * size)))
    if fit < cores:
        log(f"[loopsweep] {fit} worker(s), not {cores}: a model copy of "
            f"{size / 2**30:.1f} GiB per worker fits {fit} time(s) in the free memory", flush=True)
    return min(cores, fit)


def _start(c) -> int:
    """The cell's window start (0 for a baseline or when unknown): layers below it are shared."""
    window = c.cost.window or ""
    return int(window.split(":")[0]) if ":" in window else 0


def _cost(cells, shared: frozenset = frozenset()) -> float:
    """Estimated work of a list of cells (layer passes per token x items). Cells whose share_key
    is in `shared` are scored together: the layers below their highest window start run once,
    then each setting runs from its own start; every other cell (generation tasks, sharing off)
    runs its whole model on its own."""
    total, groups = 0.0, {}
    for c in cells:
        key = c.spec.share_key()
        if key in shared:
            groups.setdefault(key, []).append(c)
        else:
            total += (c.cost.layer_passes or 1) * items_of(c.spec)
    for g in groups.values():
        top = max(_start(c) for c in g)
        total += items_of(g[0].spec) * (top + sum(max(1, (c.cost.layer_passes or 1) - _start(c))
                                                  for c in g))
    return total


def split_cells(plan: Plan, n: int) -> list[list]:
    """The cells to compute in `n` parts of about equal estimated work (`_cost`). The cells of one
    shared-scoring group (share_key) stay together while the balance allows; a group bigger than
    one part's share is split between window starts (each part then shares within its cells)."""
    shared = plan.shared_keys()
    units: dict[Any, list] = {}
    for c in plan.todo:
        key = c.spec.share_key()
        units.setdefault(key if key in shared else c.cell_id, []).append(c)
    pieces = list(units.values())

    def cost(cells):
        return _cost(cells, shared)

    def assign(pieces):                          # largest first, each to the lightest part
        parts: list[list] = [[] for _ in range(n)]
        for unit in sorted(pieces, key=cost, reverse=True):
            min(parts, key=lambda p: cost([c for u in p for c in u])).append(unit)
        return parts

    target = cost(plan.todo) / n
    while True:
        parts = assign(pieces)
        worst = max(parts, key=lambda p: cost([c for u in p for c in u]))
        splittable = [u for u in worst if len({_start(c) for c in u}) > 1]
        if cost([c for u in worst for c in u]) <= target * 1.05 or not splittable:
            break
        # the heaviest part is over its share: split its biggest shared group between two window
        # starts where the lower half comes nearest half the work (both halves non-empty, so
        # every split makes progress; each half still shares within itself)
        big = max(splittable, key=cost)
        pieces.remove(big)
        starts = sorted({_start(c) for c in big})
        groups = [[c for c in big if _start(c) == s] for s in starts]
        costs = [cost(g) for g in groups]
        cut = min(range(1, len(groups)),
                  key=lambda i: abs(sum(costs[:i]) - cost(big) / 2))
        pieces += [[c for g in groups[:cut] for c in g], [c for g in groups[cut:] for c in g]]
    parts = [[c for u in p for c in u] for p in parts]
    order = {c.cell_id: i for i, c in enumerate(plan.todo)}
    return [sorted(p, key=lambda c: order[c.cell_id]) for p in parts if p]


class LocalRunner:
    """Runs the plan's cells on this machine: in this process (workers=1), or in worker
    processes with one torch thread each (see the module docstring)."""
    kind = "local"

    def __init__(self, cfg: Mapping[str, Any]):
        _check_keys(cfg, ("workers",))
        workers = cfg.get("workers", "auto")
        if workers != "auto" and not (str(workers).isdigit() and int(workers) >= 1):
            raise ValueError(f"launcher.workers={workers}: a number >= 1, or auto")
        self.workers = workers

    def preflight(self, plan: Plan, *, log: Callable = print) -> None:
        """Nothing to check before running on this machine."""

    def run(self, plan: Plan, *, log: Callable = print) -> list:
        n = auto_workers(plan, log=log) if self.workers == "auto" else int(self.workers)
        parts = split_cells(plan, n) if n > 1 else [plan.todo]
        if len(parts) == 1:
            log(f"[loopsweep] running {len(plan.todo)} cell(s) in this process", flush=True)
            return [run_job(plan.job(plan.todo))]
        return run_workers(plan, parts, log=log)


def run_workers(plan: Plan, parts: list[list], *, log: Callable = print) -> list:
    """Each part in its own process (`python -m harness.run JOB`), one torch thread each; their
    output lines carry the worker's number. Returns per worker its exit code."""
    folder = Path(plan.settings.store) / "plans" / plan.grid_id
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    procs = []
    for w, cells in enumerate(parts):
        path = st.write_json_atomic(folder / f"worker-{w}.json", plan.job(cells)).resolve()
        procs.append(subprocess.Popen([sys.executable, "-u", "-m", "harness.run", str(path)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, bufsize=1))
    log(f"[loopsweep] running {len(plan.todo)} cell(s) in {len(parts)} worker processes "
        f"(one torch thread each): {', '.join(str(len(p)) for p in parts)} cells", flush=True)
    import re
    import threading

    from .summary import Progress

    index = {c.cell_id: i for i, c in enumerate(plan.todo)}
    progress = Progress([(c.cost.layer_passes or 0) * items_of(c.spec) or None
                         for c in plan.todo], parallel=len(parts))
    ended = re.compile(r"\[cell \d+/\d+\] (\w+) .*: (?:skip|[A-Za-z]+ in ([\d.]+)s)")
    lock, n_done = threading.Lock(), [0]

    def relay(w, proc):
        for line in proc.stdout:
            if line.startswith(("[cell", "[loopsweep]", "  delta vs baseline")) or "Error" in line:
                log(f"[w{w}] {line.rstrip()}", flush=True)
            m = ended.match(line)
            if m and m.group(1) in index and not line.rstrip().endswith("computing ..."):
                with lock:                 # the grid's progress over every worker's cells
                    n_done[0] += 1
                    progress.finished(index[m.group(1)],
                                      float(m.group(2)) if m.group(2) else None)
                    if n_done[0] < len(index):
                        log(progress.line(n_done[0], len(index)), flush=True)
    threads = [threading.Thread(target=relay, args=(w, p), daemon=True)
               for w, p in enumerate(procs)]
    for t in threads:
        t.start()
    try:
        codes = [p.wait() for p in procs]
    except BaseException:
        for p in procs:
            p.terminate()
        raise
    for t in threads:
        t.join(5)
    for w, code in enumerate(codes):
        if code:
            log(f"[loopsweep] worker {w} exited with {code}", flush=True)
    return codes


class SubmititRunner:
    """One array task per launcher job through submitit: `cluster='slurm'` (ONE Slurm array, also
    for a single job) or `'local'` (one process per job). `preflight` checks the request against
    the partition before anything is submitted; `run` submits and waits for every task."""

    def __init__(self, cfg: Mapping[str, Any], cluster: str):
        self.cluster = cluster
        self.kind = "slurm" if cluster == "slurm" else "submitit_local"
        _check_keys(cfg, SLURM_KEYS if cluster == "slurm" else LOCAL_PROCESS_KEYS)
        self.cfg = {**WAIT_DEFAULTS, **(TIME_DEFAULTS if cluster == "slurm" else {}), **cfg}
        t = self.cfg.get("timeout_min")
        if not (t == "auto" and cluster == "slurm" or t is None and cluster == "local"
                or isinstance(t, (int, float)) and not isinstance(t, bool) and t > 0):
            raise ValueError(f"launcher.timeout_min={t}: minutes (> 0) or auto")
        self.partition_max: float | None = None     # the partition's time limit (preflight)

    # ---- what to submit -------------------------------------------------------------------------
    def groups(self, plan: Plan) -> list[list]:
        """The cells of each task: Plan.jobs()'s grouping (model / cell), or group_by=cost."""
        if plan.settings.group_by == "cost":
            return split_by_cost(plan, self.cfg)
        by_id = {c.cell_id: c for c in plan.cells}
        return [[by_id[c["cell_id"]] for c in job["cells"]] for job in plan.jobs()]

    def timeout_min(self, groups: list[list]) -> int:
        """The array's time limit: launcher.timeout_min, or (auto) the largest task's estimate
        within [min_task_min, max_task_min] and the partition's limit."""
        t = self.cfg.get("timeout_min")
        if t != "auto":
            return int(t)
        lo, hi = float(self.cfg["min_task_min"]), float(self.cfg["max_task_min"])
        if self.partition_max is not None:
            hi = min(hi, self.partition_max)
        minutes = [task_minutes(cells, self.cfg) for cells in groups]
        est = max((hi if m is None else m for m in minutes), default=lo)
        return int(math.ceil(min(hi, max(lo, est))))

    def preflight(self, plan: Plan, *, log: Callable = print) -> None:
        """Refuse (LaunchError, one line) before submitting when no node of the partition can
        ever run a task (CPUs, memory, GPUs, time limit); sinfo's answer caps timeout_min=auto."""
        if self.cluster != "slurm" or not self.cfg.get("check_resources", True):
            return
        from . import slurm

        part = self.cfg.get("partition")
        found = slurm.partition_nodes(part)
        if found is None:
            log("[loopsweep] sinfo did not answer: the request is not checked against the "
                "partition", flush=True)
            return
        name, nodes = found
        req = slurm.request_of(self.cfg, None)
        self.partition_max = slurm.time_limit(nodes, req)
        t = self.cfg.get("timeout_min")
        req = slurm.request_of(self.cfg, None if t == "auto" else float(t))
        why = slurm.refusal(req, name, nodes)
        if why:
            raise LaunchError(why)

    def executor(self, folder: str | Path, name: str, timeout_min: int | None = None):
        """The submitit executor with this launcher's parameters (nothing submitted)."""
        c = self.cfg
        params = {"name": name, "timeout_min": timeout_min or (
                      c.get("timeout_min") if c.get("timeout_min") != "auto" else None),
                  "cpus_per_task": c.get("cpus_per_task"), "gpus_per_node": c.get("gpus_per_node"),
                  "mem_gb": c.get("mem_gb")}
        if self.cluster == "slurm":
            from . import slurm

            try:
                ex = slurm.array_executor(folder, int(c.get("max_num_timeout") or 0))
            except (ImportError, RuntimeError) as e:    # no submitit, or no srun here
                raise LaunchError(f"launcher={self.kind}: submitit cannot submit from here ({e})"
                                  ) from None
            params.update({k: c.get(k) for k in ("partition", "account", "qos",
                                                 "array_parallelism", "signal_delay_s")})
            params["setup"] = list(c.get("setup") or [])
            params["additional_parameters"] = dict(c.get("additional_parameters") or {})
            params = ex._convert_parameters(      # generic names -> sbatch's (time, mem, ...)
                {k: v for k, v in params.items() if v is not None})
        else:
            try:
                import submitit
                ex = submitit.AutoExecutor(folder=str(folder), cluster="local")
            except ImportError as e:
                raise LaunchError(f"launcher={self.kind}: submitit is not installed ({e}); "
                                  f"pip install 'loopsweep[slurm]'") from None
        ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
        return ex

    # ---- submit and wait ------------------------------------------------------------------------
    def run(self, plan: Plan, *, log: Callable = print) -> "TaskBoard":
        from .slurm import SlurmTask

        groups = self.groups(plan)
        paths = write_jobs(plan, groups)
        sweep = Path(plan.settings.store) / "sweeps" / (
            time.strftime("%Y-%m-%d_%H-%M-%S") + f"_{plan.grid_id}")
        minutes = self.timeout_min(groups) if self.cluster == "slurm" else None
        ex = self.executor(sweep / ".submitit" / "%j", name=f"loopsweep-{plan.grid_id}",
                           timeout_min=minutes)
        try:
            jobs = ex.map_array(SlurmTask(), [str(p) for p in paths])
        except Exception as e:   # noqa: BLE001 - sbatch's refusal, in one line
            lines = [ln for ln in str(e).splitlines() if "error" in ln.lower()] or [str(e)]
            raise LaunchError(f"launcher={self.kind}: submission failed: {lines[0].strip()}"
                              ) from None
        first = str(jobs[0].job_id).split("_")[0]
        what = (f"Slurm array {first} with {len(jobs)} task(s), time limit {minutes} min"
                if self.cluster == "slurm" else f"{len(jobs)} local process(es)")
        log(f"[loopsweep] submitted {what} (group_by={plan.settings.group_by}): "
            f"{', '.join(f'{j.job_id}: {len(g)} cell(s)' for j, g in zip(jobs, groups))}; jobs "
            f"in {paths[0].parent}, logs in {sweep / '.submitit'}", flush=True)
        board = TaskBoard([Task(str(j.job_id), n, [c.cell_id for c in g], j.paths.stdout,
                                j.paths.result_pickle)
                           for n, (j, g) in enumerate(zip(jobs, groups))],
                          dead_after_s=float(self.cfg["dead_after_s"]))
        if self.cluster == "slurm":
            from .slurm import task_states
            query = lambda: task_states([t.job_id for t in board.tasks])     # noqa: E731
        else:
            query = lambda: {str(j.job_id): (_local_state(j), "") for j in jobs}  # noqa: E731
        wait(board, query, log=log, poll_s=float(self.cfg["poll_s"]),
             summary_s=float(self.cfg["summary_s"]))
        for line in board.report(plan.settings.store):
            log(line, flush=True)
        return board


def _local_state(job) -> str:
    state = str(job.state).upper()
    return "RUNNING" if state == "RUNNING" else state


# ---- time limits and the cost split ------------------------------------------------------------
def cell_seconds(cell, cfg: Mapping[str, Any]) -> float | None:
    """A cell's estimated seconds: layer passes per token x items x launcher.sec_per_pass_item;
    None when its cost or its item count (task.limit) is unknown."""
    passes, limit = cell.cost.layer_passes, cell.spec.limit
    if passes is None or limit is None or limit < 1:
        return None
    return passes * float(limit) * float(cfg.get("sec_per_pass_item", 0.02))


def task_minutes(cells: list, cfg: Mapping[str, Any]) -> float | None:
    """A task's estimated minutes (the sum over its cells), None when a cell's is unknown."""
    secs = [cell_seconds(c, cfg) for c in cells]
    return None if any(s is None for s in secs) else sum(secs) / 60


def split_by_cost(plan: Plan, cfg: Mapping[str, Any]) -> list[list]:
    """group_by=cost: each model's cells in tasks whose estimate fits launcher.max_task_min
    (first fit, largest first); a shared-scoring group (share_key) stays in one task; a cell (or
    group) without an estimate, or larger than the cap, gets a task of its own."""
    cap = float(cfg.get("max_task_min", 240)) * 60
    order = {c.cell_id: i for i, c in enumerate(plan.todo)}
    tasks: list[list] = []
    models: dict[Any, list] = {}
    for c in plan.todo:
        models.setdefault(c.spec.model_key(), []).append(c)
    for cells in models.values():
        units: dict[Any, list] = {}
        for c in cells:
            units.setdefault(c.spec.share_key() if plan.settings.sharing else c.cell_id,
                             []).append(c)
        sized = []
        for unit in units.values():
            secs = [cell_seconds(c, cfg) for c in unit]
            sized.append((None if None in secs else sum(secs), unit))
        bins: list[tuple[float, list]] = []
        for secs, unit in sorted(sized, key=lambda x: -(x[0] if x[0] is not None else math.inf)):
            if secs is None or secs > cap:
                tasks.append(unit)
                continue
            for i, (used, members) in enumerate(bins):
                if used + secs <= cap:
                    bins[i] = (used + secs, members + unit)
                    break
            else:
                bins.append((secs, list(unit)))
        tasks += [members for _, members in bins]
    return [sorted(t, key=lambda c: order[c.cell_id]) for t in tasks]


# ---- waiting -----------------------------------------------------------------------------------
@dataclass
class Task:
    """One submitted task, as the driver sees it while waiting."""
    job_id: str                       # '1234_0' (Slurm array task) or a local job id
    n: int                            # its job's number (plans/<grid_id>/NNNN-*.json)
    cells: list[str]
    log: Path                         # submitit's <folder>/<id>_0_log.out
    result: Path                      # submitit's result pickle (written when the task returns)
    state: str = "SUBMITTED"          # the scheduler's state, as last seen
    reason: str = ""
    outcome: str | None = None        # None: not ended; done | error | dead
    detail: str = ""                  # error / why dead
    gone_since: float | None = None   # when it was first seen ended without a result
    hinted: bool = False

    @property
    def ended(self) -> bool:
        return self.outcome is not None


class TaskBoard:
    """Every task's state while the driver waits: the one object a live view renders (`tasks`,
    `counts()`, `summary()`). A task that is neither pending nor running and has written no result
    is dead once `dead_after_s` have passed (Slurm without accounting forgets it, with accounting
    it says CANCELLED / FAILED / OUT_OF_MEMORY / NODE_FAIL / TIMEOUT)."""

    def __init__(self, tasks: list[Task], *, dead_after_s: float = 60):
        self.tasks = tasks
        self.dead_after_s = dead_after_s
        self.started = time.time()

    @property
    def finished(self) -> bool:
        return all(t.ended for t in self.tasks)

    def counts(self) -> dict[str, int]:
        out = {"pending": 0, "running": 0, "done": 0, "failed": 0, "dead": 0}
        for t in self.tasks:
            if t.outcome == "done":
                out["done"] += 1
            elif t.outcome == "error":
                out["failed"] += 1
            elif t.outcome == "dead":
                out["dead"] += 1
            elif t.state in ("PENDING", "SUBMITTED", "REQUEUED", "REQUEUE_HOLD"):
                out["pending"] += 1
            else:
                out["running"] += 1
        return out

    def summary(self) -> str:
        c = self.counts()
        logs = self.tasks[0].log.parent.parent if self.tasks else ""
        return (f"[loopsweep] tasks after {time.time() - self.started:.0f}s: "
                + ", ".join(f"{v} {k}" for k, v in c.items()) + f"; logs in {logs}")

    def observe(self, states: Mapping[str, tuple[str, str]] | None, now: float | None = None
                ) -> list[str]:
        """Update from the scheduler's states (None: it could not be asked; then only results
        count); returns one line per change."""
        now = time.time() if now is None else now
        lines = []
        for t in self.tasks:
            if t.ended:
                continue
            if t.result.exists():
                t.outcome, t.detail = _read_result(t.result)
                t.state = "COMPLETED" if t.outcome == "done" else "FAILED"
                lines.append(f"[loopsweep] task {t.job_id}: {t.outcome}"
                             + (f" ({t.detail})" if t.detail else ""))
                continue
            if states is None:
                continue
            state, reason = states.get(t.job_id, ("GONE", ""))
            if state != t.state:
                lines.append(f"[loopsweep] task {t.job_id}: {t.state} -> {state}"
                             + (f" (log {t.log})" if state == "RUNNING" else ""))
                t.state, t.reason = state, reason
            if state in _ACTIVE:
                t.gone_since = None
                if reason in _NEVER and not t.hinted:
                    t.hinted = True
                    lines.append(f"[loopsweep] task {t.job_id} cannot start: Reason={reason} "
                                 f"(no node of the partition fits the request); scancel it and "
                                 f"fix launcher.partition / cpus_per_task / mem_gb / gpus_per_node")
                continue
            if t.gone_since is None:
                t.gone_since = now
            if now - t.gone_since >= self.dead_after_s:
                t.outcome = "dead"
                t.detail = (f"{state}" if state != "GONE" else
                            "not in squeue any more, no accounting to say why") + ", no result"
                lines.append(f"[loopsweep] task {t.job_id}: dead ({t.detail}); log {t.log}")
        return lines

    def report(self, store) -> list[str]:
        """After the wait: one line per task that did not finish its cells (dead or failed):
        id, state, log, the cells of its job still missing."""
        from . import store as st

        out = []
        for t in self.tasks:
            missing = [c for c in t.cells if st.status_of(store, c) != "ok"]
            if t.outcome == "done" and not missing:
                continue
            if t.outcome == "done":
                what = "ended without computing all its cells (another task held some)"
            else:
                what = f"{t.outcome}: {t.detail}"
            out.append(f"[loopsweep] task {t.job_id} {what}; log {t.log}; cells not ok: "
                       f"{', '.join(missing) if missing else 'none'}")
        return out


def _read_result(path: Path) -> tuple[str, str]:
    import pickle

    try:
        with open(path, "rb") as f:
            status, value = pickle.load(f)
    except Exception as e:     # noqa: BLE001 - a result we cannot read is a failed task
        return "error", f"unreadable result {path.name}: {type(e).__name__}"
    if status == "success":
        return "done", ""
    lines = [ln for ln in str(value).strip().splitlines() if ln.strip()]
    return "error", (lines[-1].strip() if lines else "error")


def wait(board: TaskBoard, query: Callable[[], Mapping[str, tuple[str, str]] | None], *,
         log: Callable = print, poll_s: float = 5, summary_s: float = 60,
         sleep: Callable[[float], None] = time.sleep) -> TaskBoard:
    """Wait until every task has ended (done, failed or dead): poll `query` (task id -> (state,
    reason), None when the scheduler cannot be asked), print each change and a one-line summary
    every `summary_s`. The one place that waits on submitted tasks. Ctrl-C stops waiting (the
    tasks keep running; the same command later skips what finished)."""
    last = time.time()
    try:
        while True:
            for line in board.observe(query()):
                log(line, flush=True)
            if board.finished:
                break
            if time.time() - last >= summary_s:
                log(board.summary(), flush=True)
                last = time.time()
            sleep(poll_s)
    except KeyboardInterrupt:
        log("[loopsweep] stopped waiting: the tasks keep running; run the same command again "
            "later to collect what finished", flush=True)
        raise
    log(board.summary(), flush=True)
    return board


RUNNERS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "local": LocalRunner,
    "submitit_local": lambda cfg: SubmititRunner(cfg, "local"),
    "slurm": lambda cfg: SubmititRunner(cfg, "slurm"),
}


def get_runner(cfg: Mapping[str, Any]):
    """The runner the `launcher` config names (`kind`), configured by its other keys."""
    kind = str(cfg.get("kind", "local"))
    if kind not in RUNNERS:
        raise ValueError(f"launcher.kind={kind}: not a launcher; valid: {', '.join(RUNNERS)}."
                         + did_you_mean(kind, RUNNERS))
    return RUNNERS[kind](cfg)


def _check_keys(cfg: Mapping[str, Any], known: tuple[str, ...]) -> None:
    unknown = [k for k in cfg if k != "kind" and k not in known]
    if unknown:
        kind = cfg.get("kind")
        raise ValueError(f"launcher.{unknown[0]}: not a setting of launcher {kind}; valid: "
                         f"{', '.join(known) or '(none)'}." + did_you_mean(unknown[0], known))
