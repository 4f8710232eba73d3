"""driver: `python sweep.py ...` / `loopsweep ...`: one pass from a command line to records.

    python sweep.py                                   # the embedded model, default loop + baseline
    python sweep.py experiment=demo                   # the demo grid (CPU, offline)
    python sweep.py model=qwen3-4b loop.k=2,3,4       # a grid without -m: 3 cells + 1 baseline
    python sweep.py model=qwen3-4b loop.k=2,3,4 dry_run=true   # the plan only (also: --cfg job)
    python sweep.py experiment=table-deltas launcher=slurm     # one Slurm array, a task per model
    python sweep.py experiment=demo launcher=slurm_cpu group_by=cost   # tasks that fit the limit

The pass (docs/sweeps.md):
1. parse the command line: Hydra overrides, plus a few flags (`--cfg job|hydra|all`, `-m`,
   `--help`, `--info`); `hydra/launcher=X` / `hydra.launcher.K=V` are read as `launcher=X` /
   `launcher.K=V`;
2. compose and plan (harness.plan): every combination of the sweeps, one CellSpec each, the
   baselines, the run order, each cell's status in the store and its cost; nothing loads;
3. `--cfg` / `dry_run=true`: print the plan and stop;
4. run the cells that are not ok yet (harness.launch: in this process, or as submitit jobs);
5. print the grid summary from the records; with `report=true` build the report of this grid's
   cells (harness.report.make_report), with `report=store` of every record in the store.
   Exit code 1 when a cell failed, is missing or was not run
   (its model is unavailable here: reported per cell with the reason).
A command line that names no valid grid (an unknown preset or key, a bad value, a malformed
override, a cell the model cannot run: every check that needs no weights runs while planning)
prints one line per problem, `sweep.py: <what is wrong, the valid choices>`, and exits with 2.
"""
from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from looping import LoopConfigError, did_you_mean

PROG = "loopsweep" if Path(sys.argv[0] if sys.argv else "").name == "loopsweep" else "sweep.py"
#: the old Hydra launcher names -> the `launcher` group's options
LAUNCHER_ALIASES = {"basic": "local", "local": "local", "slurm": "slurm",
                    "submitit_slurm": "slurm", "submitit_local": "submitit_local"}
CFG_CHOICES = ("job", "hydra", "all")
MAX_ERROR_LINES = 20          # a grid's planning problems printed (the rest counted)


class UsageError(ValueError):
    """The command line itself is malformed (an unknown flag, a flag without its value)."""


@dataclass
class Args:
    overrides: list[str] = field(default_factory=list)
    cfg: str | None = None              # job | hydra | all
    resolve: bool = False
    multirun: bool = False
    help: bool = False
    info: bool = False
    notes: list[str] = field(default_factory=list)


def parse_args(argv: list[str]) -> Args:
    """Overrides and flags; the old `hydra/launcher` spelling is translated (with a note)."""
    out = Args()
    it = iter(argv)
    for a in it:
        if a in ("-h", "--help"):
            out.help = True
        elif a == "--info" or a.startswith("--info="):
            out.info = True
        elif a in ("-m", "--multirun"):
            out.multirun = True
        elif a == "--resolve":
            out.resolve = True
        elif a in ("-c", "--cfg") or a.startswith("--cfg="):
            value = a.split("=", 1)[1] if "=" in a else next(it, None)
            if value not in CFG_CHOICES:
                raise UsageError(f"{a}{'' if '=' in a else ' ' + str(value or '')}: --cfg takes "
                                 f"one of {', '.join(CFG_CHOICES)}." + did_you_mean(value,
                                                                                   CFG_CHOICES))
            out.cfg = value
        elif a.startswith("-"):
            flags = ["--cfg", "--resolve", "--multirun", "--help", "--info"]
            raise UsageError(f"{a}: not a flag of {PROG}; flags: --cfg job|hydra|all, --resolve, "
                             f"-m/--multirun, -h/--help, --info." + did_you_mean(a, flags))
        else:
            out.overrides.append(_translate(a, out.notes))
    return out


