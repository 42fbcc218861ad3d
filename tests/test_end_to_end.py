"""The whole DAG on the real default (SmolLM2-135M-Instruct, sample data) in a temporary clone,
with ``dvc exp run`` as a user runs it: a few minutes on 2 cores. Deselect with ``-m "not slow"``.
"""

from __future__ import annotations

import csv
import json
import time

import pytest

from tests.conftest import make_clone, run_cli

pytestmark = pytest.mark.slow

MODEL_STAGES = {"train", "merge_model", "sanity_check", "evaluate"}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    repo = make_clone(tmp_path_factory.mktemp("e2e") / "repo")
    start = time.monotonic()
    proc = run_cli(["dvc", "exp", "run"], repo, check=True)
    return repo, proc, time.monotonic() - start


def ran_stages(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def test_whole_dag_runs(pipeline):
    repo, proc, seconds = pipeline
    stages = ran_stages(proc.stdout)
    assert {"fetch_base_model", "merge_data"} | MODEL_STAGES <= stages
    print(f"dvc exp run: {seconds:.0f} s")


def test_base_model_folder(pipeline):
    repo, _, _ = pipeline
    base = repo / "models" / "base"
    tok = json.loads((base / "tokenizer_config.json").read_text())
    assert tok["eos_token"] == "<|im_end|>" and tok["pad_token"] == "<|endoftext|>"
    assert (base / "model.safetensors").stat().st_size > 400e6
    assert json.loads((base / "generation_config.json").read_text())["eos_token_id"] == 2


def test_finetuned_model_learned_identity_and_stops(pipeline):
    repo, _, _ = pipeline
    metrics = json.loads((repo / "sanity_check_result" / "evaluation.json").read_text())
    base, tuned = metrics["base"], metrics["finetuned"]
    assert tuned["identity_name_rate"] >= 0.9, metrics
    assert tuned["identity_accuracy"] > base["identity_accuracy"] + 0.5, metrics
    assert tuned["val_loss"] < base["val_loss"], metrics
    assert tuned["eos_rate"] >= 0.9, metrics
    rows = list(csv.DictReader(open(repo / "sanity_check_result" / "result.csv", encoding="utf-8")))
    stopped = sum(r["finetuned_hit_limit"] == "False" for r in rows)
    assert stopped / len(rows) >= 0.9, rows
    assert "Juniper" in rows[0]["finetuned_output"], rows[0]


def test_metrics_and_plots_visible_to_dvc(pipeline):
    repo, _, _ = pipeline
    shown = run_cli(["dvc", "metrics", "show", "--json"], repo, check=True).stdout
    assert "eval_time_share" in shown and "identity_accuracy" in shown
    exp = run_cli(["dvc", "exp", "show", "--csv"], repo, check=True).stdout
    assert "finetuned.identity_accuracy" in exp.splitlines()[0]
    share = json.loads((repo / "dvclive" / "train" / "metrics.json").read_text())["eval_time_share"]
    assert 0 < share < 0.1
    plots = run_cli(["dvc", "plots", "show", "--json"], repo, check=True).stdout
    assert "train/loss" in plots


def test_second_run_is_a_no_op_and_training_change_reruns_only_downstream(pipeline):
    repo, _, _ = pipeline
    again = run_cli(["dvc", "exp", "run"], repo, check=True)
    assert ran_stages(again.stdout) == set(), again.stdout
    # a short training run keeps this cheap; what matters is which stages run
    changed = run_cli(["dvc", "exp", "run", "-S", "train.sft.max_steps=2"], repo, check=True)
    assert ran_stages(changed.stdout) == MODEL_STAGES, changed.stdout
