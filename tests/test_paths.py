"""No params value can make DVC or a stage delete, write or run anything but a stage's own output.

DVC removes a stage's outputs before the stage's code runs, and runs its command in a shell, so
the check must come before DVC: the output paths live in dvc.yaml's vars, DVC itself refuses a
params key (in params.yaml or from ``-S``) that would redefine one, and no params value (a source
name included) is interpolated into a command or an output path. Each attempt below ends non-zero
with the reason, and the clone, its git history, its code, its raw data and a folder outside it
are all still there."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from src.config import output_paths, validate_params
from src.errors import PipelineError
from tests.conftest import ROOT, params_file, repo_params, run_cli

PATHS = repo_params()["paths"]

SUBSTAGE = "@"  # DVC's separator of a foreach stage's name and its key

# (the output's key, the stage that writes it): the deletions the issue reproduced and more
TARGETS = [("merged_model", "merge_model"), ("identity", "generate_identity_data"),
           ("adapter", "train"), ("base_model", "fetch_base_model")]
DANGEROUS = ["models/..", ".", "..", "{outside}", "src", "data/raw", ".git", "models/base/adapter",
             "./models/base", "models//merged", "data/processed/../../src"]


def _intact(clone: Path, outside: Path) -> None:
    for path in (".git/HEAD", "src/config.py", "dvc.yaml", "params.yaml", "data/raw/orca_sample.parquet"):
        assert (clone / path).is_file(), path
    assert (outside / "keep.txt").read_text() == "keep"
    assert run_cli(["git", "status", "--porcelain", "--", "src", "data/raw"], clone).stdout == ""


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "keep.txt").write_text("keep")
    return folder


def _set(params: dict, dotted: str, value: str) -> dict:
    node = params.setdefault("paths", {})
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return params


@pytest.mark.parametrize("value", DANGEROUS)
@pytest.mark.parametrize(("key", "stage"), TARGETS[:2])
def test_an_output_path_in_params_yaml_is_refused_before_anything_is_deleted(clone, outside, key, stage, value):
    value = value.format(outside=outside)
    (clone / "params.yaml").write_text(yaml.safe_dump(_set(params_file(clone), key, value), sort_keys=False))
    proc = run_cli(["dvc", "repro", "-s", stage], clone)
    assert proc.returncode != 0
    assert f"cannot redefine 'paths.{key}'" in proc.stderr, proc.stderr[-2000:]
    assert "Running stage" not in proc.stdout
    _intact(clone, outside)


@pytest.mark.slow
@pytest.mark.parametrize(("key", "stage"), TARGETS)
def test_an_output_path_from_dash_s_is_refused_before_anything_is_deleted(clone, outside, key, stage):
    for option in (f"paths.{key}=models/..", f"+paths.{key}=models/..", f"+paths.{key}={outside}"):
        proc = run_cli(["dvc", "exp", "run", "-S", option, stage], clone)
        assert proc.returncode != 0, option
        assert f"paths.{key}" in proc.stderr and "Running stage" not in proc.stdout, proc.stderr[-2000:]
        run_cli(["git", "checkout", "--", "params.yaml"], clone, check=True)
        _intact(clone, outside)


def test_a_stage_run_outside_dvc_refuses_an_output_path_in_params(clone, outside):
    (clone / "params.yaml").write_text(yaml.safe_dump(_set(params_file(clone), "merged_model", "."), sort_keys=False))
    proc = run_cli(["python", "-m", "src.stages.merge_model"], clone)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [proc.stderr.strip().splitlines()[-1]]
    assert errors[0].startswith("error: params.yaml: cannot be read (")
    assert "cannot redefine 'paths.merged_model'" in errors[0]
    _intact(clone, outside)


@pytest.mark.parametrize("value", [*DANGEROUS, "models", "/tmp/x", "models/merged/", "data\\final", "data/RAW/x",
                                   "data/Raw", "models/Base"])
def test_a_hand_edited_dvc_yaml_output_is_refused_by_every_stage(tmp_path, value):
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    pipeline["vars"][0]["paths"]["merged_model"] = value.format(outside=tmp_path)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(pipeline))
    with pytest.raises(PipelineError) as err:
        paths = output_paths(tmp_path)
        validate_params({**repo_params(), "paths": {**repo_params()["paths"], **paths}})
    assert "merged_model" in str(err.value) and "\n" not in str(err.value)


def test_the_shipped_outputs_are_plain_distinct_and_apart():
    paths = output_paths(ROOT)
    cfg = validate_params(repo_params())
    outs = cfg.paths.outputs()
    assert set(outs) >= {"merged_model", "adapter", "base_model", "identity", "processed_dir", "checkpoints"}
    assert {k: outs[k] for k in ("merged_model", "adapter")} == {k: paths[k] for k in ("merged_model", "adapter")}
    roots = {path.split("/")[0] for path in outs.values()}
    assert roots <= {"data", "models", "dvclive", "sanity_check_result"}


@pytest.mark.slow
def test_an_input_path_that_is_a_folder_fails_with_one_line(clone, outside):
    for value in (".git", ".", str(outside)):
        proc = run_cli(["dvc", "exp", "run", "-S", f"datasets.orca.path={value}", "process_data"], clone)
        assert proc.returncode != 0
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert errors == [f"error: {value}: a folder, not a data file"], proc.stderr[-2000:]
        run_cli(["git", "checkout", "--", "params.yaml"], clone, check=True)
        _intact(clone, outside)


# Source names (the keys of datasets): each reached DVC's removal and the shell when dvc.yaml had a
# foreach over them. The victims are where those outputs pointed (data/processed/<key>.jsonl,
# data/split/<key>/train.jsonl); the marker is what a name run by the shell would create.

def bad_names(tmp: Path) -> list[str]:
    marker = tmp / "marker"
    return ["../../../outside/victim", "a/b", f"{tmp}/absolute", f"$(touch {marker})", f"x;touch {marker}",
            f"`touch {marker}`", "x$HOME", "\u043erca", "ORCA", "", " orca", "a\nb", "orca/../../../../outside/victim"]


@pytest.fixture
def victims(tmp_path: Path, outside: Path) -> list[Path]:
    files = [outside / "victim.jsonl", outside / "victim" / "train.jsonl", outside / "victim" / "val.jsonl"]
    for file in files:
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text("keep")
    return files


def _with_sources(clone: Path, names: list[str]) -> None:
    raw = params_file(clone)
    for name in names:
        raw["datasets"][name] = dict(raw["datasets"]["orca"])
    (clone / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), encoding="utf-8")


def _untouched(clone: Path, outside: Path, victims: list[Path]) -> None:
    assert [v.read_text() for v in victims] == ["keep"] * len(victims)
    assert not (outside.parent / "marker").exists()
    assert not (outside.parent / "absolute.jsonl").exists()
    for folder in (Path(PATHS["processed_dir"]), Path(PATHS["split_dir"])):  # nothing named for a bad source
        assert {p.name for p in (clone / folder).glob("*")} <= {"identity", "orca", "platypus", "identity.jsonl",
                                                                  "orca.jsonl", "platypus.jsonl"}
    _intact(clone, outside)


def _resolved(repo: Path) -> dict[str, tuple[str, list[str]]]:
    """Each stage's command and outputs as DVC resolves dvc.yaml with the clone's params."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        return {s.addressing: (s.cmd, sorted(o.def_path for o in s.outs)) for s in dvc_repo.index.stages}