def _translate(override: str, notes: list[str]) -> str:
    key, sep, value = override.partition("=")
    bare = key.lstrip("+~")
    if bare == "hydra/launcher" and sep:
        new = f"launcher={LAUNCHER_ALIASES.get(value, value)}"
        notes.append(f"'{override}' is spelled '{new}' now (read as such)")
        return new
    if bare.startswith("hydra.launcher.") and sep:
        new = f"launcher.{bare.removeprefix('hydra.launcher.')}={value}"
        notes.append(f"'{override}' is spelled '{new}' now (read as such)")
        return new
    return override


# ---- one-line config errors ----------------------------------------------------------------------
def explain(exc: BaseException, overrides: list[str]) -> str:
    """One line naming the bad value and the valid choices (with a did-you-mean)."""
    from hydra.errors import (ConfigCompositionException, MissingConfigException,
                              OverrideParseException)

    text = " ".join(str(exc).split())
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file:
        group, _, option = str(exc.missing_cfg_file).rpartition("/")
        if group:
            return _bad_option(group, option)
    if isinstance(exc, OverrideParseException):
        bad = _unparseable(overrides)
        first = str(exc).strip().splitlines()[0]
        return (f"{bad or 'an override'}: cannot parse it ({first}); quote values that contain "
                f"commas or colons, e.g. loop.window='15:19'")
    if isinstance(exc, ConfigCompositionException):
        m = re.search(r"Could not override '([^']+)'", str(exc))
        if m:
            return _bad_key(m.group(1), overrides)
        m = re.search(r"Could not (?:find|load) '([^']+)'", str(exc))
        if m and "/" in m.group(1):
            group, _, option = m.group(1).rpartition("/")
            return _bad_option(group, option)
        cause = exc.__cause__ or exc.__context__
        if cause is not None:
            return " ".join(str(cause).split())
    if isinstance(exc, LoopConfigError):
        return f"loop: {text}"
    return text


def _bad_option(group: str, option: str) -> str:
    from .config import group_options

    options = group_options(group)
    if not options:
        return f"{group}={option}: there is no config group {group!r}"
    return (f"{group}={option}: no such {group} preset; valid: {', '.join(options)}."
            + did_you_mean(option, options))


def _override_for(key: str, overrides: list[str]) -> str:
    return next((o for o in overrides if o.split("=", 1)[0].lstrip("+~") == key), key)


def _bad_key(key: str, overrides: list[str]) -> str:
    from omegaconf import DictConfig, OmegaConf

    from .config import compose, groups

    given = _override_for(key, overrides)
    parent, _, leaf = key.rpartition(".")
    try:      # the config as this command line's group choices make it
        choices = [o for o in overrides if "." not in o.split("=", 1)[0] and "," not in o]
        cfg = compose(choices, hydra_node=False)
    except Exception:       # noqa: BLE001 - fall back to the defaults
        cfg = compose([], hydra_node=False)
    if not parent:
        settings = [str(k) for k in cfg.keys() if k not in groups()]
        return (f"{given}: no config group or setting {leaf!r}; groups: {', '.join(groups())}; "
                f"settings: {', '.join(settings)}." + did_you_mean(leaf, groups() + settings))
    node = OmegaConf.select(cfg, parent)
    if node is None:
        return f"{given}: {parent} is null here (e.g. loop=baseline), so it has no {leaf!r}"
    if not isinstance(node, DictConfig):
        return f"{given}: {parent} is a value, not a group of settings"
    keys = [str(k) for k in node.keys()]
    return (f"{given}: {parent} has no setting {leaf!r}; valid: {', '.join(keys)}."
            + did_you_mean(leaf, keys))


def _unparseable(overrides: list[str]) -> str | None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for o in overrides:
        try:
            parser.parse_override(o)
        except Exception:   # noqa: BLE001
            return o
    return None


# ---- help and info -----------------------------------------------------------------------------
def usage() -> str:
    from .config import group_options, groups

    lines = [f"usage: {PROG} [override ...] [--cfg job|hydra|all] [--resolve] [-m] [--info]",
             "", "Runs a grid of looped-inference cells; comma lists and range(a,b) are grids "
             "(no -m needed). dry_run=true or --cfg job prints the plan and stops.", "",
             "config groups (group=option):"]
    for g in groups():
        lines.append(f"  {g}: {', '.join(group_options(g))}")
    lines += ["", "settings: store=results force=false baseline=true group_by=model|cell|cost "
              "dry_run=false report=false figures=null allow_code_eval=false device=null "
              "eval.batch_size=8 wandb.mode=null", "", "docs/sweeps.md has the details."]
    return "\n".join(lines)


