"""report.reference: the paper's published cells (harness/data/reference.csv, cited in its
README) and the name maps from our presets / lm-eval tasks to the paper's row names; attaching the
published values to the delta table. The only file this package reads."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .common import MISSING

# Our names -> the paper's row names in reference.csv (harness/data/reference.README.md).
MODEL_TO_REFERENCE: dict[str, str] = {
    "qwen3-4b": "Qwen3-4B-Instruct", "Qwen/Qwen3-4B-Instruct-2507": "Qwen3-4B-Instruct",
    "llama-3.2-1b": "Llama-3.2-1B-Instruct",
    "meta-llama/Llama-3.2-1B-Instruct": "Llama-3.2-1B-Instruct",
    "llama-3.2-3b": "Llama-3.2-3B-Instruct",
    "meta-llama/Llama-3.2-3B-Instruct": "Llama-3.2-3B-Instruct",
    "qwen1.5-moe-a2.7b": "Qwen1.5-MoE-A2.7B", "Qwen/Qwen1.5-MoE-A2.7B": "Qwen1.5-MoE-A2.7B",
    "moonlight-16b-a3b": "Moonlight-16B-A3B-Instruct",
    "moonshotai/Moonlight-16B-A3B-Instruct": "Moonlight-16B-A3B-Instruct",
    "deepseek-v2-lite": "DeepSeek-V2-Lite-Chat",
    "deepseek-ai/DeepSeek-V2-Lite-Chat": "DeepSeek-V2-Lite-Chat",
    "qwen3-30b-a3b": "Qwen3-30B-A3B-Instruct", "qwen3-30b-a3b-code": "Qwen3-30B-A3B-Instruct",
    "Qwen/Qwen3-30B-A3B-Instruct-2507": "Qwen3-30B-A3B-Instruct",
}
TASK_TO_REFERENCE: dict[str, str] = {
    "mmlu_pro": "MMLU-Pro", "gpqa_main_zeroshot": "GPQA-Main", "gpqa_main": "GPQA-Main",
    "commonsense_qa": "CommonsenseQA", "csqa": "CommonsenseQA", "arc_challenge": "ARC-Challenge",
    "openbookqa": "OpenBookQA",
}
# The names a published row without any result of ours is shown under (our preset / lm-eval task).
REFERENCE_MODEL_PRESET = {v: k for k, v in reversed(list(MODEL_TO_REFERENCE.items()))
                          if "/" not in k}
REFERENCE_TASK = {"MMLU-Pro": "mmlu_pro", "GPQA-Main": "gpqa_main_zeroshot",
                   "CommonsenseQA": "commonsense_qa", "ARC-Challenge": "arc_challenge",
                   "OpenBookQA": "openbookqa"}


#: chance accuracy of a task family (uniform guessing over its choices); prefixes of lm-eval task
#: names after any `local_` / `fixture_` prefix. A task not listed has no chance level (NaN).
CHANCE: dict[str, float] = {
    "piqa": 0.5, "winogrande": 0.5, "boolq": 0.5, "arc_easy": 0.25, "arc_challenge": 0.25,
    "openbookqa": 0.25, "commonsense_qa": 0.2, "mmlu_pro": 0.1, "mmlu": 0.25, "hellaswag": 0.25,
    "sciq": 0.25, "gpqa": 0.25, "embedded_mc": 0.25,
}


def chance_of(task: str) -> float:
    """Chance accuracy of `task` (CHANCE, longest matching family prefix), NaN if unknown."""
    name = str(task)
    for prefix in ("local_", "fixture_"):
        name = name.removeprefix(prefix)
    hits = [f for f in CHANCE if name.startswith(f)]
    return CHANCE[max(hits, key=len)] if hits else float("nan")


def reference_path() -> Path:
    return Path(__file__).resolve().parents[1] / "data" / "reference.csv"


def load_reference(path: str | Path | None = None) -> pd.DataFrame:
    """The published cells (harness/data/reference.csv; its README cites the paper)."""
    return pd.read_csv(path or reference_path())


def attach_reference(out: pd.DataFrame, reference: pd.DataFrame | None, *,
                     unrun: bool = False) -> pd.DataFrame:
    """The published cell beside each of our rows (same model and benchmark); with `unrun`,
    every published cell we have no row for is added as a 'missing' row."""
    if reference is None or reference.empty:
        return out
    ref = {(r["model"], r["benchmark"]): r for _, r in reference.iterrows()}
    pub = [c for c in out.columns if c.startswith("published_")]
    out[pub] = out[pub].astype(object)
    used = set()
    for i, r in out.iterrows():
        key = (MODEL_TO_REFERENCE.get(r["model_name"]), TASK_TO_REFERENCE.get(r["task"]))
        hit = ref.get(key)
        if hit is None:
            continue
        used.add(key)
        out.loc[i, ["published_model", "published_benchmark", "published_shots",
                    "published_baseline", "published_looped", "published_delta",
                    "published_config", "published_source"]] = [
            hit["model"], hit["benchmark"], hit["shots"], hit["baseline"], hit["looped"],
            hit["delta_pp"], hit["config_known"], hit["source"]]
    extra = []
    for key, hit in ref.items():
        if key in used or not unrun:
            continue
        extra.append({"model_name": REFERENCE_MODEL_PRESET.get(hit["model"], hit["model"]),
                      "task": REFERENCE_TASK.get(hit["benchmark"], hit["benchmark"]),
                      "method": "-", "status": MISSING, "best_of_grid": False,
                      "num_fewshot": hit["shots"], "published_model": hit["model"],
                      "published_benchmark": hit["benchmark"], "published_shots": hit["shots"],
                      "published_baseline": hit["baseline"], "published_looped": hit["looped"],
                      "published_delta": hit["delta_pp"], "published_config": hit["config_known"],
                      "published_source": hit["source"]})
    if extra:
        out = pd.concat([out, pd.DataFrame(extra, columns=out.columns)], ignore_index=True)
    return out
