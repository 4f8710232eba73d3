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


# One direction inside looping: each module imports only modules below it (function-level imports
# included). errors at the bottom, then the architecture lookup, the integrators, the kv and
# routing policies, the config and its resolution, the runner, the prefix tools; the package
# facade (__init__) on top.
ORDER = ["errors", "trace", "arch", "integrators", "kv", "moe", "config", "runner", "prefix", "__init__"]


def looping_imports(path):
    import ast
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):                          # every level, not only the module top
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:                        # from . import x
                found.update(a.name for a in node.names)
            elif node.module and node.module.split(".")[0] == "looping":
                parts = node.module.split(".")
                found.update([parts[1]] if len(parts) > 1 else [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "looping" and len(parts) > 1:
                    found.add(parts[1])
    return found


def test_looping_modules_import_only_modules_below_them():
    import pathlib
    root = pathlib.Path(__file__).resolve().parents[2] / "looping"
    modules = {p.stem for p in root.glob("*.py")}
    assert modules == set(ORDER), f"place new modules in ORDER: {sorted(modules ^ set(ORDER))}"
    for name in ORDER:
        for dep in looping_imports(root / f"{name}.py"):
            assert ORDER.index(dep) < ORDER.index(name), f"looping.{name} imports looping.{dep} (above it)"
