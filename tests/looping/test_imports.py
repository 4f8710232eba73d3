"""`looping` is the lower floor: torch, transformers and the standard library only."""
import json
import subprocess
import sys

FORBIDDEN = ["hydra", "omegaconf", "lm_eval", "datasets", "pandas", "matplotlib", "wandb", "harness"]


def test_looping_imports_no_harness_dependency():
    code = (
        "import sys, json, looping, looping.runner, looping.kv, looping.moe, looping.arch, looping.integrators\n"
        "import looping.trace\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    leaked = json.loads(out.stdout.strip().splitlines()[-1])
    assert leaked == [], f"looping pulled in: {leaked}"
