"""SIGKILL under ``dvc repro`` and ``dvc exp run``, then recovery, on the whole DAG with a
tiny random Llama.

One clone runs the pipeline once, uninterrupted: the reference. Another is killed again and
again: every stage at the moment it would put its output in place, and training at seeded
random steps (one kill during a checkpoint write). Each rerun picks up where the last stopped;
the one that finishes training and the last are ``dvc exp run``. The final adapter must equal
the reference's within 1e-6, every other output must match, and no fake credential from the
environment may reach any file either clone holds or any line either printed. A copy of the
reference then runs ``dvc exp run`` twice: unchanged (nothing runs) and with a training change
(the model stages run, no others).

Both chains start with the test session (conftest.py: ``head_start``) and go on beside the other
tests; the slow tests that check them run last.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import secrets
import shutil
import sys
from pathlib import Path

import pytest

from src.config import output_paths
from tests.conftest import (
    MODEL_STAGES,
    ROOT,
    STAGE_SECRETS,
    InThreads,
    files_holding,
    head_start,
    make_clone,
    ran_stages,
    run_cli,
    stage_outputs,
)
from tests.modelkit import TINY_DAG_DPO, TINY_DAG_SFT, configure_tiny_dag

FAULTKIT = ROOT / "tests" / "faultkit"
SAVE_STEPS, MAX_STEPS = TINY_DAG_SFT["save_steps"], TINY_DAG_SFT["max_steps"]
ALIGN_KILL = TINY_DAG_DPO["save_steps"] + 1  # a step after align's first checkpoint
# Fake credentials, made afresh each run so that no file (this one included) holds them beforehand.
SECRETS = {name: f"{prefix}{secrets.token_hex(12)}" for name, prefix in (
    ("HF_TOKEN", "hf_"), ("WANDB_API_KEY", ""), ("DVC_STUDIO_TOKEN", "isat_"), ("AWS_ACCESS_KEY_ID", "AKIA"),
    ("AWS_SECRET_ACCESS_KEY", ""), ("AWS_SESSION_TOKEN", ""), ("GITHUB_TOKEN", "ghp_"), ("GIT_PASSWORD", ""))}
PATHS = output_paths(ROOT)  # dvc.yaml's vars: where each stage writes
# stage (as dvc names it) -> the outputs it declares in dvc.yaml, but the live metrics and plots
# that training writes as it goes (dvclive, under paths.train_live and paths.align_live), by design
OUTS = {stage: [path for path in outs if not any(path == PATHS[live] or path.startswith(f"{PATHS[live]}/")
                                                 for live in ("train_live", "align_live"))]
        for stage, outs in stage_outputs(ROOT).items()}
COMPARED = [PATHS["train"], PATHS["val"], PATHS["report"], PATHS["sanity_results"],
            f"{PATHS['export']}/model-q8_0.gguf", f"{PATHS['export']}/Modelfile"]


def dvc(repo: Path, *args: str, fault: tuple[str, str] | None = None, log: list | None = None,
        record: Path | None = None):
    """dvc with the fake credentials in its environment; ``fault``: a kill (see faultkit);
    ``record``: a folder where each stage process writes the names in its environment."""
    env = {**SECRETS}
    if fault or record:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(FAULTKIT), os.environ.get("PYTHONPATH")]))
    if fault:
        env |= {"FAULT_STAGE": f"src.stages.{fault[0]}", "FAULT_KILL": fault[1]}
    if record:
        env["ENV_RECORD_DIR"] = str(record)
    proc = run_cli(["dvc", *args], repo, env=env)
    if log is not None:
        log.append(proc.stdout + proc.stderr)
    return proc


def killed(proc, stage_module: str) -> str:
    """Assert that dvc stopped because the stage's process was killed; return the dvc stage name."""
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and f"faultkit: SIGKILL src.stages.{stage_module}" in text, text[-3000:]
    return re.search(r"failed to reproduce '([\w@]+)'", text).group(1)


def stale(repo: Path) -> set[str]:
    return set(json.loads(run_cli(["dvc", "status", "--json"], repo, check=True).stdout))


def checkpoint_steps(repo: Path) -> list[int]:
    return sorted(int(p.name.removeprefix("checkpoint-"))
                  for p in (repo / PATHS["checkpoints"]).glob("*/checkpoint-*"))


def scan_for_secrets(root: Path) -> list[str]:
    return files_holding(root, SECRETS.values())


