"""``python -m src.trace``: a GGUF file or a merged folder traced back to the commit that made it,
in a repository with two runs (the second an experiment under refs/exps, as DVC keeps it);
weights changed after export and inputs changed since, one line each."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from src.config import validate_params, with_output_paths
from src.gguf_writer import write_gguf
from src.library_configs import jsonable
from src.lineage import LINEAGE_FILE, data_digests, model_lineage
from src.trace import main
from tests.conftest import ROOT, run_cli
from tests.modelkit import llama2_tokenizer, tiny_model_folder

TRAIN, VAL = "data/final/train.jsonl", "data/final/val.jsonl"


def commit_run(repo, train_text: str, seed: int, message: str) -> dict:
    """Write the data and params of a run, a dvc.lock recording the data's md5 as DVC would,
    commit them; return the lineage merge_model would write for that run."""
    (repo / TRAIN).write_text(train_text)
    (repo / VAL).write_text('{"id": "v"}\n')
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["seed"] = seed
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    cfg = validate_params(with_output_paths(params, repo))
    data = {path: md5 for path, md5 in data_digests(str(repo / TRAIN), str(repo / VAL)).items()}
    data = {f"data/final/{name}": md5 for name, md5 in data.items()}  # as named from the repository
    lock = {"schema": "2.0", "stages": {"train": {"cmd": "python -m src.stages.train",
                                                   "deps": [{"path": p, "md5": m} for p, m in data.items()]}}}
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock))
    run_cli(["git", "add", "-A"], repo, check=True)
    run_cli(["git", "commit", "-qm", message], repo, check=True)
    train_config = {"params": jsonable(cfg.model_dump(include={"fetch_base_model", "chat", "train"})), "data": data}
    return model_lineage({"kind": "hub", "repo": "org/base", "commit": "1" * 40}, train_config,
                         {"summary": {"method": "none"}}, cfg.merge_model.model_dump(mode="json"), "{{ template }}")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """A repository whose main holds run one, and whose experiment seed-one (refs/exps) run two;
    a GGUF file of each run. Returns (repo, {run: (commit, gguf file, lineage)})."""
    tmp_path = tmp_path_factory.mktemp("trace")
    repo = tmp_path / "repo"
    (repo / "data/final").mkdir(parents=True)
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(ROOT / name, repo / name)
    run_cli(["git", "init", "-q", "-b", "main"], repo, check=True)
    folder = tiny_model_folder(tmp_path / "merged", llama2_tokenizer(tmp_path))
    runs = {}
    for run, (text, seed) in {"one": ('{"id": "a"}\n', 0), "two": ('{"id": "b"}\n', 1)}.items():
        lineage = commit_run(repo, text, seed, f"run {run}")
        sha = run_cli(["git", "rev-parse", "HEAD"], repo, check=True).stdout.strip()
        runs[run] = (sha, write_gguf(folder, tmp_path / f"model-{run}.gguf", "f16", "X", lineage=lineage), lineage)
    # run two is an experiment, as dvc exp run leaves it: a ref under refs/exps, main at run one
    sha_two = runs["two"][0]
    run_cli(["git", "update-ref", f"refs/exps/{sha_two[:2]}/{sha_two[2:]}/seed-one", sha_two], repo, check=True)
    run_cli(["git", "reset", "-q", "--hard", runs["one"][0]], repo, check=True)
    return repo, runs


def traced(monkeypatch, capsys, repo, path) -> tuple[int, list[str], str]:
    monkeypatch.chdir(repo)
    code = main([str(path)])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def test_each_file_traces_to_the_commit_that_made_it_and_says_what_changed_since(two_runs, monkeypatch, capsys):
    repo, runs = two_runs
    (sha_one, file_one, lineage_one), (sha_two, file_two, _) = runs["one"], runs["two"]
    code, lines, _ = traced(monkeypatch, capsys, repo, file_one)
    assert code == 0 and lines[1].startswith("weights: tensor data sha256 ") and "as written at export" in lines[1]
    assert f"made by commit {sha_one} (main)" in lines and not any(sha_two in line for line in lines)
    assert f"data.{TRAIN}: {lineage_one['data'][TRAIN]}" in lines
    assert lines[-1] == "inputs: the workspace's data and params are the recorded ones"
    # the experiment's file: its own commit, and the workspace (at run one) differs in one data file and train
    code, lines, _ = traced(monkeypatch, capsys, repo, file_two)
    assert code == 0 and f"made by commit {sha_two} (seed-one)" in lines
    changed = [line for line in lines if line.startswith("changed since: ")]
    assert len(changed) == 2 and changed[0].startswith(f"changed since: {TRAIN} (md5 ")
    assert changed[1] == "changed since: params train (params.yaml gives another digest)"


def test_weights_changed_after_export_are_one_line_and_exit_1(two_runs, tmp_path, monkeypatch, capsys):
    repo, runs = two_runs
    file = shutil.copy(runs["one"][1], tmp_path / "model-one.gguf")
    data = bytearray(file.read_bytes())
    data[-64] ^= 0x10
    file.write_bytes(bytes(data))
    code, lines, _ = traced(monkeypatch, capsys, repo, file)
    from src.gguf_lineage import TENSOR_DIGEST_KEY, read_metadata

    written = read_metadata(runs["one"][1])[TENSOR_DIGEST_KEY]
    (weights,) = [line for line in lines if line.startswith("weights:")]
    assert code == 1 and weights.startswith("weights: changed after export: tensor data sha256 ")
    assert weights.endswith(f", written at export {written}") and written not in weights.split(",")[0]


def test_a_merged_folder_traces_the_same_way_and_a_file_without_lineage_is_one_line(two_runs, tmp_path, monkeypatch,
                                                                                    capsys):
    repo, runs = two_runs
    folder = shutil.copytree(runs["one"][1].parent / "merged", tmp_path / "merged")
    (folder / LINEAGE_FILE).write_text(json.dumps(runs["one"][2]))
    code, lines, _ = traced(monkeypatch, capsys, repo, folder)
    assert code == 0 and f"made by commit {runs['one'][0]} (main)" in lines
    bare = write_gguf(folder, tmp_path / "bare.gguf", "f16", "X")  # no lineage
    code, lines, err = traced(monkeypatch, capsys, repo, bare)
    assert code == 1
    assert err.strip().splitlines()[-1] == (f"error: {bare}: no pipeline.lineage in its metadata (not exported by "
                                            "this pipeline, or before it wrote lineage)")


def test_a_lost_data_file_is_looked_for_in_the_dvc_remote(two_runs, tmp_path, monkeypatch, capsys):
    """A data file training read that neither the workspace nor the DVC cache holds: the line
    says whether the default DVC remote does (then dvc pull brings it) or not (lost)."""
    repo = shutil.copytree(two_runs[0], tmp_path / "repo")
    _, file_one, lineage = two_runs[1]["one"]
    md5 = lineage["data"][TRAIN]
    remote = tmp_path / "remote"
    stored = remote / "files/md5" / md5[:2] / md5[2:]
    stored.parent.mkdir(parents=True)
    stored.write_bytes((repo / TRAIN).read_bytes())
    run_cli(["dvc", "init", "-q"], repo, check=True)
    run_cli(["dvc", "remote", "add", "-d", "store", str(remote)], repo, check=True)
    (repo / TRAIN).unlink()
    code, lines, _ = traced(monkeypatch, capsys, repo, file_one)
    assert code == 0 and lines[-1] == (f"missing: {TRAIN} (md5 {md5}) is neither in the workspace nor in the DVC "
                                       "cache; the DVC remote store holds it (dvc pull)")
    stored.unlink()
    code, lines, _ = traced(monkeypatch, capsys, repo, file_one)
    assert lines[-1].endswith("; nor does the DVC remote store: it is lost")
