"""plan: a sweep's overrides -> the cells they mean, before anything runs.

    with hydra_session():
        plan = plan_grid(["model=qwen3-4b", "loop.k=2,3,4"])
    print(format_plan(plan))            # cells, status in the store, cost in layer passes

Owns: expanding the overrides (comma lists, `range(...)`, `glob(...)`, and the selected
experiment's `hydra.sweeper.params`, command-line values winning: the cartesian product Hydra's
basic sweeper gives, from its public override parser), composing each combination and turning it
into a CellSpec with a label, the baselines (`CellSpec.baseline()`, one per model x task), the run
order (grouped by model so each model loads once, baselines first), each cell's status in the
store, a cost estimate read from the model's config alone (no weights), and the jobs a launcher
runs (`Plan.jobs()`: one per model, or one per cell).

Cost: decoder-layer evaluations per token of a scoring forward (`ResolvedLoop.layer_passes`; the
plain model: its layer count). The layer count comes from the model's config (a local folder, the
embedded model, or a Hub id whose config is in the local cache); otherwise from the model preset's
`n_layers`, and the cost is marked approximate ('~').
"""
from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from typing import Any, Iterable

from omegaconf import DictConfig, OmegaConf

from looping import LoopConfigError, ResolvedLoop

from . import store as st
from .spec import CellSpec, cell_id, loop_text, spec_from_config

# Keys that do not describe a cell: kept out of the cells' labels.
META_KEYS = ("hydra", "store", "force", "baseline", "group_by", "dry_run", "report", "figures",
             "allow_code_eval", "lock_stale_s", "device", "sharing", "wandb", "launcher")
GROUP_BY = ("model", "cell", "cost")


# ---- expanding overrides ---------------------------------------------------------------------
def expand(overrides: Iterable[str]) -> list[list[str]]:
    """Every combination of `overrides`' sweeps, each a list of plain overrides (the order and
    the product of Hydra's basic sweeper: a key given twice keeps its first place and its last
    value). Needs an active hydra_session for `glob(...)` sweeps over config groups."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    gh = GlobalHydra.instance()
    parser = OverridesParser.create(config_loader=gh.config_loader() if gh.is_initialized()
                                    else None)
    final: dict[str, list[str]] = {}
    for o in parser.parse_overrides(list(overrides)):
        key = o.get_key_element()
        if o.is_sweep_override():
            if not o.is_discrete_sweep():
                raise ValueError(f"{o.input_line}: an interval sweep has no cells to list; give "
                                 f"values (a,b,c) or range(start,stop[,step])")
            final[key] = [f"{key}={v}" for v in o.sweep_string_iterator()]
        else:
            final[key] = [f"{key}={o.get_value_element_as_str()}"]
    return [list(x) for x in itertools.product(*final.values())]


def compose_grid(overrides: list[str]) -> list[tuple[list[str], DictConfig]]:
    """Every combination of the command line's sweeps and, per combination, the selected
    experiment's hydra.sweeper.params (command-line values win), each with its composed config
    (hydra node included). Needs an active hydra_session."""
    from .config import compose

    out = []
    for combo in expand(overrides):
        cfg = compose(combo)
        params = cfg.hydra.sweeper.params or {}
        if params:
            for sub in expand([f"{k}={v}" for k, v in params.items()] + combo):
                out.append((sub, compose(sub)))
        else:
            out.append((combo, cfg))
    return out


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _is_meta(override: str) -> bool:
    k = _key(override)
    return any(k == m or k.startswith(m + ".") or k.startswith(m + "/") for m in META_KEYS)


def tasks_text(cells) -> str:
    """'task(s) a, b' of the cells, by their names ('task mmlu_pro')."""
    names = sorted({c.spec.task_name or c.spec.task for c in cells})
    return f"task{'s' if len(names) > 1 else ''} {', '.join(names)}"


def label(overrides: list[str]) -> str:
    """A cell's name from its overrides ('loop.k=3,model=qwen3-4b'; wandb run names)."""
    parts = sorted(o.lstrip("+") for o in overrides if not _is_meta(o))
    return ",".join(parts) or "default"


