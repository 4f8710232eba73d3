"""The planner and the driver's front end, without loading a model: sweeps expand exactly like
Hydra's basic sweeper, a grid's plan lists its cells with status and cost, `-m` plans the same
cells, `--cfg job` / `dry_run=true` print the plan, config errors are one line with exit code 2,
the loop schema comes from LoopConfig and recipes from RECIPES, and the launchers are configured
through submitit's public API (nothing submitted)."""
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # the reference, tests only
from hydra.core.override_parser.overrides_parser import OverridesParser

from harness import config, driver, launch
from harness.plan import expand, plan_grid
from harness.record import CellRecord
from harness import store as st
from looping import RECIPES, LoopConfig

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("offline")       # fixtures offline / session: conftest


# ---- expansion ---------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides", [
    ["model=qwen3-4b", "loop.k=2,3,4"],
    ["loop=naive,euler,anchored", "loop.k=range(1,4)", "task=embedded-mc,embedded-gen"],
    ["loop.k=2,3", "model=embedded", "loop.k=5,6"],       # a key twice: first place, last value
    ["loop.window='15:19','14:18'", "+decode=bypass", "store=x"],
    ["loop.k=range(2,9,3)", "loop.schedule=[0.5,0.5]"],
])
def test_expand_is_the_basic_sweepers_product(overrides):
    parsed = OverridesParser.create().parse_overrides(overrides)
    assert expand(overrides) == BasicSweeper.split_arguments(parsed, None)[0]


# ---- the plan ---------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, tasks", [
    ([], {"embedded-mc"}), (["model=qwen3-4b"], {"mmlu_pro"}),
    (["model=llama-3.2-1b"], {"gpqa_main"}), (["model=smollm2-135m"], {"piqa500-local"}),
    (["model=qwen3-4b", "task=csqa"], {"csqa"}),
    (["experiment=real-paper"], {"csqa-local", "obqa-val-local", "mmlu1k-local"}),  # its choice
])
def test_the_task_follows_the_model_unless_chosen(session, tmp_path, overrides, tasks):
    plan = plan_grid([*overrides, f"store={tmp_path}"], costs=False)
    assert {c.spec.task_name for c in plan.cells} == tasks


def test_default_plan_is_anchored_k3_on_the_models_window_and_its_baseline(session, tmp_path):
    plan = plan_grid([f"store={tmp_path}"])
    base, cell = plan.cells
    assert base.spec.is_baseline and cell.spec.baseline() == base.spec
    # the loop is canonical: the window as the resolved layers (c0.5w1 on 8 layers is 4:5)
    assert cell.spec.loop == LoopConfig(window="4:5", k=3, integrator="anchored", mode="block")
    assert (base.cost.layer_passes, cell.cost.layer_passes) == (8, 10)     # 8 layers; 1 looped x3
    assert not cell.cost.approximate and cell.cost.window == "4:5"
    assert [c.status for c in plan.cells] == [None, None] and len(plan.todo) == 2


def test_grid_plan_three_cells_and_one_baseline_with_costs(session, tmp_path):
    plan = plan_grid(["model=qwen3-4b", "loop.k=2,3,4", f"store={tmp_path}"])
    assert [c.spec.loop and c.spec.loop.k for c in plan.cells] == [None, 2, 3, 4]
    assert {c.spec.model for c in plan.cells} == {"Qwen/Qwen3-4B-Instruct-2507"}
    # 36 layers, window 15:19 (4 layers) evaluated K times
    assert [c.cost.layer_passes for c in plan.cells] == [36, 40, 44, 48]
    assert all(c.cost.window == "15:19" for c in plan.cells[1:])
    assert [c.label for c in plan.cells] == ["loop=baseline,model=qwen3-4b",
                                             "loop.k=2,model=qwen3-4b", "loop.k=3,model=qwen3-4b",
                                             "loop.k=4,model=qwen3-4b"]


def test_plan_reads_the_status_of_each_cell_from_the_store(session, tmp_path):
    plan = plan_grid([f"store={tmp_path}"])
    base = plan.cells[0]
    st.write_record(tmp_path, CellRecord(cell_id=base.cell_id, status="ok",
                                         spec=base.spec.to_dict()))
    again = plan_grid([f"store={tmp_path}"])
    assert [c.status for c in again.cells] == ["ok", None]
    assert [c.cell_id for c in again.todo] == [plan.cells[1].cell_id]
    assert again.grid_id == plan.grid_id
    forced = plan_grid([f"store={tmp_path}", "force=true"])
    assert len(forced.todo) == 2


