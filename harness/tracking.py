"""tracking: Weights & Biases logging of sweep cells, never required for a run to succeed.

Each cell is its own run, started when the cell starts (system metrics on) and finished with its
record: name `model|task|integrator K<k> <window>` (`baseline` for a baseline), group = the grid
id, job_type "cell"; config = the cell spec (+ resolved loop); logged: its metrics and cost, the
paired delta vs its baseline with the 95% CI and McNemar p per task (`delta_pp/<task>`,
`ci_low_pp/<task>`, `ci_high_pp/<task>`, `p_mcnemar/<task>`; when the baseline is already in the
store), and a per-sample table `samples/<task>` (doc id, doc hash, target hash, correct plain /
looped). A grid-level run (job_type "grid") holds the sweep's summary table and its figures.
Mode: the config's `wandb.mode` if set, else $WANDB_MODE, else offline (no key, no network;
upload later with `wandb sync <store>/wandb/wandb/offline-run-*`); `wandb.mode=online` is the one
setting to go online. Any wandb error is caught and printed with a hint; records are written
anyway. `read_offline_run` reads an offline run's file back (tests, and a check before syncing).
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

    def _fail(self, e: BaseException) -> None:
        msg = f"{type(e).__name__}: {e}"
        self.errors.append(msg)
        hint = ("run `wandb login` or use wandb.mode=offline" if "api key" in msg.lower()
                else "set wandb.mode=offline or wandb.mode=disabled")
        print(f"[loopsweep] wandb logging failed ({msg}); the result is saved anyway; {hint}",
              file=sys.stderr)

    def _start(self, *, name: str, job_type: str, config: dict):
        """A new run (None when disabled, or on a wandb error: tracking never fails a cell)."""
        if not self.enabled:
            return None
        try:
            import wandb

            if self.dir:
                os.makedirs(self.dir, exist_ok=True)
            return wandb.init(project=self.project, entity=self.entity, group=self.group,
                              job_type=job_type, name=name, dir=self.dir, mode=self.mode,
                              config=config, tags=self.tags, reinit="finish_previous",
                              settings=wandb.Settings(console="off", silent=True))
        except Exception as e:           # noqa: BLE001
            self._fail(e)
            return None

    def _log(self, run, build) -> str | None:
        """Log `build(wandb)` (a dict) into `run` and finish it. The run id, or None."""
        if run is None:
            return None
        try:
            import wandb

            run.log(build(wandb))
            self.runs.append(run.id)
            return run.id
        except Exception as e:           # noqa: BLE001
            self._fail(e)
            return None
        finally:
            _finish(run)

    def start_cell(self, spec: Mapping[str, Any], *, cell_id: str, baseline_id: str | None = None,
                   label: str = ""):
        """Start the run of a cell that is about to be computed (its runtime and system metrics
        then cover the computation); `label` (the cell's overrides) goes into its config.
        Returns the run, or None (disabled / error)."""
        return self._start(name=run_name(spec), job_type="cell",
                           config={"cell_id": cell_id, "baseline_id": baseline_id,
                                   "label": label, **spec})

    def finish_cell(self, run, record: Mapping[str, Any], *, baseline=None) -> str | None:
        """Log a finished cell's record (and its paired delta vs `baseline`, a record mapping,
        when given) into `run` and finish it. Returns the run id, or None."""
        def build(wandb) -> dict:
            run.config.update({"status": record.get("status"),
                               "loop_resolved": record.get("loop_resolved"),
                               "env": record.get("env")}, allow_val_change=True)
            run.summary["status"] = record.get("status")
            metrics = record.get("metrics") or {}
            data = {f"{task}/{key}": val for task, m in metrics.items()
                    for key, val in (m or {}).items() if isinstance(val, (int, float))}
            data.update({f"cost/{k}": v for k, v in (record.get("cost") or {}).items()
                         if isinstance(v, (int, float))})
            data.update(paired_deltas(record, baseline))
            for task, rows in sample_rows(record, baseline).items():
                data[f"samples/{task}"] = wandb.Table(columns=SAMPLE_TABLE_COLUMNS, data=rows)
            return data
        return self._log(run, build)

    def log_cell(self, record: Mapping[str, Any], *, name: str | None = None,
                 baseline=None) -> str | None:
        """One run for an already finished cell record (start and finish at once)."""
        run = self.start_cell(dict(record.get("spec") or {}), cell_id=record.get("cell_id"),
                              baseline_id=record.get("baseline_id"))
        if run is not None and name:
            run.name = name
        return self.finish_cell(run, record, baseline=baseline)

    def log_grid(self, grid_id: str, summary=None, figures=()) -> str | None:
        """The grid-level run: the sweep's summary table (harness.summary) and its figures."""
        def build(wandb) -> dict:
            data: dict = {}
            if summary is not None and len(summary):
                frame = summary.astype(object).where(summary.notna(), None)
                data["summary"] = wandb.Table(dataframe=frame.astype(str))
            for path in figures:
                data[f"figures/{os.path.splitext(os.path.basename(path))[0]}"] = \
                    wandb.Image(str(path))
            return data
        return self._log(self._start(name=f"grid {grid_id}", job_type="grid",
                                     config={"grid_id": grid_id}), build)

