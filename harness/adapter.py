"""lm-eval adapter: `@register_model("looped")`, a thin HFLM subclass that loops a window.

    loopsweep-eval --model looped --model_args pretrained=Qwen/Qwen3-4B-Instruct-2507,window=15:19,k=3,integrator=euler,kv=first --tasks mmlu_pro
    lm = LoopedLM(model, tokenizer=tok, window="15:19", k=3, integrator="euler", batch_size=8)
    results = evaluate(lm, ["fixture_mmlu_pro"])           # simple_evaluate + settings + samples

What it owns:
- parsing the loop `model_args` into a `looping.LoopConfig` (every LoopConfig field, `recipe=`,
  or a ready `loop=`), refusing unknown keys and bad values *before* any weights load; everything
  else goes to HFLM unchanged (dtype, device, device_map / parallelize, revision,
  trust_remote_code, batch_size incl. auto, max_length, ...). No loop options = no looping: the
  plain HFLM (the baselines).
- `_model_call` (loglikelihood, loglikelihood_rolling, batch-size detection): ONE full-sequence
  forward with `use_cache=False` under the loop, so no KV cache is built and no kv='last' stash
  pass runs (all tokens loop together; there is no decode phase to stash for).
- `_model_generate` (generate_until): HFLM's own generate under the loop (the loop's kv / decode
  policies act there).
- the record: `get_model_info()` adds `loop` (every LoopConfig field plus the resolved window,
  mode and routing) and `loop_stats`, so `results["config"]` carries them (lm-eval 0.4.13 puts the
  raw `model_args` string there and then `update`s it with `get_model_info()`).
- lm-eval's response cache (`use_cache`) is keyed by request only: a db is stamped with every field
  that changes a response (CACHE_FIELDS: model path and weights, revision, dtype, batch size, max
  length, tokenisation / precision options, lm-eval version, loop record) by the run that first
  writes it; a run that differs in any is refused naming the field (a db of unknown origin too).

Everything else (tokenisation, batching, padding, chat templates, stop sequences) is HFLM's.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import json
import os
from typing import Any, Iterable, Mapping

import torch
import transformers
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from looping import LoopConfig, LoopConfigError, did_you_mean


#: the loop model_args: every LoopConfig field, plus `recipe` (a named preset) and `loop`
LOOP_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(LoopConfig)) + ("recipe",)
#: HFLM's own constructor parameters
HFLM_KEYS: frozenset[str] = frozenset(
    p for p in inspect.signature(HFLM.__init__).parameters if p not in ("self", "kwargs", "pretrained"))
#: keys HFLM passes on to `from_pretrained` (transformers 5.23 / accelerate / bitsandbytes)
FROM_PRETRAINED_KEYS: frozenset[str] = frozenset({
    "device_map", "max_memory", "offload_buffers", "offload_state_dict", "attn_implementation",
    "experts_implementation", "torch_dtype", "quantization_config", "load_in_8bit", "load_in_4bit",
    "bnb_4bit_compute_dtype", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "variant",
    "use_safetensors", "cache_dir", "local_files_only", "token", "force_download",
    "ignore_mismatched_sizes", "key_mapping", "use_kernels", "kernel_config", "low_cpu_mem_usage",
    "weights_only", "disable_mmap", "adapter_kwargs", "adapter_name", "generation_config",
    "tp_size", "device_mesh", "distributed_config", "proxies"})
#: with an already loaded model HFLM ignores these silently; we refuse them
IGNORED_WITH_MODEL: frozenset[str] = (HFLM_KEYS | FROM_PRETRAINED_KEYS) - {
    "tokenizer", "backend", "truncation", "logits_cache", "max_length", "softmax_dtype",
    "mixed_precision_dtype", "batch_size", "max_batch_size", "add_bos_token", "prefix_token_id",
    "think_end_token", "enable_thinking", "chat_template_args"}
#: with a loaded model and a tokenizer given by *name*, these apply to loading the tokenizer
TOKENIZER_LOADING_KEYS = frozenset({"revision", "subfolder", "trust_remote_code", "use_fast_tokenizer"})

CACHE_MARKER = "__loopsweep_response_cache_owner__"


class ModelArgsError(ValueError):
    """A `looped` model arg is unknown or cannot apply; the message names it and the valid keys."""


def loop_config_from_args(options: Mapping[str, Any], loop: LoopConfig | Mapping | str | None = None
                          ) -> LoopConfig | None:
    """The LoopConfig the model_args describe, or None when they describe no looping.
    `loop` (a LoopConfig, a dict of its fields, or a recipe name) is the base; options override it."""
    options = {k: v for k, v in options.items() if v is not None}
    if loop is None and not options:
        return None
    if isinstance(loop, LoopConfig):
        base = loop.to_dict()
    elif isinstance(loop, str):
        base = {"recipe": loop}
    elif isinstance(loop, Mapping):
        base = dict(loop)
    elif loop is None:
        base = {}
    else:
        raise ModelArgsError(f"loop={loop!r} must be a LoopConfig, a dict of its fields or a recipe name.")
    if "recipe" in options and "recipe" not in base and base:
        raise ModelArgsError("recipe= cannot be combined with loop=; give one base config.")
    try:
        return LoopConfig.from_dict({**base, **options})
    except LoopConfigError as e:
        raise LoopConfigError(f"looped model_args: {e}") from None


def check_hf_kwargs(pretrained: Any, hf_kwargs: Mapping[str, Any]) -> None:
    """Refuse, before anything loads, keys that are neither loop options nor HF model args, and
    (with an already loaded model) the args HFLM would silently ignore."""
    unknown = [k for k in hf_kwargs if k not in HFLM_KEYS and k not in FROM_PRETRAINED_KEYS]
    if unknown and isinstance(pretrained, str):
        # HFLM forwards extra kwargs to from_pretrained, which applies config attributes
        # (e.g. rope_scaling): accept those, read from the config alone (no weights).
        try:
            cfg = transformers.AutoConfig.from_pretrained(
                pretrained, revision=hf_kwargs.get("revision") or "main",
                trust_remote_code=bool(hf_kwargs.get("trust_remote_code")),
                subfolder=hf_kwargs.get("subfolder") or "")
            attrs = set(cfg.to_dict())
        except Exception:  # noqa: BLE001 - the unknown key is the error we report
            attrs = set()
        unknown = [k for k in unknown if k not in attrs]
    if unknown:
        valid = sorted(set(LOOP_KEYS) | {"loop"} | HFLM_KEYS | FROM_PRETRAINED_KEYS)
        raise ModelArgsError(
            f"unknown model_arg {unknown[0]!r} for --model looped."
            + did_you_mean(unknown[0], valid)
            + f" Loop options: {', '.join(LOOP_KEYS)}, loop. HF model args: "
            f"{', '.join(sorted(HFLM_KEYS))} (plus from_pretrained kwargs such as "
            f"{', '.join(sorted(FROM_PRETRAINED_KEYS)[:6])}, ... and model config attributes).")
    if isinstance(pretrained, str):
        return
    if not isinstance(pretrained, transformers.PreTrainedModel):
        raise ModelArgsError(f"pretrained must be a model name / path or a transformers "
                             f"PreTrainedModel, not {type(pretrained).__name__}.")
    tokenizer = hf_kwargs.get("tokenizer")
    if not tokenizer:
        raise ModelArgsError(
            "with an already loaded model, pass its tokenizer (tokenizer=<PreTrainedTokenizer> or a "
            "tokenizer name): HFLM would otherwise look it up by model.name_or_path.")
    allowed = TOKENIZER_LOADING_KEYS if isinstance(tokenizer, str) else frozenset()
    for key, value in hf_kwargs.items():
        if key not in IGNORED_WITH_MODEL or key in allowed:
            continue
        if key == "device" and value is not None and _same_device(value, pretrained):
            continue
        if key == "dtype" and (value in (None, "auto") or _dtype_name(value) == _dtype_name(pretrained.dtype)):
            continue
        raise ModelArgsError(
            f"model_arg {key}={value!r} has no effect on an already loaded model (HFLM ignores it); "
            f"load the model with it yourself, or pass pretrained=<name or path> instead. Args that "
            f"apply to a loaded model: loop options, tokenizer, batch_size, max_batch_size, "
            f"max_length, truncation, logits_cache, add_bos_token, prefix_token_id, softmax_dtype, "
            f"mixed_precision_dtype, think_end_token, enable_thinking, chat_template_args; with a "
            f"tokenizer given by name also {', '.join(sorted(TOKENIZER_LOADING_KEYS))}.")


def _same_device(device: Any, model) -> bool:
    try:
        want, have = torch.device(device), model.device
    except (RuntimeError, TypeError):
        return False
    return want.type == have.type and (want.index is None or want.index == (have.index or 0))


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


@register_model("looped")
class LoopedLM(HFLM):
    """HFLM whose model runs `looping` for every request. See the module docstring."""

    def __init__(self, pretrained: str | transformers.PreTrainedModel, *,
                 loop: LoopConfig | Mapping | str | None = None, **kwargs):
        # the loop options are LoopConfig's field names (+ recipe); the rest is HFLM's
        options = {key: kwargs.pop(key) for key in LOOP_KEYS if key in kwargs}
        hf_kwargs = kwargs
        # everything is validated before HFLM touches config, tokenizer or weights
        self.loop_config: LoopConfig | None = loop_config_from_args(options, loop)
        pretrained = _resolve_asset(pretrained)
        check_hf_kwargs(pretrained, hf_kwargs)
        super().__init__(pretrained=pretrained, **hf_kwargs)
        self.handle = None
        self.shared = None      # (SharedPass, setting index) when a sweep scores cells together
        self.weights_id = None  # the weights' identity for the response-cache stamp (None: read
                                # from the model: Hub commit, or a local folder's weights hash)
        if self.loop_config is not None:
            if self.AUTO_MODEL_CLASS is not transformers.AutoModelForCausalLM:
                raise ModelArgsError("looping applies to decoder-only (causal) models only; this model "
                                     f"loads as {getattr(self.AUTO_MODEL_CLASS, '__name__', self.AUTO_MODEL_CLASS)}.")
            from looping import looped
            self.handle = looped(self.model, self.loop_config)

    # ---- the two model calls ----------------------------------------------------------------
    def _model_call(self, inps: torch.Tensor, attn_mask: torch.Tensor | None = None,
                    labels: torch.Tensor | None = None) -> torch.Tensor:
        if attn_mask is not None or labels is not None:   # seq2seq: never looped (refused above)
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)
        with (torch.no_grad(),
              torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                             enabled=self.mixed_precision_dtype is not None),
              self._looping()):
            # use_cache=False: scoring needs no KV cache (HFLM's call would build one, and with
            # kv='last' run a stash pass for it).
            return self.model(inps, use_cache=False).logits

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False,
                              override_bs: int | None = None):
        """HFLM's answers (same batching) with the head only at the continuation positions
        (harness.scoring); from the sweep's shared pass when this cell belongs to one."""
        bs = override_bs or self.batch_size
        if self.backend != "causal" or bs == "auto" or str(bs).startswith("auto"):
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
        from harness.scoring import loglikelihoods

        answers = None
        if self.shared is not None:
            shared, index = self.shared
            answers = shared.get(index, self, requests, int(bs), progress=not disable_tqdm)
        if answers is None:
            answers = loglikelihoods(
                self.model, requests, [self.handle], batch_size=int(bs),
                max_length=self.max_length, logits_cache=self.logits_cache,
                softmax_dtype=self.softmax_dtype, autocast_dtype=self.mixed_precision_dtype,
                progress=not disable_tqdm)[0]
        for (request_str, _, _), answer in zip(requests, answers):
            if request_str is not None:       # rolling windows are cached by lm-eval itself
                self.cache_hook.add_partial("loglikelihood", request_str, answer)
        return answers

    def share(self, shared, index: int) -> None:
        """Score loglikelihood requests from a shared pass (harness.scoring.SharedPass) as its
        setting `index`; this LM's loop handle becomes the pass's handle of that setting."""
        handle = shared.handle(index, self.model)
        if (handle is None) != (self.handle is None) or (
                handle is not None and handle.config != self.handle.config):
            raise ValueError("LoopedLM.share: the shared pass's setting is not this LM's loop")
        self.shared, self.handle = (shared, index), handle

    def _model_generate(self, context, max_length: int, stop: list[str], **generation_kwargs):
        with self._looping():
            return super()._model_generate(context, max_length, stop, **generation_kwargs)

    def _looping(self):
        """The loop as a context (applied for one call, restored after), or nothing."""
        return self.handle if self.handle is not None else contextlib.nullcontext()

    # ---- what gets recorded ------------------------------------------------------------------
    @property
    def loop_record(self) -> dict | None:
        """Every loop option plus the resolved window / mode / routing (None: not looped)."""
        return None if self.handle is None else self.handle.resolved.record()

    @property
    def loop_stats(self):
        return None if self.handle is None else self.handle.stats

    def get_model_info(self) -> dict:
        info = super().get_model_info()
        info["loop"] = self.loop_record
        info["loop_stats"] = None if self.handle is None else self.handle.stats.as_dict()
        info["model_provenance"] = _provenance(self.model)
        return info

    # ---- lm-eval's response cache -----------------------------------------------------------
    def cache_owner(self) -> dict:
        """What a response-cache db must have been written by to be reused by this LM: every
        field that changes a response (CACHE_FIELDS)."""
        return response_cache_owner(self)

    def set_cache_hook(self, cache_hook) -> None:
        db = getattr(cache_hook, "dbdict", None)
        if db is not None:
            bind_response_cache(db, self.cache_owner())
        super().set_cache_hook(cache_hook)