def test_no_params_value_reaches_a_command_or_an_output_path(clone, tmp_path):
    """Every key and string value of params.yaml replaced: no stage's command or output changes."""
    clean = _resolved(clone)
    _with_sources(clone, bad_names(tmp_path))
    raw = params_file(clone)

    def poison(node):
        if isinstance(node, dict):
            return {k: poison(v) for k, v in node.items()}
        if isinstance(node, list):
            return [poison(v) for v in node]
        return f"../../POISON;$(touch {tmp_path / 'marker'})" if isinstance(node, str) else node

    (clone / "params.yaml").write_text(yaml.safe_dump(poison(raw), sort_keys=False, allow_unicode=True),
                                       encoding="utf-8")
    assert _resolved(clone) == clean
    assert not any(SUBSTAGE in name for name in clean)  # no stage is generated from params


@pytest.mark.parametrize("commands", [
    [["dvc", "repro"], ["dvc", "exp", "run"]],
    [["dvc", "repro", "-s", "data_split"], ["dvc", "repro", "-s", "process_data"],
     ["dvc", "repro", "-f", "-s", "process_data"]]], ids=["whole-dag", "one-stage"])
@pytest.mark.slow
def test_bad_source_names_in_params_yaml_delete_and_run_nothing(clone, tmp_path, outside, victims, commands):
    if "-s" in commands[0]:  # the stages' inputs are there, as on a clone that has run before
        run_cli(["dvc", "repro", "data_split"], clone, check=True)
    names = bad_names(tmp_path)
    _with_sources(clone, names)
    for command in commands:
        proc = run_cli(command, clone)
        assert proc.returncode != 0, command
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "a source name is" in errors[0], (command, proc.stderr[-2000:])
        assert errors[0].count("a source name is") == len(names)  # every bad name, in one line
        _untouched(clone, outside, victims)


