"""A real single-node Slurm for the tests of this folder (scripts/local_slurm.py): installed from
Debian's packages if missing, started once per session in a private folder, stopped at the end
(also when a test fails). Skipped, with the reason, only where this machine cannot run it (not
root, not Linux, no apt-get, no package index)."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _local_slurm():
    spec = importlib.util.spec_from_file_location("local_slurm", ROOT / "scripts" /
                                                  "local_slurm.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["local_slurm"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def slurm():
    """The running cluster (local_slurm.Cluster); `slurm.env()` has SLURM_CONF."""
    ls = _local_slurm()
    why = ls.check()
    if why:
        pytest.skip(f"no local Slurm here: {why}")
    try:
        installed = ls.install()
    except subprocess.CalledProcessError as e:
        last = (e.stderr or e.stdout or "").strip().splitlines()[-1:] or [str(e)]
        pytest.skip(f"no local Slurm here: apt-get failed ({last[0]})")
    # not under pytest's basetemp: munged (the munge user) must traverse every folder above
    # its socket, and pytest's are private to root
    root = tempfile.mkdtemp(prefix="loopsweep-slurm-")
    cluster = ls.Cluster(root)
    try:
        started = cluster.start()
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    cluster.timings = {"install_s": installed, "start_s": started}
    print(f"\n[slurm] installed in {installed:.1f}s, started in {started:.1f}s "
          f"({cluster.cpus} CPUs, {cluster.mem_mb} MB)", file=sys.stderr)
    try:
        yield cluster
    finally:
        stopped = cluster.stop()
        print(f"\n[slurm] stopped {', '.join(stopped) or 'nothing'}", file=sys.stderr)
        shutil.rmtree(root, ignore_errors=True)
