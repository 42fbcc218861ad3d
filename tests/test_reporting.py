"""What DVC shows of a run: the table of ``dvc exp show`` opens with the headline, the data
accounting stays out of it, and ``dvc plots show`` draws worded charts (dvc.yaml's top-level
``metrics`` and ``plots``, the templates in .dvc/plots/, evaluate's layout of evaluation.json)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from src import gate as quality_gate
from src.benchmarking import compare
from src.config import GateParams, validate_params
from src.errors import PipelineError
from src.evaluation import SCORING_SFT_KEYS, validation_loss
from src.files import write_json
from src.stages import evaluate
from tests.conftest import make_clone, repo_params, run_cli

PATHS = repo_params()["paths"]
# evaluation.json's first keys: the first columns of `dvc exp show`, in this order
HEADLINE = ["val_loss", "identity_accuracy", "identity_leak_rate", "retention", "eos_rate", "train_tokens_per_s",
            "train_minutes"]
# what dvc.yaml makes DVC's metrics, in this order (`dvc metrics show`, `dvc exp show`, `dvc exp diff`)
METRICS = [PATHS["evaluation"], PATHS["cloud_cost"], PATHS["benchmark"], f"{PATHS['train_live']}/metrics.json",
           f"{PATHS['align_live']}/metrics.json", PATHS["quality_gate"], PATHS["merge_metrics"]]
PLOTS = ["loss", "base_vs_finetuned", "benchmark", "token_accuracy", "throughput", "learning_rate", "grad_norm"]
# the narrow table the README gives for a terminal without a pager: params (all dotted) and
# deps (all paths) left out, and the metrics nested in a file with them
NARROW = ["--drop", ".*[./]"]


def model_metrics(seed: float) -> dict:
    """One model's metrics as evaluate's score() returns them, every value distinct."""
    keys = ["val_loss", "val_perplexity", "identity_accuracy", "identity_accuracy_templates",
            "identity_accuracy_unseen", "identity_name_rate", "identity_leak_rate", "probe_accuracy", "eos_rate",
            "probe_eos_rate"]
    return {key: round(seed + i / 100, 4) for i, key in enumerate(keys)}


BASE, TUNED = model_metrics(0.1), model_metrics(0.5)
TRAIN = {"train": {"loss": 0.5, "tokens_per_second": 40.0}, "step": 8, "eval": {"loss": 0.6},
         "train_loss": 0.8, "eval_loss": 0.6, "steps": 8, "tokens_trained": 2000, "train_seconds": 150.0,
         "eval_seconds": 5.0, "eval_time_share": 0.03, "tokens_per_second": 13.33}


def evaluation() -> dict:
    return evaluate.results(BASE, TUNED, 0.875, TRAIN, "train.json", probes_base_knows=8, probes=10,
                            identity_questions=40, validation_records=25, eval_prompts_in_train=0)


def benchmark() -> dict:
    """benchmark.json for two tasks, as the benchmark stage writes it (sample scores)."""
    def scores(values):
        return {task: {"metric": "acc", "value": v, "stderr": 0.01, "n": 300, "num_fewshot": 0, "limit": None}
                for task, v in zip(("general_knowledge", "arc_easy"), values)}

    return compare(scores((1.0, 0.6)), scores((0.97, 0.62)))


def write_tsv(path: Path, field: str, steps: list[int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{step}\t{1 / step:.4f}\n" for step in steps)
    path.write_text(f"step\t{field}\n{rows}")


def write_run(repo: Path) -> None:
    """What a run leaves for DVC to show: every stage's metrics and row accounting, dvclive's
    series, the evaluation and the gate's checks (sample values)."""
    write_json(repo / PATHS["evaluation"], evaluation())
    write_json(repo / PATHS["benchmark"], benchmark())
    gate = GateParams.model_validate(repo_params()["quality_gate"])
    write_json(repo / PATHS["quality_gate"], {"passed": True, "checks": quality_gate.check(
        quality_gate.gate_metrics(evaluation(), benchmark()), gate)})
    live = repo / PATHS["train_live"]
    write_json(live / "metrics.json", TRAIN)
    for field in ("loss", "mean_token_accuracy", "tokens_per_second", "learning_rate", "grad_norm"):
        write_tsv(live / "plots/metrics/train" / f"{field}.tsv", field, [2, 4, 6, 8])
    for field in ("loss", "mean_token_accuracy"):
        write_tsv(live / "plots/metrics/eval" / f"{field}.tsv", field, [4, 8])
    accounting = {"rows_in": 12, "rows_in_file": 12, "rows_out": 10, "dropped": {"too_long": 1, "empty_reply": 1}}
    for name in ("generate_identity_data", "generate_replay_data"):
        write_json(repo / PATHS["metrics_dir"] / f"{name}.json", accounting)
    for name in ("process_data", "data_split"):  # per source
        write_json(repo / PATHS["metrics_dir"] / f"{name}.json", {"orca": accounting})
    write_json(repo / PATHS["report"], {"train": {"rows": {"total": 9}}, "contamination": {"ngram": 8},
                                        "dropped": {"process_data_orca": {"too_long": 1}}})
    write_json(repo / PATHS["merge_metrics"], {"rows_in": 10, "rows_out": 9, "train": 8, "val": 1,
                                               "dropped": {"near_duplicate": 1}})