def reference_chain(tmp: Path, model: Path) -> tuple[Path, list, Path, dict]:
    """The uninterrupted run; then, in a copy, a second ``dvc exp run`` (which must run nothing) and
    one with a training change (which must run the model stages only). Returns the repo, what dvc
    printed, the stages' environment records and the copy's two runs."""
    repo = configure_tiny_dag(make_clone(tmp / "repo"), model, align=True)
    log, record = [], tmp / "environments"
    record.mkdir()
    proc = dvc(repo, "repro", log=log, record=record)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = shutil.copytree(repo, tmp / "again", symlinks=True)
    reruns = {"same": run_cli(["dvc", "exp", "run"], again, check=True)}
    # a seed sweep through DVC's queue, as the README gives it: seed 0 is the run above (only the
    # gate reruns), seed 1 a training change (the model stages run, no others); a gate the tiny
    # model cannot pass, deferred: each failure is recorded and the runs go on
    run_cli(["dvc", "exp", "run", "--queue", "-S", "train.seed=range(0,2)",
             "-S", "quality_gate.min_identity_accuracy=1.0"], again, check=True)
    reruns["changed"] = run_cli(["dvc", "exp", "run", "--run-all"], again, check=True, env={"QUALITY_GATE": "defer"})
    reruns["sweep"] = run_cli([sys.executable, "-m", "src.sweep", "--gate"], again)
    reruns["shown"] = json.loads(run_cli(["dvc", "exp", "show", "--json"], again, check=True).stdout)
    return repo, log, record, reruns | {"again": again}


def faulted_chain(tmp: Path, model: Path) -> tuple[Path, list, dict, tuple[int, int, int]]:
    """Kill every stage once and training three times; returns the repo and what was seen."""
    repo = configure_tiny_dag(make_clone(tmp / "repo"), model, align=True)
    log, seen = [], {"stale": {}, "present": {}, "checkpoints": [], "secrets_mid_run": []}

    def kill(module: str, how: str = "replace", command: tuple[str, ...] = ("repro",)) -> str:
        stage = killed(dvc(repo, *command, fault=(module, how), log=log), module)
        seen["stale"][stage] = stage in stale(repo)
        seen["present"][stage] = [out for out in OUTS[stage] if (repo / out).exists()]
        return stage

    for module in ("generate_identity_data", "process_data", "data_split",
                   "fetch_base_model", "generate_replay_data"):
        kill(module)
    kill("preference_data", command=("repro", "preference_data"))  # alone: a plain repro may train first
    kill("merge_data")
    # training: a kill at a random step, one while a checkpoint is written, one more at a random step
    first = random.Random(0).randint(1, 2 * SAVE_STEPS - 1)
    during_save = random.Random(1).choice([s for s in range(2 * SAVE_STEPS, MAX_STEPS, SAVE_STEPS)])
    last = random.Random(2).randint(during_save + 1, MAX_STEPS - 1)
    for how in (f"step:{first}", f"save:{during_save}", f"step:{last}"):
        kill("train", how)
        seen["checkpoints"].append((how, checkpoint_steps(repo),
                                    any((repo / PATHS["checkpoints"]).glob("*/.staging/checkpoint-*"))))
    seen["secrets_mid_run"] = scan_for_secrets(repo)  # checkpoints on disk now
    # preference training after SFT, killed halfway: the next run resumes it from its checkpoint
    kill("align", f"step:{ALIGN_KILL}")
    seen["align_checkpoints"] = checkpoint_steps(repo)
    # a dvc exp run resumes and finishes training, then each later stage is killed once
    kill("merge_model", command=("exp", "run"))
    for module in ("sanity_check", "evaluate"):
        kill(module)
    final = dvc(repo, "exp", "run", log=log)
    assert final.returncode == 0, final.stderr[-3000:]
    return repo, log, seen, (first, during_save, last)


@head_start("fault_runs")
def start_fault_runs(request, tmp_path_factory) -> InThreads:
    """Both chains, started as the session starts (conftest: head_started), each in a thread of
    its own beside the other tests (each stage process keeps to one thread: conftest)."""
    model = request.getfixturevalue("tiny_model")
    reference, faulted = tmp_path_factory.mktemp("reference"), tmp_path_factory.mktemp("faulted")
    return InThreads(reference=lambda: reference_chain(reference, model), faulted=lambda: faulted_chain(faulted, model))


@pytest.fixture(scope="module")
def reference(fault_runs):
    return fault_runs.result("reference")


@pytest.fixture(scope="module")
def faulted(fault_runs):
    return fault_runs.result("faulted")


@pytest.mark.slow
def test_a_killed_stage_leaves_no_output_dvc_would_take_as_complete(faulted):
    _, _, seen, _ = faulted
    assert set(seen["stale"]) >= {"generate_identity_data", "process_data", "data_split", "fetch_base_model",
                                  "generate_replay_data", "merge_data", "preference_data", "train", "align",
                                  "merge_model", "sanity_check", "evaluate"}
    assert all(seen["stale"].values()), seen["stale"]  # dvc status reports every killed stage
    assert not any(seen["present"].values()), seen["present"]  # and none left its output in place


