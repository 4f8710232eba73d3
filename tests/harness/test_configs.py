"""Every config under harness/configs/ composes; presets agree with LoopConfig, the recipes and the
paper's window table; every experiment composes with the Slurm launcher (compose only, nothing
submitted)."""
import csv
import dataclasses
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from harness.config import CONFIG_DIR, compose, hydra_session

from looping import RECIPES, LoopConfig
from looping.config import WindowSpec

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = CONFIG_DIR
LOOP_FIELDS = {f.name for f in dataclasses.fields(LoopConfig)}


def options(group):
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.fixture(scope="module")
def hydra_ctx():
    with hydra_session(job_name="test"):         # the config dir + the nodes generated from looping
        yield


def test_primary_config_is_multirun(hydra_ctx):
    cfg = compose()
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert cfg.model.name == "embedded" and cfg.loop.integrator == "anchored"


def every_config_file():
    out = []
    for p in sorted(CONFIGS.rglob("*.yaml")):
        rel = p.relative_to(CONFIGS)
        if rel.parts[0] == "sweep.yaml":
            continue
        out.append("/".join(rel.with_suffix("").parts))
    return out


@pytest.mark.parametrize("name", every_config_file())
def test_every_config_file_composes(hydra_ctx, name):
    group, option = name.rsplit("/", 1)
    if group == "decode":
        override = f"+decode={option}"
    else:
        override = f"{group}={option}"
    extra = ["allow_code_eval=true"]
    if group == "model" and not OmegaConf.load(CONFIGS / f"{name}.yaml").get("default_task"):
        extra.append("task=csqa")                     # no paper cell: a task must be chosen
    cfg = compose([override] + extra)
    OmegaConf.to_container(cfg.model, resolve=True)
    OmegaConf.to_container(cfg.task, resolve=True)
    if cfg.loop is not None:
        loop = OmegaConf.to_container(cfg.loop, resolve=True)
        assert set(loop) <= LOOP_FIELDS, f"{name}: unknown loop keys {set(loop) - LOOP_FIELDS}"
    if group == "launcher":
        assert cfg.launcher.kind


@pytest.mark.parametrize("option", [o for o in options("loop") if o != "baseline"])
def test_loop_presets_are_valid_loop_configs(hydra_ctx, option):
    cfg = compose([f"loop={option}", "model=qwen3-4b"])
    loop = OmegaConf.to_container(cfg.loop, resolve=True)
    assert set(loop) == LOOP_FIELDS, f"loop/{option}: keys differ from LoopConfig's fields"
    lc = LoopConfig.from_dict(loop)
    assert lc.window.layers(36)
    if option in RECIPES:
        for key, want in RECIPES[option].values.items():
            assert loop[key] == want, f"loop/{option}: {key}={loop[key]!r}, recipe says {want!r}"


def test_every_recipe_and_integrator_has_a_preset():
    from looping import INTEGRATORS
    names = set(options("loop"))
    assert set(RECIPES) <= names
    assert set(INTEGRATORS) <= names, f"missing loop presets: {set(INTEGRATORS) - names}"
    assert "baseline" in names


def test_baseline_preset_is_null(hydra_ctx):
    assert compose(["loop=baseline"]).loop is None


def _paper_windows():
    rows = list(csv.DictReader(open(ROOT / "harness" / "data" / "windows.csv")))
    return {r["model"].lower(): r for r in rows}


@pytest.mark.parametrize("option", options("model"))
def test_model_presets(hydra_ctx, option):
    m = compose([f"model={option}", "task=csqa"]).model
    assert m.default_task is None or m.default_task in options("task"), m.default_task
    assert m.window_source in ("paper", "code", "depth-rule")
    assert m.window_provenance
    assert m.mode in ("block", "layer")
    assert m.mode == ("layer" if m.moe else "block")
    if option == "embedded":
        return
    from harness.assets import is_model_asset       # smollm2-135m, gemma3-270m: fetched folders
    assert ("/" in m.path or is_model_asset(m.path)) and m.n_layers > 0
    s, e = WindowSpec.parse(m.window).layers(m.n_layers)
    paper = _paper_windows()
    family = {"qwen3-1.7b": "qwen3-1.7b", "qwen3-4b": "qwen3-4b", "qwen3-30b-a3b": "qwen3-30b-a3b",
              "llama-3.2-3b": "llama-3.2-3b", "moonlight-16b-a3b": "moonlight-16b-a3b",
              "qwen1.5-moe-a2.7b": "qwen1.5-moe-a2.7b", "deepseek-v2-lite": "deepseek-v2-lite"}
    key = next((v for k, v in family.items() if option == k or option.startswith(k + "-")), None)
    if key is None:
        assert m.window_source == "depth-rule"
        return
    row = paper[key]
    assert int(row["layers"]) == m.n_layers
    assert f"{s}:{e}" in row["window_half_open"].split(" or "), (option, m.window, row)


