"""The benchmark stages (src/benchmarking.py, lm-evaluation-harness as a library): the shipped
local task, scoring on tiny models in this process, task names checked against the pinned
harness (the GPU profiles' too, offline), the base-vs-fine-tuned comparison and the gate's
benchmark check. The real default model's scores: test_end_to_end.py."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import yaml

from src import gate as quality_gate
from src.benchmarking import check_task_names, compare, right_answers, score_folder
from src.config import BenchmarkParams, GateParams
from src.errors import PipelineError
from tests.conftest import ROOT, repo_params
from tests.modelkit import tiny_params

TASK_FILE = ROOT / "src/benchmarks/general_knowledge.jsonl"
SHIPPED = [json.loads(line) for line in TASK_FILE.read_text().splitlines()]


def test_the_shipped_task_is_the_generators_and_well_formed():
    """Every shipped question is one dev/make_benchmark.py writes (nothing copied from a test
    set), four distinct choices, the answer among them; enough questions that at the default's
    accuracy the standard error is under 2 points."""
    spec = importlib.util.spec_from_file_location("make_benchmark", ROOT / "dev/make_benchmark.py")
    maker = importlib.util.module_from_spec(spec)
    sys.modules["make_benchmark"] = maker
    spec.loader.exec_module(maker)
    import random

    generated = {row["question"]: row for row in maker.questions(random.Random(0))}
    assert all(generated[row["question"]] == row for row in SHIPPED)
    assert len({row["question"] for row in SHIPPED}) == len(SHIPPED)
    assert all(len(set(row["choices"])) == 4 and 0 <= row["answer"] < 4 for row in SHIPPED)
    worst = 0.9  # stderr is largest at 0.5; the fine-tuned default answers about 95% right
    assert 100 * math.sqrt(worst * (1 - worst) / (len(SHIPPED) - 1)) < 2


def test_the_shipped_probes_are_the_hand_written_then_the_generators_none_answered_by_its_own_question():
    """src/prompts/retention.yaml: the hand-written probes above the mark, then only probes
    dev/make_probes.py writes, none a replay question (those are trained on), none whose question
    matches its own answer patterns (an echo is no answer); 200 or more of them."""
    import random
    import re

    spec = importlib.util.spec_from_file_location("make_probes", ROOT / "dev/make_probes.py")
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    text = (ROOT / "src/prompts/retention.yaml").read_text(encoding="utf-8")
    above, below = (yaml.safe_load(part) for part in text.split(maker.MARK))
    generated = {p["question"]: p for p in maker.candidates(random.Random(0))}
    assert all(generated.get(p["question"]) == p for p in below)
    probes = above + below
    assert len({p["question"].casefold() for p in probes}) == len(probes) >= 200
    replay = {q.casefold() for q in yaml.safe_load((ROOT / "src/prompts/replay.yaml").read_text())}
    assert not [p["question"] for p in probes if p["question"].casefold() in replay]
    assert not [p["question"] for p in probes if any(re.search(a, p["question"], re.I) for a in p["answers"])]


@pytest.fixture(scope="module")
def six_questions(tmp_path_factory) -> Path:
    """A task folder: the shipped task's YAML over its first six questions."""
    folder = tmp_path_factory.mktemp("tasks")
    task = yaml.safe_load((ROOT / "src/benchmarks/general_knowledge.yaml").read_text())
    (folder / "six.jsonl").write_text("".join(json.dumps(row) + "\n" for row in SHIPPED[:6]))
    task["dataset_kwargs"]["data_files"]["test"] = str(folder / "six.jsonl")
    (folder / "general_knowledge.yaml").write_text(yaml.safe_dump(task))
    return folder


def tiny_cfg(tmp: Path, model: Path, tasks_dir: Path, **task):
    return tiny_params(tmp, model, benchmark={"tasks": {"general_knowledge": task}, "tasks_dir": str(tasks_dir)})


def test_a_model_is_scored_with_the_harness_stderr_and_the_same_twice(tmp_path, tiny_model, six_questions):
    cfg = tiny_cfg(tmp_path, tiny_model, six_questions)
    first, again = score_folder(tiny_model, cfg), score_folder(tiny_model, cfg)
    scores = first["general_knowledge"]
    assert first == again
    assert scores["n"] == 6 and scores["metric"] == "acc" and 0 <= scores["value"] <= 1
    assert scores["stderr"] == pytest.approx(math.sqrt(scores["value"] * (1 - scores["value"]) / 5))
    right = right_answers(tiny_model, cfg.benchmark, "general_knowledge")
    assert len(right) == round(6 * scores["value"])  # the questions counted right, one by one
    limited = score_folder(tiny_model, tiny_cfg(tmp_path, tiny_model, six_questions, limit=2))
    assert limited["general_knowledge"]["n"] == 2
    same = compare(first, again)
    assert same["mean_delta_points"] == 0 and same["tasks"]["general_knowledge"]["delta_points"] == 0


