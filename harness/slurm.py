"""slurm: what the driver asks Slurm (sinfo, squeue, sacct), and how an array task stops.

Driver side (harness.launch uses these; each returns None / raises nothing when Slurm cannot be
asked, so the caller decides):

    nodes = partition_nodes("gpu")                 # [NodeGroup(cpus, mem_mb, gpus, time_min, ...)]
    refusal(request, "gpu", nodes)                 # None, or one line: why no node ever fits
    states = task_states(["1234"])                 # {"1234_0": ("RUNNING", "None"), ...} | None

Task side: `SlurmTask` is the callable submitit runs in every array task (`run_job` on a job
file). It is `submitit.helpers.Checkpointable`, so the preemption / time-limit signal (USR2,
`--signal=USR2@signal_delay_s`; USR1 does the same) makes submitit requeue the task with the
same job file, up to `max_num_timeout` times after time-outs (preemptions do not count). SIGTERM
(scancel, the end of the time limit, a preemption without requeue) stops it. In every case the
cell being computed stays missing (no `failed` record), its lm-eval request cache (persisted per
request) stays for the rerun or the requeued task, and its lock is released; the task ends
without a result, which the driver reports as a dead task (or sees requeued).

`ArrayExecutor` is submitit's SlurmExecutor that submits an array also for a single job (submitit
submits one job as a plain job), so every submission is one Slurm array.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Mapping

#: squeue / sacct states of a task that has not ended (it may still write its result)
ACTIVE_STATES = frozenset({
    "PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
    "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD", "PREEMPTED"})
#: squeue reasons of a pending task that no node of its partition can ever run
NEVER_REASONS = frozenset({"PartitionConfig", "PartitionTimeLimit", "PartitionNodeLimit",
                           "BadConstraints", "InvalidAccount", "InvalidQOS"})


def _run(cmd: list[str], timeout: float = 30) -> subprocess.CompletedProcess | None:
    """The finished command, or None when it cannot be run (not installed, hangs)."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None


# ---- the partition ---------------------------------------------------------------------------
@dataclass(frozen=True)
class NodeGroup:
    """One line of `sinfo -p <partition>`: nodes with equal CPUs, memory, GRES and time limit."""
    cpus: int
    mem_mb: int
    gpus: int
    time_min: float | None              # None: no limit
    gres: str = ""
    nodes: str = ""

    def text(self) -> str:
        limit = "no time limit" if self.time_min is None else f"time limit {self.time_min:g} min"
        gpus = f"{self.gpus} GPU(s)" if self.gpus else "no GPU"
        return f"{self.cpus} CPUs, {self.mem_mb / 1024:.1f} GB, {gpus}, {limit}"


def parse_time_min(text: str) -> float | None:
    """Slurm's time format ('infinite', 'D-HH:MM:SS', 'HH:MM:SS', 'MM:SS', 'MM') in minutes."""
    text = text.strip()
    if text.upper() in ("INFINITE", "UNLIMITED", "NONE", "N/A", ""):
        return None
    days, _, rest = text.rpartition("-")
    parts = [float(p) for p in rest.split(":")]
    if len(parts) == 3:
        h, m, s = parts
    elif len(parts) == 2:
        h, (m, s) = (0.0, parts) if not days else (parts[0], (parts[1], 0.0))
    else:
        h, m, s = (parts[0], 0.0, 0.0) if days else (0.0, parts[0], 0.0)
    return (float(days) if days else 0.0) * 1440 + h * 60 + m + s / 60


def gpu_count(gres: str) -> int:
    """GPUs in a GRES string: 'gpu:4', 'gpu:a100:2(S:0-1),mps:100' -> 4, 2; '(null)' -> 0."""
    n = 0
    for item in (gres or "").split(","):
        item = re.sub(r"\(.*?\)", "", item.strip())
        fields = item.split(":")
        if fields[0] == "gpu":
            n += int(fields[-1]) if len(fields) > 1 and fields[-1].isdigit() else 1
    return n


def partition_nodes(partition: str | None) -> tuple[str, list[NodeGroup]] | None:
    """(the partition's name, its node groups) from sinfo; the default partition when None;
    (name, []) for a partition that does not exist; None when sinfo cannot be asked."""
    r = _run(["sinfo", "-h", "-o", "%P|%c|%m|%G|%l|%N"])
    if r is None or r.returncode != 0:
        return None
    groups: dict[str, list[NodeGroup]] = {}
    default = None
    for line in r.stdout.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 6:
            continue
        name, cpus, mem, gres, limit, nodes = fields
        if name.endswith("*"):
            name = default = name[:-1]
        try:
            g = NodeGroup(int(cpus.rstrip("+")), int(mem.rstrip("+")), gpu_count(gres),
                          parse_time_min(limit), gres, nodes)
        except ValueError:
            continue
        groups.setdefault(name, []).append(g)
    name = partition or default
    if name is None:
        return ("(default)", [])
    return name, groups.get(name, [])


