"""process_docs of the fixed seeded item subsets of the real-data tasks.

`local_piqa500`: 500 of the 1,838 PIQA validation items, `random.Random(1234).sample(range(1838),
500)`, kept in their validation order (doc_id k is the k-th kept row). `local_piqa300` and
`local_arc_easy300_val`: 300 PIQA / 300 of the 570 ARC-Easy validation items drawn the same way (seed
1234). Used by the real-model experiments (docs/real-models.md), whose grids the full splits would
make too slow on a CPU.
"""
from __future__ import annotations

import random

PIQA500 = {"n": 500, "seed": 1234, "size": 1838}
#: local task -> the seeded subset it keeps of its split
SUBSETS = {"local_piqa500": PIQA500,
           "local_piqa300": {"n": 300, "seed": 1234, "size": 1838},
           "local_arc_easy300_val": {"n": 300, "seed": 1234, "size": 570}}


def subset_rows(size: int, n: int, seed: int) -> list[int]:
    """The rows a seeded subset keeps (sorted)."""
    return sorted(random.Random(seed).sample(range(size), n))


def _subset(task: str, dataset):
    spec = SUBSETS[task]
    if len(dataset) != spec["size"]:
        raise ValueError(f"{task}: {len(dataset)} validation rows, not the {spec['size']} the "
                         f"subset was drawn from")
    return dataset.select(subset_rows(spec["size"], spec["n"], spec["seed"]))


def piqa500(dataset):
    return _subset("local_piqa500", dataset)


def piqa300(dataset):
    return _subset("local_piqa300", dataset)


def arc_easy300(dataset):
    return _subset("local_arc_easy300_val", dataset)
