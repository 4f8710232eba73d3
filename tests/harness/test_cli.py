"""`loopsweep-eval`: `ls` / `validate` see the local tasks (fixtures, embedded, the real-data
`local_*` tasks once fetched) and `--help` lists the `looped` model args, one line each."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import _with_fixture_tasks, looped_args_help
from looping import LoopConfig

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("argv", [["ls", "tasks"], ["validate", "--tasks", "embedded_mc"],
                                  ["run", "--tasks", "embedded_mc"], ["--tasks", "embedded_mc"]])
def test_local_tasks_are_added_to_run_ls_and_validate(argv):
    from harness.tasks import cli_tasks_dir
    out = _with_fixture_tasks(["loopsweep-eval", *argv])
    assert out[-2:] == ["--include_path", str(cli_tasks_dir())]
    own = ["loopsweep-eval", *argv, "--include_path", "/mine"]
    assert _with_fixture_tasks(own) == own                      # the user's own path wins
    assert _with_fixture_tasks(["loopsweep-eval", "--help"]) == ["loopsweep-eval", "--help"]


def test_looped_args_help_has_one_line_per_arg():
    lines = looped_args_help().splitlines()
    for f in dataclasses.fields(LoopConfig):
        mine = [ln for ln in lines if ln.strip().startswith(f"{f.name}=")]
        assert len(mine) == 1 and len(mine[0].split(maxsplit=1)) == 2, (f.name, lines)
    assert any(ln.strip().startswith("recipe=") for ln in lines)


@pytest.mark.slow
def test_help_lists_the_looped_model_args():
    r = cli("--help")
    assert r.returncode == 0, r.stderr
    assert "ls        List available tasks" in r.stdout             # lm-eval's own help first
    assert "looped model args" in r.stdout
    for f in dataclasses.fields(LoopConfig):
        assert f"\n  {f.name}=" in r.stdout, f.name


@pytest.mark.slow
def test_validate_sees_the_local_tasks():
    from harness.tasks import _real_task_dir
    tasks = ["embedded_mc", "fixture_commonsense_qa"]
    if _real_task_dir() is not None:              # the real-data tasks, once fetched (CI does)
        tasks.append("local_piqa500")
    r = cli("validate", "--tasks", ",".join(tasks))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "All tasks found and valid" in r.stdout + r.stderr