SAMPLE_TABLE_COLUMNS = ["task", "doc_id", "doc_hash", "target_hash", "correct_plain",
                        "correct_looped"]


def run_name(spec: Mapping[str, Any]) -> str:
    """'model|task|integrator K<k> <window>' ('model|task|baseline')."""
    loop = spec.get("loop")
    model = spec.get("model_name") or spec.get("model")
    head = f"{model}|{spec.get('task_name') or spec.get('task')}"
    if not loop:
        return f"{head}|baseline"
    return f"{head}|{loop.get('integrator')} K{loop.get('k')} {loop.get('window')}"


def _by_doc(record, task) -> dict:
    return {s.get("doc_id"): s for s in ((record or {}).get("samples") or {}).get(task) or []}


def sample_rows(record: Mapping[str, Any], baseline=None) -> dict[str, list]:
    """Per task the per-sample table rows: the plain model's score from `baseline` (None when
    absent; for a baseline record its own), the looped one's from `record` (None for a baseline)."""
    is_base = not (record.get("spec") or {}).get("loop")
    out = {}
    for task in (record.get("samples") or {}):
        plain = _by_doc(record if is_base else baseline, task)
        own = _by_doc(record, task)
        out[task] = [[task, d, s.get("doc_hash"), s.get("target_hash"),
                      (plain.get(d) or {}).get("score"), None if is_base else s.get("score")]
                     for d, s in own.items()]
    return out


def paired_deltas(record: Mapping[str, Any], baseline=None) -> dict:
    """`delta_pp/<task>`, `ci_low_pp/<task>`, `ci_high_pp/<task>`, `p_mcnemar/<task>`, `n_paired/
    <task>` of a looped record vs its baseline record (empty without one)."""
    import pandas as pd

    from . import stats

    if baseline is None or not (record.get("spec") or {}).get("loop"):
        return {}
    out = {}
    for task, samples in (record.get("samples") or {}).items():
        base = (baseline.get("samples") or {}).get(task) or []
        if not samples or not base:
            continue
        c = stats.paired_comparison(pd.DataFrame(base), pd.DataFrame(samples), n_boot=2000)
        if c["n_paired"]:
            out.update({f"delta_pp/{task}": c["delta"] * 100,
                        f"ci_low_pp/{task}": c["ci_low"] * 100,
                        f"ci_high_pp/{task}": c["ci_high"] * 100,
                        f"p_mcnemar/{task}": c["p_mcnemar"], f"n_paired/{task}": c["n_paired"]})
    return out


def _finish(run) -> None:
    if run is not None:
        try:
            run.finish()
        except Exception as e:   # noqa: BLE001
            print(f"[loopsweep] wandb finish failed: {e}", file=sys.stderr)


def read_offline_run(folder: str | os.PathLike) -> dict:
    """An offline run folder (`.../offline-run-*`) read back from its `.wandb` file (wandb's
    leveldb-style record log of `Record` protobufs): {'name', 'group', 'job_type',
    'start_time', 'summary': {key: value}, 'tables': {key: rows}} (tables from their JSON)."""
    import glob
    import json
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = glob.glob(os.path.join(folder, "*.wandb"))
    data = open(path, "rb").read()
    block, pos, buf, chunks = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:                      # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if length == 0 and kind == 0:
            break
        piece, pos = data[pos:pos + length], pos + length
        if kind == 1:                     # full
            chunks.append(piece)
        elif kind == 2:                   # first
            buf = piece
        elif kind == 3:                   # middle
            buf += piece
        elif kind == 4:                   # last
            chunks.append(buf + piece)
    out: dict = {"summary": {}, "tables": {}}
    for chunk in chunks:
        rec = pb.Record()
        rec.ParseFromString(chunk)
        which = rec.WhichOneof("record_type")
        if which == "run":
            out.update(name=rec.run.display_name, group=rec.run.run_group,
                       job_type=rec.run.job_type, start_time=rec.run.start_time.ToSeconds())
        elif which in ("summary", "history"):
            items = rec.summary.update if which == "summary" else rec.history.item
            for it in items:
                out["summary"][it.key or "/".join(it.nested_key)] = json.loads(it.value_json)
    for key, value in list(out["summary"].items()):
        if key.endswith("/path") and str(value).endswith(".table.json"):
            table = json.loads(open(os.path.join(folder, "files", value)).read())
            out["tables"][key[:-len("/path")]] = [dict(zip(table["columns"], r))
                                                  for r in table["data"]]
    return out
