"""Profiles (profiles/*.yaml): the -S options come out as DVC parses them, a bad profile fails by
key, and the raw files a profile names are brought in from a stand-in Hub at a pinned commit."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import yaml

from src.cloud.profile import as_dvc_applies, hydra_value, load_profile, merged, options, read_yaml
from src.config import validate_params, with_output_paths
from src.errors import PipelineError
from tests.cloudkit import ORCA_COMMIT, PLATYPUS_COMMIT, FakeHub, hub_files
from tests.conftest import ROOT, run_cli

PROFILES = sorted((ROOT / "profiles").glob("*.yaml"))


def repo_copy(tmp_path: Path) -> Path:
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "src/benchmarks", tmp_path / "src/benchmarks")  # the task names are checked there
    return tmp_path


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.stem)
def test_each_profile_gives_options_that_dvc_reads_as_the_profile(profile):
    """On the repository itself, read only: the harness's task index of its tasks folder is made
    once in the session (src.benchmarking), not once per profile."""
    repo = ROOT
    opts = options(profile, repo)
    assert opts[::2] == ["-S"] * (len(opts) // 2)
    overlay, imports = load_profile(profile)
    expected = merged(read_yaml(repo / "params.yaml"), overlay)
    assert as_dvc_applies(repo / "params.yaml", opts[1::2]) == expected
    cfg = validate_params(with_output_paths(expected, repo))
    assert cfg.train.quantized and cfg.train.sft["gradient_checkpointing"] is True  # the GPU path
    # every raw file the profile trains on is one it imports (not a shipped sample)
    raw = {spec.path for spec in (*cfg.datasets.values(), *cfg.align.datasets.values())} - {
        "data/raw/orca_sample.parquet", "data/raw/platypus_sample.parquet", cfg.paths.identity}
    assert raw and raw <= set(imports)
    for target, spec in imports.items():
        if spec["dataset"] == "garage-bAInd/Open-Platypus":
            assert spec["revision"] == PLATYPUS_COMMIT


def test_the_big_profiles_train_on_the_whole_upstream_files():
    for name, model in (("llama2-7b-qlora", "llama-2-7b-chat"), ("llama2-13b-qlora", "llama-2-13b-chat")):
        overlay, imports = load_profile(ROOT / f"profiles/{name}.yaml")
        cfg = validate_params(with_output_paths(merged(read_yaml(ROOT / "params.yaml"), overlay), ROOT))
        assert cfg.fetch_base_model.model == model and len(cfg.fetch_base_model.revision) == 40
        assert {spec["dataset"] for spec in imports.values()} == {"Open-Orca/OpenOrca", "garage-bAInd/Open-Platypus"}
        assert cfg.datasets["orca"].subset_rows is None and cfg.datasets["platypus"].subset_rows is None
        assert {cfg.datasets["orca"].path, cfg.datasets["platypus"].path} == set(imports)


def test_the_preference_profile_extends_the_7b_one(tmp_path):
    base, base_imports = load_profile(ROOT / "profiles/llama2-7b-qlora.yaml")
    overlay, imports = load_profile(ROOT / "profiles/llama2-7b-dpo.yaml")
    assert {k: v for k, v in overlay.items() if k != "align"} == base and imports.items() > base_imports.items()
    cfg = validate_params(with_output_paths(merged(read_yaml(ROOT / "params.yaml"), overlay), ROOT))
    assert cfg.align.method == "dpo" and cfg.align.datasets["orca_pairs"].format == "orca_dpo_pairs"
    assert imports[cfg.align.datasets["orca_pairs"].path]["dataset"] == "Intel/orca_dpo_pairs"
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(PipelineError, match=r"a.yaml: extends: profiles extend each other in a loop"):
        load_profile(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: ../c.yaml\n")
    with pytest.raises(PipelineError, match=r"c.yaml: extends: the file name of a profile beside it"):
        load_profile(tmp_path / "c.yaml")


def test_a_profiles_budget_is_its_own_or_the_one_it_extends_and_never_a_params_key(tmp_path):
    from src.cloud.profile import budget

    (tmp_path / "base.yaml").write_text("max_cost_usd: 40\ntrain: {sft: {max_steps: 5}}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\n")
    (tmp_path / "own.yaml").write_text("extends: base.yaml\nmax_cost_usd: 12.5\n")
    assert (budget(tmp_path / "base.yaml"), budget(tmp_path / "child.yaml"), budget(tmp_path / "own.yaml")) == \
        (40.0, 40.0, 12.5)
    assert budget(ROOT / "profiles/llama2-7b-qlora.yaml") is None
    assert load_profile(tmp_path / "own.yaml")[0] == {"train": {"sft": {"max_steps": 5}}}  # not a -S option
    proc = run_cli([sys.executable, "-m", "src.cloud.profile", str(tmp_path / "own.yaml"), "--budget"], ROOT)
    assert proc.stdout == "12.5\n"
    (tmp_path / "bad.yaml").write_text("max_cost_usd: lots\n")
    with pytest.raises(PipelineError, match=r"bad.yaml: max_cost_usd: a number of dollars above 0, not 'lots'"):
        budget(tmp_path / "bad.yaml")


# Values whose YAML and Hydra readings differ, and strings Hydra's grammar needs quoted.
TRICKY = {
    "train": {"sft": {"learning_rate": 2e-4, "lr_scheduler_type": "yes", "optim": "null",
                      "gradient_checkpointing_kwargs": {"use_reentrant": False}, "max_steps": 7,
                      "warmup_steps": 1e-05, "weight_decay": 0.0}},
    "chat": {"system_prompt": "You're Juniper, a helper: ask = answer, [always], {kind}, 'quoted', \\ too"},
    "sanity_check": {"prompts": ["Hi, there?", "a=b", "It's 2e-4", "true"]},
    "fetch_base_model": {"revision": None, "chat_template": "src/templates/chatml.jinja"},
    "merge_data": {"mix": {"orca": {"share": 0.25}}},
}


def test_tricky_values_survive_dvcs_parsing(tmp_path):
    repo = repo_copy(tmp_path)
    profile = tmp_path / "tricky.yaml"
    text = yaml.safe_dump({**TRICKY, "train": {"sft": {**TRICKY["train"]["sft"], "learning_rate": "LR"}}})
    profile.write_text(text.replace("learning_rate: LR", "learning_rate: 2e-4"))  # as a person writes it
    # a naive reader disagrees with DVC on the file's own text: PyYAML reads 2e-4 as a string
    assert yaml.safe_load(profile.read_text())["train"]["sft"]["learning_rate"] == "2e-4"
    overlay, _ = load_profile(profile)
    assert overlay["train"]["sft"]["learning_rate"] == 2e-4
    opts = options(profile, repo)
    sets = opts[1::2]
    assert "train.sft.learning_rate=0.0002" in sets
    assert "+train.sft.gradient_checkpointing_kwargs={use_reentrant:false}" in sets  # a key params lacks
    assert "+merge_data.mix.orca={share:0.25}" in sets
    applied = as_dvc_applies(repo / "params.yaml", sets)
    assert applied["train"]["sft"]["lr_scheduler_type"] == "yes" and applied["train"]["sft"]["optim"] == "null"
    assert applied["chat"]["system_prompt"] == TRICKY["chat"]["system_prompt"]
    assert applied["sanity_check"]["prompts"] == TRICKY["sanity_check"]["prompts"]
    assert applied["fetch_base_model"]["revision"] is None
    assert applied["train"]["sft"]["warmup_steps"] == 1e-05


@pytest.mark.parametrize("value", [2e-4, "yes", "no", "null", "NULL", "off", "1.5", "007", "a b", "x,y", "",
                                   "$HOME", "*.parquet", "[x]", "'q'", 'say "hi"', True, None, 0, -3, [1, "a b"]])
def test_hydra_value_reads_back_as_itself(value, tmp_path):
    (tmp_path / "params.yaml").write_text("k: 1\n")
    assert as_dvc_applies(tmp_path / "params.yaml", [f"k={hydra_value(value)}"])["k"] == value


@pytest.mark.parametrize(("text", "key"), [
    ("train:\n  lora:\n    r: '16'\n", "train.lora.r"),
    ("train:\n  sft:\n    learning_rate: '2e-4'\n", "train.sft.learning_rate"),
    ("train:\n  eval_records: [16]\n", "train.eval_records"),
    ("bogus:\n  x: 1\n", "bogus"),
    ("data_split:\n  val_fraction: 2\n", "data_split.val_fraction"),
    ("imports:\n  /etc/passwd: {dataset: a/b, revision: main, file: x}\n", "imports./etc/passwd"),
    ("imports:\n  data/raw/x.parquet: {dataset: a/b}\n", "imports.data/raw/x.parquet"),
])
@pytest.mark.slow
def test_a_bad_profile_fails_with_one_line_naming_the_key(tmp_path, text, key):
    repo = repo_copy(tmp_path)
    (tmp_path / "bad.yaml").write_text(text)
    proc = run_cli(["python", "-m", "src.cloud.profile", str(tmp_path / "bad.yaml")], repo,
                   env={"PYTHONPATH": str(ROOT)})
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0], proc.stderr


@pytest.fixture
def hub():
    files = hub_files(ROOT / "data/raw", {"orca": 25, "platypus": 30})
    server = FakeHub(files, {("Open-Orca/OpenOrca", "main"): ORCA_COMMIT})
    yield server, files
    server.close()


@pytest.mark.slow
def test_import_brings_the_profiles_files_at_their_commits(clone, hub):
    server, files = hub
    env = {"HF_ENDPOINT": server.url, "HF_HUB_OFFLINE": "0"}
    proc = run_cli(["python", "-m", "src.cloud.profile", "profiles/llama2-7b-qlora.yaml", "--import"], clone, env=env)
    assert proc.returncode == 0, proc.stderr
    # the branch was looked up once and the download went to its commit, which the .dvc file records
    assert f"Open-Orca/OpenOrca@main is commit {ORCA_COMMIT}" in proc.stderr
    orca = yaml.safe_load((clone / "data/raw/1M-GPT4-Augmented.parquet.dvc").read_text())
    resolved = f"/datasets/Open-Orca/OpenOrca/resolve/{ORCA_COMMIT}/1M-GPT4-Augmented.parquet"
    assert orca["deps"][0]["path"] == f"{server.url}{resolved}"
    platypus = yaml.safe_load((clone / "data/raw/open-platypus.parquet.dvc").read_text())
    assert f"/resolve/{PLATYPUS_COMMIT}/" in platypus["deps"][0]["path"]
    assert (clone / "data/raw/1M-GPT4-Augmented.parquet").read_bytes() == next(iter(files.values()))
    # present now: a second call downloads nothing
    seen = len(server.requests)
    again = run_cli(["python", "-m", "src.cloud.profile", "profiles/llama2-7b-qlora.yaml", "--import"], clone, env=env)
    assert again.returncode == 0 and len(server.requests) == seen and "not imported again" in again.stderr


def test_import_of_a_missing_file_fails_with_one_line(clone, hub):
    server, _ = hub
    profile = clone / "profiles/missing.yaml"
    profile.write_text(f"imports:\n  data/raw/gone.parquet: {{dataset: garage-bAInd/Open-Platypus, "
                       f"revision: {PLATYPUS_COMMIT}, file: gone.parquet}}\n")
    proc = run_cli(["python", "-m", "src.cloud.profile", str(profile), "--import"], clone,
                   env={"HF_ENDPOINT": server.url})
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1
    assert errors[0].startswith("error: data/raw/gone.parquet: dvc import-url ") and "gone.parquet" in errors[0]
    assert not (clone / "data/raw/gone.parquet").exists()
