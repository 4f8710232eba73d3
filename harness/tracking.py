"""tracking: Weights & Biases logging of sweep cells, never required for a run to succeed.

Each cell is its own run: name = the cell's override string, group = the grid id, job_type
"cell"; config = the cell spec (+ resolved loop); summary = its metrics and cost; a per-task
table. Mode: the config's `wandb.mode` if set, else $WANDB_MODE, else offline (no key, no network;
upload later with `wandb sync <store>/wandb/wandb/offline-run-*`). `online` is used only when
asked. Any wandb error is caught and printed with a hint; the cell's record is already written.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Mapping


def resolve_mode(mode: str | None) -> str:
    """The config's mode, else $WANDB_MODE, else 'offline'."""
    if mode:
        return str(mode)
    return os.environ.get("WANDB_MODE") or "offline"


class Tracker:
    """Logs cells as wandb runs. `Tracker(mode="disabled")` (or $WANDB_MODE=disabled) does nothing."""

    def __init__(self, *, mode: str | None = None, project: str = "loopsweep", entity: str | None = None,
                 group: str | None = None, dir: str | os.PathLike | None = None, tags=()):
        self.mode = resolve_mode(mode)
        self.project, self.entity, self.group = project, entity, group
        self.dir = str(dir) if dir else None
        self.tags = list(tags or [])
        self.runs: list[str] = []          # ids of the runs this tracker made
        self.errors: list[str] = []

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None, *, group: str | None, dir=None) -> "Tracker":
        cfg = dict(cfg or {})
        return cls(mode=cfg.get("mode"), project=cfg.get("project") or "loopsweep",
                   entity=cfg.get("entity"), group=group, dir=dir, tags=cfg.get("tags") or ())

    @property
    def enabled(self) -> bool:
        return self.mode != "disabled"

    def log_cell(self, record: Mapping[str, Any], *, name: str) -> str | None:
        """One wandb run for one cell record. Returns the run id, or None (disabled / error)."""
        if not self.enabled:
            return None
        run = None
        try:
            import wandb

            if self.dir:
                os.makedirs(self.dir, exist_ok=True)
            spec = dict(record.get("spec") or {})
            config = {"cell_id": record.get("cell_id"), "baseline_id": record.get("baseline_id"),
                      "status": record.get("status"), **spec,
                      "loop_resolved": record.get("loop_resolved"), "env": record.get("env")}
            run = wandb.init(project=self.project, entity=self.entity, group=self.group,
                             job_type="cell", name=name, dir=self.dir, mode=self.mode,
                             config=config, tags=self.tags, reinit="finish_previous",
                             settings=wandb.Settings(console="off", x_disable_stats=True, silent=True))
            metrics = record.get("metrics") or {}
            summary = {f"{task}/{key}": val for task, m in metrics.items() for key, val in (m or {}).items()
                       if isinstance(val, (int, float))}
            cost = {f"cost/{k}": v for k, v in (record.get("cost") or {}).items()
                    if isinstance(v, (int, float))}
            primary = record.get("primary_metric")
            rows = [[task, primary, (m or {}).get(primary), len((record.get("samples") or {}).get(task) or [])]
                    for task, m in metrics.items()]
            table = wandb.Table(columns=["task", "metric", "value", "n"], data=rows)
            run.log({**summary, **cost, "tasks": table})
            run.summary["status"] = record.get("status")
            rid = run.id
            self.runs.append(rid)
            return rid
        except Exception as e:           # noqa: BLE001 - tracking must never fail a cell
            msg = f"{type(e).__name__}: {e}"
            self.errors.append(msg)
            hint = ("run `wandb login` or use wandb.mode=offline" if "api key" in msg.lower()
                    else "set wandb.mode=offline or wandb.mode=disabled")
            print(f"[loopsweep] wandb logging failed ({msg}); the result is saved anyway; {hint}",
                  file=sys.stderr)
            return None
        finally:
            if run is not None:
                try:
                    run.finish()
                except Exception as e:   # noqa: BLE001
                    print(f"[loopsweep] wandb finish failed: {e}", file=sys.stderr)