def test_qwen3_30b_has_both_published_windows(hydra_ctx):
    a = compose(["model=qwen3-30b-a3b"]).model
    b = compose(["model=qwen3-30b-a3b-code", "task=csqa"]).model
    assert (a.window, a.window_source) == ("22:25", "paper")
    assert (b.window, b.window_source) == ("22:26", "code")
    assert a.path == b.path == "Qwen/Qwen3-30B-A3B-Instruct-2507"


def test_task_presets(hydra_ctx):
    want = {"mmlu_pro": ("mmlu_pro", 5, "exact_match,custom-extract"),
            "gpqa_main": ("gpqa_main_zeroshot", 0, "acc,none"),
            "csqa": ("commonsense_qa", 7, "acc,none"), "arc_challenge": ("arc_challenge", 25, "acc,none"),
            "openbookqa": ("openbookqa", 0, "acc,none")}
    for name, (task, shots, metric) in want.items():
        t = compose([f"task={name}"]).task
        assert (t.task, t.num_fewshot, t.metric) == (task, shots, metric)
    assert compose(["task=gsm8k"]).task.limit == 200
    assert compose(["task=mbpp"]).task.unsafe_code is True
    suite = compose(["task=suite16"]).task
    assert len(suite.task) == 16 and suite.aggregate.name == "suite16"


@pytest.mark.parametrize("experiment", options("experiment"))
def test_experiment_composes_with_slurm(hydra_ctx, experiment):
    header = (CONFIGS / "experiment" / f"{experiment}.yaml").read_text().splitlines()[:15]
    assert any(f"python sweep.py experiment={experiment}" in line for line in header), \
        f"experiment/{experiment}.yaml: the header must give the exact command"
    cfg = compose([f"experiment={experiment}", "launcher=slurm"])
    launcher = cfg.launcher
    assert launcher.kind == "slurm"
    assert launcher.partition and launcher.gpus_per_node == 1 and launcher.array_parallelism > 0
    assert launcher.timeout_min == "auto" and isinstance(list(launcher.setup), list)
    assert 0 < launcher.min_task_min < launcher.max_task_min
    cpu = compose([f"experiment={experiment}", "launcher=slurm_cpu"]).launcher
    assert cpu.kind == "slurm" and cpu.gpus_per_node is None and cpu.partition is None
    assert cfg.hydra.sweeper.params, f"experiment/{experiment}: no grid in hydra.sweeper.params"
    # every combination of the experiment's grid composes (first value of each sweep)
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
    combos = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(params), None)[0]
    for combo in (combos[0], combos[-1]):
        c = compose([f"experiment={experiment}", "launcher=slurm"] + combo)
        if c.loop is not None:
            LoopConfig.from_dict(OmegaConf.to_container(c.loop, resolve=True))


def test_submitit_local_launcher_composes(hydra_ctx):
    cfg = compose(["launcher=submitit_local"])
    assert cfg.launcher.kind == "submitit_local"


def test_fixture_presets_name_local_tasks(hydra_ctx):
    from harness.tasks import task_manager
    tm = task_manager()
    for option in [o for o in options("task") if o.startswith("fixture-")]:
        t = compose([f"task={option}"]).task
        assert t.task in tm.task_index, f"task/{option}: {t.task} is not a local task"
        real = compose([f"task={option.removeprefix('fixture-')}"]).task
        assert (t.num_fewshot, t.metric) == (real.num_fewshot, real.metric), option
