#!/usr/bin/env python
"""sweep.py: run a grid of looped-inference cells (Hydra; configs/sweep.yaml).

    python sweep.py                                   # the embedded model, default loop + baseline
    python sweep.py experiment=demo                   # the demo grid (CPU, offline)
    python sweep.py model=qwen3-4b loop.k=2,3,4       # a grid without -m: 3 cells + 1 baseline
    python sweep.py experiment=table-deltas hydra/launcher=slurm   # Slurm arrays, one task per model

How a grid runs (docs/sweeps.md):
1. Here, in the driver: the command line's comma lists and the experiment's `hydra.sweeper.params`
   are expanded exactly as Hydra's basic sweeper does; each combination is composed and turned into
   a CellSpec (harness/cell.py); each looped model x task gets its baseline (loop=null), shared.
2. Cells whose record is `ok` are skipped (force=true recomputes); if none is left, nothing runs.
3. The rest are grouped by model (group_by=model: one job per model, so a model loads once per
   job; group_by=cell: one job per cell) into plan files, and Hydra's launcher (local, slurm,
   submitit_local) runs one job per plan: `plan=<file1>,<file2>,...`.
4. Each job runs its cells in order (baselines first) with one model load, one JSON record per
   cell written atomically; a per-cell lock keeps concurrent jobs from computing a cell twice.
5. The driver prints the grid summary (done / skipped / failed) from the records and, with
   report=true, builds the report of this grid's cells (scripts/make_report.py --cells).
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
# Keys that do not describe a cell: kept out of the cells' labels.
META_KEYS = ("hydra", "store", "force", "baseline", "group_by", "report", "figures",
             "allow_code_eval", "lock_stale_s", "device", "wandb", "grid_id", "plan")
# Overrides passed on to the jobs' own composition (launcher settings and where results go).
PASS_KEYS = ("hydra", "store", "experiment")


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _is_meta(override: str) -> bool:
    k = _key(override)
    return any(k == m or k.startswith(m + ".") or k.startswith(m + "/") for m in META_KEYS)


def _label(overrides: list[str]) -> str:
    parts = sorted(o.lstrip("+") for o in overrides if not _is_meta(o))
    return ",".join(parts) or "default"


def expand_grid(overrides: list[str]) -> list[tuple[list[str], DictConfig]]:
    """Every combination of the command line's sweeps and the selected experiment's
    hydra.sweeper.params (command-line values win), each with its composed config. Needs an
    initialised Hydra (hydra.initialize_config_dir)."""
    from hydra import compose
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()

    def split(ovs: list[str]) -> list[list[str]]:
        return BasicSweeper.split_arguments(parser.parse_overrides(ovs), None)[0]

    out = []
    for combo in split(overrides):
        cfg = compose("sweep", overrides=combo, return_hydra_config=True)
        params = cfg.hydra.sweeper.params or {}
        if params:
            for sub in split([f"{k}={v}" for k, v in params.items()] + combo):
                out.append((sub, compose("sweep", overrides=sub, return_hydra_config=True)))
        else:
            out.append((combo, cfg))
    return out


def plan_grid(overrides: list[str]):
    """(cells, settings): the grid's unique cells as (CellSpec, label) in run order (grouped by
    model, baselines first), and the driver settings of the first combination."""
    from hydra import initialize_config_dir

    from harness.spec import cell_id, spec_from_config

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name="sweep"):
        combos = expand_grid(overrides)
    first = combos[0][1]
    store = str(first.store)
    specs, labels = [], {}
    for combo, cfg in combos:
        if str(cfg.store) != store:
            raise SystemExit(f"sweep.py: one grid writes to one store; got {store!r} and {cfg.store!r}")
        spec = spec_from_config(cfg, loop_name=str(cfg.hydra.runtime.choices.get("loop", "")), store=store)
        specs.append(spec)
        labels.setdefault(cell_id(spec), _label(combo))
        if cfg.baseline and not spec.is_baseline:
            loopless = [o for o in combo if not _key(o).startswith("loop") and not _key(o).startswith("decode")]
            labels.setdefault(cell_id(spec.baseline()), _label(loopless + ["loop=baseline"]))
    cells = order_cells(specs, baselines=bool(first.baseline))
    settings = OmegaConf.to_container(first, resolve=False)
    settings.pop("hydra", None)
    return [(s, labels[cell_id(s)]) for s in cells], settings


def order_cells(specs, *, baselines: bool = True):
    """Unique cells grouped by model (so each model loads once), each model's baselines first."""
    from harness.spec import cell_id

    seen, out = set(), []
    specs = list(specs)
    if baselines:
        specs = [s.baseline() for s in specs if not s.is_baseline] + specs
    groups: dict = {}
    for s in specs:
        cid = cell_id(s)
        if cid in seen:
            continue
        seen.add(cid)
        groups.setdefault(s.model_key(), []).append(s)
    for g in groups.values():
        out += sorted(g, key=lambda s: not s.is_baseline)
    return out