def test_experiment_params_and_command_line_values_win(session, tmp_path):
    plan = plan_grid(["experiment=demo", "loop.k=2", "task=embedded-mc", f"store={tmp_path}"],
                     costs=False)
    looped = [c for c in plan.cells if not c.spec.is_baseline]
    assert len(looped) == 3 * 3 and {c.spec.loop.k for c in looped} == {2}
    assert {c.spec.loop.integrator for c in looped} == {"naive", "euler", "anchored"}
    assert len(plan.cells) == len(looped) + 1


def test_jobs_by_model_and_by_cell(session, tmp_path):
    by_model = plan_grid(["loop.k=2,3", f"store={tmp_path}"], costs=False)
    (job,) = by_model.jobs()
    assert [c["cell_id"] for c in job["cells"]] == by_model.cell_ids
    by_cell = plan_grid(["loop.k=2,3", f"store={tmp_path}", "group_by=cell"], costs=False)
    jobs = by_cell.jobs()
    base = by_cell.cells[0].cell_id
    assert len(jobs) == 3 and [j["cells"][0]["cell_id"] for j in jobs] == [base] * 3


# ---- the loop schema and recipes: one source -------------------------------------------------
def test_loop_base_is_loopconfigs_fields_and_defaults():
    node = config.loop_base()
    fields = {f.name: f.default for f in dataclasses.fields(LoopConfig)}
    assert set(node) == set(fields)
    assert node.pop("window") == "${model.window}" and node.pop("mode") == "${model.mode}"
    assert node == {k: v for k, v in fields.items() if k not in ("window", "mode")}
    assert not (config.CONFIG_DIR / "loop" / "_base.yaml").exists()


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_presets_repeat_no_value(name):
    text = (config.CONFIG_DIR / "loop" / f"{name}.yaml").read_text()
    body = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    assert body == [f"defaults: [_base, recipe/{name}@_here_, _self_]"]


# ---- the driver's front end ------------------------------------------------------------------
def _run(capsys, *argv):
    code = driver.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cfg_job_and_dry_run_print_the_plan(capsys, tmp_path):
    args = ["model=qwen3-4b", "loop.k=2,3,4", f"store={tmp_path}"]
    code, out, err = _run(capsys, *args, "--cfg", "job")
    assert code == 0, err
    rows = [ln for ln in out.splitlines() if "qwen3-4b  mmlu_pro" in ln]
    assert len(rows) == 4 and sum("baseline" in r for r in rows) == 1
    assert "4 cells (3 looped + 1 baseline)" in out and "integrator: anchored" in out
    assert "on task mmlu_pro" in out            # the task follows the model (its paper cell)
    code, dry, _ = _run(capsys, *args, "dry_run=true")
    assert code == 0 and [ln for ln in dry.splitlines() if "qwen3-4b  mmlu_pro" in ln] == rows
    assert "nothing was loaded or run" in dry
    assert not (tmp_path / "cells").exists()
    code, multi, _ = _run(capsys, "-m", *args, "dry_run=true")
    assert code == 0 and multi == dry                              # -m: the same planner


@pytest.mark.parametrize("argv, words", [
    (["loop=anchord"], ["loop=anchord: no such loop preset", "Did you mean 'anchored'?"]),
    (["loop.kk=3"], ["loop.kk=3: loop has no setting 'kk'", "Did you mean 'k'?"]),
    (["lop=naive"], ["lop=naive: no config group or setting 'lop'", "Did you mean 'loop'?"]),
    (["loop.window=15:19,"], ["loop.window=15:19,: cannot parse it"]),
    (["loop.k=0"], ["loop: k=0 must be >= 1"]),
    (["loop.integrator=rk5"], ["unknown integrator 'rk5'", "Did you mean 'rk4'?"]),
    (["launcher=slurm", "launcher.partitio=gpu"], ["launcher has no setting 'partitio'",
                                                   "Did you mean 'partition'?"]),
    (["group_by=models"], ["group_by=models: not a choice; valid: model, cell"]),
    (["--cfg", "jobs"], ["--cfg takes one of job, hydra, all"]),
    (["--verbose"], ["--verbose: not a flag"]),
    (["eval.batch_size=auto"], ["eval.batch_size=auto: not supported", "part of the cell id"]),
    (["model=qwen3-1.7b"], ["model=qwen3-1.7b: no default task", "task=<arc-challenge-val-local|",
                            "|mmlu_pro|"]),
])
def test_config_errors_are_one_line_with_exit_code_2(capsys, argv, words):
    code, out, err = _run(capsys, *argv, "dry_run=true")
    assert code == 2 and not out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sweep.py: "), err
    for w in words:
        assert w in lines[0], lines[0]


