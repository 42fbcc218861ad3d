"""Shared fixtures: offline environment, validated params on temporary paths, a temporary clone,
the tiny model of the whole-DAG runs, and the long runs that start with the session (the slow
tests wait for them, last)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import _pytest.logging
import pytest
import yaml

from src.config import Params, validate_params, with_output_paths

ROOT = Path(__file__).resolve().parents[1]

OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DVC_NO_ANALYTICS": "1",
    "SKYPILOT_DISABLE_USAGE_COLLECTION": "1",
    "GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "test@example.com",
}
os.environ.update(OFFLINE)
# The tiny models' tensors are far too small for a second thread to pay, and torch's threads spin
# while they wait: with two stage processes side by side, or any other load, a tiny training ran
# ten times slower on two threads than on one. One thread each; the real default model's run
# (test_end_to_end.py) gets the threads it would have had (None: torch's default).
REAL_MODEL_THREADS = os.environ.get("OMP_NUM_THREADS")
os.environ["OMP_NUM_THREADS"] = "1"

# As each phase of a test starts, pytest's log capture walks logging's table of loggers without
# the lock that logging takes to add one (_pytest.logging.catching_logs.__enter__, pytest 9): a
# run in a thread (head_start) that makes a logger then fails the phase with "dictionary changed
# size during iteration". The walk is made under that lock.
_enter_catching_logs = _pytest.logging.catching_logs.__enter__


def _catching_logs_under_the_lock(self):
    with logging._lock:
        return _enter_catching_logs(self)


_pytest.logging.catching_logs.__enter__ = _catching_logs_under_the_lock


def repo_params() -> dict:
    """params.yaml as committed, with the output paths of dvc.yaml under ``paths`` (as stages see it)."""
    return with_output_paths(params_file(ROOT), ROOT)


def params_file(repo: Path) -> dict:
    with open(repo / "params.yaml", encoding="utf-8") as f:
        return yaml.safe_load(f)


def set_output_paths(repo: Path, **paths: str) -> None:
    """Point outputs of a clone elsewhere by editing its dvc.yaml's vars (``adapter="out/a"``)."""
    pipeline = yaml.safe_load((repo / "dvc.yaml").read_text())
    pipeline["vars"][0]["paths"].update(paths)
    (repo / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))


def params_in(tmp: Path, **overrides: dict) -> Params:
    """The repository's params with every output path moved under ``tmp``.

    ``overrides`` replace whole sections, e.g. ``params_in(tmp, data_split={...})``.
    """
    raw = repo_params()
    p = raw["paths"]
    outputs = {v: str(tmp / v) for v in p.values()}
    for spec in raw["datasets"].values():  # the raw files stay where they are; a stage's output moves
        spec["path"] = outputs.get(spec["path"], str(ROOT / spec["path"]))
    for key in p:  # every output path
        p[key] = str(tmp / p[key])
    for section, values in overrides.items():
        raw[section] = {**raw[section], **values}
    return validate_params(raw)


def stage_outputs(repo: Path = ROOT) -> dict[str, list[str]]:
    """dvc.yaml's stages as DVC resolves them (``foreach`` expanded, ``${paths.*}`` filled in):
    stage name (``process_data@orca``) -> every output it declares, relative to the repository."""
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    with Repo(str(repo)) as dvc_repo:
        return {stage.addressing: [out.def_path for out in stage.outs]
                for stage in dvc_repo.index.stages if isinstance(stage, PipelineStage)}


# The stages downstream of training: what a change to train's params reruns (not benchmark_base:
# the base's scores depend on the base and the tasks alone).
MODEL_STAGES = {"train", "align", "merge_model", "export_model", "sanity_check", "evaluate", "benchmark",
                "quality_gate"}
# The credentials a stage process may see (the rest are removed as it starts: src/cli.py): the Hub
# token to download, the Studio token for live metrics (train's and align's).
STAGE_SECRETS = {"fetch_base_model": {"HF_TOKEN"}, "train": {"DVC_STUDIO_TOKEN"}, "align": {"DVC_STUDIO_TOKEN"}}


def ran_stages(output: str) -> set[str]:
    """The stages dvc ran, from what ``dvc repro`` or ``dvc exp run`` printed."""
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def cli_env(env: dict[str, str | None] | None = None) -> dict[str, str]:
    """The test environment (the venv's executables first on PATH), plus ``env`` (a value of None
    removes the variable)."""
    merged = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    return {k: v for k, v in merged.items() if v is not None}