def partitions() -> list[str]:
    r = _run(["sinfo", "-h", "-o", "%P"])
    if r is None or r.returncode != 0:
        return []
    return sorted({p.strip().rstrip("*") for p in r.stdout.split()})


@dataclass(frozen=True)
class Request:
    """What one array task asks of a node."""
    cpus: int = 1
    mem_mb: int = 0
    gpus: int = 0
    time_min: float | None = None

    def text(self) -> str:
        parts = [f"{self.gpus} GPU(s)" if self.gpus else "no GPU", f"{self.cpus} CPUs"]
        if self.mem_mb:
            parts.append(f"{self.mem_mb / 1024:g} GB")
        if self.time_min is not None:
            parts.append(f"{self.time_min:g} min")
        return ", ".join(parts)


def request_of(cfg: Mapping[str, Any], time_min: float | None) -> Request:
    """The per-task request a launcher config makes (gpus_per_node, or a gres 'gpu[:type]:N' in
    additional_parameters)."""
    extra = dict(cfg.get("additional_parameters") or {})
    gpus = int(cfg.get("gpus_per_node") or 0) or int(extra.get("gpus_per_node") or 0)
    if not gpus and extra.get("gres"):
        gpus = gpu_count(str(extra["gres"]))
    if not gpus and extra.get("gpus"):
        gpus = int(str(extra["gpus"]).split(":")[-1])
    mem = cfg.get("mem_gb")
    return Request(cpus=int(cfg.get("cpus_per_task") or 1),
                   mem_mb=int(float(mem) * 1024) if mem else 0, gpus=gpus, time_min=time_min)


def refusal(req: Request, partition: str, nodes: list[NodeGroup]) -> str | None:
    """None when some node of the partition can run the request; else one line saying why not."""
    if not nodes:
        names = partitions()
        return (f"launcher.partition={partition}: no such Slurm partition; partitions: "
                f"{', '.join(names) or '(none)'}")
    fits = [g for g in nodes if g.cpus >= req.cpus and g.mem_mb >= req.mem_mb
            and g.gpus >= req.gpus]
    offer = "; ".join(dict.fromkeys(g.text() for g in nodes))
    if not fits:
        return (f"launcher: each task asks for {req.text()}, but no node of partition "
                f"{partition} has that (its nodes: {offer}); set launcher.gpus_per_node / "
                f"cpus_per_task / mem_gb, launcher.partition, or launcher=slurm_cpu")
    limits = [g.time_min for g in fits]
    if req.time_min is not None and None not in limits and req.time_min > max(limits):
        return (f"launcher.timeout_min={req.time_min:g}: partition {partition} allows at most "
                f"{max(limits):g} min per task; lower it or use timeout_min=auto")
    return None


def time_limit(partition_nodes_: list[NodeGroup], req: Request) -> float | None:
    """The longest time limit among the nodes that fit the request (None: unlimited)."""
    limits = [g.time_min for g in partition_nodes_ if g.cpus >= req.cpus
              and g.mem_mb >= req.mem_mb and g.gpus >= req.gpus]
    if not limits or None in limits:
        return None
    return max(limits)


# ---- task states -------------------------------------------------------------------------------
def task_states(array_ids: list[str]) -> dict[str, tuple[str, str]] | None:
    """{task id ('1234_0'): (state, reason)} of the arrays' tasks that squeue still lists, with
    accounting's final state (sacct) for the others where Slurm keeps accounting. None when
    squeue fails (the controller is unreachable): then nothing can be concluded."""
    ids = sorted({i.split("_")[0] for i in array_ids})
    if not ids:
        return {}
    r = _run(["squeue", "-h", "-r", "-t", "all", "-j", ",".join(ids), "-o", "%i|%T|%r"])
    if r is None:
        return None
    if r.returncode != 0 and "Invalid job id" not in r.stderr:
        return None
    out: dict[str, tuple[str, str]] = {}
    for line in r.stdout.splitlines():
        fields = line.strip().split("|")
        if len(fields) == 3:
            out[fields[0]] = (fields[1], fields[2])
    missing = [i for i in array_ids if i not in out]
    if missing:
        out.update({k: v for k, v in (accounting_states(ids) or {}).items() if k not in out})
    return out


