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

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from looping import did_you_mean

from . import store as st
from .plan import Plan
from .run import run_job

#: launcher.kind -> the launcher config keys it understands (besides `kind`)
SLURM_KEYS = ("partition", "account", "qos", "gpus_per_node", "cpus_per_task", "mem_gb",
              "timeout_min", "array_parallelism", "max_num_timeout", "signal_delay_s", "setup",
              "additional_parameters")
LOCAL_PROCESS_KEYS = ("timeout_min", "cpus_per_task", "gpus_per_node", "mem_gb")


class LaunchError(RuntimeError):
    """The jobs could not be submitted (the message says why); nothing of the grid ran."""


def write_jobs(plan: Plan) -> list[Path]:
    """One JSON file per job of the plan (what each job runs); their absolute paths."""
    folder = Path(plan.settings.store) / "plans" / plan.grid_id
    paths = []
    for n, job in enumerate(plan.jobs()):
        name = job["cells"][-1]["spec"].get("model_name") or "model"
        paths.append(st.write_json_atomic(folder / f"{n:04d}-{name}.json", job).resolve())
    return paths


def wait(jobs: list, *, log: Callable = print) -> list:
    """Block until every submitted job has ended. Returns per job its summary (run_job's), or
    the exception it ended with (logged in one line). Dead tasks, requeues and resource checks
    are not detected here yet: a job that never ends blocks this call."""
    out = []
    for job in jobs:
        try:
            out.append(job.result())
        except Exception as e:          # noqa: BLE001 - a failed job is reported, the rest run on
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            log(f"[loopsweep] job {job.job_id} ended with an error: {first}", flush=True)
            out.append(e)
    return out


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
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


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


def _items(spec) -> float:
    """The documents a cell scores, where known (its limit, or a real-data task's size), else 1."""
    from harness.tasks.real import REAL_TASKS

    if isinstance(spec.limit, int) and spec.limit > 0:
        return float(spec.limit)
    sizes = [REAL_TASKS[t][2] for t in spec.tasks if t in REAL_TASKS]
    return float(sum(sizes)) if sizes else 1.0


def _start(c) -> int:
    """The cell's window start (0 for a baseline or when unknown): layers below it are shared."""
    window = c.cost.window or ""
    return int(window.split(":")[0]) if ":" in window else 0


def _cost(cells) -> float:
    """Estimated work of a list of cells: layer passes per token above each cell's window start
    (a shared pass computes the layers below once), times its items."""
    return sum(max(1, (c.cost.layer_passes or 1) - _start(c)) * _items(c.spec) for c in cells)


def split_cells(plan: Plan, n: int) -> list[list]:
    """The cells to compute in `n` parts of about equal estimated work (`_cost`). The cells of one
    shared-scoring group (share_key) stay together while the balance allows; a group bigger than
    one part's share is split between window starts (each part then shares within its cells)."""
    units: dict[Any, list] = {}
    for c in plan.todo:
        key = c.spec.share_key() if plan.settings.sharing else c.cell_id
        units.setdefault(key, []).append(c)
    pieces = list(units.values())
    target = _cost(plan.todo) / n
    while True:
        big = max(pieces, key=_cost)
        starts = sorted({_start(c) for c in big})
        if _cost(big) <= target * 1.05 or len(starts) < 2:
            break
        pieces.remove(big)
        groups = [[c for c in big if _start(c) == s] for s in starts]
        costs = [_cost(g) for g in groups]
        # cut between two window starts where the lower half comes nearest half the work
        # (both halves non-empty, so every split makes progress)
        cut = min(range(1, len(groups)),
                  key=lambda i: abs(sum(costs[:i]) - _cost(big) / 2))
        pieces += [[c for g in groups[:cut] for c in g], [c for g in groups[cut:] for c in g]]
    parts: list[list] = [[] for _ in range(n)]
    for unit in sorted(pieces, key=_cost, reverse=True):
        min(parts, key=_cost).extend(unit)
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
    import threading

    def relay(w, proc):
        for line in proc.stdout:
            if line.startswith(("[cell", "[loopsweep]")) or "Error" in line:
                log(f"[w{w}] {line.rstrip()}", flush=True)
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
    """One submitit job per plan job: `cluster='slurm'` (one array) or `'local'` (processes)."""

    def __init__(self, cfg: Mapping[str, Any], cluster: str):
        self.cluster = cluster
        self.kind = "slurm" if cluster == "slurm" else "submitit_local"
        _check_keys(cfg, SLURM_KEYS if cluster == "slurm" else LOCAL_PROCESS_KEYS)
        self.cfg = dict(cfg)

    def executor(self, folder: str | Path, name: str):
        """A submitit AutoExecutor with this launcher's parameters (nothing submitted)."""
        import submitit

        c = self.cfg
        init = {}
        if self.cluster == "slurm" and c.get("max_num_timeout") is not None:
            init["slurm_max_num_timeout"] = int(c["max_num_timeout"])
        try:
            ex = submitit.AutoExecutor(folder=str(folder), cluster=self.cluster, **init)
        except RuntimeError as e:          # e.g. no srun on this machine
            raise LaunchError(f"launcher={self.kind}: submitit cannot submit from here ({e})"
                              ) from None
        params = {"name": name, "timeout_min": c.get("timeout_min"),
                  "cpus_per_task": c.get("cpus_per_task"), "gpus_per_node": c.get("gpus_per_node"),
                  "mem_gb": c.get("mem_gb")}
        if self.cluster == "slurm":
            params.update({f"slurm_{k}": c.get(k) for k in (
                "partition", "account", "qos", "array_parallelism", "signal_delay_s")})
            params["slurm_setup"] = list(c.get("setup") or [])
            params["slurm_additional_parameters"] = dict(c.get("additional_parameters") or {})
        ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
        return ex

    def run(self, plan: Plan, *, log: Callable = print) -> list:
        paths = write_jobs(plan)
        sweep = Path(plan.settings.store) / "sweeps" / (
            time.strftime("%Y-%m-%d_%H-%M-%S") + f"_{plan.grid_id}")
        ex = self.executor(sweep / ".submitit" / "%j", name=f"loopsweep-{plan.grid_id}")
        jobs = ex.map_array(run_job, [str(p) for p in paths])
        log(f"[loopsweep] submitted {len(jobs)} job(s) ({self.kind}, group_by="
            f"{plan.settings.group_by}): {', '.join(str(j.job_id) for j in jobs)}; jobs in "
            f"{paths[0].parent}, logs in {sweep / '.submitit'}", flush=True)
        return wait(jobs, log=log)


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
