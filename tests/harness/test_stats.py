"""harness.stats: exact McNemar, Holm, pairing (with drop reasons and flips), and the paired
bootstrap CI's coverage and width against the normal approximation."""
import time

import numpy as np
import pandas as pd
import pytest

from harness import stats


def _rows(scores, *, task="t", start=0, **override):
    n = len(scores)
    df = pd.DataFrame({"task": task, "doc_id": range(start, start + n), "doc_hash": [f"d{i}" for i in range(start, start + n)],
                       "prompt_hash": [f"p{i}" for i in range(start, start + n)],
                       "target_hash": [f"y{i}" for i in range(start, start + n)], "score": np.asarray(scores, float)})
    for col, (i, v) in override.items():
        df.loc[i, col] = v
    return df


@pytest.mark.parametrize("b, c, expected", [
    (10, 2, 0.0386),        # the brief's case: 2 * P[X <= 2], X ~ Bin(12, 1/2) = 158/4096
    (2, 10, 0.0386),        # symmetric
    (5, 5, 1.0),
    (0, 6, 0.03125),        # 2 / 2^6
    (0, 0, 1.0),            # no discordant pairs
    (1, 0, 1.0),
    (20, 5, 0.004077),      # 2 * P[X <= 5], X ~ Bin(25, 1/2)
])
def test_mcnemar_exact_known_cases(b, c, expected):
    assert stats.mcnemar_exact(b, c) == pytest.approx(expected, abs=5e-5)


def test_mcnemar_from_scores_counts_discordant_pairs():
    base = np.array([0] * 10 + [1] * 2 + [1] * 30 + [0] * 8)
    loop = np.array([1] * 10 + [0] * 2 + [1] * 30 + [0] * 8)
    assert stats.discordant_counts(base, loop) == (10, 2)
    assert stats.mcnemar_exact_scores(base, loop) == pytest.approx(0.0386, abs=5e-5)
    with pytest.raises(ValueError):
        stats.mcnemar_exact(-1, 3)


def test_holm_by_hand():
    p = [0.01, 0.04, 0.03, np.nan, 0.005]
    # sorted 0.005, 0.01, 0.03, 0.04 (m = 4): 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    np.testing.assert_allclose(stats.holm(p), [0.03, 0.06, 0.06, np.nan, 0.02])
    np.testing.assert_allclose(stats.holm([0.5, 0.9]), [1.0, 1.0])
    assert np.isnan(stats.holm([np.nan])).all()
    assert stats.holm([]).size == 0


def test_pairing_drops_by_reason_and_lists_flips():
    base = _rows([0, 1, 1, 0, 1, 0, 1, 0])
    loop = _rows([1, 0, 1, 0, 1, 1, 1, 1], prompt_hash=(4, "changed"), target_hash=(5, "other"))
    loop = pd.concat([loop.drop(index=7), _rows([1], start=99)], ignore_index=True)   # doc 7 only in base, 99 only in loop
    pairing = stats.pair_samples(base, loop)
    assert pairing.n_paired == 5                                  # docs 0, 1, 2, 3, 6
    assert pairing.dropped["only_in_baseline"] == 1
    assert pairing.dropped["only_in_looped"] == 1
    assert pairing.dropped["prompt_hash_mismatch"] == 1
    assert pairing.dropped["target_hash_mismatch"] == 1
    assert pairing.dropped["doc_hash_mismatch"] == 0
    assert pairing.n_dropped == 4
    assert pairing.flipped_up == [("t", 0)]
    assert pairing.flipped_down == [("t", 1)]
    assert "prompt_hash_mismatch=1" in pairing.drop_summary()


def test_pairing_duplicates_and_missing_hashes():
    base = _rows([1, 0, 1])
    base["doc_hash"] = None                                      # both missing: they agree
    loop = _rows([1, 1, 1])
    loop["doc_hash"] = None
    loop = pd.concat([loop, loop.iloc[[2]]], ignore_index=True)  # doc 2 twice in the looped cell
    pairing = stats.pair_samples(base, loop)
    assert pairing.dropped["duplicate_doc_id"] == 2
    assert pairing.dropped["only_in_baseline"] == 1              # doc 2 of the baseline lost its partner
    assert pairing.n_paired == 2 and pairing.flipped_up == [("t", 1)]


