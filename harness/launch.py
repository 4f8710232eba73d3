"""launch: where a plan's cells run, chosen by the `launcher` config group (`launcher.kind`).

    runner = get_runner(plan.settings.launcher)
    runner.run(plan)                    # returns when every job has ended

Runners:
    local           this process: the plan's cells in order with one model cache (each model
                    loads once), no job files
    submitit_local  one local process per job through submitit (all at once): the Slurm code
                    path without a cluster
    slurm           ONE Slurm array through submitit, one task per job (group_by=model: per model)

A job is `Plan.jobs()`'s JSON, written to `<store>/plans/<grid_id>/NNNN-<model>.json`; its body is
`harness.run.run_job(path)`. submitit's pickles and logs go to
`<store>/sweeps/<time>_<grid_id>/.submitit/<job id>/`. `wait` is the one place that waits on
submitted jobs.
"""
from __future__ import annotations

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


class LocalRunner:
    """Runs the plan's cells in this process, in plan order, with one model cache."""
    kind = "local"

    def __init__(self, cfg: Mapping[str, Any]):
        _check_keys(cfg, ())

    def run(self, plan: Plan, *, log: Callable = print) -> list:
        log(f"[loopsweep] running {len(plan.todo)} cell(s) in this process", flush=True)
        return [run_job(plan.job(plan.todo))]


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