def test_old_launcher_spelling_is_read_as_the_new_one(capsys, tmp_path):
    code, out, err = _run(capsys, "hydra/launcher=slurm", "hydra.launcher.partition=cpu",
                          f"store={tmp_path}", "--cfg", "job")
    assert code == 0, err
    assert "'hydra/launcher=slurm' is spelled 'launcher=slurm' now" in err
    assert "kind: slurm" in out and "partition: cpu" in out


def test_sweep_py_prints_the_plan_without_loading_a_model(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, str(ROOT / "sweep.py"), "model=qwen3-4b", "loop.k=2,3,4",
                        f"store={tmp_path}", "--cfg", "job"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "4 cells (3 looped + 1 baseline)" in r.stdout and "loading" not in r.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "sweep.py"), "loop=anchord"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "Did you mean 'anchored'?" in bad.stderr


# ---- launchers ---------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, n, expected", [
    (["loop.k=2,3,4", "loop.window='1:3'"], 2, 2),       # one window: the baseline splits off
    (["loop.k=2,3", "loop.window='1:3','2:4','4:6'"], 2, 2),
    (["loop.k=2,3", "loop.window='1:3','2:4'"], 5, 3),   # a shared group splits by start only
    (["loop.k=2,3", "loop.window='1:3'", "sharing=false"], 2, 2),
])
def test_split_cells_ends_and_keeps_every_cell_once(session, tmp_path, overrides, n, expected):
    plan = plan_grid([*overrides, "model=embedded", f"store={tmp_path}"])
    parts = launch.split_cells(plan, n)
    assert sorted(c.cell_id for p in parts for c in p) == sorted(c.cell_id for c in plan.todo)
    assert len(parts) == expected and all(parts)


def test_cost_counts_a_shared_prefix_once_and_generation_cells_whole(session, tmp_path):
    """The local split's cost model: loglikelihood cells of one share group compute the layers
    below their window once (then each from its own start); generation cells run whole."""
    plan = plan_grid(["model=embedded", "task=embedded-mc,embedded-gen", "loop.k=2,3",
                      "loop.window='4:5'", f"store={tmp_path}"])
    shared = plan.shared_keys()
    mc = [c for c in plan.todo if "embedded_mc" in c.spec.tasks]
    gen = [c for c in plan.todo if "embedded_gen" in c.spec.tasks]
    assert len(mc) == len(gen) == 3 and len(shared) == 1
    assert all(c.spec.share_key() in shared for c in mc)
    assert not any(c.spec.share_key() in shared for c in gen)
    assert plan.sharing() == (3, 1, 3)
    assert launch._cost(gen, shared) == sum(c.cost.layer_passes * 150 for c in gen)
    assert launch._cost(mc, shared) == 200 * (4 + sum(c.cost.layer_passes - launch._start(c)
                                                      for c in mc))
    assert launch._cost(mc) == sum(c.cost.layer_passes * 200 for c in mc)   # sharing off


def test_slurm_runner_configures_submitit_from_the_launcher_group(session, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"                  # submitit's Slurm executor wants an srun on PATH
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    cfg = config.compose(["launcher=slurm", "launcher.account=proj", "launcher.qos=high",
                          "+launcher.additional_parameters.gres=gpu:1"]).launcher
    from omegaconf import OmegaConf
    runner = launch.get_runner(OmegaConf.to_container(cfg, resolve=True))
    ex = runner.executor(tmp_path / "%j", name="loopsweep-test")    # validates every parameter
    from submitit.slurm.slurm import SlurmExecutor          # one array also for a single job
    assert isinstance(ex, SlurmExecutor) and isinstance(runner, launch.SubmititRunner)
    assert ex.parameters["account"] == "proj" and ex.parameters["qos"] == "high"
    local = launch.get_runner({"kind": "submitit_local", "timeout_min": 5})
    assert local.executor(tmp_path / "%j", name="x").cluster == "local"
    assert isinstance(launch.get_runner({"kind": "local"}), launch.LocalRunner)
    with pytest.raises(ValueError, match="Did you mean 'slurm'"):
        launch.get_runner({"kind": "slurmm"})
    with pytest.raises(ValueError, match="launcher.partition: not a setting of launcher local"):
        launch.get_runner({"kind": "local", "partition": "gpu"})
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))      # no srun (this machine has one)
    with pytest.raises(launch.LaunchError, match="launcher=slurm: submitit cannot submit"):
        runner.executor(tmp_path / "%j", name="x")