@pytest.mark.slow
def test_training_resumes_after_each_kill(faulted):
    repo, log, seen, (first, during_save, last) = faulted
    (how1, after1, _), (how2, after2, staging2), (how3, after3, _) = seen["checkpoints"]
    assert after1 == [s for s in (SAVE_STEPS, 2 * SAVE_STEPS) if s <= first][-2:]
    # killed while writing the checkpoint of step `during_save`: that one is not complete
    assert staging2 and during_save not in after2 and max(after2) == during_save - SAVE_STEPS
    assert max(after3) == last // SAVE_STEPS * SAVE_STEPS and len(after3) <= 2
    text = "\n".join(log)
    assert "a checkpoint whose writing was interrupted" in text
    for step in (max(after1, default=0), max(after2), max(after3)):
        if step:
            assert f"checkpoint-{step} (step {step})" in text
    live = repo / PATHS["train_live"]
    metrics = json.loads((live / "metrics.json").read_text())
    assert metrics["steps"] == MAX_STEPS and metrics["resumed_from_step"] == max(after3)
    with (live / "plots/metrics/train/loss.tsv").open() as f:
        assert [int(r["step"]) for r in csv.DictReader(f, delimiter="\t")] == list(range(1, MAX_STEPS + 1))
    assert not checkpoint_steps(repo)  # spent once the adapter was saved


@pytest.mark.slow
def test_preference_training_resumes_after_a_kill(faulted):
    repo, _, seen, _ = faulted
    saved = TINY_DAG_DPO["save_steps"]
    assert seen["align_checkpoints"] == [saved]  # the kill came a step after the first checkpoint
    metrics = json.loads((repo / PATHS["align_live"] / "metrics.json").read_text())
    assert metrics["method"] == "dpo" and metrics["steps"] == TINY_DAG_DPO["max_steps"]
    assert metrics["resumed_from_step"] == saved


@pytest.mark.slow
def test_final_outputs_equal_an_uninterrupted_run(faulted, reference):
    from safetensors.torch import load_file

    repo, _, _, _ = faulted
    ref, _, _, _ = reference
    for rel in (f"{PATHS['adapter']}/adapter_model.safetensors", f"{PATHS['merged_model']}/model.safetensors"):
        mine, theirs = load_file(repo / rel), load_file(ref / rel)
        assert mine.keys() == theirs.keys()
        for name, tensor in theirs.items():
            assert (mine[name].float() - tensor.float()).abs().max().item() <= 1e-6, (rel, name)
    for rel in COMPARED:
        assert (repo / rel).read_bytes() == (ref / rel).read_bytes(), rel
    mine = json.loads((repo / PATHS["evaluation"]).read_text())
    theirs = json.loads((ref / PATHS["evaluation"]).read_text())
    # every value but training's speed and time, which the train stage measures by the clock
    clock = {"train_tokens_per_s", "train_minutes"}
    assert clock <= mine.keys() and clock <= theirs.keys()
    assert {k: v for k, v in mine.items() if k not in clock} == {k: v for k, v in theirs.items() if k not in clock}
    assert not stale(repo)  # dvc status: everything up to date


@pytest.mark.slow
def test_no_credential_from_the_environment_is_written_or_printed(faulted, reference):
    repo, log, seen, _ = faulted
    ref, ref_log, _, _ = reference
    assert seen["secrets_mid_run"] == []
    assert scan_for_secrets(repo) == [] and scan_for_secrets(ref) == []
    printed = "\n".join(log + ref_log)
    assert not [v for v in SECRETS.values() if v in printed]


@pytest.mark.slow
def test_each_stage_sees_only_the_credentials_it_uses(reference):
    """Every fake credential is in dvc's environment; each stage process's own environment (read
    from /proc/self/environ as it exits) holds only those of STAGE_SECRETS."""
    _, _, record, _ = reference
    seen: dict[str, set[str]] = {}
    for path in record.glob("*.json"):
        entry = json.loads(path.read_text())
        seen.setdefault(path.stem.rsplit("-", 1)[0], set()).update(set(entry["names"]) & SECRETS.keys())
    assert set(seen) == {s.split("@")[0] for s in OUTS}  # every stage of dvc.yaml ran and was recorded
    assert seen == {stage: STAGE_SECRETS.get(stage, set()) for stage in seen}
    assert "PATH" in json.loads(next(record.glob("train-*.json")).read_text())["names"]  # the record can fail