def test_two_models_differ_where_their_answers_do(tmp_path, tiny_model, six_questions):
    """A second tiny model of another seed: the change is its score less the base's, in points."""
    from tests.modelkit import chatml_tokenizer, tiny_model_folder

    other = tiny_model_folder(tmp_path / "other", chatml_tokenizer(), seed=1)
    cfg = tiny_cfg(tmp_path, tiny_model, six_questions)
    base, tuned = score_folder(tiny_model, cfg), score_folder(other, cfg)
    result = compare(base, tuned)["tasks"]["general_knowledge"]
    assert result["delta_points"] == pytest.approx(100 * (tuned["general_knowledge"]["value"]
                                                          - base["general_knowledge"]["value"]), abs=1e-3)


def test_no_tasks_no_scores_and_no_gate_check(tmp_path, tiny_model):
    cfg = tiny_params(tmp_path, tiny_model)
    assert cfg.benchmark.tasks == {} and score_folder(tiny_model, cfg) == {}
    metrics = quality_gate.gate_metrics({"finetuned": {}}, compare({}, {}))
    assert metrics["benchmark_drop_points"] is None


def test_a_misspelt_task_is_one_line_with_the_close_names():
    from src.benchmarking import task_manager

    params = BenchmarkParams(tasks={"general_knowledge": {}}, tasks_dir="src/benchmarks", batch_size=8)
    local = task_manager(params, ROOT)  # the project's tasks alone (the test of the profiles reads the harness's)
    typo = params.model_copy(update={"tasks": {"general_knowlege": {}}})
    with pytest.raises(PipelineError, match=r"^params.yaml: benchmark.tasks.general_knowlege: no such task in "
                                            r"lm-eval 0\.4\.13 or src/benchmarks \(close: general_knowledge\)$"):
        check_task_names(typo, local)


def test_a_metric_the_task_lacks_is_one_line(tmp_path, tiny_model, six_questions):
    cfg = tiny_cfg(tmp_path, tiny_model, six_questions, metric="exact_match")
    with pytest.raises(PipelineError, match=r"benchmark.tasks.general_knowledge.metric: 'exact_match' is not "
                                            r"among the task's metrics \(acc, acc_norm\)"):
        score_folder(tiny_model, cfg)


def test_scores_taken_with_other_settings_are_not_compared():
    base = {"t": {"metric": "acc", "value": 1.0, "stderr": 0.0, "n": 5, "num_fewshot": 0, "limit": None}}
    with pytest.raises(PipelineError, match="the base's scores of t were taken with other settings"):
        compare(base, {"t": {**base["t"], "num_fewshot": 5}})


@pytest.mark.slow
def test_the_gpu_profiles_name_tasks_the_pinned_harness_has():
    """Offline, against the harness's own task index: a misspelt name fails before a cloud run."""
    from src.benchmarking import task_manager

    names = {}
    for profile in sorted((ROOT / "profiles").glob("*.yaml")):
        names |= yaml.safe_load(profile.read_text()).get("benchmark", {}).get("tasks", {})
    assert {"mmlu", "arc_challenge", "gsm8k"} <= set(names)
    params = BenchmarkParams(tasks=names, tasks_dir="src/benchmarks", batch_size=8)
    manager = task_manager(params, ROOT)
    check_task_names(params, manager)
    with pytest.raises(PipelineError, match="benchmark.tasks.mmlu_pro_typo: no such task"):
        check_task_names(params.model_copy(update={"tasks": {"mmlu_pro_typo": {}}}), manager)


def test_the_gate_fails_on_a_mean_drop_past_its_threshold_with_one_line():
    gate = GateParams.model_validate({**repo_params()["quality_gate"], "max_benchmark_drop": 2.0})
    evaluation = {"finetuned": {"identity_accuracy": 1.0, "identity_leak_rate": 0.0, "eos_rate": 1.0},
                  "retention": 1.0}
    scores = {"metric": "acc", "stderr": 0.01, "n": 300, "num_fewshot": 0, "limit": None}
    drop = compare({"t": {**scores, "value": 0.9}}, {"t": {**scores, "value": 0.87}})
    results = quality_gate.check(quality_gate.gate_metrics(evaluation, drop), gate)
    assert results["benchmark_drop_points"] == {"value": pytest.approx(3.0), "threshold": 2.0, "passed": False}
    assert quality_gate.failure_line(results) == ("quality gate failed: benchmark_drop_points 3 > 2 "
                                                  "(quality_gate.max_benchmark_drop)")
    off = gate.model_copy(update={"max_benchmark_drop": None})
    assert "benchmark_drop_points" not in quality_gate.check(quality_gate.gate_metrics(evaluation, drop), off)
