"""Build the embedded default model (and, with --tasks, regenerate its lm-eval task files).

    python scripts/build_embedded.py                  # the committed model: ~8 min on 2 CPU cores
    python scripts/build_embedded.py --reduced --out /tmp/emb   # toy size, seconds (same code path)
    python scripts/build_embedded.py --tasks-only     # rewrite harness/tasks/embedded/*.jsonl

Defaults write to harness/data/embedded/model/ (what `harness.embedded.embedded_model_path()`
returns). Training is deterministic for (seed, steps, threads, torch version, stdlib files).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import embedded  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(embedded.DATA_DIR / "model"), help="output folder")
    ap.add_argument("--steps", type=int, default=None, help=f"default {embedded.STEPS} (20 reduced)")
    ap.add_argument("--seed", type=int, default=embedded.SEED)
    ap.add_argument("--threads", type=int, default=embedded.THREADS)
    ap.add_argument("--reduced", action="store_true", help="toy size, seconds (for tests/smoke)")
    ap.add_argument("--tasks", action="store_true", help="also regenerate the task jsonl files")
    ap.add_argument("--tasks-only", action="store_true", help="only regenerate the task jsonl files")
    args = ap.parse_args(argv)

    if not args.tasks_only:
        steps = args.steps if args.steps is not None else (20 if args.reduced else embedded.STEPS)
        meta = embedded.build(args.out, steps=steps, seed=args.seed, reduced=args.reduced,
                              threads=args.threads)
        print(json.dumps({k: meta[k] for k in ("steps", "seed", "train_seconds", "heldout_loss",
                                               "train_loss_last50", "n_params")}, indent=2))
        print(f"saved to {args.out}")
    if args.tasks or args.tasks_only:
        counts = embedded.make_tasks(embedded.TASK_DIR)
        print(f"task files written to {embedded.TASK_DIR}: {counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
