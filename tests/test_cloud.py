"""sky-training.yaml and sky-vscode.yaml: SkyPilot's own parser and schema, and the training
YAML's ``setup`` and ``run`` executed as SkyPilot would execute them on a cloud machine, offline.

A machine is simulated by a copy of a clone (SkyPilot copies the workdir, ``.git`` included) and
the environment SkyPilot gives: its task and node variables, the YAML's envs, the secrets, and a
HOME with no git config. ``PARAMS=""`` swaps the GPU profile for the clone's committed params:
a tiny random Llama, seconds per stage. Two round trips, each ending in a second clone that
pulls the experiment back and finds it byte-identical:

* S3: the DVC remote on ``moto_server``, the git origin over HTTP wanting GIT_TOKEN, and DVC
  Studio's API recording the live metrics.
* The committed local remote, with preemption: the first machine is killed in training, the
  second after training (in merge_model), the third finishes from the checkpoints in the
  "bucket"; its adapter equals the uninterrupted S3 run's.

Both jobs start with the test session (conftest.py: ``head_start``) and go on beside the other
tests; the slow tests that check them run last.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from src.config import output_paths
from tests.cloudkit import (
    ORCA_COMMIT,
    PLATYPUS_COMMIT,
    PLATYPUS_FILE,
    FakeHub,
    FakeStudio,
    GitHttpOrigin,
    MotoS3,
    hub_files,
)
from tests.conftest import OFFLINE, ROOT, InThreads, files_holding, head_start, make_clone, run_cli
from tests.modelkit import TINY_DAG_SFT, configure_tiny_dag

TRAINING_YAML, VSCODE_YAML = ROOT / "sky-training.yaml", ROOT / "sky-vscode.yaml"
SERVE_YAML = ROOT / "sky-serve.yaml"
FAULTKIT = ROOT / "tests" / "faultkit"
# A managed job's task id (SkyPilot keeps it across the job's recoveries).
TASK_ID = "sky-managed-2026-11-28-05-00-00-000000_finetune_3-0"
SECRETS = {name: f"{prefix}{secrets.token_hex(12)}" for name, prefix in (
    ("HF_TOKEN", "hf_"), ("GIT_TOKEN", "ghp_"), ("DVC_STUDIO_TOKEN", "isat_"),
    ("AWS_ACCESS_KEY_ID", "AKIA"), ("AWS_SECRET_ACCESS_KEY", ""))}
PATHS = output_paths(ROOT)  # dvc.yaml's vars: where each stage writes
# What an experiment brings home: its params and lock, metrics, plots, adapter, sanity results
# (the folder of the sanity check's, evaluation's and gate's files).
RESULTS = ("params.yaml", "dvc.lock", PATHS["train_live"], PATHS["adapter"], str(Path(PATHS["sanity_results"]).parent),
           PATHS["metrics_dir"], PATHS["report"])


def load_task(path: Path, **envs: str):
    """The task as `sky launch --env K=V path` parses it."""
    import sky

    return sky.Task.from_yaml_config(yaml.safe_load(path.read_text()), env_overrides=list(envs.items()))


def test_training_yaml_passes_skypilot_schema():
    import sky
    from sky.data.storage import StorageMode

    with pytest.raises(ValueError, match="'CHECKPOINT_BUCKET' is None"):  # required at launch
        sky.Task.from_yaml(str(TRAINING_YAML))
    task = load_task(TRAINING_YAML, CHECKPOINT_BUCKET="my-checkpoints")
    gpus = [r.accelerators for r in task.resources]
    assert len(gpus) >= 3 and all(list(g.values()) == [1] for g in gpus)  # any of several single GPUs
    assert all(r.use_spot and 100 <= r.disk_size <= 512 for r in task.resources)
    mount = task.storage_mounts[task.envs["CHECKPOINT_DIR"]]
    assert (mount.name, mount.mode) == ("my-checkpoints", StorageMode.MOUNT_CACHED)
    assert not task.file_mounts  # nothing copied from the laptop but the workdir: no keys, no gitconfig
    assert task.workdir == "."
    assert set(task.secrets) >= {"HF_TOKEN", "GIT_TOKEN", "DVC_STUDIO_TOKEN", "AWS_ACCESS_KEY_ID"}
    assert all(not v.get_secret_value() for v in task.secrets.values())  # none inline, given at launch
    assert "dvc exp run --pull" in task.run and "python -m src.cloud.push" in task.run
    # the 7B profile is the default; its validity against params: test_profile
    assert task.envs["PROFILE"] == "profiles/llama2-7b-qlora.yaml" and (ROOT / task.envs["PROFILE"]).is_file()
    assert task.envs["PARAMS"] == ""


def test_serve_yaml_passes_skypilot_schema():
    import sky

    with pytest.raises(ValueError, match="'EXP_NAME' is None"):  # required at launch
        sky.Task.from_yaml(str(SERVE_YAML))
    task = load_task(SERVE_YAML, EXP_NAME="exp-1")
    service = task.service
    probe = yaml.safe_load(SERVE_YAML.read_text())["service"]["readiness_probe"]
    assert service.readiness_path == "/v1/chat/completions" == probe["path"]
    assert service.post_data["messages"][0]["role"] == "user"  # a real chat turn
    assert service.post_data["model"] == task.envs["SERVED_NAME"]  # the name vLLM serves under
    assert (service.min_replicas, service.max_replicas) == (1, 4) and service.target_qps_per_replica > 0
    assert service.dynamic_ondemand_fallback  # spot, with on-demand while spot is short
    assert all(r.use_spot and r.ports == ["8000"] for r in task.resources) and len(task.resources) >= 3
    assert not task.file_mounts and task.workdir == "."
    assert all(not v.get_secret_value() for v in task.secrets.values())
    assert 'dvc" exp pull origin "$EXP_NAME"' in task.run and 'dvc" pull merge_model' in task.run
    assert "vllm\" serve models/merged" in task.run and "--port 8000" in task.run
    assert "requirements-serve.txt" in task.setup and (ROOT / "requirements-serve.txt").is_file()


def test_vscode_yaml_passes_skypilot_schema():
    import sky

    task = sky.Task.from_yaml(str(VSCODE_YAML))
    (resources, *_) = task.resources
    assert all(r.autostop_config.enabled and r.autostop_config.idle_minutes > 0 for r in task.resources)
    assert len(task.resources) >= 3 and resources.accelerators
    assert "nvtop" in task.setup and "src/cloud/setup.sh" in task.setup
    assert "code tunnel" in task.run and "SESSION_HOURS" in task.run
    assert not task.file_mounts


def test_vscode_setup_installs_the_pinned_cli_only_when_its_checksum_matches(tmp_path):
    """The dev box's setup with stand-ins for sudo, curl (serving a tarball) and the venv's
    python: the pinned release's URL is fetched; a wrong sha256 stops setup before anything is
    unpacked; the right one installs it; none prints the sum to pin."""
    import hashlib
    import io
    import tarfile

    bundle = io.BytesIO()
    with tarfile.open(fileobj=bundle, mode="w:gz") as tar:
        data = b"#!/bin/sh\necho code\n"
        info = tarfile.TarInfo("code")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
    (tmp_path / "cli.tar.gz").write_bytes(bundle.getvalue())
    right = hashlib.sha256(bundle.getvalue()).hexdigest()
    stubs = tmp_path / "bin"
    (stubs / "venv/bin").mkdir(parents=True)
    curl = f'echo "$@" >> {tmp_path}/urls; while [ "$1" != -o ]; do shift; done; cp {tmp_path}/cli.tar.gz "$2"'
    for name, body in (("sudo", "exit 0"), ("curl", curl),
                       ("venv/bin/python", "exit 0")):
        (stubs / name).write_text(f"#!/bin/sh\n{body}\n")
        (stubs / name).chmod(0o755)
    setup = yaml.safe_load(VSCODE_YAML.read_text())["setup"]
    version = yaml.safe_load(VSCODE_YAML.read_text())["envs"]["VSCODE_CLI_VERSION"]
    for sha, home in (("0" * 64, "wrong"), (right, "right"), ("", "unpinned")):
        env = {"HOME": str(tmp_path / home), "PATH": f"{stubs}:/usr/bin:/bin", "VENV": str(stubs / "venv"),
               "VSCODE_CLI_VERSION": version, "VSCODE_CLI_SHA256": sha}
        (tmp_path / home).mkdir()
        proc = subprocess.run(["bash", "-c", setup], cwd=ROOT, env=env, capture_output=True, text=True)
        installed = tmp_path / home / ".local/bin/code"
        if home == "wrong":
            assert proc.returncode == 1 and not installed.exists()
            assert f"error: VS Code CLI {version}: sha256 {right}, expected {'0' * 64}" in proc.stderr
        else:
            assert proc.returncode == 0 and installed.read_bytes() == data, proc.stderr
            assert (f"its sha256 is {right}" in proc.stderr) == (home == "unpinned")
    assert f"https://update.code.visualstudio.com/{version}/cli-alpine-x64/stable" in (tmp_path / "urls").read_text()


def test_cloud_scripts_are_valid_bash():
    for path in (TRAINING_YAML, VSCODE_YAML):
        config = yaml.safe_load(path.read_text())
        for key in ("setup", "run"):
            proc = run_cli(["bash", "-n", "-c", config[key]], ROOT)
            assert proc.returncode == 0, (path.name, key, proc.stderr)
    for script in (ROOT / "src/cloud").glob("*.sh"):
        assert os.access(script, os.X_OK) and run_cli(["bash", "-n", str(script)], ROOT).returncode == 0


def test_askpass_answers_from_the_environment_only_for_the_origins_host(tmp_path):
    askpass = str(ROOT / "src/cloud/git_askpass.sh")
    run_cli(["git", "init", "-q"], tmp_path, check=True)
    run_cli(["git", "remote", "add", "origin", "https://github.com/me/finetune.git"], tmp_path, check=True)
    env = {"GIT_TOKEN": "t0ken"}
    assert run_cli([askpass, "Username for 'https://github.com': "], tmp_path, env=env).stdout == "x-access-token\n"
    assert run_cli([askpass, "Password for 'https://x@github.com': "], tmp_path, env=env).stdout == "t0ken\n"
    missing = run_cli([askpass, "Password for 'https://x@github.com': "], tmp_path, env={"GIT_TOKEN": ""})
    assert missing.returncode != 0 and "--secret GIT_TOKEN" in missing.stderr
    for prompt in ("Password for 'https://x@evil.example': ", "Password for 'https://x@github.com.evil.example': ",
                   "Password for 'https://x@github.com:8443': ", "Password: "):
        other = run_cli([askpass, prompt], tmp_path, env=env)
        assert other.returncode != 0 and other.stdout == "" and "only for the origin, 'github.com'" in other.stderr
    run_cli(["git", "remote", "remove", "origin"], tmp_path, check=True)
    assert run_cli([askpass, "Password for 'https://x@github.com': "], tmp_path, env=env).stdout == ""


# --- the simulated cloud machine -------------------------------------------------------------

def machine_env(home: Path, checkpoint_dir: Path, **envs: str) -> dict[str, str]:
    """What SkyPilot exports to setup and run: the task's envs (the YAML's, with --env
    overrides), the secrets, its own variables. The Python environment is this one (setup
    then installs nothing), and the system's PATH: setup and run must activate it themselves."""
    task = load_task(TRAINING_YAML, **{"CHECKPOINT_BUCKET": "test-checkpoints", "PARAMS": "", "PROFILE": "",
                                       "CHECKPOINT_DIR": str(checkpoint_dir), "VENV": sys.prefix, **envs})
    home.mkdir(exist_ok=True)
    offline = {k: v for k, v in OFFLINE.items() if not k.startswith("GIT_")}  # git identity: the YAML's
    return {**offline, **task.envs, **SECRETS,
            "HOME": str(home), "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
            "SKYPILOT_TASK_ID": TASK_ID, "SKYPILOT_NODE_RANK": "0", "SKYPILOT_NUM_NODES": "1",
            "SKYPILOT_NODE_IPS": "127.0.0.1", "SKYPILOT_NUM_GPUS_PER_NODE": "1",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}


