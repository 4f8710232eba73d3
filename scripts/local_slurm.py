"""A real single-node Slurm on this machine, from Debian's packages, for tests and for trying the
Slurm launcher: munge, slurmctld and slurmd as root, everything under one folder.

    python scripts/local_slurm.py install            # apt-get slurmctld slurmd slurm-client munge
    python scripts/local_slurm.py start DIR          # configure, start, print `export SLURM_CONF`
    SLURM_CONF=DIR/slurm.conf sbatch --array=0-2 --wrap 'echo $SLURM_ARRAY_TASK_ID'
    python scripts/local_slurm.py stop DIR           # stop the daemons (by their pid files)

The cluster is private to DIR: its own munge socket and key, free TCP ports, state and spool
directories, `slurm.conf` (clients find it through $SLURM_CONF; sbatch passes it on to tasks).
Sandbox-safe settings (no systemd, no cgroups): `proctrack/linuxproc`, `task/none`,
`select/cons_tres` with `CR_Core_Memory`, one node = this host with its CPUs and 80% of its
available memory, partition `debug`, `KillWait=5`, short timeouts. No accounting (sacct answers
that it is disabled): the launcher must cope without it. Needs root and Debian's package index;
`check()` says why not when it cannot run. Stdlib only; importable (tests use `Cluster`).
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged", "/usr/bin/sbatch")


def check() -> str | None:
    """None when this machine can run the cluster; else why not (one line)."""
    if sys.platform != "linux":
        return f"Slurm needs Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "starting slurmctld / slurmd / munged needs root"
    if not all(Path(b).exists() for b in BINARIES) and shutil.which("apt-get") is None:
        return "Slurm is not installed and there is no apt-get to install it"
    return None


def install(log=print) -> float:
    """apt-get install the packages unless every binary is there; returns the seconds it took."""
    t0 = time.time()
    if all(Path(b).exists() for b in BINARIES):
        return 0.0
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log("[local_slurm] installing " + " ".join(PACKAGES))
    run = lambda *a: subprocess.run(a, env=env, check=True, capture_output=True,  # noqa: E731
                                    text=True, timeout=600)
    try:
        run("apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES)
    except subprocess.CalledProcessError:       # a stale or missing package index
        run("apt-get", "update", "-q")
        run("apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES)
    return time.time() - t0


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def mem_available_mb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    return 4096


class Cluster:
    """One single-node Slurm under `root` (a folder): `start()`, `env()`, `stop()`."""

    def __init__(self, root: str | os.PathLike, *, cpus: int | None = None,
                 mem_mb: int | None = None):
        self.root = Path(root).resolve()
        self.cpus = cpus or os.cpu_count() or 1
        self.mem_mb = mem_mb or int(0.8 * mem_available_mb())
        self.host = socket.gethostname()
        self.conf = self.root / "slurm.conf"
        self.munge_dir = self.root / "munge"
        self.socket = self.munge_dir / "munge.sock"

    # ---- files ---------------------------------------------------------------------------------
    def configure(self) -> None:
        import pwd

        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)                 # munged checks every folder above its socket
        for d in ("state", "spool", "log"):
            (self.root / d).mkdir(exist_ok=True)
        munge = pwd.getpwnam("munge")
        self.munge_dir.mkdir(exist_ok=True)
        key = self.munge_dir / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(128))
        for p in (self.munge_dir, key):
            os.chown(p, munge.pw_uid, munge.pw_gid)
        self.munge_dir.chmod(0o711)            # the socket's folder: others need execute
        key.chmod(0o600)
        ctld, slurmd = free_ports(2)
        r = self.root
        self.conf.write_text("\n".join([
            "ClusterName=loopsweep-local",
            f"SlurmctldHost={self.host}",
            f"SlurmctldPort={ctld}",
            f"SlurmdPort={slurmd}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.socket}",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={r}/state",
            f"SlurmdSpoolDir={r}/spool",
            f"SlurmctldPidFile={r}/slurmctld.pid",
            f"SlurmdPidFile={r}/slurmd.pid",
            f"SlurmctldLogFile={r}/log/slurmctld.log",
            f"SlurmdLogFile={r}/log/slurmd.log",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=sched_interval=2",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "MpiDefault=none",
            "ReturnToService=2",
            "KillWait=5",
            "SlurmdTimeout=30",
            "SlurmctldTimeout=30",
            "MessageTimeout=20",
            "InactiveLimit=0",
            "MinJobAge=300",
            "DefMemPerCPU=1024",
            f"NodeName={self.host} CPUs={self.cpus} RealMemory={self.mem_mb} State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
            ""]))

    def env(self) -> dict[str, str]:
        """The environment variables a client (sbatch, squeue, the driver) needs."""
        return {"SLURM_CONF": str(self.conf)}

    # ---- daemons -------------------------------------------------------------------------------
    def start(self, timeout: float = 60) -> float:
        """Configure, start munged, slurmctld, slurmd and wait until the node is idle; returns the
        seconds it took. Stops what it started when something fails."""
        t0 = time.time()
        self.configure()
        try:
            m = self.munge_dir
            subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged",
                            f"--socket={self.socket}", f"--key-file={m / 'munge.key'}",
                            f"--log-file={m / 'munged.log'}", f"--pid-file={m / 'munged.pid'}",
                            f"--seed-file={m / 'munged.seed'}"], check=True, capture_output=True,
                           text=True, timeout=30)
            env = {**os.environ, **self.env()}
            for daemon in ("/usr/sbin/slurmctld", "/usr/sbin/slurmd"):
                subprocess.run([daemon], env=env, check=True, capture_output=True, text=True,
                               timeout=30)
            self.wait_idle(timeout)
        except BaseException as e:
            self.stop()
            if isinstance(e, subprocess.CalledProcessError):
                raise RuntimeError(f"{e.cmd[0]} failed: {(e.stderr or '').strip()}; logs in "
                                   f"{self.root / 'log'}") from None
            raise
        return time.time() - t0

    def wait_idle(self, timeout: float) -> None:
        env = {**os.environ, **self.env()}
        deadline = time.time() + timeout
        state = ""
        while time.time() < deadline:
            r = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], env=env, capture_output=True,
                               text=True, timeout=30)
            state = r.stdout.strip()
            if r.returncode == 0 and state == "idle":
                return
            time.sleep(0.3)
        raise RuntimeError(f"the node is not idle after {timeout:.0f}s (sinfo: {state!r}); logs "
                           f"in {self.root / 'log'}")

    def pids(self) -> dict[str, int]:
        files = {"slurmd": self.root / "slurmd.pid", "slurmctld": self.root / "slurmctld.pid",
                 "munged": self.munge_dir / "munged.pid"}
        out = {}
        for name, f in files.items():
            try:
                out[name] = int(f.read_text().strip())
            except (OSError, ValueError):
                pass
        return out

    def cancel_jobs(self, timeout: float = 20) -> None:
        """scancel every job of this cluster and wait until none runs (a job step outlives a
        stopped slurmd)."""
        env = {**os.environ, **self.env()}

        def jobs() -> list[str]:
            try:
                r = subprocess.run(["squeue", "-h", "-o", "%A"], env=env, capture_output=True,
                                   text=True, timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                return []
            return r.stdout.split() if r.returncode == 0 else []
        ids = jobs()
        if not ids:
            return
        subprocess.run(["scancel", *ids], env=env, capture_output=True, timeout=10)
        deadline = time.time() + timeout
        while time.time() < deadline and jobs():
            time.sleep(0.3)

    def stop(self, timeout: float = 15) -> list[str]:
        """Cancel the jobs, then stop the daemons by their pid files (slurmd, slurmctld, munged:
        SIGTERM, then SIGKILL after `timeout`); returns the names of those that were running."""
        if "slurmctld" in self.pids() and _alive(self.pids()["slurmctld"]):
            self.cancel_jobs()
        stopped = []
        for name, pid in self.pids().items():
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            stopped.append(name)
            deadline = time.time() + timeout
            while time.time() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        return stopped


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:                           # a zombie (our own child, not reaped) counts as dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("install", help="apt-get the Slurm and munge packages (skipped if present)")
    for name in ("start", "stop"):
        p = sub.add_parser(name, help=f"{name} the cluster living in DIR")
        p.add_argument("dir")
    args = ap.parse_args(argv)
    why = check()
    if why:
        print(f"local_slurm: {why}", file=sys.stderr)
        return 1
    if args.cmd == "install":
        print(f"[local_slurm] installed in {install():.1f}s")
    elif args.cmd == "start":
        install()
        c = Cluster(args.dir)
        print(f"[local_slurm] started in {c.start():.1f}s: node {c.host}, {c.cpus} CPUs, "
              f"{c.mem_mb} MB, partition debug")
        print(f"export SLURM_CONF={c.conf}")
    else:
        print(f"[local_slurm] stopped: {', '.join(Cluster(args.dir).stop()) or 'nothing running'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
