"""Loader for the embedded tasks: lm-eval 0.4.13 hands `dataset_kwargs.data_files` to
`datasets.load_dataset("json", ...)` unchanged, so relative paths would resolve against the
current directory. This resolves them against this folder (where the jsonl files are committed).
"""
from pathlib import Path

import datasets

HERE = Path(__file__).resolve().parent


def load_local(data_files=None, **_metadata):
    """`custom_dataset` hook: load_dataset("json") with data_files made absolute (this folder)."""
    files = {split: str(HERE / name) for split, name in (data_files or {}).items()}
    return datasets.load_dataset("json", data_files=files)
