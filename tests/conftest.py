"""Shared fixtures: offline environment, validated params on temporary paths, a temporary clone."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

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


def cli_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The test environment (the venv's executables first on PATH), plus ``env``."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **(env or {})}


def run_cli(args: list[str], cwd: Path, check: bool = False, env: dict[str, str] | None = None,
            input_text: str | None = None) -> subprocess.CompletedProcess:
    """Run a command with the test environment (the venv's executables first on PATH), plus ``env``;
    ``input_text`` is its stdin."""
    proc = subprocess.run(args, cwd=cwd, env=cli_env(env), capture_output=True, text=True, input=input_text)
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


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: the whole DAG on the real default model, or on simulated "
                                       "cloud machines (minutes); deselect with -m 'not slow'")
