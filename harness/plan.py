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

from looping import LoopConfigError

from . import store as st
from .spec import (CellSpec, ModelArch, SpecError, cell_id, loop_text, model_arch,
                   resolve_on_facts, spec_from_config)

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
REPORT_CHOICES = ("true: this grid's cells", "store: every record in the store", "false")


def _report_choice(value) -> bool | str:
    """`report=`: True / False, or 'store' (the report of every record in the store: the parts of
    an experiment that share a store each rewrite the whole report)."""
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "false"):
        return str(value).lower() == "true"
    if str(value) == "store":
        return "store"
    raise ValueError(f"report={value}: not a choice; valid: {'; '.join(REPORT_CHOICES)}")


@dataclass(frozen=True)
class Settings:
    """How the grid runs (the sweep config's non-cell keys, from its first combination)."""
    store: str = "results"
    force: bool = False
    baseline: bool = True
    group_by: str = "model"
    dry_run: bool = False
    report: bool | str = False         # True: this grid's cells; "store": every record in the store
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
                  report=_report_choice(c["report"]),
                  figures=str(c["figures"]) if c["figures"] else None,
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
    """The documents a cell scores, where known (its limit, or a real-data or embedded task's
    size), else 1."""
    from harness.embedded import N_GEN, N_MC
    from harness.tasks.real import REAL_TASKS

    known = {**{t: v[2] for t, v in REAL_TASKS.items()}, "embedded_mc": N_MC, "embedded_gen": N_GEN}
    sizes = [known[t] for t in spec.tasks if t in known]
    size = float(sum(sizes)) if sizes else None
    if isinstance(spec.limit, int) and spec.limit > 0:
        return float(spec.limit) if size is None else min(float(spec.limit), size)
    return size or 1.0


@dataclass(frozen=True)
class PlannedCell:
    spec: CellSpec
    cell_id: str
    label: str
    status: str | None                  # in the store when planned: ok / failed / oom / broken
    cost: Cost = Cost(None)
    not_run: str | None = None          # why the cell cannot run here (its model is unavailable)
    problem: str | None = None          # why its record is broken (status 'broken')


class PlanError(ValueError):
    """The grid names cells that cannot run; `lines` says why, one line per distinct problem
    (each naming the setting, the bad value and the valid choices)."""

    def __init__(self, lines: list[str]):
        self.lines = list(dict.fromkeys(lines))
        super().__init__("\n".join(self.lines))


@dataclass
class Plan:
    cells: list[PlannedCell]            # run order: grouped by model, baselines first
    settings: Settings
    grid_id: str = ""
    first: tuple = ()                   # (overrides, composed config) of the first combination
    equivalent: int = 0                 # grid combinations whose cell equals an earlier one's
    normalised: int = 0                 # looped cells with options normalised away (kv, ...)

    def __post_init__(self):
        if not self.grid_id:
            cids = ",".join(sorted(c.cell_id for c in self.cells))
            self.grid_id = hashlib.sha256(cids.encode()).hexdigest()[:10]

    @property
    def cell_ids(self) -> list[str]:
        return [c.cell_id for c in self.cells]

    @property
    def todo(self) -> list[PlannedCell]:
        """The cells to compute: not ok yet (every cell with force=true), except cells whose model
        is unavailable here (`not_run`)."""
        return [c for c in self.cells
                if (self.settings.force or c.status != "ok") and c.not_run is None]

    @property
    def not_run(self) -> list[PlannedCell]:
        """Cells that cannot run here (their model is not available), each with the reason."""
        return [c for c in self.cells if c.not_run is not None
                and (self.settings.force or c.status != "ok")]

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

    def shared_keys(self) -> frozenset:
        """The share_keys of the cells to compute that are scored in shared passes: more than one
        cell with that key, loglikelihood tasks only (harness.run.share_groups; generation
        requests are always computed per cell), sharing on."""
        from harness.tasks import SHARED_OUTPUT_TYPES, output_types

        if not self.settings.sharing:
            return frozenset()
        count: dict[tuple, int] = {}
        for c in self.todo:
            try:
                kinds = output_types(c.spec.tasks, c.spec.include_path)
            except Exception:      # noqa: BLE001 - an unknown task fails at run time, not here
                continue
            if kinds and kinds <= SHARED_OUTPUT_TYPES:
                count[c.spec.share_key()] = count.get(c.spec.share_key(), 0) + 1
        return frozenset(k for k, n in count.items() if n > 1)

    def sharing(self) -> tuple[int, int, int]:
        """(cells scored in shared passes, shared passes, cells scored alone) among the cells to
        compute (`shared_keys`)."""
        keys = self.shared_keys()
        shared = sum(c.spec.share_key() in keys for c in self.todo)
        return shared, len(keys), len(self.todo) - shared

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