@pytest.fixture(scope="module")
def run_clone(tmp_path_factory) -> Path:
    repo = make_clone(tmp_path_factory.mktemp("reporting") / "repo")
    write_run(repo)
    return repo


def dvc(repo: Path, *args: str, columns: int = 200) -> str:
    return run_cli(["dvc", *args], repo, check=True, env={"COLUMNS": str(columns)}).stdout


def exp_table(repo: Path, *args: str) -> tuple[list[str], dict[str, str]]:
    """``dvc exp show --csv``'s header and the workspace row."""
    rows = list(csv.reader(io.StringIO(dvc(repo, "exp", "show", "--csv", *args))))
    workspace = next(row for row in rows[1:] if row[0] == "workspace" or row[1] == "workspace")
    return rows[0], dict(zip(rows[0], workspace))


# evaluate's layout of evaluation.json

def test_evaluation_opens_with_the_headline_from_both_stages():
    metrics = evaluation()
    assert list(metrics)[:len(HEADLINE)] == HEADLINE
    assert [metrics[key] for key in HEADLINE] == [TUNED["val_loss"], TUNED["identity_accuracy"],
                                                  TUNED["identity_leak_rate"], 0.875, TUNED["eos_rate"], 13.33, 2.5]
    assert metrics["base"] == BASE and metrics["finetuned"] == TUNED  # quality_gate reads finetuned.*
    assert metrics["val_loss_delta"] == round(TUNED["val_loss"] - BASE["val_loss"], 4)
    assert metrics["probes"] == 10 and metrics["eval_prompts_in_train"] == 0


def test_headline_fails_naming_the_train_metrics_it_lacks():
    with pytest.raises(PipelineError, match=r"train\.json: no train_seconds \(rerun the train stage\)"):
        evaluate.results(BASE, TUNED, 1.0, {"tokens_per_second": 1.0}, "train.json")


def test_chart_rows_hold_both_models_for_every_charted_metric():
    rows = evaluation()["base_vs_finetuned"]
    assert [(r["metric"], r["model"]) for r in rows] == [
        (label, model) for label, _ in evaluate.CHARTED for model in ("base", "fine-tuned")]
    by_model = {model: {r["metric"]: r["value"] for r in rows if r["model"] == model}
                for model in ("base", "fine-tuned")}
    for label, key in evaluate.CHARTED:
        assert (by_model["base"][label], by_model["fine-tuned"][label]) == (BASE[key], TUNED[key])


def test_validation_loss_scores_with_the_length_and_batch_training_used(monkeypatch):
    """Only the train.sft keys that are set reach SFTConfig: an unset one is TRL's default, as in
    training, not a number of evaluate's own."""
    import trl

    seen = []

    class Stop(Exception):
        pass

    def config(**kwargs):
        seen.append(kwargs)
        raise Stop

    monkeypatch.setattr(trl, "SFTConfig", config)
    cfg = validate_params(repo_params())
    for sft, expected in (({"max_length": 77, "per_device_eval_batch_size": 3, "learning_rate": 1.0},
                           {"max_length": 77, "per_device_eval_batch_size": 3}),
                          ({"learning_rate": 1.0}, {})):
        train = cfg.train.model_copy(update={"sft": sft})
        with pytest.raises(Stop):
            validation_loss(None, None, [], cfg.model_copy(update={"train": train}))
        assert {k: v for k, v in seen[-1].items() if k in SCORING_SFT_KEYS} == expected
        assert "learning_rate" not in seen[-1]


# dvc exp show, dvc metrics show

