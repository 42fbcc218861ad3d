"""Releases (src/registry.py): the merged model registered with GTO on experiments' commits,
stages assigned with GTO's own command, and publish and serve taking "the model in stage prod",
on a local git repository: two experiments, each with its own merged model recorded (as in
test_publish.py, ``dvc commit`` of stand-in outputs), the workspace left at the second."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from src.lineage import LINEAGE_FILE
from src.registry import ARTIFACT
from tests.conftest import make_clone, repo_params, run_cli
from tests.modelkit import chatml_tokenizer, tiny_model_folder
from tests.test_cloud import SERVE_YAML, load_task, run_job, stand_ins
from tests.test_publish import StatefulHub, one_line_error, publish, record_run

PATHS = repo_params()["paths"]


def experiment(clone: Path, name: str, seed: int, gate_passed: bool) -> Path:
    """The experiment ``name``: a merged model of its own (and a card saying whose), its quality
    gate's verdict, recorded and saved with ``dvc exp save``."""
    folder = tiny_model_folder(clone / PATHS["merged_model"], chatml_tokenizer(), seed=seed)
    (folder / "README.md").write_text(f"# Fine-tuned smollm2-135m-instruct, experiment {name}\n")
    (folder / LINEAGE_FILE).write_text(json.dumps({"format": 1, "data": {"data/final/train.jsonl": name * 4}}))
    record_run(clone, "merge_model")
    gate = clone / PATHS["quality_gate"]
    gate.parent.mkdir(parents=True, exist_ok=True)
    checks = {"retention": {"value": 0.97 if gate_passed else 0.9, "threshold": 0.95, "passed": gate_passed}}
    gate.write_text(json.dumps({"passed": gate_passed, "checks": checks}))
    run_cli(["git", "add", "-f", PATHS["quality_gate"]], clone, check=True)  # as dvc exp run commits metrics
    run_cli(["dvc", "exp", "save", "-n", name, "merge_model"], clone, check=True)
    return folder


def exp_commit(clone: Path, name: str) -> str:
    return run_cli(["git", "for-each-ref", "--format=%(objectname)", f"refs/exps/*/*/{name}"], clone).stdout.strip()


