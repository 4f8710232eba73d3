"""stats: paired significance for looped-vs-baseline comparisons on the same documents. Pure functions.

    pairing = pair_samples(base_rows, looped_rows)        # DataFrames of load_samples() rows
    delta, lo, hi = paired_bootstrap_ci(pairing.base, pairing.looped, seed=0)
    p = mcnemar_exact(*pairing.discordant)                # exact two-sided, on the discordant pairs
    p_adj = holm([p1, p2, p3])                            # family-wise correction

Owns: pairing two cells' per-sample rows (only documents whose doc_id, doc_hash, prompt_hash and
target_hash all agree; what was dropped is counted by reason), the flipped items, the paired
percentile bootstrap of the accuracy delta (looped - baseline), the exact McNemar test and Holm's
step-down correction. Everything is seeded and deterministic; nothing here reads or writes files.

Conventions: scores are per-document values of the primary metric (0/1 for accuracy, floats
allowed); a delta is `mean(looped) - mean(baseline)` in the scores' own unit (the report converts
to percentage points). For non-binary scores `mcnemar_exact_scores` is the exact sign test on the
non-zero differences, which is McNemar's test when the scores are 0/1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy.stats import binom, norm

HASH_FIELDS: tuple[str, ...] = ("doc_hash", "prompt_hash", "target_hash")
PAIR_KEYS: tuple[str, ...] = ("task", "doc_id")
DROP_REASONS: tuple[str, ...] = (
    "only_in_baseline", "only_in_looped", "duplicate_doc_id",
    "doc_hash_mismatch", "prompt_hash_mismatch", "target_hash_mismatch",
)
_MAX_DISCRETE = 64            # a difference vector with at most this many distinct values is
                              # bootstrapped through multinomial counts (exact, O(n_boot x values))
_CHUNK_ELEMS = 4_000_000      # index resampling otherwise, in chunks of this many draws


# ---- bootstrap ---------------------------------------------------------------------------------
def _bootstrap_means(d: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """`n_boot` bootstrap replicates of mean(d). Resampling n items with replacement is the same
    as drawing multinomial counts over the distinct values, which is how 0/1 data is done."""
    n = d.size
    values, counts = np.unique(d, return_counts=True)
    if values.size <= _MAX_DISCRETE:
        draws = rng.multinomial(n, counts / n, size=n_boot)          # (n_boot, n_values)
        return draws @ values / n
    out = np.empty(n_boot)
    step = max(1, _CHUNK_ELEMS // n)
    for i in range(0, n_boot, step):
        m = min(step, n_boot - i)
        idx = rng.integers(0, n, size=(m, n))                        # (m, n)
        out[i:i + m] = d[idx].mean(axis=1)
    return out


def paired_bootstrap_ci(baseline: Sequence[float], looped: Sequence[float], *, n_boot: int = 10_000,
                        confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """The paired percentile-bootstrap CI of `mean(looped) - mean(baseline)`.

    `baseline[i]` and `looped[i]` are the scores of the same document. Documents are resampled
    with replacement as pairs (`n_boot` times, seeded). Returns (delta, low, high); all NaN for
    no pairs, and (delta, delta, delta) when every difference is the same."""
    a = np.asarray(baseline, dtype=float)
    b = np.asarray(looped, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"baseline and looped must be 1-D and of equal length, got {a.shape} and {b.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if a.size == 0:
        return (float("nan"),) * 3
    d = b - a
    delta = float(d.mean())
    reps = _bootstrap_means(d, n_boot, np.random.default_rng(seed))
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(reps, [tail, 1 - tail])
    return delta, float(lo), float(hi)


def normal_ci(baseline: Sequence[float], looped: Sequence[float], *,
              confidence: float = 0.95) -> tuple[float, float, float]:
    """The normal-approximation CI of the paired delta: mean(d) +- z * sd(d) / sqrt(n)."""
    d = np.asarray(looped, dtype=float) - np.asarray(baseline, dtype=float)
    if d.size < 2:
        return (float(d.mean()) if d.size else float("nan"), float("nan"), float("nan"))
    z = norm.ppf(1 - (1 - confidence) / 2)
    half = z * d.std(ddof=1) / np.sqrt(d.size)
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


# ---- McNemar / sign test -------------------------------------------------------------------------
def wilson_interval(p: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion p observed on n items (NaNs when n = 0)."""
    if not n or p != p:
        return math.nan, math.nan
    z = float(norm.ppf(1 - (1 - confidence) / 2))
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return centre - half, centre + half


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar test: the binomial test of `b` vs `c` discordant pairs against
    p = 1/2 (b = items 0->1, c = items 1->0, or the other way round: it is symmetric).
    p = min(1, 2 * P[X <= min(b, c)]), X ~ Binomial(b + c, 1/2); 1.0 when there are no discordant
    pairs. Example: 10 vs 2 gives 0.0386."""
    b, c = int(b), int(c)
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got {b} and {c}")
    n = b + c
    if n == 0:
        return 1.0
    return float(min(1.0, 2.0 * binom.cdf(min(b, c), n, 0.5)))


def discordant_counts(baseline: Sequence[float], looped: Sequence[float]) -> tuple[int, int]:
    """(improved, worsened): the number of documents whose score went up / down."""
    d = np.asarray(looped, dtype=float) - np.asarray(baseline, dtype=float)
    return int((d > 0).sum()), int((d < 0).sum())


def mcnemar_exact_scores(baseline: Sequence[float], looped: Sequence[float]) -> float:
    """McNemar's exact test from paired per-document scores (the exact sign test on the non-zero
    differences, identical to McNemar for 0/1 scores). NaN for no pairs."""
    if len(baseline) == 0:
        return float("nan")
    return mcnemar_exact(*discordant_counts(baseline, looped))


# ---- Holm ----------------------------------------------------------------------------------------
def holm(pvalues: Iterable[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values for one family, in the input order. NaN entries are not
    part of the family and stay NaN. Adjusted p_(i) = max_{j<=i} min(1, (m - j + 1) p_(j))."""
    p = np.asarray(list(pvalues), dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if ok.size == 0:
        return out
    if np.any((p[ok] < 0) | (p[ok] > 1)):
        raise ValueError(f"p-values must be in [0, 1], got {p[ok].tolist()}")
    m = ok.size
    order = ok[np.argsort(p[ok], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


# ---- pairing -------------------------------------------------------------------------------------
@dataclass
class Pairing:
    """The documents two cells share, and what could not be paired.

    `frame`: one row per paired document (task, doc_id, base, looped). `dropped`: count per reason
    (DROP_REASONS; a document is counted once, under the first hash that disagrees).
    `flipped_up` / `flipped_down`: (task, doc_id) of documents whose score went up (0 -> 1) /
    down (1 -> 0), sorted."""
    frame: pd.DataFrame
    n_baseline: int
    n_looped: int
    dropped: dict = field(default_factory=dict)
    flipped_up: list = field(default_factory=list)
    flipped_down: list = field(default_factory=list)

    @property
    def n_paired(self) -> int:
        return len(self.frame)

    @property
    def n_dropped(self) -> int:
        return int(sum(self.dropped.values()))

    @property
    def base(self) -> np.ndarray:
        return self.frame["base"].to_numpy(dtype=float)

    @property
    def looped(self) -> np.ndarray:
        return self.frame["looped"].to_numpy(dtype=float)

    @property
    def discordant(self) -> tuple[int, int]:
        return len(self.flipped_up), len(self.flipped_down)

    def drop_summary(self) -> str:
        """'' when nothing was dropped, else e.g. 'only_in_looped=3, prompt_hash_mismatch=1'."""
        return ", ".join(f"{k}={v}" for k, v in self.dropped.items() if v)


def _records(rows: pd.DataFrame) -> list[tuple]:
    """(task, doc_id, doc_hash, prompt_hash, target_hash, score) per row, as plain Python values."""
    n = len(rows)
    cols = []
    for col in ("task", "doc_id", *HASH_FIELDS):
        if col in rows.columns:
            vals = rows[col].tolist()
            cols.append([None if _missing(v) else v for v in vals])
        else:
            cols.append([""] * n if col == "task" else [None] * n)
    cols[0] = ["" if t is None else str(t) for t in cols[0]]
    cols.append([float(v) for v in rows["score"].tolist()])
    return list(zip(*cols))


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and v != v)


def pair_samples(baseline: pd.DataFrame, looped: pd.DataFrame) -> Pairing:
    """Pair two cells' per-sample rows (columns as load_samples: [task,] doc_id, doc_hash,
    prompt_hash, target_hash, score) on (task, doc_id), keeping a pair only when doc_hash,
    prompt_hash and target_hash agree (two missing hashes agree). A doc_id that occurs more than
    once in a cell is ambiguous and dropped (`duplicate_doc_id`, counted per row)."""
    dropped = dict.fromkeys(DROP_REASONS, 0)
    sides = []
    for rows in (baseline, looped):
        recs = _records(rows)
        count: dict = {}
        for r in recs:
            count[r[:2]] = count.get(r[:2], 0) + 1
        dropped["duplicate_doc_id"] += sum(c for c in count.values() if c > 1)
        sides.append({r[:2]: r for r in recs if count[r[:2]] == 1})
    a, b = sides
    dropped["only_in_baseline"] = sum(1 for k in a if k not in b)
    dropped["only_in_looped"] = sum(1 for k in b if k not in a)
    kept = []
    for key in sorted((k for k in a if k in b), key=lambda k: (k[0], str(type(k[1])), k[1])):
        ra, rb = a[key], b[key]
        for j, col in enumerate(HASH_FIELDS, start=2):
            if ra[j] != rb[j]:
                dropped[f"{col}_mismatch"] += 1
                break
        else:
            kept.append((key[0], key[1], ra[5], rb[5]))
    frame = pd.DataFrame(kept, columns=["task", "doc_id", "base", "looped"])
    frame = frame.astype({"base": float, "looped": float})
    up = [(t, d) for t, d, x, y in kept if y > x]
    down = [(t, d) for t, d, x, y in kept if y < x]
    return Pairing(frame=frame, n_baseline=len(baseline), n_looped=len(looped), dropped=dropped,
                   flipped_up=up, flipped_down=down)


def paired_comparison(baseline: pd.DataFrame, looped: pd.DataFrame, *, n_boot: int = 10_000,
                      confidence: float = 0.95, seed: int = 0) -> dict:
    """Pair two cells' samples and compare them: delta (looped - baseline, scores' unit), its
    paired-bootstrap CI, McNemar's exact p, the discordant counts and what was dropped."""
    pairing = pair_samples(baseline, looped)
    delta, lo, hi = paired_bootstrap_ci(pairing.base, pairing.looped, n_boot=n_boot,
                                        confidence=confidence, seed=seed)
    up, down = pairing.discordant
    return {
        "delta": delta, "ci_low": lo, "ci_high": hi,
        "p_mcnemar": mcnemar_exact(up, down) if pairing.n_paired else float("nan"),
        "n_paired": pairing.n_paired, "n_dropped": pairing.n_dropped,
        "dropped": pairing.drop_summary(), "n_up": up, "n_down": down,
        "base_mean": float(pairing.base.mean()) if pairing.n_paired else float("nan"),
        "looped_mean": float(pairing.looped.mean()) if pairing.n_paired else float("nan"),
        "flipped_up": pairing.flipped_up, "flipped_down": pairing.flipped_down,
    }


def split_doc_ids(doc_ids: Iterable, *, fraction: float = 0.5, seed: int = 0) -> tuple[set, set]:
    """A seeded random split of document ids into (select, confirm) sets, `fraction` to select.
    Used by select-then-confirm on one task's documents."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    ids = sorted(set(doc_ids), key=lambda x: (str(type(x)), x))
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(ids))
    cut = int(round(fraction * len(ids)))
    select = {ids[i] for i in perm[:cut]}
    return select, set(ids) - select
