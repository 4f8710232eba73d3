"""harness: evaluation, sweeps, results and reports on top of `looping`.

One direction, one home per concept: the lm-eval adapter (`adapter`); a cell's spec and identity
(`spec`), its typed record (`record`) and running it (`run`); the per-cell result store (`store`);
the sweep's config tree (`config`, `configs/`), planner (`plan`), launchers (`launch`) and driver
(`driver`, the `loopsweep` command and `sweep.py`); wandb tracking (`tracking`); statistics
(`stats`), the report (`report/`) and figures (`plots`). Imports `looping`; `looping` never
imports this package.
"""
