"""harness: evaluation, sweeps, results and reports on top of `looping`.

lm-eval adapter (`adapter`), one sweep cell (`cell`), the per-cell result store (`store`), wandb
tracking (`tracking`), reports, plots and statistics. Imports `looping`; `looping` never imports
this package.
"""
