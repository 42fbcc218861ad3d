"""The SkyPilot YAMLs: SkyPilot's own parser and schema, and their ``setup`` and ``run`` executed
as SkyPilot would execute them on a cloud machine, offline.

A machine is simulated by a copy of a clone (SkyPilot copies the workdir, ``.git`` included) and
what SkyPilot gives: its job script, which exports its task and node variables, the YAML's envs
and the secrets (``sky_job``), and a HOME with no git config. ``PARAMS=""`` swaps the GPU
profile for the clone's committed params: a tiny random Llama, seconds per stage. Two round
trips, each ending in a second clone that pulls the experiment back and finds it byte-identical:

* S3: the DVC remote on ``moto_server``, the git origin over HTTP wanting GIT_TOKEN, and DVC
  Studio's API recording the live metrics; every stage process records what it could read of
  its own environment and its ancestors'.
* The committed local remote, with preemption: the first machine is killed in training, the
  second after training (inside ``dvc exp push``), the third finishes from the checkpoints in
  the "bucket"; its adapter equals the uninterrupted S3 run's.

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
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from src.config import output_paths
from tests.cloudkit import (
    ORCA_COMMIT,
    PLATYPUS_COMMIT,
    PLATYPUS_FILE,
    FakeHub,
    FakeImds,
    FakeStudio,
    GitHttpOrigin,
    MotoS3,
    ancestry_recorder,
    digest,
    free_port,
    hub_files,
    price_catalog,
    vllm_stand_in,
)
from tests.conftest import (
    OFFLINE,
    ROOT,
    STAGE_SECRETS,
    InThreads,
    files_holding,
    head_start,
    make_clone,
    run_cli,
    stage_outputs,
)
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
OUTS = stage_outputs(ROOT)  # dvc.yaml's stages
# What an experiment brings home: its params and lock, metrics, plots, adapter, sanity results
# (the folder of the sanity check's, evaluation's and gate's files).
RESULTS = ("params.yaml", "dvc.lock", PATHS["train_live"], PATHS["adapter"], str(Path(PATHS["sanity_results"]).parent),
           PATHS["metrics_dir"], PATHS["report"])


def load_task(path: Path, secrets: dict[str, str] | None = None, **envs: str):
    """The task as `sky launch --env K=V --secret NAME=value path` parses it."""
    import sky

    return sky.Task.from_yaml_config(yaml.safe_load(path.read_text()), env_overrides=list(envs.items()),
                                     secrets_overrides=list((secrets or {}).items()))


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
    assert "dvc exp run --name" in task.run and "python -m src.cloud.push" in task.run
    # the 7B profile is the default; its validity against params: test_profile
    assert task.envs["PROFILE"] == "profiles/llama2-7b-qlora.yaml" and (ROOT / task.envs["PROFILE"]).is_file()
    assert task.envs["PARAMS"] == ""


def test_serve_yaml_passes_skypilot_schema():
    import sky

    bare = sky.Task.from_yaml(str(SERVE_YAML))  # the run refuses it: no experiment, no stage (test_registry.py)
    assert bare.envs["EXP_NAME"] == bare.envs["MODEL_STAGE"] == ""
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
    assert all(not v.get_secret_value() for v in task.secrets.values()) and "VLLM_API_KEY" in task.secrets
    # the probe sends the key given at launch, as clients do
    keyed = load_task(SERVE_YAML, secrets={"VLLM_API_KEY": "k3y"}, EXP_NAME="exp-1")
    assert keyed.service.readiness_headers == {"Authorization": "Bearer k3y"}
    assert 'dvc" exp pull origin "$EXP_NAME"' in task.run and 'dvc" pull merge_model' in task.run
    # a registry stage instead: the artifact dvc.yaml declares (src/registry.py's)
    from src.registry import ARTIFACT

    assert f'dvc" artifacts get . {ARTIFACT} --stage "$MODEL_STAGE"' in task.run
    assert yaml.safe_load((ROOT / "dvc.yaml").read_text())["artifacts"][ARTIFACT]["path"] == "${paths.merged_model}"
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
    for path in (TRAINING_YAML, VSCODE_YAML, SERVE_YAML):
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

# The secrets' names, and the variables a run script may hand one on under (the Studio token).
SECRET_NAMES = (*SECRETS, "TRAIN_STUDIO_TOKEN", "AZURE_STORAGE_CONNECTION_STRING", "VLLM_API_KEY")
# What a SkyPilot machine's own environment holds; the task's envs and secrets are not in it.
MACHINE_VARS = ("HOME", "PATH", "LANG", "OMP_NUM_THREADS", *OFFLINE)


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
            "SKYPILOT_TASK_ID": TASK_ID, "SKYPILOT_USER": "alice", "SKYPILOT_NODE_RANK": "0",
            "SKYPILOT_NUM_NODES": "1", "SKYPILOT_NODE_IPS": "127.0.0.1", "SKYPILOT_NUM_GPUS_PER_NODE": "1",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}


@contextlib.contextmanager
def sky_job(section: str, env: dict[str, str], workdir: Path):
    """Yield (argv, environment) of the command SkyPilot runs for a task's ``setup`` or ``run``:
    bash on its job script (SkyPilot's own ``make_task_bash_script``), which exports each
    variable of ``env`` but the machine's own (MACHINE_VARS) and changes to ~/sky_workdir (here a
    link to ``workdir``). So the shell's own environment, /proc/<pid>/environ, holds no secret,
    as on a SkyPilot machine. The script holds them, as SkyPilot's /tmp/sky_app_* does: it is
    written outside the test's folders and deleted after."""
    from sky.skylet.log_lib import make_task_bash_script

    link = Path(env["HOME"]) / "sky_workdir"
    link.unlink(missing_ok=True)
    link.symlink_to(workdir)
    exports = {k: v for k, v in env.items() if k not in MACHINE_VARS}
    with tempfile.TemporaryDirectory(prefix="sky_app_") as folder:
        script = Path(folder) / "job.sh"
        script.write_text(make_task_bash_script(section, env_vars=exports))
        yield ["bash", str(script)], {k: v for k, v in env.items() if k in MACHINE_VARS}