def grid_id(cids: list[str]) -> str:
    return hashlib.sha256(",".join(sorted(cids)).encode()).hexdigest()[:10]


def _quote(path: str) -> str:
    return "'" + path.replace("\\", "\\\\").replace("'", "\\'") + "'"


def summarize(store, cids, before, force, started) -> dict:
    from harness import store as st

    out = {"done": [], "skipped": [], "failed": [], "missing": []}
    for cid in cids:
        now = st.status_of(store, cid)
        rec_time = st.record_path(store, cid).stat().st_mtime if now not in (None, "broken") else 0
        if now == "ok" and before.get(cid) == "ok" and not (force and rec_time >= started):
            out["skipped"].append(cid)
        elif now == "ok":
            out["done"].append(cid)
        elif now in ("failed", "oom", "broken"):
            out["failed"].append(cid)
        else:
            out["missing"].append(cid)
    return out


def run_report(store: str, cell_ids: list[str], figures: str = "figures") -> None:
    """Build the tables (into `store`) and figures (into `figures`) with scripts/make_report.py
    from this grid's records (`cell_ids`, baselines included; other grids in the store stay out)."""
    from harness.report import make_report

    try:
        make_report(store, figures=figures, cell_ids=cell_ids)
    except Exception as e:     # noqa: BLE001 - the grid's records are the result; the report is extra
        print(f"[loopsweep] the report failed ({type(e).__name__}: {e}); records are in {store}/cells")


