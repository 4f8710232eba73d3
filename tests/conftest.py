"""Suite-wide settings.

Under pytest-xdist (`-n 2`) each worker runs torch with one thread (and so do the subprocesses the
tests start): two workers with two OpenMP threads each on a 2-core machine spin against each other
and made tiny-model tests up to 30x slower."""
import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
