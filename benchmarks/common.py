"""Shared pieces of the benchmarks: models, clocks, layer hooks, cache sizes, hardware, JSON.

The prediction the overhead benchmark checks against:

    predicted looped time = non-layer time + sum over (forward f, layer i) of t[f,i] * n[f,i]

where t[f,i] is layer i's wall time in forward f of a *plain* run (timed by hooks on the original
layer modules) and n[f,i] the number of times the looped run called that same module in forward f
(counted by hooks on the same modules, so K, the window, the mode and kv='last' stash passes are
all seen as they happen). Non-layer time = plain total - sum of layer times, so

    predicted ratio = 1 + sum t[f,i] * (n[f,i] - 1) / plain total    (both from the same hooked run)

Everything the looped run does beyond calling layers (integrator arithmetic, the KV stash, the
wrappers' Python) is what the measured ratio shows above the predicted one.
"""
from __future__ import annotations

import gc
import json
import os
import platform
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import torch

from harness.run import peak_rss_bytes, reset_peak_rss  # noqa: F401 - re-exported
from looping.arch import describe

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "results"

# A mid-size random model from a real config (Qwen3 family, reduced widths): big enough that a layer
# costs milliseconds on a CPU core, small enough for a 2-core machine. Named 'random'.
RANDOM_QWEN3 = dict(model_type="qwen3", hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                    num_attention_heads=8, num_key_value_heads=4, head_dim=64, vocab_size=32000,
                    max_position_embeddings=4096, tie_word_embeddings=True)
# For the smoke test: seconds, not minutes. Named 'tiny'.
TINY_QWEN3 = dict(model_type="qwen3", hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=256,
                  max_position_embeddings=1024, tie_word_embeddings=True)
RANDOM_MODELS = {"random": RANDOM_QWEN3, "tiny": TINY_QWEN3}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_model_args(p, threads_help: str | None = None) -> None:
    """The model / device / dtype / threads arguments every benchmark takes."""
    p.add_argument("--model", default="random", help="'random' (mid-size Qwen3), 'tiny', or a path / hub id")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=1, help=threads_help or
                   "torch.set_num_threads on CPU (1: a shared 2-core machine oversubscribes at 2)")


def load_model(name: str, device: str, dtype: str, seed: int = 0):
    """`random` / `tiny` (random weights from a Qwen3 config) or a path / hub id."""
    from transformers import AutoConfig, AutoModelForCausalLM
    torch.manual_seed(seed)
    if name in RANDOM_MODELS:
        spec = dict(RANDOM_MODELS[name])
        cfg = AutoConfig.for_model(spec.pop("model_type"), **spec)
        cfg._attn_implementation = "sdpa"
        model = AutoModelForCausalLM.from_config(cfg, dtype=DTYPES[dtype])
    else:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=DTYPES[dtype], attn_implementation="sdpa")
    model.to(device).eval()
    gen = model.generation_config
    gen.eos_token_id, gen.pad_token_id, gen.bos_token_id = None, 0, None
    gen.do_sample, gen.temperature, gen.top_p, gen.top_k = False, None, None, None
    return model


def model_record(model, name: str) -> dict:
    c = model.config
    return {"name": name, "model_type": c.model_type, "n_layers": describe(model).n_layers,
            "hidden_size": c.hidden_size, "intermediate_size": getattr(c, "intermediate_size", None),
            "vocab_size": c.vocab_size, "num_attention_heads": c.num_attention_heads,
            "num_key_value_heads": getattr(c, "num_key_value_heads", None),
            "params": sum(p.numel() for p in model.parameters()),
            "random_config": RANDOM_MODELS.get(name)}


def random_ids(batch: int, length: int, vocab: int, device: str, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (batch, length), generator=g).to(device)


# ---- clocks and hooks ------------------------------------------------------------------------

class Clock:
    """kind='wall': wall clock, after waiting for the device (CUDA work is asynchronous).
    kind='cpu': CPU seconds of this process (time.process_time). On a CPU shared with other jobs,
    wall time mostly measures how long the scheduler kept us waiting; with one torch thread the
    process's CPU time is the work itself, and its ratios equal wall-clock ratios on an idle core.
    """

    KINDS = ("wall", "cpu")

    def __init__(self, device: str, kind: str = "wall"):
        self.cuda = device.startswith("cuda")
        if kind not in self.KINDS:
            raise ValueError(f"unknown clock {kind!r}; valid: {', '.join(self.KINDS)}")
        if kind == "cpu" and self.cuda:
            raise ValueError("--clock cpu measures host CPU time; on CUDA use --clock wall")
        self.kind = kind
        self._now = time.perf_counter if kind == "wall" else time.process_time

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return self._now()


