"""Rewrite the deltas table and the depth table of the README's section "What looping does to real
models" (and its count of looped cells) from `results/real/cells.csv`, in the format
`tests/harness/test_real_looping_claims.py` checks. Run it after a real-model part has rewritten
the store's report (each part changes every Holm-adjusted p):

    python scripts/real_readme_table.py
"""
from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.harness.test_real_looping_claims import (  # noqa: E402
    CELLS, DEPTH_HEAD, RULE, SHOWN, TABLE_HEAD, depth_rows, fmt_delta)

ORDER = {"naive": 0, "euler": 1, "anchored": 2}


def replace_table(text: str, head: str, rows: list[list[str]]) -> str:
    """`text` with the markdown table that starts with the line `head` replaced by `rows`."""
    if head not in text:
        raise SystemExit(f"README: no table starting with {head!r}")
    n = head.count("|") - 1
    table = [head, "|" + "---|" * n] + ["| " + " | ".join(r) + " |" for r in rows]
    start = text.index(head)
    end = text.index("\n\n", start)
    return text[:start] + "\n".join(table) + text[end:]


def main() -> int:
    cells = list(csv.DictReader(CELLS.open()))
    rows = sorted((r for r in cells if r["window"] == RULE[r["model_name"]]
                   and r["status"] == "ok" and (r["integrator"], int(float(r["k"]))) in SHOWN),
                  key=lambda r: (r["model_name"], r["task"], ORDER[r["integrator"]]))
    readme = ROOT / "README.md"
    text = replace_table(readme.read_text(), TABLE_HEAD, [fmt_delta(r) for r in rows])
    text = replace_table(text, DEPTH_HEAD, depth_rows(cells))
    text = re.sub(r"Holm's adjustment over all\n\d+ looped cells",
                  f"Holm's adjustment over all\n{len(cells)} looped cells", text)
    readme.write_text(text)
    print(f"README: {len(rows)} rows from {len(cells)} looped cells of {CELLS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
