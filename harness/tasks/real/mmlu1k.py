"""process_docs of `local_mmlu1k`: the fixed 1,000-item stratified subset of the MMLU test split.

The subset is defined by `mmlu1k_ids.json` (written once by `harness.tasks.real.stratified_ids`,
committed, copied next to this file into the rendered task folder): for every subject its test
split size and the row indices drawn. The task's documents are the 57 subjects' test splits
concatenated in sorted subject order; this keeps the drawn rows in that order, so lm-eval's doc_id
k is `mmlu1k_ids.json["docs"][k]` ("<subject>/<row index in that subject's test split>").
"""
from __future__ import annotations

import json
from pathlib import Path

IDS = json.loads(Path(__file__).with_name("mmlu1k_ids.json").read_text())


def process_docs(dataset):
    want = {s: set(v["ids"]) for s, v in IDS["subjects"].items()}
    seen: dict[str, int] = {}
    keep = []
    for row, subject in enumerate(dataset["subject"]):
        i = seen.get(subject, 0)
        seen[subject] = i + 1
        if i in want.get(subject, ()):
            keep.append(row)
    sizes = {s: v["test_size"] for s, v in IDS["subjects"].items()}
    if seen != sizes or len(keep) != IDS["n"]:
        bad = sorted(s for s in set(seen) | set(sizes) if seen.get(s) != sizes.get(s))[:3]
        raise ValueError(f"local_mmlu1k: these documents are not the MMLU test split the subset "
                         f"was drawn from (subjects whose size differs: {bad}; kept {len(keep)} "
                         f"of {IDS['n']})")
    return dataset.select(keep)