def test_the_scan_finds_a_planted_credential(tmp_path):
    (tmp_path / "deep/er").mkdir(parents=True)
    (tmp_path / "deep/er/log.bin").write_bytes(b"\x00token=" + SECRETS["HF_TOKEN"].encode() + b"\x00")
    assert scan_for_secrets(tmp_path) == [f"{tmp_path / 'deep/er/log.bin'}: {SECRETS['HF_TOKEN']}"]


def test_the_scan_finds_a_credential_inside_git_objects(tmp_path):
    """Committed, then removed from the work tree: found compressed in a loose object, then packed."""
    run_cli(["git", "init", "-q"], tmp_path, check=True)
    (tmp_path / "notes.txt").write_text(f"token: {SECRETS['GIT_PASSWORD']}\n")
    run_cli(["git", "add", "notes.txt"], tmp_path, check=True)
    run_cli(["git", "commit", "-qm", "notes"], tmp_path, check=True)
    (tmp_path / "notes.txt").unlink()
    loose = scan_for_secrets(tmp_path)
    assert len(loose) == 1 and "/.git/objects/" in loose[0]
    run_cli(["git", "gc", "-q"], tmp_path, check=True)
    packed = scan_for_secrets(tmp_path)
    assert len(packed) == 1 and packed[0].split(":")[0].endswith(".pack")


@pytest.mark.slow
def test_a_second_run_is_a_no_op_and_a_training_change_reruns_only_the_model_stages(reference):
    *_, reruns = reference
    assert ran_stages(reruns["same"].stdout) == set(), reruns["same"].stdout
    changed = reruns["changed"]  # the two seeds of the sweep, run by the queue
    assert ran_stages(changed.stdout) == MODEL_STAGES, changed.stdout
    assert changed.stdout.count("quality gate failed") == 2  # deferred: recorded, the runs went on


def swept(shown: list[dict]) -> list[tuple[dict, dict]]:
    """The experiments ``dvc exp show --json`` lists: their params and evaluation metrics."""
    return [(exp["revs"][0]["data"]["params"]["params.yaml"]["data"],
             exp["revs"][0]["data"]["metrics"][PATHS["evaluation"]]["data"])
            for baseline in shown for exp in baseline.get("experiments") or []]


@pytest.mark.slow
def test_a_seed_sweep_through_the_queue_reports_its_spread_and_the_seeds_failing_the_gate(reference):
    repo, *_, reruns = reference
    found = swept(reruns["shown"])  # the two seeds, and the unchanged rerun (an experiment too)
    runs = {params["train"]["seed"]: metrics for params, metrics in found
            if params["quality_gate"]["min_identity_accuracy"] == 1.0}
    assert sorted(runs) == [0, 1] and len(found) == 3
    # seed 0 is the committed run again: the same model, the same figures (DVC's metrics skip the chart's list)
    committed = json.loads((repo / PATHS["evaluation"]).read_text())
    assert runs[0] == {k: v for k, v in committed.items() if not isinstance(v, list)}
    proc = reruns["sweep"]
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: the quality gate fails on 2 of the 3 experiments: sweep 1 seed 0 ("), proc.stderr[-3000:]
    sweep, rerun = json.loads((reruns["again"] / "sanity_check_result/sweep/sweep.json").read_text())["sweeps"]
    # the sweep, then the rerun apart: its params differ in the gate's threshold alone
    assert rerun["seeds"] == ["0"] and rerun["params_apart"] == {"quality_gate.min_identity_accuracy": 0.0}
    assert not rerun["failing_seeds"]
    assert sweep["seeds"] == ["0", "1"] and set(sweep["failing_seeds"]) == {"0", "1"}
    for metric in ("retention", "identity_leak_rate", "val_loss"):
        values = [runs[0][metric], runs[1][metric]]
        assert sweep["spread"][metric]["mean"] == pytest.approx(sum(values) / 2, abs=1e-4)
        assert sweep["spread"][metric]["std"] == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5, abs=1e-4)
    assert not sweep["worst_seed_gate"]["finetuned.identity_accuracy"]["passed"]
    page = (reruns["again"] / "sanity_check_result/sweep/plots/index.html").read_text()
    assert "Headline metrics over the seeds" in page and '"seed": "1"' in page


@pytest.mark.slow
def test_dvc_metrics_show_reports_zero_train_val_prompt_overlap(faulted):
    """The dataset report is no DVC metric of the table (dvc.yaml's metrics), so it is asked for
    by name, as dvc.yaml says."""
    repo, _, _, _ = faulted
    shown = json.loads(run_cli(["dvc", "metrics", "show", "--json", PATHS["report"]], repo, check=True).stdout)
    (workspace,) = shown.values()  # dvc names the workspace ""
    report = workspace["data"][PATHS["report"]]["data"]
    assert report["train_val_prompt_overlap"] == 0