# ---- the plan ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """How the grid runs (the sweep config's non-cell keys, from its first combination)."""
    store: str = "results"
    force: bool = False
    baseline: bool = True
    group_by: str = "model"
    dry_run: bool = False
    report: bool = False
    figures: str | None = None         # None: <store>/figures
    allow_code_eval: bool = False
    lock_stale_s: float = 86400
    device: str | None = None
    sharing: bool = True
    wandb: dict = field(default_factory=dict)
    launcher: dict = field(default_factory=lambda: {"kind": "local"})

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "Settings":
        c = {k: cfg[k] for k in ("store", "force", "baseline", "group_by", "dry_run", "report",
                                 "figures", "allow_code_eval", "lock_stale_s", "device",
                                 "sharing")}
        out = cls(store=str(c["store"]), force=bool(c["force"]), baseline=bool(c["baseline"]),
                  group_by=str(c["group_by"]), dry_run=bool(c["dry_run"]),
                  report=bool(c["report"]), figures=str(c["figures"]) if c["figures"] else None,
                  allow_code_eval=bool(c["allow_code_eval"]),
                  lock_stale_s=float(c["lock_stale_s"]), device=c["device"],
                  sharing=bool(c["sharing"]),
                  wandb=OmegaConf.to_container(cfg.wandb, resolve=True),
                  launcher=OmegaConf.to_container(cfg.launcher, resolve=True))
        if out.group_by not in GROUP_BY:
            raise ValueError(f"group_by={out.group_by}: not a choice; valid: "
                             f"{', '.join(GROUP_BY)}")
        return out


@dataclass(frozen=True)
class Cost:
    """Decoder-layer evaluations per token of one scoring forward (None: unknown, see `note`)."""
    layer_passes: int | None
    approximate: bool = False           # layer count from the model preset, not its config
    window: str | None = None           # the resolved window layers, e.g. '15:19'
    note: str = ""

    def text(self) -> str:
        if self.layer_passes is None:
            return self.note or "?"
        return ("~" if self.approximate else "") + str(self.layer_passes)


def items_of(spec: CellSpec) -> float:
    """The documents a cell scores, where known (its limit, or a real-data task's size), else 1."""
    from harness.tasks.real import REAL_TASKS

    if isinstance(spec.limit, int) and spec.limit > 0:
        return float(spec.limit)
    sizes = [REAL_TASKS[t][2] for t in spec.tasks if t in REAL_TASKS]
    return float(sum(sizes)) if sizes else 1.0


@dataclass(frozen=True)
class PlannedCell:
    spec: CellSpec
    cell_id: str
    label: str
    status: str | None                  # in the store when planned: ok / failed / oom / broken
    cost: Cost = Cost(None)


@dataclass
class Plan:
    cells: list[PlannedCell]            # run order: grouped by model, baselines first
    settings: Settings
    grid_id: str = ""
    first: tuple = ()                   # (overrides, composed config) of the first combination

    def __post_init__(self):
        if not self.grid_id:
            cids = ",".join(sorted(c.cell_id for c in self.cells))
            self.grid_id = hashlib.sha256(cids.encode()).hexdigest()[:10]

    @property
    def cell_ids(self) -> list[str]:
        return [c.cell_id for c in self.cells]

    @property
    def todo(self) -> list[PlannedCell]:
        """The cells to compute: not ok yet (every cell with force=true)."""
        return [c for c in self.cells if self.settings.force or c.status != "ok"]

    @property
    def n_models(self) -> int:
        return len({c.spec.model_key() for c in self.cells})

    @property
    def unsafe_tasks(self) -> list[str]:
        return sorted({c.spec.task_name or c.spec.task for c in self.cells if c.spec.unsafe_code})

    def report_ids(self) -> list[str]:
        """The grid's cells and their baselines (also when baseline=false left them out)."""
        return list(dict.fromkeys(self.cell_ids + [cell_id(c.spec.baseline()) for c in self.cells
                                                   if not c.spec.is_baseline]))

    def job(self, cells: list[PlannedCell]) -> dict:
        """One job's JSON: the run settings and its cells (`harness.run.run_job` runs it)."""
        s = self.settings
        return {"grid_id": self.grid_id, "store": s.store, "force": s.force, "device": s.device,
                "allow_code_eval": s.allow_code_eval, "lock_stale_s": s.lock_stale_s,
                "sharing": s.sharing, "wandb": s.wandb,
                "cells": [{"cell_id": c.cell_id, "label": c.label, "spec": c.spec.to_dict(),
                           "cost": (c.cost.layer_passes or 0) * items_of(c.spec) or None}
                          for c in cells]}

    def sharing(self) -> tuple[int, int, int]:
        """(cells scored in shared passes, shared passes, cells scored alone) among the cells to
        compute: cells with equal `share_key` whose tasks are loglikelihood ones share a pass
        (harness.run.share_groups; generation requests are always computed per cell)."""
        from harness.tasks import SHARED_OUTPUT_TYPES, output_types

        if not self.settings.sharing:
            return 0, 0, len(self.todo)
        groups: dict[tuple, int] = {}
        alone = 0
        for c in self.todo:
            try:
                kinds = output_types(c.spec.tasks, c.spec.include_path)
            except Exception:      # noqa: BLE001 - an unknown task fails at run time, not here
                kinds = {"unknown"}
            if kinds and kinds <= SHARED_OUTPUT_TYPES:
                groups[c.spec.share_key()] = groups.get(c.spec.share_key(), 0) + 1
            else:
                alone += 1
        shared = {k: n for k, n in groups.items() if n > 1}
        alone += sum(n for n in groups.values() if n == 1)
        return sum(shared.values()), len(shared), alone

    def jobs(self) -> list[dict]:
        """The launcher jobs of the cells to compute: one per model (group_by=model; also for
        group_by=cost, which the Slurm launcher then splits by cost, harness.launch), or one per
        cell (group_by=cell: a looped cell's job also tries its baseline first; the cell lock
        lets exactly one job compute it)."""
        groups: dict[Any, list[PlannedCell]] = {}
        for c in self.todo:
            key = c.cell_id if self.settings.group_by == "cell" else c.spec.model_key()
            groups.setdefault(key, []).append(c)
        if self.settings.group_by == "cell":
            for members in list(groups.values()):
                s = members[0].spec
                if not s.is_baseline and cell_id(s.baseline()) in groups:
                    members.insert(0, groups[cell_id(s.baseline())][0])
        return [self.job(members) for members in groups.values()]