def _resolve_asset(pretrained):
    """`pretrained=smollm2-135m` (a model asset, harness.assets) -> its fetched folder; raises the
    fetch command when it is absent. Anything else unchanged."""
    from harness import assets
    return assets.resolve_model(pretrained) if assets.is_model_asset(pretrained) else pretrained


def _provenance(model) -> dict | None:
    """provenance.json of the folder the model was loaded from (fetched assets), else None."""
    from harness.assets import read_provenance
    return read_provenance(getattr(model, "name_or_path", None) or "")


#: what a response-cache stamp records, in this order: every field that changes a response
#: (the request itself is lm-eval's key; these are what it leaves out)
CACHE_FIELDS = ("model", "weights", "revision", "dtype", "batch_size", "max_length",
                "add_bos_token", "softmax_dtype", "mixed_precision_dtype", "lm_eval", "loop")
_UNSET = "(not recorded)"


def _weights_id(model) -> str | None:
    """The weights' identity: the Hub commit the model was loaded from, or a local folder's
    weights hash (harness.spec.weights_hash, memoised); None when neither is known."""
    config = getattr(model, "config", None)
    commit = getattr(config, "_commit_hash", None)
    if commit:
        return f"hub:{commit}"
    path = getattr(config, "_name_or_path", "") or getattr(model, "name_or_path", "")
    if path and os.path.isdir(path):
        from harness.spec import weights_hash
        from harness.tasks import _cache_root
        try:
            return weights_hash(path, memo_file=_cache_root() / "weights-hashes.json")
        except OSError:
            return None
    return None


