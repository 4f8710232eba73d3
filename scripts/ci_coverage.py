"""How often the report's paired statistics are wrong, by simulation: coverage of the paired
percentile-bootstrap CI (`harness.stats.paired_bootstrap_ci`) and the rate at which it, and the
exact McNemar test (`harness.stats.mcnemar_exact`, p < 0.05), call a zero effect significant.

    python scripts/ci_coverage.py                          # n = 150 and 200, the embedded tasks' sizes
    python scripts/ci_coverage.py --n 500 --reps 2000 --rates 0.01,0.01 0.05,0.05 0.02,0.06

Each setting draws `reps` paired 0/1 samples of `n` documents in which a document flips up with
probability p_up and down with p_down (so the true delta is p_up - p_down), and reports:
coverage (the CI contains the true delta), `ci_excl0` (the CI excludes 0) and `mcnemar_p<.05`.
With p_up == p_down the last two are false-positive rates (nominal 0.05).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.stats import mcnemar_exact, paired_bootstrap_ci  # noqa: E402

DEFAULT_RATES = ["0.01,0.01", "0.02,0.02", "0.03,0.03", "0.05,0.05", "0.10,0.10", "0.00,0.03",
                 "0.01,0.04"]


def simulate(n: int, p_up: float, p_down: float, reps: int, n_boot: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    true = p_up - p_down
    covered = excl0 = sig = 0
    for r in range(reps):
        up, down, _ = rng.multinomial(n, [p_up, p_down, 1 - p_up - p_down])
        base = np.r_[np.zeros(up), np.ones(down), np.ones(n - up - down)]
        loop = np.r_[np.ones(up), np.zeros(down), np.ones(n - up - down)]
        _, lo, hi = paired_bootstrap_ci(base, loop, n_boot=n_boot, seed=r)
        covered += lo - 1e-12 <= true <= hi + 1e-12
        excl0 += lo > 0 or hi < 0
        sig += mcnemar_exact(up, down) < 0.05
    return {"n": n, "p_up": p_up, "p_down": p_down, "true_delta_pp": 100 * true,
            "coverage": covered / reps, "ci_excl0": excl0 / reps, "mcnemar_p<.05": sig / reps}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[150, 200], help="documents per sample")
    ap.add_argument("--rates", nargs="+", default=DEFAULT_RATES, help="p_up,p_down pairs")
    ap.add_argument("--reps", type=int, default=1000, help="simulated samples per setting")
    ap.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (report default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print("| n | p_up | p_down | true delta (pp) | CI coverage | CI excludes 0 | McNemar p < .05 |")
    print("|---|---|---|---|---|---|---|")
    for n in args.n:
        for i, pair in enumerate(args.rates):
            try:
                p_up, p_down = (float(x) for x in pair.split(","))
            except ValueError:
                ap.error(f"--rates takes p_up,p_down pairs like 0.02,0.02; got {pair!r}")
            if min(p_up, p_down) < 0 or p_up + p_down > 1:
                ap.error(f"--rates {pair!r}: need p_up, p_down >= 0 and p_up + p_down <= 1")
            s = simulate(n, p_up, p_down, args.reps, args.n_boot, args.seed + 1000 * i + n)
            print(f"| {n} | {p_up:g} | {p_down:g} | {s['true_delta_pp']:+.1f} | {s['coverage']:.3f} "
                  f"| {s['ci_excl0']:.3f} | {s['mcnemar_p<.05']:.3f} |")


if __name__ == "__main__":
    main()