def info() -> str:
    from .config import CONFIG_DIR, group_options, groups

    lines = [f"config dir: {CONFIG_DIR} (primary config: sweep.yaml)",
             "generated nodes: loop/_base (LoopConfig's fields), loop/recipe/<name> "
             "(looping.config.RECIPES)"]
    lines += [f"group {g}: {', '.join(group_options(g))}" for g in groups()]
    return "\n".join(lines)


# ---- the pass ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(argv)
    except UsageError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    for note in args.notes:
        print(f"{PROG}: note: {note}", file=sys.stderr)
    if args.help:
        print(usage())
        return 0

    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from .config import hydra_session
    from .launch import get_runner
    from .plan import PlanError, format_plan, plan_grid

    with hydra_session():
        try:
            if args.info:
                print(info())
                return 0
            plan = plan_grid(args.overrides)
            runner = get_runner(plan.settings.launcher)
            config_text = _config_text(plan, args) if args.cfg else None
        except PlanError as e:          # every distinct problem of the grid's cells, one line each
            for line in e.lines[:MAX_ERROR_LINES]:
                print(f"{PROG}: {line}", file=sys.stderr)
            if len(e.lines) > MAX_ERROR_LINES:
                print(f"{PROG}: ... and {len(e.lines) - MAX_ERROR_LINES} more problem(s)",
                      file=sys.stderr)
            return 2
        except (HydraException, OmegaConfBaseException, ValueError) as e:
            print(f"{PROG}: {explain(e, args.overrides)}", file=sys.stderr)
            return 2
    if args.cfg or plan.settings.dry_run:
        if config_text:
            print(config_text)
        print(format_plan(plan))
        print("[loopsweep] plan only: nothing was loaded or run")
        return 0
    if plan.todo:
        from .launch import LaunchError

        try:                  # e.g. Slurm: no node of the partition can ever run a task
            runner.preflight(plan)
        except LaunchError as e:
            print(f"{PROG}: {e}", file=sys.stderr)
            return 2
    return run_plan(plan, runner)


def _config_text(plan, args: Args) -> str:
    from omegaconf import OmegaConf

    overrides, cfg = plan.first
    hydra_part = OmegaConf.to_yaml(cfg.hydra, resolve=args.resolve)
    job = OmegaConf.masked_copy(cfg, [str(k) for k in cfg.keys() if k != "hydra"])
    job_part = OmegaConf.to_yaml(job, resolve=args.resolve)
    head = (f"# the config of the grid's first combination ({', '.join(overrides) or 'defaults'});"
            f" the plan below lists every cell")
    parts = {"job": [job_part], "hydra": ["hydra:\n" + _indent(hydra_part)],
             "all": [job_part, "hydra:\n" + _indent(hydra_part)]}[args.cfg]
    return "\n".join([head, *parts])


def _indent(text: str) -> str:
    return "".join("  " + line for line in text.splitlines(keepends=True))