def drive(argv: list[str]) -> int:
    """The driver: plan the grid, skip what is done, launch one Hydra job per plan, summarise."""
    from harness import store as st
    from harness.spec import cell_id

    t_start = time.time()
    cells, cfg = plan_grid(argv)
    store = str(cfg["store"])
    force, group_by = bool(cfg["force"]), str(cfg["group_by"])
    if group_by not in ("model", "cell"):
        raise SystemExit(f"sweep.py: group_by={group_by!r}; valid: model, cell")
    cids = [cell_id(s) for s, _ in cells]
    gid = grid_id(cids)
    unsafe = sorted({s.task_name or s.task for s, _ in cells if s.unsafe_code})
    if unsafe and not cfg["allow_code_eval"]:
        raise SystemExit(f"sweep.py: task(s) {', '.join(unsafe)} execute model-written code; add "
                         f"allow_code_eval=true to run them")
    before = {cid: st.status_of(store, cid) for cid in cids}
    todo = [(s, lab) for (s, lab), cid in zip(cells, cids) if force or before[cid] != "ok"]
    n_base = sum(s.is_baseline for s, _ in cells)
    n_models = len({s.model_key() for s, _ in cells})
    print(f"[loopsweep] grid {gid}: {len(cells)} cells ({len(cells) - n_base} looped + {n_base} "
          f"baseline) over {n_models} model(s); {len(cells) - len(todo)} already ok, {len(todo)} to "
          f"compute; records in {store}/cells", flush=True)
    if not todo:
        print(f"[loopsweep] nothing to compute: all {len(cells)} cells are already ok "
              f"(force=true recomputes)", flush=True)
    else:
        groups: dict = {}
        for s, lab in todo:
            key = s.model_key() if group_by == "model" else cell_id(s)
            groups.setdefault(key, []).append((s, lab))
        if group_by == "cell":        # a looped cell's job also tries its baseline (lock: once)
            for key, members in list(groups.items()):
                s = members[0][0]
                if not s.is_baseline and cell_id(s.baseline()) in groups:
                    members.insert(0, groups[cell_id(s.baseline())][0])
        plan_dir = Path(store) / "plans" / gid
        paths = []
        for n, members in enumerate(groups.values()):
            name = members[-1][0].model_name or "model"
            plan = {"grid_id": gid, "store": store, "force": force, "device": cfg.get("device"),
                    "allow_code_eval": bool(cfg["allow_code_eval"]),
                    "lock_stale_s": float(cfg["lock_stale_s"]), "wandb": cfg.get("wandb"),
                    "cells": [{"cell_id": cell_id(s), "label": lab, "spec": s.to_dict()} for s, lab in members]}
            paths.append(str(st.write_json_atomic(plan_dir / f"{n:04d}-{name}.json", plan).resolve()))
        print(f"[loopsweep] launching {len(paths)} job(s) (group_by={group_by}); plans in {plan_dir}",
              flush=True)
        passthrough = [o for o in argv if _key(o).split(".")[0].split("/")[0] in PASS_KEYS
                       and "," not in o.split("=", 1)[-1]]
        job_argv = passthrough + [f"grid_id={gid}", "hydra.sweeper.params=null",
                                  "plan=" + ",".join(_quote(p) for p in paths)]
        saved = sys.argv
        sys.argv = [saved[0]] + job_argv
        try:
            job()
        except SystemExit as e:
            if e.code not in (0, None):
                print(f"[loopsweep] a job exited with {e.code}", flush=True)
        finally:
            sys.argv = saved
    summary = summarize(store, cids, before, force, t_start)
    print(f"[loopsweep] grid {gid} summary: {len(cids)} cells: {len(summary['done'])} done, "
          f"{len(summary['skipped'])} skipped (already ok), {len(summary['failed'])} failed, "
          f"{len(summary['missing'])} missing", flush=True)
    for cid in summary["failed"]:
        rec = st.read_record(store, cid) if st.status_of(store, cid) != "broken" else None
        err = ((rec.error if rec else None) or "broken record").strip().splitlines()[-1:]
        print(f"[loopsweep]   failed {cid}: {err[0] if err else ''}", flush=True)
    if cfg.get("report"):
        # the grid's cells and their baselines (also when baseline=false left them out of the grid)
        report_ids = list(dict.fromkeys(cids + [cell_id(s.baseline()) for s, _ in cells
                                                if not s.is_baseline]))
        run_report(store, report_ids, str(cfg.get("figures") or "figures"))
    return 1 if summary["failed"] or summary["missing"] else 0


@hydra.main(version_base="1.3", config_path="configs", config_name="sweep")
def job(cfg: DictConfig):
    """One Hydra job: the cells of its plan file (or, without a plan, the config's own cell and its
    baseline), in one process with one model cache."""
    from harness.run import run_cells
    from harness.spec import CellSpec, spec_from_config
    from harness.tracking import Tracker

    if cfg.plan:
        plan = json.loads(Path(str(cfg.plan)).read_text())
        cells = [(CellSpec.from_dict(c["spec"]), c["label"]) for c in plan["cells"]]
    else:
        spec = spec_from_config(cfg, store=str(cfg.store))
        cells = [(s, "baseline" if s.is_baseline else "cell") for s in
                 order_cells([spec], baselines=bool(cfg.baseline))]
        plan = {"grid_id": str(cfg.grid_id), "store": str(cfg.store), "force": bool(cfg.force),
                "device": cfg.device, "allow_code_eval": bool(cfg.allow_code_eval),
                "lock_stale_s": float(cfg.lock_stale_s),
                "wandb": OmegaConf.to_container(cfg.wandb, resolve=True)}
    store = plan["store"]
    tracker = Tracker.from_config(plan.get("wandb"), group=plan["grid_id"], dir=Path(store) / "wandb")
    summary = run_cells(cells, store=store, force=plan["force"], device=plan.get("device"),
                        allow_code_eval=plan["allow_code_eval"], lock_stale_s=plan["lock_stale_s"],
                        tracker=tracker)
    print(f"[loopsweep] job done: {len(summary['done'])} computed, {len(summary['skipped'])} skipped, "
          f"{len(summary['busy'])} left to another process, {len(summary['failed'])} failed", flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a.startswith("-") for a in argv) or any(_key(a) == "plan" for a in argv):
        job()                      # Hydra's own flags (--help, --cfg, ...) or an explicit plan
        return 0
    return drive(argv)


if __name__ == "__main__":
    sys.exit(main())