def order_cells(specs: Iterable[CellSpec], *, baselines: bool = True) -> list[CellSpec]:
    """Unique cells grouped by model (so each model loads once), each model's baselines first."""
    seen, out = set(), []
    specs = list(specs)
    if baselines:
        specs = [s.baseline() for s in specs if not s.is_baseline] + specs
    groups: dict[tuple, list[CellSpec]] = {}
    for s in specs:
        cid = cell_id(s)
        if cid in seen:
            continue
        seen.add(cid)
        groups.setdefault(s.model_key(), []).append(s)
    for g in groups.values():
        out += sorted(g, key=lambda s: not s.is_baseline)
    return out


def plan_grid(overrides: list[str], *, costs: bool = True) -> Plan:
    """The plan of a sweep command line (needs an active hydra_session). Raises ValueError /
    LoopConfigError / Hydra's config errors for a command line that names no valid grid."""
    combos = compose_grid(list(overrides))
    settings = Settings.from_config(combos[0][1])
    specs, labels, presets = [], {}, {}
    for combo, cfg in combos:
        if str(cfg.store) != settings.store:
            raise ValueError(f"store={cfg.store}: one grid writes to one store (also got "
                             f"store={settings.store})")
        loop_name = str(cfg.hydra.runtime.choices.get("loop", ""))
        spec = spec_from_config(cfg, loop_name=loop_name, store=settings.store)
        specs.append(spec)
        presets.setdefault(spec.model_key(), OmegaConf.to_container(cfg.model, resolve=True))
        labels.setdefault(cell_id(spec), label(combo))
        if settings.baseline and not spec.is_baseline:
            loopless = [o for o in combo if not _key(o).startswith(("loop", "decode"))]
            labels.setdefault(cell_id(spec.baseline()), label(loopless + ["loop=baseline"]))
    arch: dict[tuple, ModelArch] = {}
    cells = []
    for s in order_cells(specs, baselines=settings.baseline):
        cid = cell_id(s)
        cost = Cost(None)
        if costs:
            key = s.model_key()
            if key not in arch:
                arch[key] = model_arch(s, presets.get(key) or {})
            cost = estimate_cost(s, arch[key])
        cells.append(PlannedCell(s, cid, labels[cid], st.status_of(settings.store, cid), cost))
    return Plan(cells, settings, first=combos[0])


# ---- cost from the model's config ----------------------------------------------------------------
@dataclass(frozen=True)
class ModelArch:
    """What the cost needs to know of a model: its ArchInfo (from its config, built on the meta
    device) or, approximately, the preset's layer count and MoE flag."""
    info: Any = None                    # looping.arch.ArchInfo, or None
    n_layers: int | None = None
    moe: bool = False
    approximate: bool = True