def response_cache_owner(lm) -> dict:
    """The stamp of an HFLM (looped or plain): model path, weights, revision, dtype, batch size,
    max length, tokenisation and precision options, lm-eval version, loop record. A LoopedLM's
    `weights_id` (set by the sweep from the cell's spec) spares hashing a local folder again."""
    from harness.spec import package_version

    model = getattr(lm, "_model", None)
    model = model if isinstance(model, torch.nn.Module) else None
    name = getattr(getattr(model, "config", None), "_name_or_path", "") if model is not None \
        else str(getattr(lm, "pretrained", ""))

    def dtype(v):
        return None if v is None else str(v).removeprefix("torch.")
    try:
        max_length = int(lm.max_length)
    except Exception:              # noqa: BLE001 - a model without a known context length
        max_length = getattr(lm, "_max_length", None)
    owner = {
        "model": name,
        "weights": getattr(lm, "weights_id", None) or (_weights_id(model) if model is not None
                                                        else None),
        "revision": getattr(lm, "revision", None),
        "dtype": dtype(getattr(model, "dtype", None)),
        "batch_size": getattr(lm, "batch_size_per_gpu", None),
        "max_length": max_length,
        "add_bos_token": getattr(lm, "add_bos_token", None),
        "softmax_dtype": dtype(getattr(lm, "softmax_dtype", None)),
        "mixed_precision_dtype": dtype(getattr(lm, "mixed_precision_dtype", None)),
        "lm_eval": package_version("lm_eval"),
        "loop": getattr(lm, "loop_record", None),
    }
    return json.loads(json.dumps(owner, default=str))


