"""Build the report from a results store: tables (markdown, CSV, LaTeX) and figures (PNG, PDF, and
the CSV each figure plots). The work is `harness.report.make_report`; this script parses the
command line and calls it.

    python scripts/make_report.py                          # results/ -> tables there, figures in results/figures/
    python scripts/make_report.py --root results --figures figs --n-boot 5000 --no-holm
    python scripts/make_report.py --select-docs docs.txt   # select-then-confirm on these doc_ids
    python scripts/make_report.py --cells ids.txt          # only these cells (one cell_id per line)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.report import make_report


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
    ap.add_argument("--root", default="results",
                    help="results store (holds cells/); default results")
    ap.add_argument("--out", default=None, help="where tables go; default: the store root")
    ap.add_argument("--figures", default=None,
                    help="where figures go; default <out>/figures (the tables' folder)")
    ap.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples per comparison")
    ap.add_argument("--seed", type=int, default=0, help="bootstrap and split seed")
    ap.add_argument("--no-holm", action="store_true", help="leave p_holm empty")
    ap.add_argument("--no-reference", action="store_true",
                    help="do not set the published values beside ours")
    ap.add_argument("--all-published", action="store_true",
                    help="list every published cell in the deltas table, also those not run "
                         "(default: only beside the model x task run)")
    ap.add_argument("--select-docs", default=None,
                    help="file of doc_ids (or task,doc_id lines) to select on; default: a seeded "
                         "random half")
    ap.add_argument("--cells", default=None,
                    help="file of cell ids (one per line, # comments) to report on; default: every "
                         "cell in the store")
    args = ap.parse_args(argv)
    sel = _read_doc_ids(args.select_docs) if args.select_docs else None
    cells = _lines(args.cells) if args.cells else None
    make_report(args.root, args.out, args.figures, n_boot=args.n_boot, seed=args.seed,
                holm_adjust=not args.no_holm, select_docs=sel, reference=not args.no_reference,
                unrun=args.all_published,
                cell_ids=cells)
    return 0


if __name__ == "__main__":
    sys.exit(main())