def plan_grid(overrides: list[str], *, costs: bool = True, check_hub: bool = True) -> Plan:
    """The plan of a sweep command line (needs an active hydra_session). Every check that needs
    no weights runs here, for every cell (`spec_from_config`): a command line that names no valid
    grid raises ValueError / LoopConfigError / Hydra's config errors, and PlanError listing every
    distinct problem of the grid's cells. A Hub model that cannot be had (`hub_problem`, checked
    once per model) marks its cells `not_run` instead (check_hub=False: skip that check)."""
    combos = compose_grid(list(overrides))
    settings = Settings.from_config(combos[0][1])
    specs, labels, problems = [], {}, []
    archs: dict[tuple, ModelArch] = {}
    given: list[str] = []
    normalised = set()
    for combo, cfg in combos:
        if str(cfg.store) != settings.store:
            raise ValueError(f"store={cfg.store}: one grid writes to one store (also got "
                             f"store={settings.store})")
        loop_name = str(cfg.hydra.runtime.choices.get("loop", ""))
        try:
            spec = spec_from_config(cfg, loop_name=loop_name, store=settings.store)
        except SpecError as e:
            problems.append(" ".join(str(e).split()))
            continue
        preset = OmegaConf.to_container(cfg.model, resolve=True)
        archs.setdefault(spec.model_key(), model_arch(spec, preset))
        cid = cell_id(spec)
        specs.append(spec)
        if not spec.is_baseline:
            given.append(cid)
            if spec.loop.normalised:
                normalised.add(cid)
        labels.setdefault(cid, label(combo))
        if settings.baseline and not spec.is_baseline:
            loopless = [o for o in combo if not _key(o).startswith(("loop", "decode"))]
            labels.setdefault(cell_id(spec.baseline()), label(loopless + ["loop=baseline"]))
    if problems:
        raise PlanError(problems)
    unavailable = {}
    if check_hub:
        for s in specs:
            if s.model_key() not in unavailable:
                unavailable[s.model_key()] = hub_problem(s)
    cells = []
    for s in order_cells(specs, baselines=settings.baseline):
        cid = cell_id(s)
        cost = estimate_cost(s, archs[s.model_key()]) if costs else Cost(None)
        status, problem = st.check_record(settings.store, cid)
        cells.append(PlannedCell(s, cid, labels[cid], status, cost,
                                 not_run=unavailable.get(s.model_key()), problem=problem))
    return Plan(cells, settings, first=combos[0], equivalent=len(given) - len(set(given)),
                normalised=len(normalised))


# ---- can the model be had? ---------------------------------------------------------------------
#: seconds the one Hub probe of a model may take
HUB_PROBE_TIMEOUT_S = 5.0


def hub_offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE set (as huggingface_hub reads them)."""
    import os

    return any(os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_cached(repo: str, revision: str | None) -> bool:
    """Whether the Hugging Face cache holds the model's config and weights (nothing downloaded)."""
    from pathlib import Path

    from huggingface_hub import try_to_load_from_cache

    try:
        config = try_to_load_from_cache(repo, "config.json", revision=revision)
    except Exception:               # noqa: BLE001 - a malformed id, an unreadable cache
        return False
    if not isinstance(config, str):
        return False
    snapshot = Path(config).parent
    return any(any(snapshot.glob(pattern)) for pattern in (
        "*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json", "*.pt"))