def registry(clone: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli([sys.executable, "-m", "src.registry", *args], clone)


@pytest.fixture(scope="module")
def releases(tmp_path_factory) -> dict:
    """``first`` (gate passed) registered as v0.0.1 and assigned prod; ``second`` (below the gate)
    registered only with --force, as v0.0.2, and assigned dev. Every step's output kept."""
    tmp = tmp_path_factory.mktemp("registry")
    home = tmp / "home"
    home.mkdir()
    clone = make_clone(tmp / "laptop")
    weights = {}
    for name, seed, passed in (("first", 0, True), ("second", 1, False)):
        folder = experiment(clone, name, seed, passed)
        weights[name] = (folder / "model.safetensors").read_bytes()
    steps = {"register first": registry(clone, "register", "first"),
             "register second": registry(clone, "register", "second"),
             "register second --force": registry(clone, "register", "second", "--force"),
             "assign prod": run_cli(["gto", "assign", ARTIFACT, "--version", "v0.0.1", "--stage", "prod"], clone),
             "assign dev": run_cli(["gto", "assign", ARTIFACT, "--version", "v0.0.2", "--stage", "dev"], clone),
             "which prod": registry(clone, "which", "prod"), "show": registry(clone, "show")}
    return {"clone": clone, "home": home, "tmp": tmp, "steps": steps, "weights": weights,
            "commits": {name: exp_commit(clone, name) for name in ("first", "second")}}


def test_versions_go_on_experiments_commits_and_stages_on_versions(releases):
    steps, commits, clone = releases["steps"], releases["commits"], releases["clone"]
    assert steps["register first"].stdout.strip() == f"{ARTIFACT} v0.0.1 on {commits['first'][:7]} (experiment first)"
    assert one_line_error(steps["register second"]) == (
        f"error: {commits['second'][:7]}: below the quality gate (retention); --force registers it anyway")
    assert steps["register second --force"].stdout.strip().startswith(f"{ARTIFACT} v0.0.2 on {commits['second'][:7]}")
    assert steps["assign prod"].returncode == 0, steps["assign prod"].stderr  # GTO's own command line
    tags = run_cli(["git", "tag", "--list", f"{ARTIFACT}*"], clone).stdout.split()
    assert sorted(tags) == sorted([f"{ARTIFACT}@v0.0.1", f"{ARTIFACT}@v0.0.2", f"{ARTIFACT}#prod#1",
                                   f"{ARTIFACT}#dev#2"])
    for tag, name in ((f"{ARTIFACT}@v0.0.1", "first"), (f"{ARTIFACT}#dev#2", "second")):
        assert run_cli(["git", "rev-list", "-n", "1", tag], clone).stdout.strip() == commits[name]
    assert steps["which prod"].stdout.split() == ["v0.0.1", commits["first"]]
    shown = steps["show"].stdout.splitlines()
    assert shown[0].split()[:2] == ["v0.0.2", commits["second"][:7]] and shown[0].endswith("dev")
    assert shown[1].split()[:2] == ["v0.0.1", commits["first"][:7]] and shown[1].endswith("prod")
    assert one_line_error(registry(clone, "which", "staging")) == (
        f"error: no version of {ARTIFACT} is in stage staging (gto show; gto assign {ARTIFACT} --version vX.Y.Z "
        "--stage staging)")
    assert one_line_error(registry(clone, "register", "no-such-experiment")) == (
        "error: no-such-experiment: neither an experiment (dvc exp show) nor a git revision")
    head = run_cli(["git", "rev-parse", "HEAD"], clone).stdout.strip()  # the baseline: no merged model recorded
    assert one_line_error(registry(clone, "register", head)) == (
        f"error: {head[:7]}: its dvc.lock records no models/merged (merge_model never ran there): register an "
        "experiment's commit")


def test_publish_takes_the_version_in_a_stage_not_the_workspace(releases):
    """The workspace holds the second experiment's model; --stage prod uploads the first's, as
    its commit records it, and says which version, stage and commit it is."""
    clone, commits = releases["clone"], releases["commits"]
    hub = StatefulHub()
    try:
        proc = publish(clone, hub, "--repo-id", "northwind/juniper-135m", "--stage", "prod")
        assert proc.returncode == 0, proc.stderr[-3000:]
        ((_, _, summary, files),) = hub.commits
        (description,) = hub.descriptions
    finally:
        hub.close()
    assert files["model.safetensors"] == releases["weights"]["first"] != releases["weights"]["second"]
    assert files["README.md"].decode().startswith("# Fine-tuned smollm2-135m-instruct, experiment first")
    assert summary == "Juniper: Fine-tuned smollm2-135m-instruct, experiment first"
    lock = yaml.safe_load(run_cli(["git", "show", f"{commits['first']}:dvc.lock"], clone).stdout)
    manifest = json.loads(files.pop("publish.json"))
    assert manifest["outputs"] == {"models/merged": lock["stages"]["merge_model"]["outs"][0]["md5"]}
    assert description.splitlines()[0] == f"Release: {ARTIFACT} v0.0.1 (stage prod), git commit {commits['first']}"
    assert "Quality gate: passed" in description


def test_a_replica_serves_the_version_in_its_stage_from_origin_and_the_dvc_remote(releases):
    """sky-serve.yaml's run with MODEL_STAGE=prod on a machine that has only a fresh clone of
    origin and the DVC remote: it fetches the registry's tags and the merged model of the version
    in prod, and vLLM (a stand-in that records what it was given) starts on it. Moving prod to
    another version on the laptop and pushing the tags moves the next replica."""
    clone, tmp, home = releases["clone"], releases["tmp"], releases["home"]
    env = {"HOME": str(home)}  # the committed DVC remote is ~/dvc-storage: here, the shared one
    origin = tmp / "origin.git"
    run_cli(["git", "init", "-q", "--bare", "-b", "main", str(origin)], tmp, check=True)
    run_cli(["git", "remote", "add", "origin", str(origin)], clone, check=True)
    run_cli(["git", "push", "-q", "origin", "main", "--tags"], clone, check=True)
    for name in ("first", "second"):
        run_cli(["dvc", "exp", "push", "origin", name], clone, check=True, env=env)

    def replica(name: str) -> dict:
        machine = tmp / name
        run_cli(["git", "clone", "-q", str(origin), str(machine)], tmp, check=True)
        venv = stand_ins(tmp / f"{name}-vllm", tmp / f"{name}-calls",
                         vllm=f'cp {PATHS["merged_model"]}/model.safetensors "{tmp}/{name}-served"')
        task = load_task(SERVE_YAML, secrets={"VLLM_API_KEY": "k3y"}, MODEL_STAGE="prod")
        job_env = {**task.envs, "VLLM_API_KEY": "k3y", "VENV": sys.prefix, "VLLM_VENV": str(venv), "HOME": str(home),
                   "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "DVC_NO_ANALYTICS": "1"}
        proc = run_job(task.run, job_env, machine, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        calls = (tmp / f"{name}-calls").read_text().splitlines()
        return {"served": (tmp / f"{name}-served").read_bytes(), "vllm": calls[0].split(" [")[0],
                "log": proc.stdout}

    one = replica("replica-1")
    assert one["served"] == releases["weights"]["first"]
    assert "data.data/final/train.jsonl: firstfirstfirstfirst" in one["log"].splitlines()  # its lineage, logged
    assert one["vllm"].startswith(f"vllm serve {PATHS['merged_model']} --served-model-name juniper")
    run_cli(["gto", "assign", ARTIFACT, "--version", "v0.0.2", "--stage", "prod"], clone, check=True)
    run_cli(["git", "push", "-q", "origin", "--tags"], clone, check=True)
    assert replica("replica-2")["served"] == releases["weights"]["second"]

    stageless = load_task(SERVE_YAML, secrets={"VLLM_API_KEY": "k3y"})
    proc = run_job(stageless.run, {**stageless.envs, "VLLM_API_KEY": "k3y", "HOME": str(home),
                                   "PATH": "/usr/local/bin:/usr/bin:/bin"}, tmp / "replica-1", timeout=60)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        "error: set EXP_NAME (an experiment) or MODEL_STAGE (a registry stage, e.g. prod) to the model to serve"]
