"""Benchmarks: what looping costs, measured against what it should cost.

    python -m benchmarks.overhead   wall-clock ratio looped/plain (scoring, prefill, decode) beside
                                    the ratio predicted from measured per-layer times x layer passes
    python -m benchmarks.memory     cache bytes and peak memory vs K for kv=first/last/per_pass,
                                    one fresh subprocess per configuration

Both write JSON (hardware recorded) and a PNG under `--out` (default benchmarks/results/).
See docs/benchmarks.md for the commands, the measured numbers and the misses.
"""