def test_paired_comparison_by_hand():
    base = _rows([0] * 10 + [1] * 2 + [1] * 30 + [0] * 8)
    loop = _rows([1] * 10 + [0] * 2 + [1] * 30 + [0] * 8)
    c = stats.paired_comparison(base, loop, n_boot=2000, seed=1)
    assert c["delta"] == pytest.approx(8 / 50)
    assert c["ci_low"] < 8 / 50 < c["ci_high"]
    assert c["p_mcnemar"] == pytest.approx(0.0386, abs=5e-5)
    assert (c["n_up"], c["n_down"], c["n_paired"], c["n_dropped"]) == (10, 2, 50, 0)
    # seeded: the same seed gives the same interval
    assert stats.paired_comparison(base, loop, n_boot=2000, seed=1)["ci_low"] == c["ci_low"]


def test_bootstrap_edge_cases():
    assert all(np.isnan(stats.paired_bootstrap_ci([], [])))
    assert stats.paired_bootstrap_ci([1, 0, 1], [1, 0, 1]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        stats.paired_bootstrap_ci([1, 0], [1])
    # float scores with many distinct values take the index-resampling path
    rng = np.random.default_rng(0)
    a, b = rng.random(300), rng.random(300) + 0.1
    d, lo, hi = stats.paired_bootstrap_ci(a, b, n_boot=1000, seed=0)
    _, nlo, nhi = stats.normal_ci(a, b)
    assert lo < d < hi and abs((hi - lo) / (nhi - nlo) - 1) < 0.15


def test_bootstrap_coverage_and_width():
    """Over 1000 simulated paired 0/1 data sets (n = 300) the 95% interval covers the true delta
    93-97% of the time, and its width is within 15% of the normal approximation's."""
    t0 = time.time()
    rng = np.random.default_rng(20260523)
    n, n_sim, p_base, p_new, flip = 300, 1000, 0.6, 0.7, 0.2
    true = flip * (p_new - p_base)
    covered, ratios = 0, []
    for s in range(n_sim):
        a = rng.random(n) < p_base
        b = np.where(rng.random(n) < flip, rng.random(n) < p_new, a)
        d, lo, hi = stats.paired_bootstrap_ci(a, b, n_boot=1000, seed=s)
        covered += lo <= true <= hi
        _, nlo, nhi = stats.normal_ci(a, b)
        ratios.append((hi - lo) / (nhi - nlo))
    coverage = covered / n_sim
    assert 0.93 <= coverage <= 0.97, f"coverage {coverage:.3f}"
    assert abs(np.mean(ratios) - 1) <= 0.15, f"mean width ratio {np.mean(ratios):.3f}"
    assert time.time() - t0 < 20


def test_split_doc_ids_is_seeded_and_complete():
    sel, conf = stats.split_doc_ids(range(100), fraction=0.3, seed=4)
    assert len(sel) == 30 and sel | conf == set(range(100)) and not sel & conf
    assert stats.split_doc_ids(range(100), fraction=0.3, seed=4)[0] == sel


def _ci_coverage_script():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[2] / "scripts" / "ci_coverage.py"
    spec = importlib.util.spec_from_file_location("ci_coverage", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ci_coverage_script_separates_null_and_effect(capsys):
    """scripts/ci_coverage.py (the simulation docs/report.md quotes): under no effect both
    statistics rarely fire; under a 20-point loss both always do; bad --rates is refused."""
    mod = _ci_coverage_script()
    null = mod.simulate(100, 0.05, 0.05, reps=200, n_boot=500, seed=0)
    assert null["coverage"] >= 0.9 and null["ci_excl0"] <= 0.1 and null["mcnemar_p<.05"] <= 0.1
    big = mod.simulate(100, 0.0, 0.2, reps=50, n_boot=500, seed=0)
    assert big["true_delta_pp"] == pytest.approx(-20) and big["ci_excl0"] == 1.0
    assert big["mcnemar_p<.05"] == 1.0
    mod.main(["--n", "50", "--reps", "5", "--n-boot", "100", "--rates", "0.1,0.1"])
    assert capsys.readouterr().out.count("\n") == 3
    with pytest.raises(SystemExit):
        mod.main(["--rates", "0.1"])