# The two jobs below run side by side, and each machine's setup runs pip in this one environment.
SETUP_LOCK = threading.Lock()


def on_machine(workdir: Path, env: dict[str, str], fault: tuple[str, str] | None = None,
               setup: bool = True) -> tuple[int, str]:
    """Run the YAML's setup (unless ``setup`` is false: a later machine of the same job would
    run the same), then its run, in ``workdir`` as SkyPilot does; return (exit code, output)."""
    config = yaml.safe_load(TRAINING_YAML.read_text())
    env = dict(env)
    if fault:
        stage = fault[0] if fault[0] == "push" else f"src.stages.{fault[0]}"
        env |= {"FAULT_STAGE": stage, "FAULT_KILL": fault[1], "PYTHONPATH": str(FAULTKIT)}
    out = []
    for key in ("setup", "run")[0 if setup else 1:]:
        with SETUP_LOCK if key == "setup" else contextlib.nullcontext():
            proc = subprocess.run(["bash", "-c", config[key]], cwd=workdir, env=env, capture_output=True, text=True)
        out.append(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            return proc.returncode, "\n".join(out)
    return 0, "\n".join(out)


def test_other_machines_of_a_multi_node_job_run_up_to_train_only(tmp_path):
    """On a machine with SKYPILOT_NODE_RANK > 0 the run goes as far as the train stage (whose
    processes join the first machine's), without pushing or posting to Studio. dvc and git
    are stand-ins here that record how they were called."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dvc", "git"):
        record = f'echo "{tool} $* studio=${{DVC_STUDIO_TOKEN:-unset}}" >> {tmp_path}/calls'
        (bin_dir / tool).write_text(f"#!/bin/sh\n{record}\n")
        (bin_dir / tool).chmod(0o755)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin/activate").write_text(f'export PATH="{bin_dir}:$PATH"\n')
    env = machine_env(tmp_path / "home", tmp_path / "checkpoints") | {
        "VENV": str(venv), "PARAMS": "-S train.distributed=ddp", "SKYPILOT_NODE_RANK": "1", "SKYPILOT_NUM_NODES": "2",
        "SKYPILOT_NODE_IPS": "10.0.0.1\n10.0.0.2"}
    config = yaml.safe_load(TRAINING_YAML.read_text())
    proc = subprocess.run(["bash", "-c", config["run"]], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls == ["dvc exp run --pull -S train.distributed=ddp train studio=unset"], calls
    assert (tmp_path / "checkpoints").name in proc.stdout  # the same checkpoint folder as the first machine


def bring_home(home: Path, origin_url: str, name: str, env: dict[str, str]) -> Path:
    """A second clone: dvc exp pull, dvc exp show, dvc exp apply, dvc pull."""
    run_cli(["git", "clone", "-q", origin_url, str(home)], home.parent, check=True, env=env)
    run_cli(["dvc", "exp", "pull", "origin", name], home, check=True, env=env)
    shown = json.loads(run_cli(["dvc", "exp", "show", "--json"], home, check=True, env=env).stdout)
    names = [exp.get("name") for baseline in shown for run in baseline.get("experiments") or []
             for exp in run.get("revs", [])]
    assert name in names, names
    run_cli(["dvc", "exp", "apply", name], home, check=True, env=env)
    run_cli(["dvc", "pull"], home, check=True, env=env)
    return home


def assert_same_results(produced: Path, pulled: Path) -> None:
    compared = 0
    for rel in RESULTS:
        base = produced / rel
        for path in ([base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())):
            twin = pulled / path.relative_to(produced)
            assert twin.is_file() and twin.read_bytes() == path.read_bytes(), path.relative_to(produced)
            compared += 1
    assert compared >= 15
    assert (pulled / PATHS["adapter"] / "adapter_model.safetensors").stat().st_size > 0


def exp_name(output: str) -> str:
    return re.search(r"^experiment (\S+), checkpoints in", output, re.M).group(1)


# The Hub's files as the stand-in serves them: the upstream schemas, fewer rows than the samples.
HUB_ROWS = {"orca": 23, "platypus": 31}
HUB_FILES = hub_files(ROOT / "data/raw", HUB_ROWS)
# The 7B profile's shape on the tiny model: imports (one by branch, one by commit), whole files.
LOOPBACK_PROFILE = f"""
imports:
  data/raw/1M-GPT4-Augmented.parquet: {{dataset: Open-Orca/OpenOrca, revision: main, file: 1M-GPT4-Augmented.parquet}}
  data/raw/open-platypus.parquet:
    {{dataset: garage-bAInd/Open-Platypus, revision: {PLATYPUS_COMMIT}, file: {PLATYPUS_FILE}}}
datasets:
  orca: {{path: data/raw/1M-GPT4-Augmented.parquet, subset_rows: null}}
  platypus: {{path: data/raw/open-platypus.parquet, subset_rows: null}}
"""


def s3_job(tmp: Path, model: Path) -> dict:
    """The laptop's clone pushed to an HTTP origin and set to an S3 remote; one uninterrupted
    run on a machine; the experiment pulled into another clone."""
    (tmp / "git").mkdir()
    run_cli(["git", "init", "-q", "--bare", "-b", "main", str(tmp / "git/origin.git")], tmp, check=True)
    git_env = {"GIT_ASKPASS": str(ROOT / "src/cloud/git_askpass.sh"), "GIT_TERMINAL_PROMPT": "0",
               "GIT_TOKEN": SECRETS["GIT_TOKEN"], "AWS_ACCESS_KEY_ID": SECRETS["AWS_ACCESS_KEY_ID"],
               "AWS_SECRET_ACCESS_KEY": SECRETS["AWS_SECRET_ACCESS_KEY"], "AWS_DEFAULT_REGION": "us-east-1"}
    origin = GitHttpOrigin(tmp / "git", "x-access-token", SECRETS["GIT_TOKEN"])
    s3 = MotoS3("dvc-remote", SECRETS)
    studio = FakeStudio()
    hub = FakeHub(HUB_FILES, {("Open-Orca/OpenOrca", "main"): ORCA_COMMIT})
    try:
        laptop = configure_tiny_dag(make_clone(tmp / "laptop"), model)
        (laptop / "profiles/loopback.yaml").write_text(LOOPBACK_PROFILE)
        run_cli(["dvc", "remote", "add", "-d", "cloud", "s3://dvc-remote/store"], laptop, check=True)
        run_cli(["dvc", "remote", "modify", "cloud", "endpointurl", s3.url], laptop, check=True)
        run_cli(["git", "add", "profiles/loopback.yaml"], laptop, check=True)
        run_cli(["git", "commit", "-qam", "S3 remote, a profile on the stand-in Hub"], laptop, check=True)
        run_cli(["git", "remote", "add", "origin", f"{origin.url}/origin.git"], laptop, check=True)
        run_cli(["git", "push", "-q", "origin", "main"], laptop, check=True, env=git_env)
        machine = shutil.copytree(laptop, tmp / "machine", symlinks=True)
        # a gate the tiny model cannot pass: the job must push its experiment, then fail
        env = machine_env(tmp / "machine-home", tmp / "bucket", EXP_NAME="qlora-s3",
                          DVC_STUDIO_URL=studio.url, AWS_DEFAULT_REGION="us-east-1",
                          PROFILE="profiles/loopback.yaml", PARAMS="-S quality_gate.min_identity_accuracy=1.0")
        env |= {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"}
        refused = on_machine(machine, {**env, "GIT_TOKEN": "not-the-token"}, setup=False)
        code, output = on_machine(machine, env)
        assert code == 1 and "pushed; to bring it home" in output, output[-4000:]
        home = bring_home(tmp / "home", f"{origin.url}/origin.git", "qlora-s3", git_env)
        return {"machine": machine, "home": home, "output": output, "refused": refused, "studio": studio.posts,
                "s3_keys": s3.keys(), "denied": origin.denied, "bucket": tmp / "bucket", "tmp": tmp,
                "hub": hub.requests}
    finally:
        hub.close()
        origin.close()
        s3.close()
        studio.close()


def preempted_job(tmp: Path, model: Path) -> dict:
    """The committed local remote, a bare origin on disk, and a managed job preempted twice:
    three machines in turn, with the same task id and the same checkpoint bucket. Each machine
    starts from the laptop's copy, so each imports the profile's files from the Hub again."""
    run_cli(["git", "init", "-q", "--bare", "-b", "main", str(tmp / "origin.git")], tmp, check=True)
    laptop = configure_tiny_dag(make_clone(tmp / "laptop"), model)
    (laptop / "profiles/loopback.yaml").write_text(LOOPBACK_PROFILE)
    run_cli(["git", "add", "profiles/loopback.yaml"], laptop, check=True)
    run_cli(["git", "commit", "-qm", "a profile on the stand-in Hub"], laptop, check=True)
    run_cli(["git", "remote", "add", "origin", str(tmp / "origin.git")], laptop, check=True)
    run_cli(["git", "push", "-q", "origin", "main"], laptop, check=True)
    hub = FakeHub(HUB_FILES, {("Open-Orca/OpenOrca", "main"): ORCA_COMMIT})
    # EXP_NAME empty: named after the task
    env = machine_env(tmp / "machine-home", tmp / "bucket", PROFILE="profiles/loopback.yaml")
    env |= {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"}
    runs = []
    try:
        for i, fault in enumerate([("train", "step:7"), ("merge_model", "replace"), ("push", "push-cache"), None]):
            machine = shutil.copytree(laptop, tmp / f"machine{i}", symlinks=True)
            code, output = on_machine(machine, env, fault, setup=i == 0)
            steps = sorted(int(p.name.removeprefix("checkpoint-")) for p in (tmp / "bucket").glob("*/*/checkpoint-*"))
            origin_refs = run_cli(["git", "ls-remote", str(tmp / "origin.git"), "refs/exps/*"], tmp).stdout
            remote_files = sorted(p for p in (Path(env["HOME"]) / "dvc-storage").rglob("*") if p.is_file())
            runs.append({"code": code, "output": output, "steps": steps, "machine": machine,
                         "origin_refs": origin_refs, "remote_files": len(remote_files)})
        assert runs[-1]["code"] == 0, runs[-1]["output"][-4000:]
        name = exp_name(runs[-1]["output"])
        # the committed remote is ~/dvc-storage: the second clone sees the machine's, as a shared disk would
        home = bring_home(tmp / "home", str(tmp / "origin.git"), name, {"HOME": env["HOME"]})
    finally:
        hub.close()
    return {"runs": runs, "home": home, "name": name, "bucket": tmp / "bucket",
            "remote": Path(env["HOME"]) / "dvc-storage"}


@head_start("cloud_jobs")
def start_cloud_jobs(request, tmp_path_factory) -> InThreads:
    """Both jobs above, started as the session starts (conftest: head_started), each in a
    thread of its own: a chain of processes that goes on beside the other tests."""
    model = request.getfixturevalue("tiny_model")
    s3, local = tmp_path_factory.mktemp("s3"), tmp_path_factory.mktemp("local")
    return InThreads(s3=lambda: s3_job(s3, model), local=lambda: preempted_job(local, model))


@pytest.fixture(scope="module")
def cloud_jobs(head_started) -> InThreads:
    return head_started["cloud_jobs"]


@pytest.fixture(scope="module")
def s3_run(cloud_jobs) -> dict:
    return cloud_jobs.result("s3")


@pytest.fixture(scope="module")
def preempted_run(cloud_jobs) -> dict:
    return cloud_jobs.result("local")


@pytest.mark.slow
def test_cloud_run_below_the_quality_gate_pushes_then_fails_with_one_line(s3_run):
    evaluation = json.loads((s3_run["home"] / PATHS["evaluation"]).read_text())
    accuracy = evaluation["finetuned"]["identity_accuracy"]
    errors = [line for line in s3_run["output"].splitlines() if line.startswith("error:")]
    assert errors == [f"error: quality gate failed: finetuned.identity_accuracy {accuracy:g} < 1 "
                      "(quality_gate.min_identity_accuracy)"]
    # the experiment came home whole, its gate verdict with it
    assert json.loads((s3_run["home"] / PATHS["quality_gate"]).read_text())["passed"] is False


@pytest.mark.slow
def test_cloud_run_pushes_to_s3_and_comes_home_byte_identical(s3_run):
    assert exp_name(s3_run["output"]) == "qlora-s3"
    assert "dvc exp pull origin qlora-s3" in s3_run["output"]
    assert "warning: the DVC remote" not in s3_run["output"]
    assert len(s3_run["s3_keys"]) >= 10 and all(k.startswith("store/") for k in s3_run["s3_keys"])
    assert_same_results(s3_run["machine"], s3_run["home"])
    assert not any(s3_run["bucket"].iterdir())  # the experiment's checkpoints went once pushed


@pytest.mark.slow
def test_cloud_run_trains_on_the_files_its_profile_imports_from_the_hub(s3_run):
    home = s3_run["home"]
    params = yaml.safe_load((home / "params.yaml").read_text())
    assert {s: params["datasets"][s]["path"] for s in HUB_ROWS} == {"orca": "data/raw/1M-GPT4-Augmented.parquet",
                                                                    "platypus": "data/raw/open-platypus.parquet"}
    for source, rows in HUB_ROWS.items():  # every row of the served file, not the samples
        metrics = json.loads((home / PATHS["metrics_dir"] / f"process_data_{source}.json").read_text())
        assert metrics["rows_in"] == rows, source
    # the experiment records where the files came from, at the commit (the branch was looked up once)
    orca = yaml.safe_load((home / "data/raw/1M-GPT4-Augmented.parquet.dvc").read_text())
    resolved = f"/datasets/Open-Orca/OpenOrca/resolve/{ORCA_COMMIT}/1M-GPT4-Augmented.parquet"
    assert orca["deps"][0]["path"].endswith(resolved)
    platypus = yaml.safe_load((home / "data/raw/open-platypus.parquet.dvc").read_text())
    assert f"/resolve/{PLATYPUS_COMMIT}/{PLATYPUS_FILE}" in platypus["deps"][0]["path"]
    assert "/api/datasets/Open-Orca/OpenOrca/revision/main" in s3_run["hub"]
    assert (home / "data/raw/1M-GPT4-Augmented.parquet").read_bytes() == next(iter(HUB_FILES.values()))


@pytest.mark.slow
def test_cloud_run_pushes_over_https_with_the_token_from_the_environment(s3_run):
    assert s3_run["denied"] > 0  # the origin refused requests until the askpass answered
    # a wrong token stops the run before any stage runs, with the reason
    code, output = s3_run["refused"]
    assert code == 1 and "cannot push (HTTPS: pass --secret GIT_TOKEN)" in output
    assert "Running stage" not in output
    config = (s3_run["machine"] / ".git/config").read_text()
    assert SECRETS["GIT_TOKEN"] not in config and "askpass" not in config


@pytest.mark.slow
def test_cloud_run_sends_live_metrics_to_studio(s3_run):
    posts = s3_run["studio"]
    live = [data for path, auth, data in posts if path == "/api/live"]
    assert live and all(auth == f"token {SECRETS['DVC_STUDIO_TOKEN']}"
                        for path, auth, _ in posts if path == "/api/live")
    assert {d.get("name") for d in live} == {"qlora-s3"}
    steps = [d["step"] for d in live if d.get("type") == "data"]
    assert set(steps) >= {1, TINY_DAG_SFT["max_steps"] // 2, TINY_DAG_SFT["max_steps"]}  # as training goes
    sent = json.dumps([d for d in live if d.get("type") == "data"])
    assert "train/loss" in sent and "eval/loss" in sent


@pytest.mark.slow
def test_no_credential_is_written_anywhere(s3_run):
    tmp = s3_run["tmp"]
    assert files_holding(tmp, SECRETS.values()) == []
    assert not [name for name, value in SECRETS.items() if value in s3_run["output"]]
    # the scan itself works: the fixtures' values are findable when written
    (tmp / "planted.txt").write_text(SECRETS["GIT_TOKEN"])
    assert files_holding(tmp, SECRETS.values()) == [f"{tmp / 'planted.txt'}: {SECRETS['GIT_TOKEN']}"]


@pytest.mark.slow
def test_preempted_run_resumes_from_the_bucket_and_finishes(preempted_run):
    first, second, pushing, third = preempted_run["runs"]
    save = TINY_DAG_SFT["save_steps"]
    assert first["code"] != 0 and "faultkit: SIGKILL src.stages.train" in first["output"]
    assert first["steps"] == [save, 2 * save]  # the checkpoints before step 7, in the bucket
    assert second["code"] != 0 and "faultkit: SIGKILL src.stages.merge_model" in second["output"]
    assert f"checkpoint-{2 * save} (step {2 * save})" in second["output"]  # resumed
    last = TINY_DAG_SFT["max_steps"]
    assert second["steps"] == [last - save, last]  # kept after training: results not pushed yet
    assert f"checkpoint-{last} (step {last})" in third["output"] and "training had finished" in third["output"]
    assert not any(preempted_run["bucket"].iterdir())  # spent once pushed
    assert preempted_run["name"] == TASK_ID  # one experiment across the job's machines
    assert "warning: the DVC remote is a folder on this machine" in third["output"]


@pytest.mark.slow
def test_a_push_cut_after_the_git_refs_is_made_whole_by_the_recovered_run(preempted_run):
    """The third machine dies inside dvc exp push, after the ref reached origin and before any
    output reached the DVC remote. On the fourth, dvc exp push finds the remote ref diverged,
    warns and uploads nothing; the check sees it, pushes again over the stale ref, and only
    then are the checkpoints deleted."""
    pushing, recovered = preempted_run["runs"][2:]
    name = preempted_run["name"]
    assert pushing["code"] != 0 and "faultkit: SIGKILL push (push-cache)" in pushing["output"]
    assert pushing["origin_refs"].rstrip().endswith(f"/{name}")  # the ref reached origin,
    assert pushing["remote_files"] == 0  # its outputs did not
    assert pushing["steps"] and "pushed; to bring it home" not in pushing["output"]  # checkpoints kept
    out = recovered["output"]
    assert "diverged" in out  # DVC's own warning: its push alone exits 0 having uploaded nothing
    assert f"push 1 of 4 left it incomplete: origin has {pushing['origin_refs'][:7]}" in out
    assert f"experiment {name} is whole on origin and the DVC remote (push 2)" in out
    assert recovered["origin_refs"] != pushing["origin_refs"] and recovered["remote_files"] > 0


@pytest.mark.slow
def test_preempted_run_comes_home_from_the_local_remote_byte_identical(preempted_run):
    assert (preempted_run["remote"] / "files/md5").is_dir()  # the committed default remote
    assert_same_results(preempted_run["runs"][-1]["machine"], preempted_run["home"])


@pytest.mark.slow
def test_preempted_run_ends_with_the_uninterrupted_runs_adapter(preempted_run, s3_run):
    from safetensors.torch import load_file

    rel = f"{PATHS['adapter']}/adapter_model.safetensors"
    mine, theirs = load_file(preempted_run["home"] / rel), load_file(s3_run["home"] / rel)
    assert mine.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert (mine[name] - tensor).abs().max().item() <= 1e-6, name
