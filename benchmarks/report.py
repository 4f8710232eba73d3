"""Markdown tables from the benchmark JSONs (used for docs/benchmarks.md).

    python -m benchmarks.report benchmarks/results/overhead.json benchmarks/results/memory.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def overhead_table(data: dict) -> str:
    rows = ["| config | workload | plain (s) | looped (s) | measured ratio [IQR] | predicted | measured/predicted "
            "| layer passes plain -> looped |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    order = {"scoring": 0, "prefill": 1, "decode": 2}
    recs = sorted(data["records"], key=lambda r: (r["group"] != "k_sweep", r["config"]["k"], r["label"],
                                                  order[r["phase"]]))
    for r in recs:
        extra = ""
        if r["phase"] == "decode":
            extra = f" ({r['tokens_per_s_plain']:.1f} -> {r['tokens_per_s_looped']:.1f} tok/s)"
        rows.append(f"| {r['label']} | {r['phase']}{extra} | {r['plain_s']:.3f} | {r['looped_s']:.3f} | "
                    f"{r['ratio']:.3f} [{r['ratio_q25']:.3f}, {r['ratio_q75']:.3f}] | {r['predicted_ratio']:.3f} | "
                    f"{r['measured_over_predicted']:.3f} | {r['layer_passes_plain']} -> {r['layer_passes_looped']} |")
    return "\n".join(rows)


def targets_table(targets: list[dict]) -> str:
    rows = ["| target | workload / metric | config | value | |", "|---|---|---|---:|---|"]
    for t in targets:
        where = t.get("phase") or t.get("metric")
        rows.append(f"| {t['target']} | {where} | {t.get('config', t.get('kv', ''))} | {t['value']:.3f} | "
                    f"{'pass' if t['pass'] else '**miss**'} |")
    return "\n".join(rows)


def memory_table(data: dict) -> str:
    mb = 2 ** 20
    rows = ["| kv | K | cache (MiB) | peak during generate (MiB) | peak - before (MiB) | generate (s) |",
            "|---|---:|---:|---:|---:|---:|"]
    for r in [data["plain"]] + data["records"]:
        k = "-" if r["kv"] == "plain" else r["k"]
        rows.append(f"| {r['kv']} | {k} | {r['cache_bytes'] / mb:.2f} | {r['peak_gen_bytes'] / mb:.1f} | "
                    f"{r['peak_gen_increment_bytes'] / mb:.1f} | {r['generate_s']:.1f} |")
    return "\n".join(rows)


def main(argv=None) -> None:
    for path in (argv or sys.argv[1:]):
        data = json.loads(Path(path).read_text())
        print(f"## {path}\n")
        if data["schema"].startswith("loopsweep.benchmarks.overhead"):
            print(overhead_table(data) + "\n")
        else:
            print(memory_table(data) + "\n")
        print(targets_table(data["targets"]) + "\n")


if __name__ == "__main__":
    main()