def _stamp(value) -> dict:
    """A stored stamp as a dict (an older loopsweep stored {model, loop} only; anything else is
    kept whole under 'stamp')."""
    try:
        out = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        out = None
    return out if isinstance(out, dict) else {"stamp": value}


def bind_response_cache(db, owner: Mapping | str) -> None:
    """Bind an lm-eval response-cache db (`use_cache`) to one model + settings + loop setting.

    lm-eval keys cached responses by the request alone (`hash_args(method, args)`), never by the
    model or its args, so a db written under one setting would silently answer another. The first
    user stamps the db with `owner` (response_cache_owner: every field that changes a response); a
    run whose stamp differs is refused with the first differing field (old and new value), and so
    is a non-empty db without a stamp (written by `--model hf` or an older run)."""
    owner = _stamp(owner)
    stamp = db.get(CACHE_MARKER)
    if stamp is None:
        if len(db) > 0:
            raise ModelArgsError(
                f"lm-eval response cache {db.filename!r} holds responses of unknown origin (written "
                f"without a loopsweep stamp, e.g. by --model hf). lm-eval keys that cache by "
                f"request only, so it would serve them to this run. Use a fresh --use_cache path "
                f"per model and setting, or drop --use_cache.")
        db[CACHE_MARKER] = json.dumps(owner, sort_keys=True)
        db.commit()
        return
    old = _stamp(stamp)
    fields = list(CACHE_FIELDS) + sorted((set(old) | set(owner)) - set(CACHE_FIELDS))
    for name in fields:
        was, now = old.get(name, _UNSET), owner.get(name, _UNSET)
        if was != now:
            raise ModelArgsError(
                f"lm-eval response cache {db.filename!r} was written by a run with {name}="
                f"{_short(was)}; this run has {name}={_short(now)}. lm-eval keys that cache by "
                f"request only, so it would serve that run's answers to this one. Use a separate "
                f"--use_cache path per model, setting and loop (the Python helper "
                f"harness.adapter.evaluate does so), or drop --use_cache.")


