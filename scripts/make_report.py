"""Build the report from a results store: tables (markdown, CSV, LaTeX) and figures (PNG, PDF, and
the CSV each figure plots).

    python scripts/make_report.py                          # store results/, tables in results/, figures in figures/
    python scripts/make_report.py --root results --figures figures --n-boot 5000 --no-holm
    python scripts/make_report.py --select-docs docs.txt   # select-then-confirm on these doc_ids
    python scripts/make_report.py --cells ids.txt          # only these cells (one cell_id per line)

Reads `harness.store.load_results(root)` and `load_samples(root)` (all cells, or the `cell_ids`
given: `sweep.py report=true` passes its own grid's, baselines included); every table and figure is a pure
function in harness/report.py and harness/plots.py, this script only does the I/O. A table or
figure whose inputs are absent is skipped and named with the reason (in the console and in
`<out>/report.md`); the script never fails because a grid is incomplete.

Outputs, for each table NAME: `<out>/NAME.md`, `<out>/NAME.csv` (the numeric frame, every column),
`<out>/NAME.tex`; for each figure NAME: `<figures>/NAME.png`, `.pdf` and `.csv` (exactly the frame
plotted); and `<out>/report.md`, all tables in one file with the list of what was skipped.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


from harness import plots, report


def make_report(root: str | Path = "results", out: str | Path | None = None,
                figures: str | Path = "figures", *, n_boot: int = 2000, seed: int = 0,
                holm_adjust: bool = True, select_docs=None, reference: bool = True,
                cell_ids=None, log=print) -> dict:
    """Load the store at `root` (only the records in `cell_ids` when given), write every table to
    `out` (default: `root`) and every figure to `figures`. Returns {'written': [paths],
    'skipped': {name: reason}}."""
    from harness import store

    root = Path(root)
    out = Path(out) if out is not None else root
    figures = Path(figures)
    out.mkdir(parents=True, exist_ok=True)
    figures.mkdir(parents=True, exist_ok=True)
    results = store.load_results(root)
    samples = store.load_samples(root)
    scope = f"`{root}`"
    if cell_ids is not None:
        keep = set(cell_ids)
        found = len(keep & set(results["cell_id"]))
        results = results[results["cell_id"].isin(keep)].reset_index(drop=True)
        samples = samples[samples["cell_id"].isin(keep)].reset_index(drop=True)
        scope += (f" restricted to the {len(keep)} requested cells" if found == len(keep) else
                  f" restricted to {found} of {len(keep)} requested cells (the rest have no record)")
    log(f"[report] {len(results)} result rows ({int((results['status'] == 'ok').sum()) if len(results) else 0} ok), "
        f"{len(samples)} sample rows from {scope}")
    ref = report.load_reference() if reference else None
    tables = report.build_tables(results, samples, reference=ref, holm_adjust=holm_adjust,
                                 select_docs=select_docs, n_boot=n_boot, seed=seed)
    written, skipped = [], {}
    sections = [f"# Report\n\nStore: {scope} ({len(results)} result rows, {len(samples)} sample rows). "
                f"Deltas are looped - baseline in percentage points; CIs are paired bootstrap 95% "
                f"({n_boot} resamples, seed {seed}); p = exact McNemar"
                + (", p_holm = Holm-adjusted within each table" if holm_adjust else "") + ".\n"]
    for t in tables:
        if t.skipped:
            skipped[t.name] = t.skipped
            log(f"[report] skipped table {t.name}: {t.skipped}")
            continue
        t.frame.to_csv(out / f"{t.name}.csv", index=False)
        md = report.to_markdown(t.display)
        (out / f"{t.name}.md").write_text(f"## {t.title}\n\n{md}")
        (out / f"{t.name}.tex").write_text(report.to_latex(t.display, caption=t.title, label=f"tab:{t.name}"))
        written += [out / f"{t.name}.{ext}" for ext in ("csv", "md", "tex")]
        sections.append(f"## {t.title}\n\n`{t.name}.csv` / `.md` / `.tex`\n\n{md}")
    by_name = {t.name: t for t in tables}
    for fig_name, (table_name, fn) in plots.FIGURES.items():
        t = by_name.get(table_name)
        if t is None or t.skipped or t.frame is None or t.frame.empty:
            reason = f"its table {table_name} was skipped" + (f" ({t.skipped})" if t is not None and t.skipped else "")
            skipped[f"figure:{fig_name}"] = reason
            log(f"[report] skipped figure {fig_name}: {reason}")
            continue
        fig = fn(t.frame)
        t.frame.to_csv(figures / f"{fig_name}.csv", index=False)
        for ext in ("png", "pdf"):
            fig.savefig(figures / f"{fig_name}.{ext}")
        written += [figures / f"{fig_name}.{ext}" for ext in ("csv", "png", "pdf")]
    if skipped:
        sections.append("## Skipped\n\n" + "\n".join(f"- {k}: {v}" for k, v in skipped.items()) + "\n")
    (out / "report.md").write_text("\n".join(sections))
    written.append(out / "report.md")
    log(f"[report] wrote {len(written)} files: tables in {out}, figures in {figures}"
        + (f"; skipped {len(skipped)}" if skipped else ""))
    return {"written": written, "skipped": skipped}


def _lines(path: str) -> list[str]:
    """The non-blank lines of a file, stripped, without `#` comment lines."""
    return [ln.strip() for ln in Path(path).read_text().splitlines()
            if ln.strip() and not ln.strip().startswith("#")]


def _read_doc_ids(path: str) -> set:
    """One doc_id per line, or 'task,doc_id' per line (ints where they parse)."""
    out = set()
    for line in _lines(path):
        parts = [p.strip() for p in line.split(",")]
        conv = [int(p) if p.lstrip("-").isdigit() else p for p in parts]
        out.add(tuple(conv) if len(conv) == 2 else conv[0])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="results", help="results store (holds cells/); default results")
    ap.add_argument("--out", default=None, help="where tables go; default: the store root")
    ap.add_argument("--figures", default="figures", help="where figures go; default figures")
    ap.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples per comparison")
    ap.add_argument("--seed", type=int, default=0, help="bootstrap and split seed")
    ap.add_argument("--no-holm", action="store_true", help="leave p_holm empty")
    ap.add_argument("--no-reference", action="store_true", help="do not set the published values beside ours")
    ap.add_argument("--select-docs", default=None,
                    help="file of doc_ids (or task,doc_id lines) to select on; default: a seeded random half")
    ap.add_argument("--cells", default=None,
                    help="file of cell ids (one per line, # comments) to report on; default: every cell in the store")
    args = ap.parse_args(argv)
    sel = _read_doc_ids(args.select_docs) if args.select_docs else None
    cells = _lines(args.cells) if args.cells else None
    make_report(args.root, args.out, args.figures, n_boot=args.n_boot, seed=args.seed,
                holm_adjust=not args.no_holm, select_docs=sel, reference=not args.no_reference,
                cell_ids=cells)
    return 0


if __name__ == "__main__":
    sys.exit(main())