def run_cli(args: list[str], cwd: Path, check: bool = False, env: dict[str, str | None] | None = None,
            input_text: str | None = None, timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run a command with the test environment (the venv's executables first on PATH), plus ``env``
    (see cli_env); ``input_text`` is its stdin; past ``timeout`` seconds it is killed and
    ``subprocess.TimeoutExpired`` raised."""
    proc = subprocess.run(args, cwd=cwd, env=cli_env(env), capture_output=True, text=True, input=input_text,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def files_holding(root: Path, values) -> list[str]:
    """``"<file>: <value>"`` for each of ``values`` (secrets, say) found in any file under ``root``,
    git's compressed objects read uncompressed: loose ones inflated, packed ones through
    ``git cat-file --batch-all-objects``."""
    import zlib

    found, wanted = [], [v.encode() for v in values]
    for path in root.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        data = path.read_bytes()
        if path.parent.parent.name == "objects" and len(path.parent.name) == 2:  # a loose git object
            try:
                data += zlib.decompress(data)
            except zlib.error:
                pass
        elif path.suffix == ".pack" and path.parent.name == "pack":
            git_dir = path.parent.parent.parent
            data += subprocess.run(["git", "--git-dir", str(git_dir), "cat-file", "--batch-all-objects", "--batch"],
                                   capture_output=True).stdout
        found += [f"{path}: {v.decode()}" for v in wanted if v in data]
    return found


def make_clone(dest: Path) -> Path:
    """Copy the working tree (tracked and untracked, not ignored files) into a fresh git repo."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        if rel == "dvc.lock":  # a clone starts with no run recorded
            continue
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    run_cli(["git", "init", "-q", "-b", "main"], dest, check=True)
    run_cli(["git", "add", "-A"], dest, check=True)
    run_cli(["git", "commit", "-q", "-m", "clone"], dest, check=True)
    return dest


def use_whole_samples(repo: Path) -> None:
    """Drop the CPU default's row subsets in a clone, so every edge case of the samples is read."""
    params = repo / "params.yaml"
    params.write_text(re.sub(r"subset_rows: \d+", "subset_rows: null", params.read_text()))


def data_only(repo: Path) -> None:
    """Set a clone up for runs of the data stages in seconds: a tiny random model stands in for
    the base (the replay stage depends on it) and replay is off."""
    from tests.modelkit import chatml_tokenizer, tiny_model_folder

    model = tiny_model_folder(repo.parent / "tiny-model", chatml_tokenizer())
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["fetch_base_model"]["model"] = str(model)
    params["generate_replay_data"]["enabled"] = False
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    return make_clone(tmp_path / "repo")


@pytest.fixture(scope="module")
def built_clone(tmp_path_factory) -> Path:
    """A temporary clone on which ``dvc repro merge_data`` has run once (shared by a module), on
    the whole samples, with replay off (see data_only)."""
    repo = make_clone(tmp_path_factory.mktemp("built") / "repo")
    use_whole_samples(repo)
    data_only(repo)
    run_cli(["git", "commit", "-qam", "whole samples, data only"], repo, check=True)
    run_cli(["dvc", "repro", "merge_data"], repo, check=True)
    return repo


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random Llama with the ChatML BPE tokenizer (tests/modelkit.py), saved once: the base
    model of the whole-DAG runs on a clone (``configure_tiny_dag``)."""
    from tests.modelkit import chatml_tokenizer, tiny_model_folder

    return tiny_model_folder(tmp_path_factory.mktemp("model") / "tiny-llama", chatml_tokenizer())


# --- long runs that start with the session ----------------------------------------------------
#
# The slow tests wait for long chains of processes: the real default model's ``dvc exp run``
# (test_end_to_end.py), the simulated cloud jobs (test_cloud.py), the fault chains
# (test_faults.py) and the data-parallel runs (test_distributed.py). Those start as the session
# starts and go on beside the other tests, which run first; the slow tests run last.

HEAD_STARTS: dict[str, tuple[Callable, bool]] = {}
# How much the session gives way to the ``first`` runs (os.nice): the real model's run is the
# longest chain of all, and everything else can wait a little.
YIELD_TO_FIRST = 5


def head_start(fixture: str, first: bool = False):
    """Register ``start(request, tmp_path_factory)``, which starts a long run and returns its
    handle (anything with a ``stop()`` that ends or waits for what is left of the run), and
    make the decorated name the module-scoped fixture ``fixture``, which returns that handle.
    When a selected test uses ``fixture``, the run starts as the session starts
    (``head_started``). ``first`` runs start before the others, and then the session's own
    processes give way to them (``YIELD_TO_FIRST``)."""
    def register(start: Callable):
        HEAD_STARTS[fixture] = (start, first)
        return pytest.fixture(scope="module", name=fixture)(lambda head_started: head_started[fixture])

    return register


# What the whole session writes at its peak, in the temporary folder (the clones, their DVC
# caches, the real default model's run and its exports): measured in docs/testing.md.
SESSION_DISK_GIB = 5


def pytest_report_header(config) -> list[str]:
    """The machine as the tests see it: cores, bf16 (which precision the CPU runs take) and the free
    disk where the tests write, with a warning when it is below what the session needs: a full
    disk fails tests everywhere, at setup, for no reason of their own."""
    from src.modeling import cpu_has_bf16

    where = Path(config.option.basetemp or tempfile.gettempdir())
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free / 2**30
    lines = [f"machine: {len(os.sched_getaffinity(0))} cores, bf16 CPU: {cpu_has_bf16()}, "
             f"{free:.1f} GiB free in {where}"]
    if free < SESSION_DISK_GIB:
        lines.append(f"WARNING: the session writes about {SESSION_DISK_GIB} GiB in {where} and {free:.1f} GiB are "
                     "free: tests will fail at setup when the disk fills")
    return lines


def pytest_collection_modifyitems(items):
    """The slow tests run last: the runs they wait for start with the session (``head_started``)
    and have the other tests' minutes to finish in. Among them, those that wait for no such run
    come first; then those that wait for a ``first`` run: another run still going on then takes
    the cores they leave."""
    firsts = {name for name, (_, first) in HEAD_STARTS.items() if first}

    def rank(item) -> tuple[bool, bool, bool]:
        slow = item.get_closest_marker("slow") is not None
        waits = bool(HEAD_STARTS.keys() & set(item.fixturenames))
        return slow, slow and waits, slow and waits and not firsts & set(item.fixturenames)

    items.sort(key=rank)  # stable: within a rank, the collection's order


@pytest.fixture(scope="session", autouse=True)
def head_started(request, tmp_path_factory) -> dict:
    """The handles of the registered runs (``head_start``) that the selected tests wait for,
    started as the session starts, ``first`` ones first; stopped as it ends."""
    used = {name for item in request.session.items for name in item.fixturenames}
    wanted = sorted((name for name in HEAD_STARTS if name in used), key=lambda name: not HEAD_STARTS[name][1])
    handles = {}
    try:
        for name in wanted:
            start, first = HEAD_STARTS[name]
            handles[name] = start(request, tmp_path_factory)
            if first:
                os.nice(YIELD_TO_FIRST)  # this process and all it starts from now on
        yield handles
    finally:
        for handle in handles.values():
            handle.stop()


class Background:
    """A command (run as by ``run_cli``) that runs while the tests go on: ``result()`` waits for
    it and returns it with its seconds; ``stop()`` kills what is left of it."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str | None] | None = None):
        start = time.monotonic()
        self.cwd = cwd
        self.proc = subprocess.Popen(args, cwd=cwd, env=cli_env(env), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)

        def wait() -> tuple[subprocess.CompletedProcess, float]:
            stdout, stderr = self.proc.communicate()
            return subprocess.CompletedProcess(args, self.proc.returncode, stdout, stderr), time.monotonic() - start

        self.pool = ThreadPoolExecutor(1)
        self.done = self.pool.submit(wait)

    def result(self, check: bool = False) -> tuple[subprocess.CompletedProcess, float]:
        proc, seconds = self.done.result()
        if check and proc.returncode != 0:
            raise AssertionError(f"{proc.args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc, seconds

    def stop(self) -> None:
        if self.proc.poll() is None:  # the session ended first: the command and the stages it started
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.pool.shutdown()


# How much the runs in threads (InThreads) give way to the session's own tests. The session runs
# its tests one at a time, and those that wait for no run (the fast tier, then the slow tests of
# one process at a time) are most of its length: with the runs' processes on an equal footing
# they had a fifth of a core while the runs went on, and then ran alone on one core of two, the
# other idle, for four minutes. Behind the session, the runs take what it leaves, and the tests
# that wait for them find them done or on both cores. A run named ``ahead`` does not give way:
# a chain long enough to be the session's tail when it starts last (the preempted cloud job,
# three machines one after another).
YIELD_TO_SESSION = 5


class InThreads:
    """Functions (of no arguments), each called in a thread of its own, that run while the tests
    go on: ``result(name)`` waits for one and returns its value (or raises its error);
    ``stop()`` waits for them all. Each thread but those named in ``ahead``, and every process
    it starts, gives way to the session (``YIELD_TO_SESSION``: on Linux a thread's nice value is
    its own, and a process inherits the one of the thread that started it)."""

    def __init__(self, ahead: tuple[str, ...] = (), **calls: Callable):
        self.pool = ThreadPoolExecutor(len(calls))
        self.futures = {name: self.pool.submit(self.niced, 0 if name in ahead else YIELD_TO_SESSION, call)
                        for name, call in calls.items()}

    @staticmethod
    def niced(increment: int, call: Callable):
        os.nice(increment)
        return call()

    def result(self, name: str):
        return self.futures[name].result()

    def stop(self) -> None:
        self.pool.shutdown()