def test_metrics_are_the_results_in_order_and_the_accounting_stays_reachable(run_clone):
    shown = json.loads(dvc(run_clone, "metrics", "show", "--json"))[""]["data"]
    assert list(shown) == METRICS
    accounting = json.loads(dvc(run_clone, "metrics", "show", "--json", PATHS["metrics_dir"], PATHS["report"]))
    files = accounting[""]["data"]
    assert f"{PATHS['metrics_dir']}/process_data.json" in files and PATHS["report"] in files
    assert files[PATHS["report"]]["data"]["dropped"]["process_data_orca"]["too_long"] == 1


@pytest.mark.slow
def test_exp_show_opens_with_the_headline_and_leaves_the_accounting_out(run_clone):
    header, workspace = exp_table(run_clone)
    first = len([c for c in header if c in ("Experiment", "rev", "typ", "Created", "parent", "State", "Executor")])
    assert header[first:first + len(HEADLINE)] == HEADLINE  # no <file>: prefix either: each name is one file's
    assert [float(workspace[key]) for key in HEADLINE] == [evaluation()[key] for key in HEADLINE]
    assert "finetuned.identity_accuracy" in header and "passed" in header and "eval_time_share" in header
    # the data stages' accounting and the report give no column (they are deps of later stages:
    # a column of hashes each, as every dep)
    (workspace_exp,) = [e for e in json.loads(dvc(run_clone, "exp", "show", "--json")) if e["rev"] == "workspace"]
    assert list(workspace_exp["data"]["metrics"]) == METRICS
    assert not {"rows_in_file", "contamination.ngram", "dropped.too_long"} & set(header)


def test_narrow_table_shows_the_headline_whole_in_200_columns(run_clone):
    table = dvc(run_clone, "exp", "show", "--no-pager", *NARROW)
    header = next(line for line in table.splitlines() if "Experiment" in line)
    assert len(header.rstrip()) <= 200
    words = header.split()
    assert words[words.index("Created") + 1:][:len(HEADLINE)] == HEADLINE, header


# dvc plots show

def test_plots_are_worded_and_put_train_and_eval_loss_on_one_chart(run_clone):
    plots = json.loads(dvc(run_clone, "plots", "show", "--json"))["data"]
    assert list(plots) == PLOTS  # the top-level plots only: no chart per dvclive file
    for plot_id, (plot,) in plots.items():
        title = plot["content"]["title"]
        assert title and "/" not in title and ".tsv" not in title and ".json" not in title, (plot_id, title)
    loss = plots["loss"][0]["content"]["data"]["values"]
    assert {(v["filename"], int(v["step"])) for v in loss} == {("train/loss.tsv", s) for s in (2, 4, 6, 8)} | {
        ("eval/loss.tsv", s) for s in (4, 8)}
    assert plots["loss"][0]["content"]["encoding"]["color"]["field"] == "line"  # the template's, not DVC's default


def test_base_vs_finetuned_chart_reads_the_evaluation_rows(run_clone):
    (plot,) = json.loads(dvc(run_clone, "plots", "show", "--json", "base_vs_finetuned"))["data"]["base_vs_finetuned"]
    values = plot["content"]["data"]["values"]
    assert [(v["metric"], v["model"], v["value"]) for v in values] == [
        (r["metric"], r["model"], r["value"]) for r in evaluation()["base_vs_finetuned"]]
    assert plot["content"]["facet"]["row"]["field"] == "metric"


def test_benchmark_chart_reads_both_models_scores_per_task(run_clone):
    (plot,) = json.loads(dvc(run_clone, "plots", "show", "--json", "benchmark"))["data"]["benchmark"]
    values = [(v["metric"], v["model"], v["value"]) for v in plot["content"]["data"]["values"]]
    assert values == [("general_knowledge (acc)", "base", 1.0), ("general_knowledge (acc)", "fine-tuned", 0.97),
                      ("arc_easy (acc)", "base", 0.6), ("arc_easy (acc)", "fine-tuned", 0.62)]


def test_benchmark_metrics_give_the_change_in_points_and_its_stderr():
    result = benchmark()
    assert result["tasks"]["general_knowledge"]["delta_points"] == pytest.approx(-3.0)
    assert result["tasks"]["arc_easy"]["delta_points"] == pytest.approx(2.0)
    assert result["tasks"]["arc_easy"]["delta_stderr_points"] == pytest.approx(100 * (2 * 0.01 ** 2) ** 0.5, abs=1e-3)
    assert result["mean_delta_points"] == pytest.approx(-0.5) and result["worst_delta_points"] == pytest.approx(-3.0)

