"""No params value can make DVC or a stage delete anything but a stage's own output.

DVC removes a stage's outputs before the stage's code runs, so the check must come before DVC:
the output paths live in dvc.yaml's vars, and DVC itself refuses a params key (in params.yaml or
from ``-S``) that would redefine one. Each attempt below ends non-zero with the reason, and the
clone, its git history, its code, its raw data and a folder outside it are all still there."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from src.config import output_paths, validate_params
from src.errors import PipelineError
from tests.conftest import ROOT, params_file, repo_params, run_cli

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


@pytest.mark.parametrize("value", [*DANGEROUS, "models", "/tmp/x", "models/merged/", "data\\final"])
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


def test_an_input_path_that_is_a_folder_fails_with_one_line(clone, outside):
    for value in (".git", ".", str(outside)):
        proc = run_cli(["dvc", "exp", "run", "-S", f"datasets.orca.path={value}", "process_data@orca"], clone)
        assert proc.returncode != 0
        # DVC's own refusal, or the stage's one line (then DVC's line that the stage failed)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        refused = [line for line in proc.stderr.splitlines() if line.startswith("ERROR:")]
        assert errors == [f"error: {value}: a folder, not a data file"] or (
            not errors and "both a dependency and an output" in refused[0]), proc.stderr[-2000:]
        run_cli(["git", "checkout", "--", "params.yaml"], clone, check=True)
        _intact(clone, outside)
