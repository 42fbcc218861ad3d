"""params.yaml against its schema; dvc.yaml's params against params.yaml; bad params fail by key."""

from __future__ import annotations

import copy

import pytest
import yaml
from dvc.dependency.param import ParamsDependency
from dvc.repo import Repo

from src.config import validate_params
from src.errors import PipelineError
from tests.conftest import ROOT, params_file, repo_params, run_cli


def test_repo_params_pass_schema():
    cfg = validate_params(repo_params())
    assert 0 < cfg.data_split.val_fraction < 1
    assert cfg.generate_identity_data.name


def _lookup(tree: dict, dotted: str):
    node = tree
    for part in dotted.split("."):
        assert isinstance(node, dict) and part in node, f"dvc.yaml names params key {dotted!r}, absent"
        node = node[part]
    return node


def test_every_dvc_yaml_param_exists_in_params_yaml():
    params = repo_params()
    with Repo(str(ROOT)) as repo:
        stages = list(repo.index.stages)
        keys = [k for st in stages for dep in st.deps if isinstance(dep, ParamsDependency)
                for k in dep.params]
    names = {st.addressing for st in stages}
    assert {"generate_identity_data", "process_data", "data_split", "generate_replay_data",
            "merge_data", "evaluate", "quality_gate"} <= names
    assert keys
    for key in keys:
        _lookup(params, key)


def _broken(edit) -> dict:
    raw = copy.deepcopy(repo_params())
    edit(raw)
    return raw


@pytest.mark.parametrize("edit, key", [
    (lambda r: r["data_split"].update(val_frac=0.2), "data_split.val_frac"),
    (lambda r: r.update(trian={}), "trian"),
    (lambda r: r["data_split"].update(val_fraction=0.0), "data_split.val_fraction"),
    (lambda r: r["data_split"].update(val_fraction=1), "data_split.val_fraction"),
    (lambda r: r["data_split"].update(seed="7"), "data_split.seed"),
    (lambda r: r["datasets"]["orca"].update(subset_rows=-5), "datasets.orca.subset_rows"),
    (lambda r: r["datasets"]["orca"].update(subset_rows=10, subset_fraction=0.5), "datasets.orca"),
    (lambda r: r["datasets"]["platypus"].update(subset_fraction=1.5), "datasets.platypus.subset_fraction"),
    (lambda r: r["datasets"]["platypus"].update(max_chars=True), "datasets.platypus.max_chars"),
    (lambda r: r["datasets"]["orca"].update(format="xml"), "datasets.orca.format"),
    (lambda r: r["datasets"]["orca"].pop("path"), "datasets.orca.path"),
    (lambda r: r["datasets"].update({"Bad Name": r["datasets"]["orca"]}), "datasets.Bad Name"),
    (lambda r: r["datasets"].update(replay=r["datasets"]["orca"]), "datasets.replay"),
    (lambda r: r["datasets"].clear(), "datasets"),
    (lambda r: r["merge_data"]["near_duplicates"].update(threshold=1.5), "merge_data.near_duplicates.threshold"),
    (lambda r: r["merge_data"]["near_duplicates"].update(skip_sources=["wiki"]),
     "merge_data.near_duplicates.skip_sources"),
    (lambda r: r["merge_data"]["contamination"].update(action="fix"), "merge_data.contamination.action"),
    (lambda r: r["quality_gate"].update(min_retention=1.5), "quality_gate.min_retention"),
    (lambda r: r["quality_gate"].pop("min_eos_rate"), "quality_gate.min_eos_rate"),
    (lambda r: r["generate_replay_data"].update(sources=["wiki"]), "generate_replay_data.sources"),
    (lambda r: r["generate_replay_data"].update(sources=["identity"]), "generate_replay_data.sources"),
    (lambda r: r["merge_data"]["mix"].update(orca={"rows": -1}), "merge_data.mix.orca.rows"),
    (lambda r: r["merge_data"]["mix"].update(wiki={"rows": 1}), "merge_data.mix"),
    (lambda r: r["generate_identity_data"].update(name="ChatGPT"), "generate_identity_data"),
    (lambda r: r["paths"].pop("identity"), "paths.identity"),
    (lambda r: r["paths"].update(val=r["paths"]["train"]), "paths"),
])
def test_bad_params_fail_naming_the_key(edit, key):
    with pytest.raises(PipelineError) as exc:
        validate_params(_broken(edit))
    message = str(exc.value)
    assert message.startswith("params.yaml: ")
    assert f" {key}" in message or f" {key}:" in message
    assert "\n" not in message


def test_stage_cli_refuses_bad_params_before_work(clone):
    raw = params_file(clone)
    raw["datasets"]["orca"]["subset_rows"] = -1
    (clone / "params.yaml").write_text(yaml.safe_dump(raw))
    proc = run_cli(["python", "-m", "src.stages.process_data"], clone)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: params.yaml: datasets.orca.subset_rows:")
    assert "Traceback" not in proc.stderr
    assert not (clone / repo_params()["paths"]["processed_dir"] / "orca.jsonl").exists()


@pytest.mark.slow
def test_dash_s_override_reaches_the_stage(clone):
    """`dvc exp run -S` writes params.yaml; stages read it through dvc.api, so the value applies."""
    proc = run_cli(["dvc", "exp", "run", "-S", "datasets.orca.subset_rows=7", "process_data"], clone)
    assert proc.returncode == 0, proc.stderr
    lines = (clone / repo_params()["paths"]["processed_dir"] / "orca.jsonl").read_text().splitlines()
    metrics = yaml.safe_load((clone / "data/metrics/process_data.json").read_text())["orca"]
    assert metrics["rows_in"] == 7
    assert len(lines) == metrics["rows_out"] <= 7


def test_an_emoji_written_as_yaml_surrogate_escapes_is_one_character():
    """``"\\ud83e\\udd8a"`` in params.yaml is the two halves of 🦊; every stage sees the character."""
    raw = repo_params()
    raw["chat"]["system_prompt"] = yaml.safe_load(r'"You are Juniper \ud83e\udd8a, \u4f60\u597d"')
    raw["generate_identity_data"]["name"] = yaml.safe_load(r'"Fox \ud83e\udd8a"')
    cfg = validate_params(raw)
    assert cfg.chat.system_prompt == "You are Juniper 🦊, 你好"
    assert cfg.generate_identity_data.name == "Fox 🦊"
    cfg.chat.system_prompt.encode("utf-8")  # a UTF-8 file, a tokenizer or a GGUF can hold it


def test_a_lone_surrogate_in_params_is_one_line_naming_the_key():
    raw = repo_params()
    raw["sanity_check"]["prompts"] = ["fine", yaml.safe_load(r'"half \ud83e of a fox"')]
    with pytest.raises(PipelineError) as err:
        validate_params(raw)
    assert str(err.value) == ("params.yaml: sanity_check.prompts[1]: a lone surrogate '\\ud83e' is half a character; "
                              "write the character itself")
