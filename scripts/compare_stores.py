"""Do two results stores hold the same answers for the cells they share? The regeneration check:
run a part into an empty store, then compare it with the committed results.

    python scripts/compare_stores.py /tmp/clean results/real          # every cell of /tmp/clean
    python scripts/compare_stores.py /tmp/clean results/real --cells ids.txt

For every cell of the first store (or of --cells) that is `ok` in both, the per-sample rows must be
equal: the same documents (doc_id, doc_hash), prompts and targets (their hashes) and the same score.
The second may be a store (its record files under cells/: compared row by row) or a report folder
without them, such as a fresh clone's results/real (its committed answers.csv: compared by each
cell's SHA-256 of those rows, and its per-sample scores). Prints one line per cell that differs, a
summary line, and exits 1 when any cell differs or a cell of the first store is missing from the
second; wall times and memory are not compared.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness import store as st

KEY = ["task", "doc_id"]
COMPARED = ["doc_hash", "prompt_hash", "target_hash", "score"]


def _cells_to_check(first, res_a, cells: list[str] | None) -> list[str]:
    """The first store's ok cells (or `cells`, each of which must be ok there)."""
    ids = list(dict.fromkeys(cells if cells is not None else res_a.cell_id))
    absent = sorted(set(ids) - set(res_a.cell_id))
    if absent:
        raise SystemExit(f"compare_stores: cell(s) {', '.join(absent)} are not ok in {first}")
    return ids


def compare(first, second, cells: list[str] | None = None) -> dict:
    """{"same": [...], "differ": {cell_id: reason}, "missing": [...]} over the first store's ok
    cells (or `cells`): a cell differs when its document set or any compared column differs."""
    res_a, res_b = st.load_results(first, status="ok"), st.load_results(second, status="ok")
    ids = _cells_to_check(first, res_a, cells)
    sa, sb = st.load_samples(first), st.load_samples(second)
    out = {"same": [], "differ": {}, "missing": sorted(set(ids) - set(res_b.cell_id))}
    for cid in ids:
        if cid in out["missing"]:
            continue
        a = sa[sa.cell_id == cid].set_index(KEY).sort_index()[COMPARED]
        b = sb[sb.cell_id == cid].set_index(KEY).sort_index()[COMPARED]
        if not a.index.equals(b.index):
            out["differ"][cid] = f"documents differ ({len(a)} vs {len(b)} samples)"
            continue
        bad = [c for c in COMPARED if not a[c].equals(b[c])]
        if bad:
            n = int((a[bad] != b[bad]).any(axis=1).sum())
            out["differ"][cid] = f"{n} of {len(a)} samples differ in {', '.join(bad)}"
        else:
            out["same"].append(cid)
    return out


def compare_with_answers(first, answers_csv, cells: list[str] | None = None) -> dict:
    """As `compare`, against a report's answers.csv (store.answer_digests of the second store)."""
    import pandas as pd

    res_a = st.load_results(first, status="ok")
    ids = _cells_to_check(first, res_a, cells)
    sa = st.load_samples(first)
    mine = st.answer_digests(sa[sa.cell_id.isin(ids)]).set_index("cell_id")
    theirs = pd.read_csv(answers_csv, dtype={"scores": str}, keep_default_na=False)
    theirs = theirs.set_index("cell_id")
    out = {"same": [], "differ": {}, "missing": sorted(set(ids) - set(theirs.index))}
    for cid in ids:
        if cid in out["missing"]:
            continue
        a, b = mine.loc[cid], theirs.loc[cid]
        if a.answers_sha256 == b.answers_sha256:
            out["same"].append(cid)
        elif a.scores and len(a.scores) == len(b.scores) and a.scores != b.scores:
            n = sum(x != y for x, y in zip(a.scores, b.scores))
            out["differ"][cid] = f"{n} of {a.n} samples differ in score"
        else:
            out["differ"][cid] = (f"per-sample rows differ ({a.n} vs {b.n} samples; documents, "
                                  f"prompts or targets)")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("first", help="the store whose cells are checked (e.g. a clean regeneration)")
    ap.add_argument("second", help="the store or committed report they are compared with (e.g. "
                    "results/real)")
    ap.add_argument("--cells", help="a file of cell ids (one per line): only these cells")
    args = ap.parse_args(argv)
    if not st.cells_dir(args.first).is_dir():
        ap.error(f"{args.first} is not a results store (no cells/ folder)")
    answers = Path(args.second) / st.ANSWERS_FILE
    if not st.cells_dir(args.second).is_dir() and not answers.is_file():
        ap.error(f"{args.second} is neither a results store (no cells/ folder) nor a report "
                 f"(no {st.ANSWERS_FILE})")
    cells = None
    if args.cells:
        cells = [ln.strip() for ln in Path(args.cells).read_text().splitlines() if ln.strip()]
    if st.cells_dir(args.second).is_dir():
        out = compare(args.first, args.second, cells)
    else:
        print(f"{args.second} has no record files: comparing with its {st.ANSWERS_FILE}")
        out = compare_with_answers(args.first, answers, cells)
    for cid, why in out["differ"].items():
        print(f"DIFFERS {cid}: {why}")
    for cid in out["missing"]:
        print(f"MISSING {cid}: not ok in {args.second}")
    print(f"{len(out['same'])} cell(s) with the same per-sample answers, {len(out['differ'])} "
          f"differ, {len(out['missing'])} missing from {args.second}")
    return 1 if out["differ"] or out["missing"] else 0


if __name__ == "__main__":
    sys.exit(main())
