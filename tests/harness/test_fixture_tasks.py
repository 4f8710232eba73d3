"""The offline fixture tasks are the installed lm-eval tasks with only the data source changed.

Each fixture's resolved config (includes merged, functions resolved, lm-eval's TaskConfig
defaults applied) is compared field by field with the installed task's; one prompt per task is
pinned as hand-written text (mmlu_pro: subject description, 5 same-category CoT shots, the
`answer is (X)` extraction)."""
from __future__ import annotations

import functools
import json
import random
from pathlib import Path

import pytest

from harness import tasks as T

# the only fields a fixture may change (the data source, its name, and tag membership)
DATA_SOURCE = {"task", "dataset_path", "dataset_name", "dataset_kwargs", "tag"}
REAL_DATASETS = {
    "fixture_mmlu_pro_biology": ("TIGER-Lab/MMLU-Pro", None),
    "fixture_mmlu_pro_computer_science": ("TIGER-Lab/MMLU-Pro", None),
    "fixture_mmlu_pro_math": ("TIGER-Lab/MMLU-Pro", None),
    "fixture_gpqa_main_zeroshot": ("Idavidrein/gpqa", "gpqa_main"),
    "fixture_commonsense_qa": ("tau/commonsense_qa", None),
    "fixture_arc_challenge": ("allenai/ai2_arc", "ARC-Challenge"),
    "fixture_openbookqa": ("allenai/openbookqa", "main"),
}
MMLU_PRO_REGEX = r"answer is \(?([ABCDEFGHIJ])\)?"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(k, "1")