def accounting_states(array_ids: list[str]) -> dict[str, tuple[str, str]] | None:
    """Final states from Slurm accounting (`sacct`), or None when there is no accounting."""
    r = _run(["sacct", "-n", "-P", "-X", "-j", ",".join(array_ids), "-o", "JobID,State,ExitCode"])
    if r is None or r.returncode != 0:
        return None
    out = {}
    for line in r.stdout.splitlines():
        fields = line.strip().split("|")
        if len(fields) == 3 and "[" not in fields[0]:
            out[fields[0]] = (fields[1].split()[0], f"exit {fields[2]}")
    return out


# ---- the task side -----------------------------------------------------------------------------
class TaskStop(BaseException):
    """A signal told this launcher task to stop. Not an Exception: `run_cell` records no failure
    for it; the cell's lock is released on the way out. `then` is what to raise at the top
    (submitit's requeue exit or its 'not requeued' error)."""

    def __init__(self, why: str, then: BaseException | None = None):
        super().__init__(why)
        self.why, self.then = why, then


def slurm_job_id() -> str | None:
    """This process's Slurm job ('1234_5' in an array task), or None outside Slurm."""
    from .store import slurm_job

    return slurm_job()


def install_stop_handlers() -> None:
    """SIGTERM / SIGINT: raise TaskStop. USR1 / USR2: submitit's checkpoint-and-requeue (the
    handler submitit installed for USR2, when there is one), then TaskStop. Each handler ignores
    later SIGTERMs, so the unwinding (lock release) is not cut short by the next signal."""
    requeue = signal.getsignal(signal.SIGUSR2)

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise TaskStop(signal.Signals(signum).name)

    def checkpoint(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        name = signal.Signals(signum).name
        if not callable(requeue):
            raise TaskStop(name)
        try:
            requeue(signum, frame)         # checkpoints, `scontrol requeue`s, then sys.exit(-1)
        except BaseException as e:        # noqa: BLE001 - re-raised at the top of the task
            raise TaskStop(f"{name}: {'requeued' if isinstance(e, SystemExit) else e}", e) from None
        raise TaskStop(name)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGUSR1, checkpoint)
    signal.signal(signal.SIGUSR2, checkpoint)


def _checkpointable():
    try:
        from submitit.helpers import Checkpointable
        return Checkpointable
    except ImportError:          # the class still works (no requeue) without submitit
        return object


class SlurmTask(_checkpointable()):
    """The body of a launcher task: `run_job(job_file)` with the stop handlers installed.
    Checkpointable: submitit requeues it with the same job file (the store resumes the cells)."""

    def __call__(self, job_file: str) -> dict:
        from .run import run_job

        install_stop_handlers()
        try:
            return run_job(job_file)
        except TaskStop as stop:
            print(f"[loopsweep] task {slurm_job_id() or os.getpid()} stopped ({stop.why}): the "
                  f"cell being computed stays missing, its request cache is kept and its lock "
                  f"released", flush=True)
            if stop.then is not None:
                raise stop.then from None
            sys.exit(128 + signal.SIGTERM)


def array_executor(folder, max_num_timeout: int = 3):
    """submitit's SlurmExecutor, but one job is submitted as an array of one task (like any
    other number of jobs): `map_array` always makes ONE Slurm array."""
    import uuid

    from submitit.core import utils
    from submitit.slurm.slurm import SlurmExecutor, SlurmJob

    class ArrayExecutor(SlurmExecutor):
        def _internal_process_submissions(self, delayed_submissions):
            if len(delayed_submissions) != 1:
                return super()._internal_process_submissions(delayed_submissions)
            # submitit's own array branch (submitit 1.5.4, slurm.py), for n = 1
            folder_ = utils.JobPaths.get_first_id_independent_folder(self.folder)
            folder_.mkdir(parents=True, exist_ok=True)
            d = delayed_submissions[0]
            pickle_path = folder_ / f"{uuid.uuid4().hex}.pkl"
            d.set_timeout(self.parameters.get("time", 5), self.max_num_timeout)
            d.dump(pickle_path)
            array_ex = SlurmExecutor(self.folder, self.max_num_timeout)
            array_ex.update_parameters(**self.parameters)
            array_ex.parameters["map_count"] = 1
            self._throttle()
            first = array_ex._submit_command(self._submitit_command_str)
            job = SlurmJob(folder=self.folder, job_id=f"{first.job_id}_0",
                           tasks=list(range(first.num_tasks)))
            job.paths.move_temporary_file(pickle_path, "submitted_pickle")
            return [job]

    return ArrayExecutor(folder, max_num_timeout=max_num_timeout)