def run_job(section: str, env: dict[str, str], workdir: Path,
            timeout: float | None = None) -> subprocess.CompletedProcess:
    with sky_job(section, env, workdir) as (argv, machine):
        return subprocess.run(argv, env=machine, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout)


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
            proc = run_job(config[key], env, workdir)
        out.append(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            return proc.returncode, "\n".join(out)
    return 0, "\n".join(out)


def stand_ins(folder: Path, calls: Path, **tools: str) -> Path:
    """A venv at ``folder`` whose bin holds the ``tools`` (name -> sh body), each first appending
    to ``calls`` a line ``<tool> <args> [<the secrets in its environment, by name>]``; its
    activate puts them first on PATH. Returns the venv."""
    held = f'held=""; for n in {" ".join(SECRET_NAMES)}; do if printenv "$n" >/dev/null; then held="$held $n"; fi; done'
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for tool, body in tools.items():
        (bin_dir / tool).write_text(f'#!/bin/sh\n{held}\necho "{tool} $* [${{held# }}]" >> {calls}\n{body}\n')
        (bin_dir / tool).chmod(0o755)
    (bin_dir / "activate").write_text(f'export PATH="{bin_dir}:$PATH"\n')
    return folder


def test_other_machines_of_a_multi_node_job_run_up_to_train_only(tmp_path):
    """On a machine with SKYPILOT_NODE_RANK > 0 the run goes as far as the train stage (whose
    processes join the first machine's), without pushing or posting to Studio; dvc exp run gets
    the Hub token alone, the fetch before it the storage keys alone. dvc and git are stand-ins
    here that record how they were called."""
    venv = stand_ins(tmp_path / "venv", tmp_path / "calls", dvc="", git="")
    env = machine_env(tmp_path / "home", tmp_path / "checkpoints") | {
        "VENV": str(venv), "PARAMS": "-S train.distributed=ddp", "SKYPILOT_NODE_RANK": "1", "SKYPILOT_NUM_NODES": "2",
        "SKYPILOT_NODE_IPS": "10.0.0.1\n10.0.0.2"}
    proc = run_job(yaml.safe_load(TRAINING_YAML.read_text())["run"], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls == ["dvc fetch --run-cache [AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY]",
                     "dvc exp run -S train.distributed=ddp train [HF_TOKEN]"], calls
    # the same checkpoint folder as the first machine
    assert f"checkpoints in {tmp_path / 'checkpoints/alice'}/{TASK_ID}" in proc.stdout


def test_a_job_whose_budget_one_more_interval_would_pass_starts_nothing(tmp_path):
    """A machine that replaces a preempted one, of a job with MAX_COST_USD=1 whose earlier
    attempt spent $0.98 and whose checkpoints came every 10 minutes: it ends with one line before
    it pushes, fetches or runs anything (dvc and git are stand-ins that record their calls)."""
    venv = stand_ins(tmp_path / "venv", tmp_path / "calls", dvc="", git="", python=f'exec {sys.executable} "$@"')
    env = machine_env(tmp_path / "home", tmp_path / "checkpoints") | {
        "VENV": str(venv), "PYTHONPATH": str(ROOT), "MAX_COST_USD": "1", "EXP_NAME": "capped",
        "SKYPILOT_CLUSTER_INFO": json.dumps({"cloud": "AWS", "region": "us-east-1", "zone": "us-east-1b"}),
        "INSTANCE_TYPE": "g5.xlarge", "USE_SPOT": "true"}
    price_catalog(tmp_path / "home", "aws", [("g5.xlarge", "A10G", 1, 1.006, 0.49, "us-east-1", "us-east-1b")])
    folder = tmp_path / "checkpoints/alice/capped"
    folder.mkdir(parents=True)
    now = time.time()
    (folder / "cost.json").write_text(json.dumps({"attempts": [{
        "cloud": "aws", "region": "us-east-1", "zone": "us-east-1b", "instance_type": "g5.xlarge", "spot": True,
        "nodes": 1, "gpus_per_node": 1, "price_per_hour": 0.49, "started": now - 9000, "last_seen": now - 1800}]}))
    (folder / "budget.json").write_text(json.dumps({"interval_seconds": 600.0}))
    proc = run_job(yaml.safe_load(TRAINING_YAML.read_text())["run"], env, tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: budget: $0.98 spent over 2 attempt(s); one more checkpoint interval (600 s) would pass "
        "max_cost_usd $1.00. Nothing more is run; the checkpoints stay in")
    calls = (tmp_path / "calls").read_text().splitlines()
    assert [c.split(" [")[0] for c in calls] == ["python -m src.cloud.cost start "
                                                 f"{folder}/cost.json --budget 1"]  # no dvc, no git


# A stand-in `dvc` for the runs below, on real git: `exp run` writes a checkpoint into
# TRAIN_CHECKPOINT_DIR (and stops there, as if preempted, with STANDIN_PREEMPT set), then commits
# the experiment on a ref named as DVC names it; `exp push` pushes the ref (with --force when
# given) and, on a diverged ref, warns and exits 0 as DVC does; the rest answers as a remote
# that holds every output.
DVC_STAND_IN = """
ref() { base=$(git rev-parse HEAD); echo "refs/exps/$(echo "$base" | cut -c1-2)/$(echo "$base" | cut -c3-)/$1"; }
for last in "$@"; do :; done
case "$1 $2" in
  "exp run")
    ckpt="$TRAIN_CHECKPOINT_DIR/fp/checkpoint-1"
    mkdir -p "$ckpt" && echo "$SKYPILOT_USER" > "$ckpt/w"
    [ -z "${STANDIN_PREEMPT:-}" ] || exit 137
    while [ "$1" != --name ]; do shift; done
    git update-ref "$(ref "$2")" "$(echo "trained by $SKYPILOT_USER" | git commit-tree "HEAD^{tree}" -p HEAD)" ;;
  "exp push")
    force=; [ "$3" != --force ] || force=--force
    git push -q $force origin "$(ref "$last"):$(ref "$last")" 2>/dev/null ||
      echo "WARNING: Local experiment '$last' has diverged from remote experiment with the same name." >&2 ;;
  "status --cloud") echo '{}' ;;
  "remote default") echo storage ;;
  "config remote.storage.url") echo s3://bucket/store ;;
esac
"""


def two_users_setup(tmp: Path) -> tuple[Path, Path, dict[str, str]]:
    """A bare origin, a clone of a one-commit repo pushed to it (the laptop's), a bucket, and the
    stand-ins (DVC_STAND_IN; the quality gate passes); returns (origin, laptop, the job's env)."""
    origin, laptop = tmp / "origin.git", tmp / "laptop"
    run_cli(["git", "init", "-q", "--bare", "-b", "main", str(origin)], tmp, check=True)
    laptop.mkdir()
    (laptop / "README.md").write_text("a project\n")
    for args in (["init", "-q", "-b", "main"], ["add", "README.md"], ["commit", "-qm", "start"],
                 ["remote", "add", "origin", str(origin)], ["push", "-q", "origin", "main"]):
        run_cli(["git", *args], laptop, check=True)
    gate = f'[ "$1 $2" = "-m src.stages.quality_gate" ] && exit 0; exec {sys.executable} "$@"'
    venv = stand_ins(tmp / "venv", tmp / "calls", dvc=DVC_STAND_IN, python=gate)
    # src.cloud.push from this checkout: the machine's copy holds no source
    env = {"VENV": str(venv), "PYTHONPATH": str(ROOT), "EXP_NAME": "shared"}
    return origin, laptop, env


def origin_ref(origin: Path, name: str) -> str:
    refs = run_cli(["git", "ls-remote", str(origin), f"refs/exps/*/{name}"], origin).stdout.split()
    return refs[0] if refs else ""


def test_two_users_jobs_of_one_name_neither_overwrite_nor_delete_each_other(tmp_path):
    """Bob's job is preempted in training; Alice's job of the same name on the same bucket and
    origin then runs to the end, and deletes her checkpoints, not his; his recovered job finds
    her experiment under the name on origin and stops, with one line, before training, where
    before it would have pushed over hers (--force)."""
    origin, laptop, stand = two_users_setup(tmp_path)
    bucket = tmp_path / "bucket"

    def job(user: str, machine: str, **extra: str) -> subprocess.CompletedProcess:
        workdir = shutil.copytree(laptop, tmp_path / machine, symlinks=True)
        env = machine_env(tmp_path / f"home-{user}", bucket) | stand | {
            "SKYPILOT_USER": user, "SKYPILOT_TASK_ID": f"sky-managed-{user}", **extra}
        (tmp_path / "calls").unlink(missing_ok=True)
        return run_job(yaml.safe_load(TRAINING_YAML.read_text())["run"], env, workdir)

    bob = job("bob", "bob-1", STANDIN_PREEMPT="1")
    assert bob.returncode == 137, bob.stderr
    bobs = bucket / "bob/shared/fp/checkpoint-1/w"
    assert bobs.read_text() == "bob\n"
    alice = job("alice", "alice-1")
    assert alice.returncode == 0, alice.stderr
    assert "pushed; to bring it home" in alice.stdout
    hers = origin_ref(origin, "shared")
    local = run_cli(["git", "for-each-ref", "--format=%(objectname)", "refs/exps"], tmp_path / "alice-1").stdout
    assert hers and local.split() == [hers]  # her experiment's commit
    assert not (bucket / "alice/shared").exists() and bobs.read_text() == "bob\n"  # hers went, his stay
    recovered = job("bob", "bob-2")
    errors = [line for line in recovered.stderr.splitlines() if line.startswith("error:")]
    assert recovered.returncode == 1 and len(errors) == 1, recovered.stderr
    assert "origin has refs/exps/" in errors[0] and f"at {hers[:7]}, which this job did not push" in errors[0]
    assert "exp run" not in (tmp_path / "calls").read_text()  # stopped before training
    assert origin_ref(origin, "shared") == hers and bobs.exists()


def test_push_forces_only_over_a_commit_the_jobs_record_lists(tmp_path):
    """src.cloud.push on a diverged ref: with the origin's commit missing from the job's record
    (another job's, pushed while this one trained) it stops with one line and forces nothing;
    with the commit listed (this job's own push, cut short on an earlier machine) it forces."""
    origin, laptop, stand = two_users_setup(tmp_path)
    env = {"PATH": f"{stand['VENV']}/bin:{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           "TRAIN_CHECKPOINT_DIR": str(tmp_path / "ckpt"), "SKYPILOT_USER": "x", "STANDIN_PREEMPT": ""}
    theirs, mine = (shutil.copytree(laptop, tmp_path / who, symlinks=True) for who in ("theirs", "mine"))
    for repo, who in ((theirs, "carol"), (mine, "dave")):
        run_cli(["dvc", "exp", "run", "--name", "shared"], repo, check=True, env=env | {"SKYPILOT_USER": who})
    run_cli(["dvc", "exp", "push", "origin", "shared"], theirs, check=True, env=env)
    carols = origin_ref(origin, "shared")
    record = tmp_path / "record.json"
    push = [sys.executable, "-m", "src.cloud.push", "shared", "--record", str(record), "--wait", "0"]
    refused = run_cli(push, mine, env=env)
    last = refused.stderr.strip().splitlines()[-1]
    assert refused.returncode == 1 and last.startswith("error: origin has refs/exps/") and "did not push" in last
    assert "--force" not in (tmp_path / "calls").read_text() and origin_ref(origin, "shared") == carols
    ref = next(iter(json.loads(record.read_text())))
    dave = run_cli(["git", "rev-parse", ref], mine, check=True).stdout.strip()
    assert json.loads(record.read_text()) == {ref: [dave]}  # recorded before the push
    record.write_text(json.dumps({ref: [carols, dave]}))  # as if this job had pushed carol's commit
    forced = run_cli(push, mine, env=env)
    assert forced.returncode == 0, forced.stderr
    assert "exp push --force" in (tmp_path / "calls").read_text() and origin_ref(origin, "shared") == dave


def test_serving_refuses_to_start_without_a_key_and_vllm_refuses_requests_without_it(tmp_path):
    """sky-serve.yaml's run with stand-ins for dvc and vLLM (VLLM_STAND_IN, which checks the key
    as vLLM does): without VLLM_API_KEY it stops with one line before pulling anything; with it,
    vLLM starts holding the key and no credential, a request without the key, or with another,
    gets 401, and the readiness probe SkyServe sends (the key filled in) gets an answer."""
    port = free_port()
    venv = stand_ins(tmp_path / "venv", tmp_path / "calls", dvc="", python=f'exec {sys.executable} "$@"')
    vllm_stand_in(tmp_path / "vllm-venv/bin/vllm")
    key = secrets.token_urlsafe(16)
    task = load_task(SERVE_YAML, secrets={"VLLM_API_KEY": key}, EXP_NAME="qlora-s3")
    (tmp_path / "home").mkdir()
    env = {**task.envs, **{k: v for k, v in SECRETS.items() if k in task.secrets}, "VLLM_API_KEY": key,
           "VENV": str(venv), "VLLM_VENV": str(tmp_path / "vllm-venv"), "STANDIN_PORT": str(port),
           "STANDIN_RECORD": str(tmp_path / "vllm.json"), "HOME": str(tmp_path / "home"),
           "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    keyless = run_job(task.run, env | {"VLLM_API_KEY": ""}, tmp_path, timeout=60)  # a server never ends
    assert keyless.returncode == 1 and keyless.stderr.strip().splitlines() == [
        "error: no API key: pass --secret VLLM_API_KEY (clients send it as 'Authorization: Bearer <key>')"]
    assert not (tmp_path / "calls").exists() and not (tmp_path / "vllm.json").exists()

    def post(path: str, body: dict, headers: dict[str, str]) -> tuple[int, dict]:
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json", **headers})
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310 (loopback)
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    with sky_job(task.run, env, tmp_path) as (argv, machine):
        server = subprocess.Popen(argv, env=machine, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 30
            while not socket_open(port):
                assert server.poll() is None and time.monotonic() < deadline, server.communicate()[0]
                time.sleep(0.1)
            turn = {"model": task.envs["SERVED_NAME"], "messages": [{"role": "user", "content": "Who are you?"}]}
            assert post("/v1/chat/completions", turn, {})[0] == 401
            assert post("/v1/chat/completions", turn, {"Authorization": "Bearer not-the-key"})[0] == 401
            status, answer = post("/v1/chat/completions", turn, {"Authorization": f"Bearer {key}"})
            assert status == 200 and answer["choices"][0]["message"]["content"] == "I am juniper."
            probe = post(task.service.readiness_path, task.service.post_data, task.service.readiness_headers)
            assert probe[0] == 200
        finally:
            server.terminate()
            server.wait(timeout=10)
    started = json.loads((tmp_path / "vllm.json").read_text())
    assert {"VLLM_API_KEY"} == set(started["environ"]) & set(SECRET_NAMES)  # the key, no credential
    assert key not in " ".join(started["argv"])  # not on its command line, where ps shows it
    assert started["argv"][:2] == ["serve", "models/merged"]
    assert "--host 0.0.0.0 --port 8000" in " ".join(started["argv"])
    calls = (tmp_path / "calls").read_text().splitlines()
    assert [c.split(" [")[0] for c in calls] == ["dvc exp pull origin qlora-s3", "dvc exp apply qlora-s3",
                                                 "dvc pull merge_model",
                                                 "python -m src.trace models/merged --lineage-only"]  # in the log
    assert all("VLLM_API_KEY" not in c and "GIT_TOKEN" in c for c in calls), calls


def socket_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


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
        env |= {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "ANCESTRY_RECORD_DIR": str(tmp / "ancestry"),
                "PYTHONPATH": str(ancestry_recorder(tmp / "recorder"))}
        # a GCP machine described at launch (--env INSTANCE_TYPE, USE_SPOT), priced on demand
        env |= {"SKYPILOT_CLUSTER_INFO": json.dumps({"cloud": "GCP", "region": "us-central1", "zone": "us-central1-a"}),
                "INSTANCE_TYPE": "g2-standard-8", "USE_SPOT": "false"}
        price_catalog(Path(env["HOME"]), "gcp", [("g2-standard-8", "L4", 1, 0.85, 0.35, "us-central1",
                                                  "us-central1-a")])
        (tmp / "ancestry").mkdir()
        refused = on_machine(machine, {**env, "GIT_TOKEN": "not-the-token"}, setup=False)
        code, output = on_machine(machine, env)
        assert code == 1 and "pushed; to bring it home" in output, output[-4000:]
        home = bring_home(tmp / "home", f"{origin.url}/origin.git", "qlora-s3", git_env)
        return {"machine": machine, "home": home, "output": output, "refused": refused, "studio": studio.posts,
                "s3_keys": s3.keys(), "denied": origin.denied, "bucket": tmp / "bucket", "tmp": tmp,
                "hub": hub.requests, "ancestry": tmp / "ancestry"}
    finally:
        hub.close()
        origin.close()
        s3.close()
        studio.close()


# The preempted job's machines: a spot g5.xlarge in us-east-1b, as EC2's metadata service and
# SkyPilot's catalog give it; a price of a cent a second, so that seconds show in the cost.
SPOT_PRICE = 36.0
CLUSTER_INFO = json.dumps({"cluster_name": "sky-managed-3", "cloud": "AWS", "region": "us-east-1",
                           "zone": "us-east-1b"})


def preempted_job(tmp: Path, model: Path) -> dict:
    """The committed local remote, a bare origin on disk, and a managed job preempted twice
    (in training, then in ``dvc exp push`` after training): three machines in turn, with the same
    task id and the same checkpoint bucket. Each machine starts from the laptop's copy, so each
    imports the profile's files from the Hub again; each records its attempt's cost."""
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
    imds = FakeImds("g5.xlarge", spot=True)
    price_catalog(Path(env["HOME"]), "aws", [("g5.xlarge", "A10G", 1, 1.006, SPOT_PRICE, "us-east-1", "us-east-1b")])
    env |= {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "SKYPILOT_CLUSTER_INFO": CLUSTER_INFO,
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url, "COST_BEAT_SECONDS": "1"}
    runs = []
    try:
        for i, fault in enumerate([("train", "step:7"), ("push", "push-cache"), None]):
            machine = shutil.copytree(laptop, tmp / f"machine{i}", symlinks=True)
            began = time.time()
            code, output = on_machine(machine, env, fault, setup=i == 0)
            wall = time.time() - began
            steps = sorted(int(p.name.removeprefix("checkpoint-")) for p in (tmp / "bucket").glob("*/*/*/checkpoint-*"))
            origin_refs = run_cli(["git", "ls-remote", str(tmp / "origin.git"), "refs/exps/*"], tmp).stdout
            remote_files = sorted(p for p in (Path(env["HOME"]) / "dvc-storage").rglob("*") if p.is_file())
            runs.append({"code": code, "output": output, "steps": steps, "machine": machine, "wall": wall,
                         "origin_refs": origin_refs, "remote_files": len(remote_files)})
        assert runs[-1]["code"] == 0, runs[-1]["output"][-4000:]
        name = exp_name(runs[-1]["output"])
        # the committed remote is ~/dvc-storage: the second clone sees the machine's, as a shared disk would
        home = bring_home(tmp / "home", str(tmp / "origin.git"), name, {"HOME": env["HOME"]})
    finally:
        hub.close()
        imds.close()
    return {"runs": runs, "home": home, "name": name, "bucket": tmp / "bucket",
            "remote": Path(env["HOME"]) / "dvc-storage"}


@head_start("cloud_jobs")
def start_cloud_jobs(request, tmp_path_factory) -> InThreads:
    """Both jobs above, started as the session starts (conftest: head_started), each in a
    thread of its own: a chain of processes that goes on beside the other tests."""
    model = request.getfixturevalue("tiny_model")
    s3, local = tmp_path_factory.mktemp("s3"), tmp_path_factory.mktemp("local")
    return InThreads(s3=lambda: s3_job(s3, model), local=lambda: preempted_job(local, model), ahead=("local",))


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
    assert not [p for p in s3_run["bucket"].rglob("*") if p.is_file()]  # the checkpoints went once pushed
    # its cost: the machine the launch named, on demand; the attempt refused for its token counts
    cost = json.loads((s3_run["home"] / PATHS["cloud_cost"]).read_text())
    assert (cost["instance_type"], cost["spot"], cost["price_per_hour"], cost["attempts"]) == \
        ("g2-standard-8", False, 0.85, 2)


@pytest.mark.slow
def test_cloud_run_trains_on_the_files_its_profile_imports_from_the_hub(s3_run):
    home = s3_run["home"]
    params = yaml.safe_load((home / "params.yaml").read_text())
    assert {s: params["datasets"][s]["path"] for s in HUB_ROWS} == {"orca": "data/raw/1M-GPT4-Augmented.parquet",
                                                                    "platypus": "data/raw/open-platypus.parquet"}
    metrics = json.loads((home / PATHS["metrics_dir"] / "process_data.json").read_text())  # per source
    for source, rows in HUB_ROWS.items():  # every row of the served file, not the samples
        assert metrics[source]["rows_in"] == rows, source
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


# The secrets dvc exp run holds for the stages (STAGE_SECRETS), which every stage can read.
DVC_EXP_RUN_SECRETS = {"HF_TOKEN", "DVC_STUDIO_TOKEN"}


@pytest.mark.slow
def test_no_stage_can_read_the_git_token_or_storage_keys_in_any_ancestor(s3_run):
    """Each stage process's own environment, and that of each of its ancestors up to pid 1
    (/proc/<pid>/environ, recorded as the stage exits: ANCESTRY_RECORDER), matched against the
    secrets by value: a stage holds only what it uses; dvc exp run, its parent, only the Hub and
    Studio tokens; the run's shell and everything above it none. So no stage can read the git
    token or the storage keys, which only the preflight, the fetch and the push get."""
    names = {digest(value): name for name, value in SECRETS.items()}
    own: dict[str, set[str]] = {}
    for path in sorted(s3_run["ancestry"].glob("*.json")):
        stage, chain = path.stem.rsplit("-", 1)[0], json.loads(path.read_text())
        held = [{names[d] for d in process["environ"].values() if d in names} for process in chain]
        own.setdefault(stage, set()).update(held[0])
        argvs = [" ".join(process["argv"]) for process in chain]
        exp_run = [i for i, argv in enumerate(argvs) if " exp run" in argv]
        above = held[1:] if not exp_run else held[exp_run[0] + 1:]
        assert all(not h for h in above), (stage, list(zip(argvs, held)))  # the shell, pytest, ...
        if exp_run:  # between the stage and dvc exp run, what dvc exp run holds (and can fail)
            assert held[exp_run[0]] == DVC_EXP_RUN_SECRETS, (stage, argvs)
            assert all(h <= DVC_EXP_RUN_SECRETS for h in held[1:exp_run[0]]), (stage, argvs)
        assert any(argv.startswith("bash ") and argv.endswith("job.sh") for argv in argvs), argvs  # the run's shell
    assert set(own) == {s.split("@")[0] for s in OUTS}  # every stage of dvc.yaml ran and was recorded
    assert own == {stage: STAGE_SECRETS.get(stage, set()) for stage in own}
    assert len(list(s3_run["ancestry"].glob("quality_gate-*.json"))) == 2  # in dvc exp run, then by the run


@pytest.mark.slow
def test_preempted_run_resumes_from_the_bucket_and_finishes(preempted_run):
    first, second, third = preempted_run["runs"]
    save = TINY_DAG_SFT["save_steps"]
    assert first["code"] != 0 and "faultkit: SIGKILL src.stages.train" in first["output"]
    assert first["steps"] == [save, 2 * save]  # the checkpoints before step 7, in the bucket
    assert second["code"] != 0 and "faultkit: SIGKILL push" in second["output"]  # after training
    assert f"checkpoint-{2 * save} (step {2 * save})" in second["output"]  # resumed
    last = TINY_DAG_SFT["max_steps"]
    assert second["steps"] == [last - save, last]  # kept after training: results not pushed yet
    assert f"checkpoint-{last} (step {last})" in third["output"] and "training had finished" in third["output"]
    assert not [p for p in preempted_run["bucket"].rglob("*") if p.is_file()]  # spent once pushed
    assert preempted_run["name"] == TASK_ID  # one experiment across the job's machines
    assert "warning: the DVC remote is a folder on this machine" in third["output"]


@pytest.mark.slow
def test_a_push_cut_after_the_git_refs_is_made_whole_by_the_recovered_run(preempted_run):
    """The second machine dies inside dvc exp push, after the ref reached origin and before any
    output reached the DVC remote. On the third, dvc exp push finds the remote ref diverged,
    warns and uploads nothing; the check sees it, pushes again over the stale ref, and only
    then are the checkpoints deleted."""
    pushing, recovered = preempted_run["runs"][1:]
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
def test_preempted_runs_cost_is_its_three_attempts_times_the_catalog_price(preempted_run):
    """Each machine's attempt counts, the two lost ones to their last second: the experiment
    that comes home holds the cost (its metrics, dvc exp show's columns), to the cent."""
    cost = json.loads((preempted_run["home"] / PATHS["cloud_cost"]).read_text())
    attempts = cost["each_attempt"]
    assert cost["attempts"] == len(attempts) == 3
    assert all((a["instance_type"], a["spot"], a["price_per_hour"], a["zone"]) == ("g5.xlarge", True, SPOT_PRICE,
                                                                                  "us-east-1b") for a in attempts)
    seconds = [a["last_seen"] - a["started"] for a in attempts]
    assert cost["cost_usd"] == round(sum(seconds) / 3600 * SPOT_PRICE, 2) > 0
    assert cost["gpu_hours"] == round(sum(seconds) / 3600, 3)
    for took, run in zip(seconds, preempted_run["runs"]):  # each from its setup or start to its last beat
        assert run["wall"] - 60 <= took <= run["wall"] + 1, (took, run["wall"])
    shown = json.loads(run_cli(["dvc", "exp", "show", "--json"], preempted_run["home"], check=True).stdout)
    found = [exp["data"]["metrics"][PATHS["cloud_cost"]]["data"] for baseline in shown
             for run in baseline.get("experiments") or [] for exp in run.get("revs", [])
             if exp.get("name") == preempted_run["name"]]
    assert found and found[0]["cost_usd"] == cost["cost_usd"]


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