class LayerProbe:
    """Hooks on the model's *original* decoder-layer modules, per decoder forward.

    mode='time'  records the wall time of every layer call: times[f][i] (seconds, summed).
    mode='count' records how often each layer module was called: counts[f][i].
    Install before `looped(...)` is applied: the looped runner calls these same modules (from its
    wrappers), so the hooks see every evaluation, stash passes included. Removed in `close()`.
    """

    def __init__(self, model, mode: str, clock: Clock):
        info = describe(model)
        self.mode, self.clock = mode, clock
        self.f = -1
        self.data: dict[int, dict[int, float]] = defaultdict(lambda: defaultdict(float))
        self._t0: dict[int, float] = {}
        self._handles = [info.decoder.register_forward_pre_hook(self._on_forward)]
        for i, layer in enumerate(info.layers):
            self._handles.append(layer.register_forward_pre_hook(lambda m, a, i=i: self._pre(i)))
            self._handles.append(layer.register_forward_hook(lambda m, a, o, i=i: self._post(i)))

    def _on_forward(self, module, args):
        self.f += 1

    def _pre(self, i):
        if self.mode == "time":
            self._t0[i] = self.clock()

    def _post(self, i):
        if self.mode == "time":
            self.data[self.f][i] += self.clock() - self._t0.pop(i)
        else:
            self.data[self.f][i] += 1

    def close(self):
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def predicted_ratio(times: dict, counts: dict, total: float, forwards) -> dict:
    """1 + sum t[f,i] (n[f,i] - 1) / total over the given forwards (see module docstring)."""
    layer = sum(t for f in forwards for t in times[f].values())
    extra = sum(t * (counts[f].get(i, 0) - 1) for f in forwards for i, t in times[f].items())
    passes = sum(counts[f].get(i, 0) for f in forwards for i in times[f])
    return {"ratio": 1.0 + extra / total, "layer_time_s": layer, "nonlayer_time_s": total - layer,
            "layer_passes": passes, "plain_layer_calls": sum(len(times[f]) for f in forwards)}


def settle():
    gc.collect()


# ---- cache and memory ------------------------------------------------------------------------

def tensor_bytes(obj, seen=None, depth=0) -> int:
    """Bytes of all distinct tensors reachable from a cache object (layers, private slots, ...)."""
    seen = set() if seen is None else seen
    if depth > 6:
        return 0
    if torch.is_tensor(obj):
        key = (obj.untyped_storage().data_ptr(), obj.untyped_storage().nbytes())
        if key in seen or obj.device.type == "meta":
            return 0
        seen.add(key)
        return obj.untyped_storage().nbytes()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v, seen, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple, set)):
        return sum(tensor_bytes(v, seen, depth + 1) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, (type, torch.nn.Module)):
        return sum(tensor_bytes(v, seen, depth + 1) for v in vars(obj).values())
    return 0


def rss_bytes() -> int | None:
    """Current resident set size of this process (Linux), else None."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


def maxrss_bytes() -> int:
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if platform.system() == "Darwin" else r * 1024


# ---- hardware and output ---------------------------------------------------------------------

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_sha() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def hardware(device: str, dtype: str, threads: int) -> dict:
    import transformers
    out = {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
           "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
           "torch_threads": threads, "torch": torch.__version__, "transformers": transformers.__version__,
           "python": platform.python_version(), "platform": platform.platform(), "device": device,
           "dtype": dtype, "gpu": None, "git_sha": git_sha(), "hostname": platform.node()}
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(torch.device(device))
        out["gpu"] = {"name": p.name, "memory_bytes": p.total_memory, "cuda": torch.version.cuda}
    return out


def loadavg() -> list | None:
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return (xs[n // 2] + xs[(n - 1) // 2]) / 2


def quantile(xs, q: float):
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    lo, hi = int(pos), min(int(pos) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def parse_list(value: str, cast=str) -> list:
    return [cast(v.strip()) for v in str(value).split(",") if v.strip()]
