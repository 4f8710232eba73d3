"""Smoke test of benchmarks/: both scripts run on a tiny model and a tiny grid and write the
documented JSON keys with sane values. No timing assertions (timings on a shared machine are noise)."""
import json

import pytest

pytestmark = pytest.mark.slow

TINY = ["--model", "tiny", "--no-plot"]


def test_overhead_json(tmp_path):
    from benchmarks.overhead import main
    main(TINY + ["--out", str(tmp_path), "--k", "1,2", "--vary-k", "2", "--windows", "c0.5w2",
                 "--integrators", "euler", "--modes", "block", "--kvs", "first,last", "--decodes", "full,bypass",
                 "--repeats", "2", "--hooked", "1", "--warmup", "1", "--score-len", "16", "--prefill-len", "16",
                 "--decode-prompt", "8", "--new-tokens", "3"])
    data = json.loads((tmp_path / "overhead.json").read_text())
    assert data["schema"] == "loopsweep.benchmarks.overhead/1"
    hw = data["hardware"]
    for key in ("cpu_model", "cpu_count", "torch_threads", "torch", "device", "dtype"):
        assert key in hw, key
    assert hw["device"] == "cpu" and hw["dtype"] == "float32"
    recs = data["records"]
    # K sweep (2 cells x 3 workloads) + kv=last (prefill, decode) + decode=bypass (decode)
    assert len(recs) == 2 * 3 + 2 + 1
    for r in recs:
        for key in ("label", "config", "resolved", "phase", "plain_s", "looped_s", "ratio", "ratio_q25",
                    "ratio_q75", "predicted_ratio", "measured_over_predicted", "layer_passes_plain",
                    "layer_passes_looped", "runner_layer_calls", "probe_window_calls"):
            assert key in r, key
        assert r["plain_s"] > 0 and r["looped_s"] > 0 and r["ratio"] > 0
        assert len(r["ratios"]) == 2
        # the hooks on the original layers see exactly the runner's window evaluations
        assert r["probe_window_calls"] == r["runner_layer_calls"]
    by = {(r["label"], r["phase"]): r for r in recs}
    # 4 layers, window of 2: K=1 runs each layer once, K=2 runs the window twice
    assert by[("K=1", "scoring")]["layer_passes_looped"] == 4 == by[("K=1", "scoring")]["layer_passes_plain"]
    assert by[("K=1", "scoring")]["predicted_ratio"] == 1.0
    assert by[("K=2", "scoring")]["layer_passes_looped"] == 6
    assert by[("K=2", "scoring")]["predicted_ratio"] > 1.0
    # kv=last adds one stash pass per forward; bypass does not loop decode tokens
    assert by[("K=2 kv=last", "prefill")]["layer_passes_looped"] == 8
    assert by[("K=2 decode=bypass", "decode")]["layer_passes_looped"] == by[("K=2 decode=bypass", "decode")]["layer_passes_plain"]
    assert "tokens_per_s_plain" in by[("K=1", "decode")]
    assert {t["target"] for t in data["targets"]} >= {"K=1 wrapper overhead: looped/plain <= 1.02",
                                                      "K>1: measured/predicted within 5%",
                                                      "decode=bypass: tokens/s within 3% of plain"}


def test_memory_json(tmp_path):
    from benchmarks.memory import main
    # plain + 2 configurations: every configuration is a fresh subprocess (seconds each)
    main(TINY + ["--out", str(tmp_path), "--k", "2", "--kvs", "first,per_pass", "--prompt", "16",
                 "--new-tokens", "3", "--batch", "1"])
    data = json.loads((tmp_path / "memory.json").read_text())
    assert data["schema"] == "loopsweep.benchmarks.memory/1"
    assert {"cpu_model", "torch", "device", "dtype"} <= set(data["hardware"])
    plain, recs = data["plain"], data["records"]
    assert len(recs) == 2
    for r in [plain] + recs:
        for key in ("cache_bytes", "cache_seq_len", "peak_gen_bytes", "peak_gen_increment_bytes", "ru_maxrss_bytes",
                    "generated_tokens"):
            assert key in r, key
        assert r["cache_bytes"] > 0 and r["generated_tokens"] == 3 and r["cache_seq_len"] == 16 + 2
        assert r["ru_maxrss_bytes"] > 0
    by = {(r["kv"], r["k"]): r for r in recs}
    # kv=first: the plain model's cache for any K; per_pass: private slots grow with K
    assert by[("first", 2)]["cache_bytes"] == plain["cache_bytes"]
    assert by[("per_pass", 2)]["cache_bytes"] > plain["cache_bytes"]
    assert data["targets"] == []  # K=8 vs K=1 targets need both ends of the K list