def model_arch(spec: CellSpec, preset: dict) -> ModelArch:
    """The model's architecture from its config alone: a local folder's config.json, or a Hub
    id's config if it is in the local cache (never downloaded); else the preset's `n_layers`."""
    try:
        from transformers import AutoConfig

        from looping.arch import describe_config

        kw = dict(trust_remote_code=spec.trust_remote_code)
        if not spec.is_local:
            kw.update(revision=spec.revision, local_files_only=True)
        info = describe_config(AutoConfig.from_pretrained(spec.model, **kw))
        return ModelArch(info, info.n_layers, info.is_moe, approximate=False)
    except Exception:    # noqa: BLE001 - not cached, remote code, unknown family: use the preset
        n = preset.get("n_layers")
        return ModelArch(None, int(n) if n else None, bool(preset.get("moe")), approximate=True)


def estimate_cost(spec: CellSpec, arch: ModelArch) -> Cost:
    """Layer passes per token of the spec's scoring forward on `arch` (the baseline: n_layers)."""
    if arch.n_layers is None:
        return Cost(None, True, note="n_layers unknown")
    if spec.loop is None:
        return Cost(arch.n_layers, arch.approximate)
    try:
        if arch.info is not None:
            r = spec.loop.resolve(arch.info)
        else:
            r = _resolve_on_layer_count(spec, arch)
    except LoopConfigError as e:
        return Cost(None, arch.approximate, note=f"refused: {e}")
    return Cost(r.layer_passes, arch.approximate, window=f"{r.start}:{r.end}")


def _resolve_on_layer_count(spec: CellSpec, arch: ModelArch) -> ResolvedLoop:
    """A ResolvedLoop from the layer count alone (no architecture checks: the cost only)."""
    from looping.config import window_centre

    lc = spec.loop
    start, end = lc.window.layers(arch.n_layers)
    mode = lc.mode if lc.mode != "auto" else ("layer" if arch.moe else "block")
    return ResolvedLoop(config=lc, start=start, end=end, mode=mode, routing="?",
                        n_layers=arch.n_layers, centre=window_centre(start, end, arch.n_layers),
                        model_type="?", is_moe=arch.moe)


# ---- printing ------------------------------------------------------------------------------------
def format_plan(plan: Plan) -> str:
    """The plan as a table: id, model, task, loop setting, status, cost; and a total."""
    head = ("cell", "model", "task", "loop", "status", "layers/token", "items")
    rows = []
    for c in plan.cells:
        s = c.spec
        loop = loop_text(s.loop)
        if c.cost.window and s.loop is not None and str(s.loop.window) != c.cost.window:
            loop = loop.replace(f"window={s.loop.window}", f"window={s.loop.window}"
                                                           f" ({c.cost.window})")
        limit = "" if s.limit is None else f"{s.limit:g}"
        rows.append((c.cell_id, s.model_name or s.model, s.task_name or s.task, loop,
                     c.status or "missing", c.cost.text(), limit))
    if not any(r[-1] for r in rows):                 # no limit known: no items column
        head, rows = head[:-1], [r[:-1] for r in rows]
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip()
             for r in [head, *rows]]
    todo = plan.todo
    n_base = sum(c.spec.is_baseline for c in plan.cells)
    passes = [c.cost.layer_passes for c in todo]
    known = [p for p in passes if p is not None]
    approx = any(c.cost.approximate for c in todo)
    total = (f"{'~' if approx else ''}{sum(known)} layer passes per token over the "
             f"{len(todo)} cell(s) to compute" if todo else "nothing to compute")
    if len(known) < len(passes):
        total += f" ({len(passes) - len(known)} without a cost)"
    with_items = [(c.cost.layer_passes, c.spec.limit) for c in todo
                  if c.cost.layer_passes is not None and c.spec.limit is not None]
    if todo and len(with_items) == len(todo):
        total += f"; x items: {'~' if approx else ''}{sum(p * i for p, i in with_items):g}"
    lines.append(f"grid {plan.grid_id}: {len(plan.cells)} cells ({len(plan.cells) - n_base} "
                 f"looped + {n_base} baseline) over {plan.n_models} model(s) on "
                 f"{tasks_text(plan.cells)}; {len(plan.cells) - len(todo)} already ok; {total}")
    if todo:
        n_shared, passes_, alone = plan.sharing()
        lines.append(f"scoring: {n_shared} cell(s) in {passes_} shared pass(es) + {alone} "
                     f"separately" + ("" if plan.settings.sharing else " (sharing=false)"))
    if approx:
        lines.append("~ approximate: layer count from the model preset (n_layers); the model's "
                     "config is not available offline")
    return "\n".join(lines)