def hub_problem(spec: CellSpec) -> str | None:
    """Why the spec's Hub model cannot be loaded here, or None (a local folder, a cached model, a
    reachable Hub). Offline (HF_HUB_OFFLINE=1): the local cache must hold it. Online: one probe of
    the Hub with a short timeout (HUB_PROBE_TIMEOUT_S) instead of transformers' retries per
    load."""
    if spec.is_local:
        return None
    repo, rev = spec.model, spec.revision
    if hub_offline():
        if hub_cached(repo, rev):
            return None
        return (f"{repo}{'@' + rev if rev else ''} is not in the local Hugging Face cache and "
                f"HF_HUB_OFFLINE=1 (download it first: huggingface-cli download {repo}"
                + (f" --revision {rev}" if rev else "") + ")")
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import (GatedRepoError, HFValidationError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    try:
        HfApi(endpoint=constants.ENDPOINT).model_info(repo, revision=rev,
                                                      timeout=HUB_PROBE_TIMEOUT_S)
        return None
    except HFValidationError as e:
        return f"{repo!r} is not a valid Hub model id ({' '.join(str(e).split())[:200]})"
    except GatedRepoError:
        return (f"{repo} is gated: accept its terms on the Hub and log in (huggingface-cli login "
                f"or HF_TOKEN)")
    except RevisionNotFoundError:
        return f"{repo} has no revision {rev!r} on the Hub"
    except RepositoryNotFoundError:
        return (f"{repo} is not on the Hub (or private without a token); a local folder is "
                f"written as a path (/..., ./...)")
    except Exception as e:          # noqa: BLE001 - unreachable: connection refused, timeout
        why = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
        if hub_cached(repo, rev):
            return (f"the Hugging Face Hub is unreachable ({why}); {repo} is in the local cache: "
                    f"set HF_HUB_OFFLINE=1 to use it")
        return f"the Hugging Face Hub is unreachable ({why}) and {repo} is not in the local cache"


# ---- cost from the model's config ----------------------------------------------------------------
def estimate_cost(spec: CellSpec, arch: ModelArch) -> Cost:
    """Layer passes per token of the spec's scoring forward on `arch` (the baseline: n_layers)."""
    if arch.n_layers is None:
        return Cost(None, True, note="n_layers unknown")
    if spec.loop is None:
        return Cost(arch.n_layers, arch.approximate)
    try:
        if arch.info is not None:
            r = spec.loop.resolve(arch.info, strict=False)
        else:
            r = resolve_on_facts(spec.loop, arch.n_layers, arch.moe)
    except LoopConfigError as e:
        return Cost(None, arch.approximate, note=f"refused: {e}")
    return Cost(r.layer_passes, arch.approximate, window=f"{r.start}:{r.end}")


# ---- printing ------------------------------------------------------------------------------------
def format_plan(plan: Plan) -> str:
    """The plan as a table: id, model, task, loop setting, status, cost; a total; and notes: cells
    that cannot run here (with the reason), broken records, equivalent cells run once."""
    head = ("cell", "model", "task", "loop", "status", "layers/token", "items")
    rows = []
    not_run = {c.cell_id for c in plan.not_run}
    for c in plan.cells:
        s = c.spec
        limit = "" if s.limit is None else f"{s.limit:g}"
        status = "not run" if c.cell_id in not_run else (c.status or "missing")
        rows.append((c.cell_id, s.model_name or s.model, s.task_name or s.task, loop_text(s.loop),
                     status, c.cost.text(), limit))
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
                 f"{tasks_text(plan.cells)}; {len(plan_ok(plan))} already ok; {total}")
    if todo:
        n_shared, passes_, alone = plan.sharing()
        lines.append(f"scoring: {n_shared} cell(s) in {passes_} shared pass(es) + {alone} "
                     f"separately" + ("" if plan.settings.sharing else " (sharing=false)"))
    lines += plan_notes(plan)
    if approx:
        lines.append("~ approximate: layer count from the model preset (n_layers); the model's "
                     "config is not available offline")
    return "\n".join(lines)


def plan_ok(plan: Plan) -> list[PlannedCell]:
    """The cells already ok in the store (skipped unless force=true)."""
    return [c for c in plan.cells if c.status == "ok" and not plan.settings.force]


def plan_notes(plan: Plan) -> list[str]:
    """One line per model that cannot run here (its cells are not run), per broken record (it is
    recomputed), and for equivalent or normalised cells."""
    lines = []
    reasons: dict[str, list[PlannedCell]] = {}
    for c in plan.not_run:
        reasons.setdefault(c.not_run, []).append(c)
    for why, cells in reasons.items():
        name = cells[0].spec.model_name or cells[0].spec.model
        lines.append(f"not run: {len(cells)} cell(s) of model {name}: {why}")
    for c in plan.cells:
        if c.status == "broken" and c.problem:
            lines.append(f"broken record: {' '.join(c.problem.split())}; the cell is recomputed")
    legacy = st.legacy_records(plan.settings.store)
    if legacy:
        lines.append(f"{len(legacy)} record(s) in {plan.settings.store}/cells have ids of an older "
                     f"schema (they depended on the checkout's location): the plan cannot find "
                     f"them; migrate them with: python -m harness.store migrate-ids "
                     f"{plan.settings.store}")
    if plan.equivalent:
        lines.append(f"{plan.equivalent} cell(s) of the grid are equivalent to others (the same "
                     f"resolved loop on the same model) and run once")
    if plan.normalised:
        lines.append(f"{plan.normalised} looped cell(s) had options that cannot change their "
                     f"numbers normalised away (unused options; kv / decode for loglikelihood "
                     f"tasks): docs/sweeps.md, 'The cell id'")
    return lines
