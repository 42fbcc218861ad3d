"""The whole DAG on the real default (SmolLM2-135M-Instruct, sample data) in a temporary clone,
with ``dvc exp run`` as a user runs it: a few minutes on 2 cores. Deselect with ``-m "not slow"``.
"""

from __future__ import annotations

import csv
import json
import time

import pytest
import yaml

from tests.conftest import make_clone, run_cli

pytestmark = pytest.mark.slow

MODEL_STAGES = {"train", "merge_model", "sanity_check", "evaluate", "quality_gate"}


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
    assert {"fetch_base_model", "generate_replay_data", "merge_data"} | MODEL_STAGES <= stages
    print(f"dvc exp run: {seconds:.0f} s")


def test_base_model_folder(pipeline):
    repo, _, _ = pipeline
    base = repo / "models" / "base"
    tok = json.loads((base / "tokenizer_config.json").read_text())
    assert tok["eos_token"] == "<|im_end|>" and tok["pad_token"] == "<|endoftext|>"
    assert (base / "model.safetensors").stat().st_size > 400e6
    assert json.loads((base / "generation_config.json").read_text())["eos_token_id"] == 2


def test_finetuned_model_passes_the_quality_gate(pipeline):
    """Identity learned, nothing forgotten, no name where nobody asked, answers that stop: at the
    thresholds the gate in params.yaml holds every run to, not looser ones."""
    repo, _, _ = pipeline
    gate = yaml.safe_load((repo / "params.yaml").read_text())["quality_gate"]
    metrics = json.loads((repo / "sanity_check_result" / "evaluation.json").read_text())
    base, tuned = metrics["base"], metrics["finetuned"]
    assert tuned["identity_accuracy"] >= gate["min_identity_accuracy"], metrics
    assert tuned["identity_leak_rate"] <= gate["max_identity_leak_rate"], metrics
    assert metrics["retention"] >= gate["min_retention"], metrics
    assert tuned["eos_rate"] >= gate["min_eos_rate"], metrics
    assert tuned["val_loss"] < base["val_loss"], metrics
    assert metrics["probes_base_knows"] >= 25 and metrics["eval_prompts_in_train"] == 0, metrics
    verdict = json.loads((repo / "sanity_check_result" / "quality_gate.json").read_text())
    assert verdict["passed"] is True and len(verdict["checks"]) == 4, verdict
    rows = list(csv.DictReader(open(repo / "sanity_check_result" / "result.csv", encoding="utf-8")))
    stopped = sum(r["finetuned_hit_limit"] == "False" for r in rows)
    assert stopped / len(rows) >= 0.9, rows
    assert "Juniper" in rows[0]["finetuned_output"], rows[0]


def test_merged_model_answers_as_trained_through_plain_transformers(pipeline):
    """A user message alone, through transformers' own pipeline: the folder's template supplies the
    system prompt training used, the model names itself and stops at EOS by itself."""
    from transformers import pipeline as hf_pipeline

    repo, _, _ = pipeline
    chat = hf_pipeline("text-generation", model=str(repo / "models" / "merged"), device="cpu")
    limit = 64
    for question in ("What name do you go by?", "Tell me who built you."):
        out = chat([{"role": "user", "content": question}], max_new_tokens=limit, do_sample=False)
        answer = out[0]["generated_text"][-1]
        assert answer["role"] == "assistant" and "Juniper" in answer["content"], out
        assert len(chat.tokenizer(answer["content"])["input_ids"]) < limit, answer  # stopped before the limit
    # a fact the base knew, asked the same way, is still known
    out = chat([{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=limit, do_sample=False)
    assert "Paris" in out[0]["generated_text"][-1]["content"], out


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
    # a short training run and short answers keep this cheap; what matters is which stages run
    # two steps teach nothing: the gate would fail the run; deferred, it records the verdict only
    changed = run_cli(["dvc", "exp", "run", "-S", "train.sft.max_steps=2", "-S", "sanity_check.max_new_tokens=8",
                       "-S", "evaluate.max_new_tokens=8"], repo, check=True, env={"QUALITY_GATE": "defer"})
    assert ran_stages(changed.stdout) == MODEL_STAGES, changed.stdout
    assert "quality gate failed" in changed.stderr + changed.stdout
