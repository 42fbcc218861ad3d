"""The seed-sweep report (src/sweep.py) on experiments shaped as ``dvc exp show --json`` gives
them: grouping by every params value but the seed, the spread of each headline metric, the
seeds that fail the gate and the gate on the worst seed. The sweep through DVC's real queue, on
the tiny model, is in test_faults (it reuses that module's reference run)."""

from __future__ import annotations

import json
import statistics

import pytest

from src import sweep
from src.errors import PipelineError
from tests.conftest import repo_params

PATHS = repo_params()["paths"]
FILES = {"evaluation": PATHS["evaluation"], "benchmark": PATHS["benchmark"], "quality_gate": PATHS["quality_gate"]}
GATE = {"finetuned.identity_accuracy": 0.9, "finetuned.identity_leak_rate": 0.02, "retention": 0.85,
        "finetuned.eos_rate": 0.9, "benchmark_drop_points": 8.0}


def gate_record(values: dict) -> dict:
    """quality_gate.json for these values against GATE, as the stage writes it."""
    checks = {}
    for metric, threshold in GATE.items():
        higher = metric in ("finetuned.identity_accuracy", "retention", "finetuned.eos_rate")
        value = values[metric]
        checks[metric] = {"value": value, "threshold": threshold,
                          "passed": value >= threshold if higher else value <= threshold}
    return {"passed": all(c["passed"] for c in checks.values()), "checks": checks}


def experiment(name: str, seed: int, retention: float, leak: float, drop: float, lr: float = 1e-3) -> dict:
    """One experiment as ``dvc exp show --json`` gives it."""
    evaluation = {"val_loss": 0.5 + seed / 100, "identity_accuracy": 1.0, "identity_leak_rate": leak,
                  "retention": retention, "eos_rate": 0.98, "finetuned": {"identity_accuracy": 1.0,
                                                                          "identity_leak_rate": leak, "eos_rate": 0.98}}
    benchmark = {"mean_delta_points": -drop, "worst_delta_points": -drop - 1}
    gate = gate_record({"finetuned.identity_accuracy": 1.0, "finetuned.identity_leak_rate": leak,
                        "retention": retention, "finetuned.eos_rate": 0.98, "benchmark_drop_points": drop})
    params = {"train": {"seed": seed, "learning_rate": lr, "lora": {"r": 16}}, "datasets": {"orca": {"seed": 0}}}
    return {"rev": f"{seed:040x}", "name": name, "data": {
        "params": {"params.yaml": {"data": params}},
        "metrics": {FILES["evaluation"]: {"data": evaluation}, FILES["benchmark"]: {"data": benchmark},
                    FILES["quality_gate"]: {"data": gate}}}}


RECIPE = [experiment("a0", 0, 0.92, 0.0, 2.0), experiment("a1", 1, 0.90, 0.06, 3.5),
          experiment("a2", 2, 0.95, 0.01, 1.0)]
OTHER = [experiment("b0", 0, 0.80, 0.0, 9.0, lr=2e-3), experiment("b1", 1, 0.84, 0.0, 6.0, lr=2e-3)]


def summary(exps: list[dict]) -> list[dict]:
    return sweep.summarise([sweep.seed_run(e, ["train.seed"], FILES) for e in exps], ["train.seed"])


def test_runs_that_differ_only_in_the_seed_form_one_sweep_each():
    first, second = summary([RECIPE[0], OTHER[0], RECIPE[1], OTHER[1], RECIPE[2]])
    assert first["experiments"] == ["a0", "a1", "a2"] and first["seeds"] == ["0", "1", "2"]
    assert second["experiments"] == ["b0", "b1"]
    assert first["params_apart"] == {} and second["params_apart"] == {"train.learning_rate": 2e-3}


def test_spread_is_the_mean_sample_stdev_and_worst_seed_of_each_headline_metric():
    (group,) = summary(RECIPE)
    retention = [0.92, 0.90, 0.95]
    assert group["spread"]["retention"] == {"mean": round(statistics.fmean(retention), 4),
                                            "std": round(statistics.stdev(retention), 4),
                                            "worst": 0.90, "worst_seed": "1", "n": 3}
    leak = group["spread"]["identity_leak_rate"]  # lower is better: the worst is the highest
    assert (leak["worst"], leak["worst_seed"]) == (0.06, "1")
    assert group["spread"]["val_loss"]["worst_seed"] == "2"
    assert group["spread"]["mean_delta_points"]["worst"] == -3.5


def test_the_failing_seeds_and_the_gate_on_the_worst_seed_are_named():
    (group,) = summary(RECIPE)
    assert list(group["failing_seeds"]) == ["1"]
    assert group["failing_seeds"]["1"] == ("quality gate failed: finetuned.identity_leak_rate 0.06 > 0.02 "
                                           "(quality_gate.max_identity_leak_rate)")
    worst = group["worst_seed_gate"]
    assert worst["finetuned.identity_leak_rate"] == {"value": 0.06, "seed": "1", "threshold": 0.02, "passed": False}
    assert worst["retention"] == {"value": 0.90, "seed": "1", "threshold": 0.85, "passed": True}
    assert worst["benchmark_drop_points"]["value"] == 3.5 and worst["benchmark_drop_points"]["passed"]


def test_the_report_table_shows_each_metric_and_the_failure():
    (group,) = summary(RECIPE)
    text = sweep.table(group)
    assert "3 experiments over train.seed = 0, 1, 2" in text
    assert "seed 1: quality gate failed: finetuned.identity_leak_rate 0.06 > 0.02" in text
    retention = next(line for line in text.splitlines() if line.strip().startswith("retention"))
    assert retention.split()[1:] == ["0.9233", "0.0252", "0.9", "1"]


def test_chart_rows_hold_every_seed_and_metric_with_its_gate():
    rows = sweep.chart_rows(summary(RECIPE + OTHER))
    assert len(rows) == 5 * len(sweep.HEADLINE)
    assert {r["sweep"] for r in rows} == {"sweep 1", "sweep 2"}
    assert {(r["seed"], r["gate"]) for r in rows if r["sweep"] == "sweep 1"} == {("0", "passed"), ("1", "failed"),
                                                                                 ("2", "passed")}


def test_a_run_without_a_metrics_file_or_the_seed_key_is_one_line():
    broken = json.loads(json.dumps(RECIPE[0]))
    del broken["data"]["metrics"][FILES["benchmark"]]
    with pytest.raises(PipelineError, match=f"experiment a0: no {FILES['benchmark']}"):
        sweep.seed_run(broken, ["train.seed"], FILES)
    with pytest.raises(PipelineError, match="experiment a0: no params train.sed"):
        sweep.seed_run(RECIPE[0], ["train.sed"], FILES)


def test_the_seed_keys_are_left_out_of_the_grouping_and_kept_per_run():
    run = sweep.seed_run(RECIPE[1], ["train.seed", "datasets.orca.seed"], FILES)
    assert run["seed"] == {"train.seed": 1, "datasets.orca.seed": 0}
    assert "train.seed" not in run["params"] and run["params"]["train.lora.r"] == 16
    assert sweep.seed_label(run) == "1, 0"
