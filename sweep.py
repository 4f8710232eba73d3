#!/usr/bin/env python
"""sweep.py: run a grid of looped-inference cells. The driver is `harness.driver` (also installed
as the `loopsweep` command); its configs are harness/configs/. See docs/sweeps.md.

    python sweep.py                                   # the embedded model, default loop + baseline
    python sweep.py experiment=demo                   # the demo grid (CPU, offline)
    python sweep.py model=qwen3-4b loop.k=2,3,4       # a grid without -m: 3 cells + 1 baseline
    python sweep.py model=qwen3-4b loop.k=2,3,4 dry_run=true   # print the plan, run nothing
"""
import sys

from harness.driver import main

if __name__ == "__main__":
    sys.exit(main())