def _short(value) -> str:
    text = value if value == _UNSET else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 300 else text[:297] + "..."


def stamped_response_caches(use_cache: str) -> dict[str, dict]:
    """The loopsweep stamps of the response-cache dbs lm-eval would open for `--use_cache
    use_cache` (`<use_cache>_rank<r>.db`): db path -> stamp (dbs without a stamp are left out)."""
    import glob

    from sqlitedict import SqliteDict

    out = {}
    for path in sorted(glob.glob(glob.escape(use_cache) + "_rank*.db")):
        try:
            with SqliteDict(path, flag="r") as db:
                stamp = db.get(CACHE_MARKER)
        except Exception:          # noqa: BLE001 - not a SqliteDict db, no table yet
            continue
        if stamp is not None:
            out[path] = _stamp(stamp)
    return out


def cache_key(lm) -> str:
    """Short hash of the model, settings and loop (suffix for per-setting response-cache paths)."""
    owner = lm.cache_owner() if hasattr(lm, "cache_owner") else repr(type(lm))
    blob = json.dumps(owner, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ---- Python route -----------------------------------------------------------------------------
def evaluate(lm, tasks: str | Iterable[str], **simple_evaluate_kwargs) -> dict:
    """`lm_eval.simple_evaluate` with per-sample outputs kept and every setting recorded.

    log_samples is always on. `use_cache` defaults to None (off); a path given here is suffixed
    with the loop setting's hash, so settings never share a response cache. The task manager
    defaults to the project's (fixture and embedded tasks, plus lm-eval's own index when a task is
    not local). `results["config"]["loopsweep"]` records the call's settings."""
    import lm_eval

    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    kw = dict(simple_evaluate_kwargs)
    if kw.pop("log_samples", True) is False:
        raise ValueError("harness.adapter.evaluate keeps per-sample outputs (log_samples=True).")
    use_cache = kw.pop("use_cache", None)
    if use_cache is not None:
        use_cache = f"{os.fspath(use_cache)}-{cache_key(lm)}"
    if kw.get("task_manager") is None:
        from harness.tasks import manager_for
        kw["task_manager"] = manager_for(tasks)
    results = lm_eval.simple_evaluate(model=lm, tasks=tasks, log_samples=True, use_cache=use_cache, **kw)
    if results is None:   # a non-zero rank
        return results
    settings = {k: v for k, v in kw.items() if k != "task_manager"}
    settings.update(tasks=tasks, use_cache=use_cache, log_samples=True, lm_class=type(lm).__name__,
                    batch_size=getattr(lm, "batch_size_per_gpu", None),
                    max_length=getattr(lm, "max_length", None),
                    loop=getattr(lm, "loop_record", None))
    results["config"]["loopsweep"] = json.loads(json.dumps(settings, default=str))
    return results


def sample_rows(results: Mapping, task: str, metric: str) -> list[dict]:
    """Per-sample rows `{doc_id, doc_hash, prompt_hash, target_hash, score}` of one task, sorted by
    doc_id; `score` is the sample's value of `metric` ('acc', 'acc,none',
    'exact_match,custom-extract': the part after the comma picks the filter)."""
    name, _, filt = metric.partition(",")
    samples = (results.get("samples") or {}).get(task)
    if samples is None:
        raise KeyError(f"no samples for task {task!r}; tasks with samples: "
                       f"{sorted((results.get('samples') or {}))} (run with log_samples=True)")
    filters = sorted({s.get("filter", "none") for s in samples})
    if not filt:
        if len(filters) > 1:
            raise ValueError(f"task {task!r} has filters {filters}: name one, e.g. '{name},{filters[0]}'")
        filt = filters[0]
    rows = [s for s in samples if s.get("filter", "none") == filt]
    if not rows:
        raise ValueError(f"task {task!r} has no samples for filter {filt!r}; filters: {filters}")
    if name not in rows[0]:
        metrics = [m for m in rows[0].get("metrics", []) if m in rows[0]]
        raise KeyError(f"task {task!r} has no per-sample metric {name!r}; metrics: {metrics}")
    out = [{"doc_id": int(s["doc_id"]), "doc_hash": s["doc_hash"], "prompt_hash": s["prompt_hash"],
            "target_hash": s["target_hash"], "score": float(s[name])} for s in rows]
    return sorted(out, key=lambda r: r["doc_id"])


__all__ = ["LoopedLM", "ModelArgsError", "evaluate", "sample_rows", "loop_config_from_args",
           "check_hf_kwargs", "bind_response_cache", "response_cache_owner",
           "stamped_response_caches", "CACHE_FIELDS", "LOOP_KEYS"]