def normalise(obj):
    """Comparable form of a config value: functions by qualified name, partials with arguments."""
    if isinstance(obj, functools.partial):
        return ("partial", normalise(obj.func), tuple(map(normalise, obj.args)),
                tuple(sorted((k, normalise(v)) for k, v in obj.keywords.items())))
    if callable(obj) and hasattr(obj, "__qualname__"):
        return f"{obj.__module__}.{obj.__qualname__}"
    if isinstance(obj, dict):
        return {k: normalise(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [normalise(v) for v in obj]
    return obj


def resolved_config(yaml_path: Path) -> dict:
    from lm_eval.config.task import TaskConfig
    from lm_eval.tasks._yaml_loader import load_yaml

    return normalise(TaskConfig(**load_yaml(yaml_path)).to_dict())


def test_every_fixture_has_a_template_and_resolves_the_installed_yaml():
    templates = {p.name[: -len(".yaml.in")] for p in T.TEMPLATES.glob("*.yaml.in")}
    assert templates == set(T.FIXTURE_TASKS) | set(T.FIXTURE_GROUPS)
    for fixture, real in T.FIXTURE_TASKS.items():
        inc = T.installed_yaml(fixture)
        assert inc.is_absolute() and inc.is_file(), inc
        assert inc.is_relative_to(T.lm_eval_tasks_dir())
        text = (T.fixture_dir() / f"{fixture}.yaml").read_text()
        assert f"include: {inc}" in text


@pytest.mark.parametrize("fixture", sorted(T.FIXTURE_TASKS))
def test_fixture_config_equals_installed_task_but_data_source(fixture):
    from lm_eval.tasks._yaml_loader import load_yaml

    mine = resolved_config(T.fixture_dir() / f"{fixture}.yaml")
    real = resolved_config(T.installed_yaml(fixture))
    assert real["task"] == T.FIXTURE_TASKS[fixture] and mine["task"] == fixture
    fields = set(mine) | set(real)
    differ = sorted(k for k in fields if mine.get(k) != real.get(k))
    assert set(differ) <= DATA_SOURCE, {k: (mine.get(k), real.get(k)) for k in differ}
    for k in sorted(fields - DATA_SOURCE):                      # field by field, for the message
        assert mine.get(k) == real.get(k), k
    # the data source is local rows; the real one is the hub dataset users run
    assert (real["dataset_path"], real.get("dataset_name")) == REAL_DATASETS[fixture]
    assert mine["dataset_path"] == "json" and mine.get("dataset_name") is None
    files = load_yaml(T.fixture_dir() / f"{fixture}.yaml")["dataset_kwargs"]["data_files"]
    splits = {real.get(s) for s in ("training_split", "validation_split", "test_split", "fewshot_split")} - {None}
    assert set(files) == splits, (files, splits)
    for f in files.values():
        assert Path(f).is_file() and Path(f).parent == T.DATA


def test_fixture_dir_is_rebuilt_in_a_fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOPSWEEP_CACHE_DIR", str(tmp_path))
    d = T.fixture_dir()
    assert d.is_relative_to(tmp_path) and (d / ".complete").exists()
    assert sorted(p.name for p in d.glob("*.yaml")) == sorted(f"{n}.yaml" for n in {**T.FIXTURE_TASKS, **T.FIXTURE_GROUPS})
    assert T.fixture_dir() == d                                  # reused, not rewritten
    local = T.cli_tasks_dir()                                    # what loopsweep-eval passes
    assert local.is_relative_to(tmp_path) and T.cli_tasks_dir() == local
    assert sorted(p.name for p in (local / "fixtures").glob("*.yaml")) == sorted(p.name for p in d.glob("*.yaml"))
    assert {"embedded_mc.yaml", "embedded_gen.yaml", "mc.jsonl", "utils.py"} <= {p.name for p in (local / "embedded").iterdir()}


def test_fixture_rows_use_the_real_schema():
    def rows(name):
        return [json.loads(line) for line in (T.DATA / name).read_text().splitlines()]
    for r in rows("mmlu_pro_validation.jsonl") + rows("mmlu_pro_test.jsonl"):
        assert set(r) == {"question_id", "question", "options", "answer", "answer_index",
                          "cot_content", "category", "src"}
        assert r["options"][r["answer_index"]] and "ABCDEFGHIJ"[r["answer_index"]] == r["answer"]
    for cat in ("biology", "math", "computer science"):          # 5 shots per category
        assert sum(r["category"] == cat for r in rows("mmlu_pro_validation.jsonl")) == 5
    for r in rows("commonsense_qa_train.jsonl") + rows("commonsense_qa_validation.jsonl"):
        assert set(r) == {"id", "question", "question_concept", "choices", "answerKey"}
        assert r["choices"]["label"] == list("ABCDE") and len(r["choices"]["text"]) == 5
    assert len(rows("commonsense_qa_train.jsonl")) >= 7           # the paper's 7 shots
    assert len(rows("arc_challenge_train.jsonl")) >= 25           # the paper's 25 shots
    for r in rows("arc_challenge_test.jsonl") + rows("openbookqa_test.jsonl"):
        assert r["answerKey"] in r["choices"]["label"]
    for r in rows("gpqa_main_train.jsonl"):
        assert {"Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2",
                "Incorrect Answer 3"} <= set(r)


# ---- pinned prompts -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tm():
    return T.task_manager()


def first_request(tm, task: str, num_fewshot: int | None = None):
    """(arguments, doc) of the first request lm-eval builds for `task` (seeds as simple_evaluate)."""
    random.seed(0)
    t = tm.load([task])["tasks"][task]
    if num_fewshot is not None:
        t.set_config("num_fewshot", num_fewshot)
    t.set_fewshot_seed(1234)
    t.build_all_requests(limit=1, rank=0, world_size=1)
    return [inst.args for inst in t.instances if inst.doc_id == 0], t


MMLU_PRO_BIOLOGY = (
    'The following are multiple choice questions (with answers) about biology. Think step by step '
    'and then finish your answer with "the answer is (X)" where X is the correct letter choice.\n'
    "Question:\nWhich organelle produces most of a cell's ATP?\nOptions:\nA. Ribosome\nB. Mitochondrion\n"
    "C. Golgi body\nD. Nucleus\nAnswer: Let's think step by step. ATP is made mainly by oxidative "
    "phosphorylation, which happens in mitochondria. The answer is (B).\n\n"
    "Question:\nWhat molecule carries amino acids to the ribosome?\nOptions:\nA. mRNA\nB. DNA\nC. tRNA\n"
    "D. rRNA\nE. Lipid\nAnswer: Let's think step by step. Transfer RNA binds an amino acid and brings "
    "it to the ribosome. The answer is (C).\n\n"
    "Question:\nWhich process makes two identical daughter cells?\nOptions:\nA. Meiosis\nB. Fertilization\n"
    "C. Mitosis\nD. Diffusion\nAnswer: Let's think step by step. Mitosis copies the genome once and "
    "divides once. The answer is (C).\n\n"
    "Question:\nWhere does photosynthesis take place in a leaf cell?\nOptions:\nA. Chloroplast\n"
    "B. Vacuole\nC. Cell wall\nD. Lysosome\nAnswer: Let's think step by step. Light is captured by "
    "chlorophyll inside chloroplasts. The answer is (A).\n\n"
    "Question:\nWhich base pairs with adenine in DNA?\nOptions:\nA. Guanine\nB. Cytosine\nC. Uracil\n"
    "D. Thymine\nAnswer: Let's think step by step. In DNA adenine pairs with thymine through two "
    "hydrogen bonds. The answer is (D).\n\n"
    "Question:\nWhich blood cells fight infection?\nOptions:\nA. Red blood cells\nB. White blood cells\n"
    "C. Platelets\nD. Plasma\nAnswer: Let's think step by step.")


def test_mmlu_pro_prompt_five_same_category_cot_shots_and_answer_regex(tm):
    args, task = first_request(tm, "fixture_mmlu_pro_biology")
    (prompt, gen_kwargs), = args
    assert prompt == MMLU_PRO_BIOLOGY
    # the validation split interleaves categories: only biology rows may be shots
    assert "7 times 8" not in prompt and "binary search" not in prompt
    assert gen_kwargs == {"until": ["Question:"], "max_gen_toks": 2048, "do_sample": False, "temperature": 0.0}
    assert task.config.num_fewshot == 5
    (filt,) = task.config.filter_list
    assert filt["name"] == "custom-extract"
    assert filt["filter"][0] == {"function": "regex", "regex_pattern": MMLU_PRO_REGEX}
    assert filt["filter"][1] == {"function": "take_first"}
    from lm_eval.filters.extraction import RegexFilter
    out = RegexFilter(regex_pattern=MMLU_PRO_REGEX).apply(
        [["Mitochondria make ATP, so the answer is (B).", "the answer is C"], ["no letter here"]], [{}, {}])
    assert [list(r) for r in out] == [["B", "C"], ["[invalid]"]]


def test_gpqa_prompt(tm):
    args, task = first_request(tm, "fixture_gpqa_main_zeroshot")
    answers = ["620 nm", "310 nm", "1240 nm", "155 nm"]
    head = ("What is the correct answer to this question:A photon has energy 2 eV. What is its "
            "approximate wavelength?\nChoices:\n")
    prompts = {a[0] for a in args}
    (prompt,) = prompts
    assert prompt.startswith(head) and prompt.endswith("\nAnswer:")
    lines = prompt[len(head): -len("\nAnswer:")].split("\n")
    assert [ln[:4] for ln in lines] == ["(A) ", "(B) ", "(C) ", "(D) "]
    assert sorted(ln[4:] for ln in lines) == sorted(answers)     # order: gpqa's own shuffle
    assert [a[1] for a in args] == [" (A)", " (B)", " (C)", " (D)"]
    doc = task.test_docs() if task.has_test_docs() else task.validation_docs()
    letter = doc[0]["answer"]                                   # "(X)" of the correct answer
    assert lines["ABCD".index(letter[1])][4:] == "620 nm"


CSQA_7_SHOT = (
    "Question: Where do you keep milk cold?\nA. drawer\nB. mailbox\nC. refrigerator\nD. bookshelf\nE. garage\nAnswer: C\n\n"
    "Question: Where would you put a plate after washing it?\nA. cupboard\nB. garden\nC. car\nD. river\nE. roof\nAnswer: A\n\n"
    "Question: What falls from clouds when it rains?\nA. sand\nB. water\nC. leaves\nD. salt\nE. coins\nAnswer: B\n\n"
    "Question: What does a person do when tired?\nA. sleep\nB. sprint\nC. shout\nD. juggle\nE. dig\nAnswer: A\n\n"
    "Question: Where can you borrow a book?\nA. bakery\nB. gym\nC. zoo\nD. bank\nE. library\nAnswer: E\n\n"
    "Question: Where do fish live?\nA. desert\nB. attic\nC. water\nD. oven\nE. closet\nAnswer: C\n\n"
    "Question: What do you wear on your feet?\nA. hat\nB. glove\nC. scarf\nD. shoes\nE. belt\nAnswer: D\n\n"
    "Question: What do you use to open a locked door?\nA. key\nB. fork\nC. towel\nD. candle\nE. rope\nAnswer:")


def test_commonsense_qa_7_shot_prompt(tm):
    args, _ = first_request(tm, "fixture_commonsense_qa", num_fewshot=7)
    assert [a[0] for a in args] == [CSQA_7_SHOT] * 5
    assert [a[1] for a in args] == [" A", " B", " C", " D", " E"]


ARC_SHOTS = [   # lm-eval's default sampler, fewshot seed 1234, over the 26 train rows
    ("Which sense uses the nose?", "smell"),
    ("Which change is chemical?", "burning wood"),
    ("What do plants release during photosynthesis?", "oxygen"),
    ("Which object is attracted to a magnet?", "an iron nail"),
    ("Which state of matter has a fixed shape?", "solid"),
    ("Which layer of Earth is the outermost?", "crust"),
    ("What is the main source of energy for Earth?", "the Sun"),
    ("What shape is the Moon's orbit closest to?", "ellipse"),
    ("What do caterpillars turn into?", "butterflies"),
    ("What do bees collect from flowers?", "nectar"),
    ("What happens to water at 0 degrees Celsius?", "it freezes"),
    ("Which material conducts electricity best?", "copper"),
    ("What is formed when water vapor cools?", "clouds"),
    ("Which planet is closest to the Sun?", "Mercury"),
    ("What part of a plant takes in water?", "root"),
    ("What causes day and night on Earth?", "Earth's rotation"),
    ("What force pulls objects toward Earth?", "gravity"),
    ("What is the hardest natural material?", "diamond"),
    ("Which organ pumps blood?", "heart"),
    ("What unit measures electric current?", "ampere"),
    ("Which animal lays eggs?", "chicken"),
    ("Which of these is a mammal?", "whale"),
    ("Which is a renewable resource?", "sunlight"),
    ("What carries messages from the brain?", "nerves"),
    ("Which tool measures temperature?", "thermometer"),
]


def test_arc_challenge_25_shot_prompt(tm):
    args, _ = first_request(tm, "fixture_arc_challenge", num_fewshot=25)
    expected = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in ARC_SHOTS) + \
        "Question: Which is the best way to save water?\nAnswer:"
    assert len(ARC_SHOTS) == 25 and [a[0] for a in args] == [expected] * 4
    blocks = expected.split("\n\n")
    train = [json.loads(line) for line in (T.DATA / "arc_challenge_train.jsonl").read_text().splitlines()]
    every = {f"Question: {r['question']}\nAnswer: {r['choices']['text'][r['choices']['label'].index(r['answerKey'])]}"
             for r in train}
    assert set(blocks[:-1]) <= every and len(set(blocks[:-1])) == 25
    assert [a[1] for a in args] == [" take long showers", " fix leaking taps", " water lawns at noon", " wash cars daily"]


def test_openbookqa_prompt(tm):
    args, _ = first_request(tm, "fixture_openbookqa")
    assert args == [("When food is reduced in the stomach", " the mind needs time to digest"),
                    ("When food is reduced in the stomach", " nutrients are being deconstructed"),
                    ("When food is reduced in the stomach", " reader's digest is a body of works"),
                    ("When food is reduced in the stomach", " take a second to digest what I said")]


def test_task_manager_knows_fixtures_and_group(tm):
    for name in list(T.FIXTURE_TASKS) + list(T.FIXTURE_GROUPS):
        assert name in tm.task_index
    loaded = tm.load(["fixture_mmlu_pro"])
    assert sorted(loaded["tasks"]) == sorted(T.FIXTURE_GROUPS["fixture_mmlu_pro"])
