"""process_docs of the fixed seeded item subsets of the real-data tasks.

`local_piqa500`: 500 of the 1,838 PIQA validation items, `random.Random(1234).sample(range(1838),
500)`, kept in their validation order (doc_id k is the k-th kept row). Used by the real-model
experiments (docs/real-models.md), whose grids a full PIQA would make too slow on a CPU.
"""
from __future__ import annotations

import random

PIQA500 = {"n": 500, "seed": 1234, "size": 1838}


def subset_rows(size: int, n: int, seed: int) -> list[int]:
    """The rows a seeded subset keeps (sorted)."""
    return sorted(random.Random(seed).sample(range(size), n))


def piqa500(dataset):
    if len(dataset) != PIQA500["size"]:
        raise ValueError(f"local_piqa500: {len(dataset)} PIQA validation rows, not the "
                         f"{PIQA500['size']} the subset was drawn from")
    return dataset.select(subset_rows(PIQA500["size"], PIQA500["n"], PIQA500["seed"]))
