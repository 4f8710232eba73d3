"""report.make: the report's files from a results store. The one entry point; the command line
(`scripts/make_report.py`) and the sweep driver (`report=true`) both call `make_report`.

    make_report("results")                   # tables in results/, figures in results/figures/
    make_report(store, figures="figs", cell_ids=grid_ids)    # only these cells

Reads `harness.store.load_results(root)` and `load_samples(root)` (all cells, or the `cell_ids`
given); every table and figure is a pure function (harness.report.tables, harness.plots); this
module only does the I/O. A table or figure whose inputs are absent is skipped and named with the
reason (in the log and in `<out>/report.md`); an incomplete grid never makes it fail. A broken
record file (harness.store.read_json) is left out and listed under "Skipped" with its reason.

Outputs, for each table NAME: `<out>/NAME.md`, `<out>/NAME.csv` (the numeric frame, every column),
`<out>/NAME.tex`; for each figure NAME: `<figures>/NAME.png`, `.pdf` and `.csv` (exactly the frame
plotted); and `<out>/report.md`, all tables in one file with the list of what was skipped.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from .reference import load_reference
from .render import to_latex, to_markdown
from .tables import build_tables


def make_report(root: str | Path = "results", out: str | Path | None = None,
                figures: str | Path | None = None, *, n_boot: int = 2000, seed: int = 0,
                holm_adjust: bool = True, select_docs=None, reference: bool = True,
                unrun: bool = False, cell_ids: Iterable[str] | None = None, log=print) -> dict:
    """Load the store at `root` (only the records in `cell_ids` when given), write every table to
    `out` (default: `root`) and every figure to `figures` (default: `<out>/figures`). The files
    of the previous report into `out` that this one does not write again are removed (listed in
    `<out>/report-files.txt`): no stale table stays beside new ones. `unrun`: list the published
    cells we did not run in the deltas table. Returns {'written': [paths], 'skipped': {name:
    reason}, 'removed': [paths]}."""
    from harness import plots, store

    root = Path(root)
    out = Path(out) if out is not None else root
    figures = Path(figures) if figures is not None else out / "figures"
    out.mkdir(parents=True, exist_ok=True)
    figures.mkdir(parents=True, exist_ok=True)
    broken: list[str] = []
    results = store.load_results(root, errors=broken)
    samples = store.load_samples(root, warn=False)    # the same files: warned about once above
    scope = f"`{root}`"
    if cell_ids is not None:
        keep = set(cell_ids)
        found = len(keep & set(results["cell_id"]))
        results = results[results["cell_id"].isin(keep)].reset_index(drop=True)
        samples = samples[samples["cell_id"].isin(keep)].reset_index(drop=True)
        scope += (f" restricted to the {len(keep)} requested cells" if found == len(keep) else
                  f" restricted to {found} of {len(keep)} requested cells (the rest have no "
                  f"record)")
    n_ok = int((results["status"] == "ok").sum()) if len(results) else 0
    log(f"[report] {len(results)} result rows ({n_ok} ok), {len(samples)} sample rows from "
        f"{scope}")
    ref = load_reference() if reference else None
    tables = build_tables(results, samples, reference=ref, unrun=unrun, holm_adjust=holm_adjust,
                          select_docs=select_docs, n_boot=n_boot, seed=seed)
    written, skipped = [], {}
    for problem in broken:                    # "broken cell record <path>: <why>"
        name = problem.split(": ", 1)[0].removeprefix("broken cell record ").strip()
        skipped[f"record {Path(name).name}"] = " ".join(problem.split())
    sections = [f"# Report\n\nStore: {scope} ({len(results)} result rows, {len(samples)} sample "
                f"rows). Deltas are looped - baseline in percentage points; CIs are paired "
                f"bootstrap 95% ({n_boot} resamples, seed {seed}); p = exact McNemar"
                + (", p_holm = Holm-adjusted within each table" if holm_adjust else "") + ".\n"]
    for t in tables:
        if t.skipped:
            skipped[t.name] = t.skipped
            log(f"[report] skipped table {t.name}: {t.skipped}")
            continue
        t.frame.to_csv(out / f"{t.name}.csv", index=False)
        md = to_markdown(t.display)
        (out / f"{t.name}.md").write_text(f"## {t.title}\n\n{md}")
        (out / f"{t.name}.tex").write_text(to_latex(t.display, caption=t.title,
                                                    label=f"tab:{t.name}"))
        written += [out / f"{t.name}.{ext}" for ext in ("csv", "md", "tex")]
        sections.append(f"## {t.title}\n\n`{t.name}.csv` / `.md` / `.tex`\n\n{md}")
    by_name = {t.name: t for t in tables}
    for fig_name, (table_name, fn) in plots.FIGURES.items():
        t = by_name.get(table_name)
        if t is None or t.skipped or t.frame is None or t.frame.empty:
            reason = f"its table {table_name} was skipped" + (
                f" ({t.skipped})" if t is not None and t.skipped else "")
            skipped[f"figure:{fig_name}"] = reason
            log(f"[report] skipped figure {fig_name}: {reason}")
            continue
        fig = fn(t.frame)
        t.frame.to_csv(figures / f"{fig_name}.csv", index=False)
        fig.savefig(figures / f"{fig_name}.png")
        # no CreationDate: a report rewritten from the same cells gives byte-identical PDFs, so a
        # second run leaves a committed results folder clean
        fig.savefig(figures / f"{fig_name}.pdf", metadata={"CreationDate": None})
        written += [figures / f"{fig_name}.{ext}" for ext in ("csv", "png", "pdf")]
    answers = store.answer_digests(samples)       # every cell's per-sample answers, compactly
    answers.to_csv(out / store.ANSWERS_FILE, index=False)
    written.append(out / store.ANSWERS_FILE)
    sections.append(f"## Per-sample answers\n\n`{store.ANSWERS_FILE}`: {len(answers)} cells, one "
                    f"row each (per-sample scores and a SHA-256 of the per-sample rows; "
                    f"`scripts/compare_stores.py` checks a regenerated store against it)\n")
    if skipped:
        sections.append("## Skipped\n\n" + "\n".join(f"- {k}: {v}" for k, v in skipped.items())
                        + "\n")
    (out / "report.md").write_text("\n".join(sections))
    written.append(out / "report.md")
    removed = _replace_manifest(out, written)
    log(f"[report] wrote {len(written)} files: tables in {out}, figures in {figures}"
        + (f"; skipped {len(skipped)}" if skipped else "")
        + (f"; removed {len(removed)} stale file(s) of the previous report" if removed else ""))
    return {"written": written, "skipped": skipped, "removed": removed}


MANIFEST = "report-files.txt"


def _replace_manifest(out: Path, written: list[Path]) -> list[Path]:
    """Remove the files the previous report into `out` wrote and this one did not; record this
    one's files (paths relative to `out` where inside it)."""
    def rel(p: Path) -> str:
        p = p.resolve()
        return str(p.relative_to(out.resolve())) if p.is_relative_to(out.resolve()) else str(p)

    manifest = out / MANIFEST
    now = {rel(p) for p in written}
    before = manifest.read_text().split("\n") if manifest.is_file() else []
    removed = []
    for name in before:
        if name and name not in now:
            path = out / name if not Path(name).is_absolute() else Path(name)
            if path.is_file():
                path.unlink()
                removed.append(path)
    manifest.write_text("".join(f"{n}\n" for n in sorted(now)))
    return removed
