"""The package as a user installs it: the wheel ships the configs, the tasks and the embedded model,
declares only torch and transformers as requirements (the rest in extras) and has the console
scripts; a bare install into a fresh virtual environment (no system site-packages, no extras)
imports `looping` and runs a looped forward on a tiny model with no lm-eval, hydra or wandb."""
from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                        "--no-build-isolation", "-w", str(out), str(ROOT)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (whl,) = out.glob("loopsweep-*.whl")
    return whl


def test_wheel_ships_configs_scripts_and_declares_only_torch_and_transformers(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_string(z.read(meta_name).decode())
        entry = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    for f in ("harness/configs/sweep.yaml", "harness/configs/launcher/slurm.yaml",
              "harness/configs/launcher/slurm_cpu.yaml", "harness/configs/experiment/demo.yaml",
              "harness/tasks/embedded/embedded_mc.yaml", "looping/__init__.py"):
        assert f in names, f
    assert any(n.startswith("harness/data/embedded/") for n in names)
    for script in ("loopsweep = harness.driver:main", "loopsweep-eval = harness.cli:main",
                   "loopsweep-assets = harness.assets:main"):
        assert script in entry
    reqs = meta.get_all("Requires-Dist")
    base = sorted(r for r in reqs if "extra ==" not in r)
    assert [r.split(">")[0].split("=")[0].split("<")[0] for r in base] == ["torch", "transformers"]
    assert "transformers==" in base[1] and "<2.15" in base[0]        # a range incl. 2.13.0
    assert set(meta.get_all("Provides-Extra")) == {"eval", "sweep", "slurm", "wandb", "all",
                                                  "test"}
    pinned = [r.split(";")[0].strip() for r in reqs if "==" in r.split(";")[0]]
    assert sorted(pinned) == ["lm-eval==0.4.13", "transformers==5.23.0"], pinned


def _closure(names: list[str]) -> list:
    """The installed distributions `names` need (their requirements, recursively; markers as
    evaluated here, extras not followed)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    seen: dict = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        dist = metadata.distribution(name)
        seen[key] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def _link_dependencies(names: list[str], folder: Path) -> None:
    """A folder holding links to exactly the files of `names` and their dependencies (this
    environment's installs, dist-info included): pip in the fresh venv sees them installed and
    does not copy ~1 GB of torch again, while lm-eval, hydra, wandb ... stay out of reach."""
    folder.mkdir()
    for dist in _closure(names):
        for top in {Path(str(f)).parts[0] for f in dist.files or []}:
            src = Path(dist.locate_file(top))
            if src.exists() and top != ".." and not (folder / top).exists():
                (folder / top).symlink_to(src)


def test_bare_install_loops_a_tiny_model_without_the_harness_stack(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # torch + transformers (and only their dependencies) as links to this environment's installs;
    # pip then resolves the wheel's requirements against them and installs the wheel alone
    _link_dependencies(["torch", "transformers"], tmp_path / "deps")
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "linked-deps.pth").write_text(f"{tmp_path / 'deps'}\n")
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-compile", str(wheel)], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "torch" not in {p.name.split("-")[0] for p in site.iterdir()}   # not copied again
    script = textwrap.dedent("""
        import importlib.util, torch, transformers
        absent = [m for m in ("lm_eval", "hydra", "omegaconf", "wandb", "submitit", "datasets")
                  if importlib.util.find_spec(m) is not None]
        assert not absent, absent
        from looping import LoopConfig, looped
        import looping, sys
        assert "harness" not in sys.modules and "site-packages" in looping.__file__
        cfg = transformers.AutoConfig.for_model(
            "llama", hidden_size=32, intermediate_size=64, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, vocab_size=64)
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
        ids = torch.randint(0, 64, (2, 7))
        with torch.no_grad():
            plain = model(ids).logits
            with looped(model, LoopConfig(window="1:3", k=3, integrator="naive")):
                loop = model(ids).logits
            again = model(ids).logits
        assert loop.shape == plain.shape == (2, 7, 64) and torch.isfinite(loop).all()
        assert not torch.allclose(loop, plain) and torch.equal(again, plain)
        print("looped ok", torch.__version__, transformers.__version__)
    """)
    r = subprocess.run([str(py), "-c", script], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    shutil.rmtree(venv, ignore_errors=True)
    assert r.returncode == 0 and "looped ok" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]


def test_loopsweep_script_plans_a_sweep_without_a_checkout(wheel, tmp_path):
    """The wheel's `loopsweep` console script, run away from the repository with the wheel's own
    `harness` first on the path: the configs (presets, experiments) and the embedded model come
    from the installed package."""
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile",
                        "--target", str(site), str(wheel)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    env = dict(os.environ, PYTHONPATH=str(site), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1")
    r = subprocess.run([str(site / "bin" / "loopsweep"), "experiment=demo", "dry_run=true",
                        f"store={tmp_path / 'results'}"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "plan only: nothing was loaded or run" in r.stdout
    r = subprocess.run([sys.executable, "-c", "import harness; print(harness.__file__)"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert r.stdout.strip().startswith(str(site)), r.stdout
