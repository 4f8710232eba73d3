"""config: the sweep's Hydra config tree (harness/configs/, shipped with the package) and the nodes
generated from `looping`, so the loop schema has one source.

    with hydra_session():                       # registers the generated nodes, then initialises
        cfg = compose("sweep", overrides=["model=qwen3-4b", "loop.k=2"])
    group_options("loop")                       # ['aitken', 'anchored', ...]: what loop= accepts

Generated, not written in YAML (ConfigStore, registered by `register()`):
    loop/_base          every `LoopConfig` field with the dataclass's default, except `window`
                        and `mode`, which come from the model preset (`${model.window}`,
                        `${model.mode}`). Loop presets start from it (`defaults: [_base, _self_]`).
    loop/recipe/<name>  the values of `looping.config.RECIPES[<name>]`; a recipe preset is
                        `defaults: [_base, recipe/<name>@_here_, _self_]` and repeats no value.
"""
from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Iterator

from looping import RECIPES, LoopConfig

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
PRIMARY = "sweep"
#: the loop fields a model preset decides (loop presets may still set them)
FROM_MODEL = {"window": "${model.window}", "mode": "${model.mode}"}


def loop_base() -> dict:
    """The `loop/_base` node: LoopConfig's fields and defaults, window and mode from the model."""
    node = {}
    for f in dataclasses.fields(LoopConfig):
        node[f.name] = FROM_MODEL.get(f.name, f.default)
    return node


def register() -> None:
    """Put the generated nodes into Hydra's ConfigStore (idempotent; call before composing)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(group="loop", name="_base", node=loop_base())
    for name, recipe in RECIPES.items():
        cs.store(group="loop/recipe", name=name, node=dict(recipe.values))


@contextlib.contextmanager
def hydra_session(config_dir: str | Path = CONFIG_DIR, job_name: str = "sweep") -> Iterator[None]:
    """An initialised Hydra (public compose API) over the config tree, generated nodes included."""
    from hydra import initialize_config_dir

    register()
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3", job_name=job_name):
        yield


def compose(overrides=(), *, hydra_node: bool = True):
    """The primary config composed with `overrides` (needs an active `hydra_session`). Without a
    task chosen (`task=...` or the experiment's defaults), the model preset's `default_task`."""
    from hydra import compose as _compose

    overrides = with_default_task(list(overrides))
    return _compose(PRIMARY, overrides=overrides, return_hydra_config=hydra_node)


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def with_default_task(overrides: list[str]) -> list[str]:
    """`overrides`, plus `task=<model.default_task>` when neither they nor the selected
    experiment choose a task (the sweep config's task default is null: the task follows the
    model). A model preset without a default task: a one-line ValueError with the choices."""
    from hydra import compose as _compose

    if any(_key(o) == "task" for o in overrides):
        return overrides
    probe = [o for o in overrides if _key(o) in ("model", "experiment")
             or _key(o).startswith("model.")]
    cfg = _compose(PRIMARY, overrides=probe)
    if "task" in cfg:                               # the experiment chose it
        return overrides
    default = cfg.model.get("default_task")
    if not default:
        raise ValueError(f"model={cfg.model.name}: no default task (its preset has no "
                         f"default_task); choose one: task=<{'|'.join(group_options('task'))}>")
    return [f"task={default}", *overrides]


def groups(config_dir: str | Path = CONFIG_DIR) -> list[str]:
    """The config groups a user selects from (folders of YAML files)."""
    return sorted(p.name for p in Path(config_dir).iterdir()
                  if p.is_dir() and any(p.glob("*.yaml")))


def group_options(group: str, config_dir: str | Path = CONFIG_DIR) -> list[str]:
    """The options of a config group: its YAML files (generated `_` nodes are not options)."""
    folder = Path(config_dir) / group
    return sorted(p.stem for p in folder.glob("*.yaml") if not p.stem.startswith("_"))