def run_plan(plan, runner) -> int:
    """Run the cells that are not ok, print the summary, build the report (report=true)."""
    from . import store as st
    from .plan import plan_notes, tasks_text
    from .spec import describe

    s = plan.settings
    t_start = time.time()
    n_base = sum(c.spec.is_baseline for c in plan.cells)
    todo = plan.todo
    print(f"[loopsweep] grid {plan.grid_id}: {len(plan.cells)} cells ({len(plan.cells) - n_base} "
          f"looped + {n_base} baseline) over {plan.n_models} model(s) on "
          f"{tasks_text(plan.cells)}; "
          f"{len(plan.cells) - len(todo) - len(plan.not_run)} already ok, {len(todo)} to "
          f"compute; records in {s.store}/cells", flush=True)
    if plan.unsafe_tasks and not s.allow_code_eval:
        print(f"{PROG}: task(s) {', '.join(plan.unsafe_tasks)} execute model-written code; add "
              f"allow_code_eval=true to run them", file=sys.stderr)
        return 2
    for line in plan_notes(plan):
        if not line.startswith("not run:"):        # said per cell below
            print(f"[loopsweep] {line}", flush=True)
    for c in plan.not_run:
        print(f"[loopsweep] not run {c.cell_id} {describe(c.spec)}: {c.not_run}", flush=True)
    before = {c.cell_id: c.status for c in plan.cells}
    if todo:
        n_shared, passes, alone = plan.sharing()
        print(f"[loopsweep] scoring: {n_shared} cell(s) in {passes} shared pass(es) + {alone} "
              f"separately" + ("" if s.sharing else " (sharing=false)"), flush=True)
    if not todo and not plan.not_run:
        print(f"[loopsweep] nothing to compute: all {len(plan.cells)} cells are already ok "
              f"(force=true recomputes)", flush=True)
    elif todo:
        from .launch import LaunchError

        try:
            runner.run(plan)
        except LaunchError as e:
            print(f"{PROG}: {e}", file=sys.stderr)
    not_run = [c.cell_id for c in plan.not_run]
    summary = summarize(s.store, [c for c in plan.cell_ids if c not in set(not_run)], before,
                        s.force, t_start)
    print(f"[loopsweep] grid {plan.grid_id} summary: {len(plan.cells)} cells: "
          f"{len(summary['done'])} done, {len(summary['skipped'])} skipped (already ok), "
          f"{len(summary['failed'])} failed, {len(summary['missing'])} missing"
          + (f", {len(not_run)} not run (model unavailable)" if not_run else ""), flush=True)
    for cid in summary["failed"]:
        status, problem = st.check_record(s.store, cid)
        rec = st.read_record(s.store, cid) if status != "broken" else None
        err = ((rec.error if rec else problem) or "broken record").strip().splitlines()[-1:]
        print(f"[loopsweep]   failed {cid}: {err[0] if err else ''}", flush=True)
    frame = _answer(s.store, plan)
    partial = len(summary["failed"]) + len(summary["missing"])
    if partial:
        print(f"[loopsweep] partial grid: {partial} of {len(plan.cells)} cells not ok; run the "
              f"same command again to compute them", flush=True)
    figures = []
    if s.report:
        if partial:
            print(f"[loopsweep] the report covers a partial grid ({partial} cells not ok)",
                  flush=True)
        figures = _report(s.store, None if s.report == "store" else plan.report_ids(),
                          s.figures)
    if todo:
        _grid_run(plan, frame, figures)
    return 1 if summary["failed"] or summary["missing"] or not_run else 0


def _grid_run(plan, frame, figures) -> None:
    """The grid-level wandb run: the summary table and the report's figures."""
    from .tracking import Tracker

    tracker = Tracker.from_config(plan.settings.wandb, group=plan.grid_id,
                                  dir=Path(plan.settings.store) / "wandb")
    tracker.log_grid(plan.grid_id, frame, [f for f in figures if str(f).endswith(".png")])


def _answer(store: str, plan):
    """The grid's answer: every cell's accuracy and delta vs its baseline with the paired CI and
    p (harness.summary), printed and written to <store>/summary.md / .csv."""
    from .summary import format_summary, grid_summary, write_summary

    try:
        frame = grid_summary(store, plan.cell_ids)
        if frame.empty:
            return None
        paths = write_summary(store, frame, plan.grid_id)
    except Exception as e:     # noqa: BLE001 - the records are the result; the summary is extra
        print(f"[loopsweep] the summary failed ({type(e).__name__}: {e}); records are in "
              f"{store}/cells")
        return None
    print(f"[loopsweep] grid {plan.grid_id}: delta = looped - baseline (pp, paired documents), "
          f"95% paired bootstrap CI, exact McNemar p, Holm across the grid; best = largest "
          f"delta whose CI lies above 0\n{format_summary(frame)}\n[loopsweep] summary written to "
          f"{paths[0]} and {paths[1].name}", flush=True)
    return frame


def summarize(store, cids, before, force, started) -> dict:
    """Each cell's outcome from the records: done (computed now, here or by another process that
    this run waited for), skipped (ok before), failed, missing (no record)."""
    from . import store as st

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


def _report(store: str, cell_ids: list[str] | None, figures: str | None) -> list:
    """The report of this grid's records (other grids in the store stay out), or of every record
    in the store (cell_ids None: report=store); its files."""
    from .report import make_report

    try:
        return make_report(store, figures=figures, cell_ids=cell_ids)["written"]
    except Exception as e:     # noqa: BLE001 - the grid's records are the result; the report is extra
        print(f"[loopsweep] the report failed ({type(e).__name__}: {e}); records are in "
              f"{store}/cells")
        return []


if __name__ == "__main__":
    sys.exit(main())
