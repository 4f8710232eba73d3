"""The Slurm launcher's decisions without a cluster (tests/slurm runs them against a real one):
the preflight refusal in one line, timeout_min=auto, and when the driver calls a task dead."""
from __future__ import annotations

import os

import pytest
from omegaconf import OmegaConf

from harness import config, launch, slurm


def fake_sinfo(tmp_path, monkeypatch, lines: str):
    """An `sinfo` that answers `-o %P|%c|%m|%G|%l|%N` with `lines` (a cluster's view)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "sinfo").write_text(f"#!/bin/sh\ncat <<'EOF'\n{lines}\nEOF\n")
    (bin_dir / "sinfo").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def runner(*overrides):
    with config.hydra_session():
        cfg = config.compose(list(overrides)).launcher
    return launch.get_runner(OmegaConf.to_container(cfg, resolve=True))


def test_cpu_only_partition_refuses_the_gpu_preset_in_one_line(tmp_path, monkeypatch):
    fake_sinfo(tmp_path, monkeypatch, "cpu*|32|128000|(null)|2-00:00:00|n[1-4]")
    with pytest.raises(launch.LaunchError) as e:
        runner("launcher=slurm", "launcher.partition=cpu").preflight(plan=None)
    msg = str(e.value)
    assert "\n" not in msg and "1 GPU(s)" in msg and "no node of partition cpu" in msg
    assert "launcher=slurm_cpu" in msg
    runner("launcher=slurm_cpu").preflight(plan=None)              # the CPU preset fits
    with pytest.raises(launch.LaunchError, match="no such Slurm partition; partitions: cpu"):
        runner("launcher=slurm_cpu", "launcher.partition=gpu").preflight(plan=None)
    with pytest.raises(launch.LaunchError, match="allows at most 2880 min"):
        runner("launcher=slurm_cpu", "launcher.timeout_min=5000").preflight(plan=None)


def test_gpu_partition_accepts_the_gpu_preset_and_caps_auto_time(tmp_path, monkeypatch):
    fake_sinfo(tmp_path, monkeypatch, "gpu|16|256000|gpu:a100:4(S:0-1)|12:00:00|g[1-2]")
    r = runner("launcher=slurm", "launcher.partition=gpu")
    r.preflight(plan=None)
    assert r.partition_max == 720
    assert r.timeout_min([]) == 30                      # no task: the floor (min_task_min)


def test_a_task_gone_without_a_result_is_dead_after_dead_after_s(tmp_path):
    t = launch.Task("7_0", 0, ["c1"], tmp_path / "7_0_log.out", tmp_path / "7_0_result.pkl")
    board = launch.TaskBoard([t], dead_after_s=60)
    board.observe({"7_0": ("RUNNING", "None")}, now=0)
    assert not t.ended
    board.observe({}, now=10)                          # squeue forgot it, no accounting
    assert not t.ended
    lines = board.observe({}, now=71)
    assert t.outcome == "dead" and "no accounting" in t.detail and "7_0_log.out" in lines[-1]
    u = launch.Task("7_1", 1, ["c2"], tmp_path / "7_1_log.out", tmp_path / "7_1_result.pkl")
    board = launch.TaskBoard([u], dead_after_s=0)
    board.observe({"7_1": ("CANCELLED", "None")}, now=0)
    assert u.outcome == "dead" and u.detail.startswith("CANCELLED") and board.finished


def test_slurm_time_formats():
    assert slurm.parse_time_min("2-00:00:00") == 2880
    assert slurm.parse_time_min("12:00:00") == 720 and slurm.parse_time_min("30") == 30
    assert slurm.parse_time_min("infinite") is None
    assert slurm.gpu_count("gpu:a100:2(S:0-1),mps:100") == 2 and slurm.gpu_count("(null)") == 0


def fake_bin(tmp_path, monkeypatch, name: str, script: str):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / name).write_text("#!/bin/sh\n" + script)
    (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_task_states_from_squeue_then_accounting(tmp_path, monkeypatch):
    """squeue lists what it still knows; sacct (with accounting) gives the final state of the
    others; without accounting (sacct fails) they are simply absent (GONE for the board)."""
    fake_bin(tmp_path, monkeypatch, "squeue", "echo '12_0|RUNNING|None'\n")
    fake_bin(tmp_path, monkeypatch, "sacct",
             "printf '12_0|RUNNING|0:0\\n12_1|CANCELLED by 0|0:15\\n12_2|FAILED|9:0\\n'\n")
    states = slurm.task_states(["12_0", "12_1", "12_2"])
    assert states == {"12_0": ("RUNNING", "None"), "12_1": ("CANCELLED", "exit 0:15"),
                      "12_2": ("FAILED", "exit 9:0")}
    fake_bin(tmp_path, monkeypatch, "sacct",
             "echo 'sacct: error: Slurm accounting storage is disabled' >&2; exit 1\n")
    assert slurm.task_states(["12_0", "12_1"]) == {"12_0": ("RUNNING", "None")}
    fake_bin(tmp_path, monkeypatch, "squeue", "echo 'slurm_load_jobs error' >&2; exit 1\n")
    assert slurm.task_states(["12_0"]) is None          # the controller cannot be asked