@pytest.mark.slow
def test_a_bad_source_name_from_dash_s_deletes_and_runs_nothing(clone, tmp_path, outside, victims):
    for name in ("x$HOME", "ORCA", "a/b", "../../../outside/victim", "\u043erca", f"$(touch {tmp_path / 'marker'})"):
        proc = run_cli(["dvc", "exp", "run", "-S", f"+datasets.{name}={{path: data/raw/orca_sample.parquet, "
                        "format: orca}"], clone)
        assert proc.returncode != 0, name
        assert "a source name is" in proc.stderr or "--set-param" in proc.stderr or "unexpected error" in proc.stderr, \
            proc.stderr[-2000:]  # refused by the schema, or by DVC's own -S grammar
        run_cli(["git", "checkout", "--", "params.yaml"], clone, check=True)
        _untouched(clone, outside, victims)


@pytest.mark.slow
def test_a_stage_named_for_a_source_does_not_exist(clone, tmp_path, outside, victims):
    """``dvc repro -s process_data@<name>`` reached the name's outputs directly; now no such stage exists."""
    name = "../../../outside/victim"
    _with_sources(clone, [name])
    for stage in ("process_data", "data_split"):
        proc = run_cli(["dvc", "repro", "-f", "-s", f"{stage}{SUBSTAGE}{name}"], clone)
        assert proc.returncode != 0 and "Running stage" not in proc.stdout, proc.stdout[-2000:]
    _untouched(clone, outside, victims)


@pytest.mark.slow
def test_queued_experiments_with_bad_source_names_delete_and_run_nothing(clone, tmp_path, outside, victims):
    _with_sources(clone, bad_names(tmp_path))
    run_cli(["git", "commit", "-qam", "bad source names"], clone, check=True)
    option = "+datasets.x$HOME={path: data/raw/orca_sample.parquet, format: orca}"  # one more, from -S
    run_cli(["dvc", "exp", "run", "--queue", "-S", option], clone, check=True)
    proc = run_cli(["dvc", "exp", "run", "--run-all"], clone)  # exits 0 whatever the experiments did
    assert "datasets.x$HOME.[key]: a source name is" in proc.stdout + proc.stderr, proc.stderr[-2000:]
    status = run_cli(["dvc", "queue", "status"], clone, check=True).stdout
    assert status.count("Failed") == 1 and "Success" not in status, status
    _untouched(clone, outside, victims)
