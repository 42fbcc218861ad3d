"""The repository's promises: README and CI agree, outputs are DVC's and git-ignored, DVC is set up."""

from __future__ import annotations

import configparser
import re
import subprocess

from dvc.repo import Repo

from src.config import validate_params
from tests.conftest import ROOT


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(python3 -m venv .+?)\n```", text)


def test_ci_runs_exactly_the_readme_test_command():
    run_cmd, test_cmd = readme_commands()[:2]
    assert run_cmd.endswith("pip install -r requirements.txt && pip install --no-deps -r requirements-nodeps.txt"
                            " && dvc exp run")
    assert "pytest" in test_cmd
    ci_lines = (ROOT / ".ci/run").read_text().splitlines()
    assert ci_lines[-1] == test_cmd
    for var in ("HF_HUB_OFFLINE=1", "TRANSFORMERS_OFFLINE=1", "HF_DATASETS_OFFLINE=1", "HF_HUB_DISABLE_TELEMETRY=1"):
        assert any(var in line for line in ci_lines if line.startswith("export"))


def test_every_stage_output_is_git_ignored_and_untracked():
    with Repo(str(ROOT)) as repo:
        outs = [str(out.fs_path) for stage in repo.index.stages for out in stage.outs]
    assert len(outs) >= 15
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *outs], cwd=ROOT,
                             capture_output=True, text=True).stdout.split()
    assert sorted(ignored) == sorted(outs)
    tracked = subprocess.run(["git", "ls-files", "--", *outs], cwd=ROOT, capture_output=True, text=True).stdout
    assert tracked == ""


def test_dvc_config_has_default_local_remote_and_no_analytics():
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc/config")
    assert config["core"]["analytics"] == "false"
    assert config["core"]["check_update"] == "false"
    remote = config["core"]["remote"]
    url = config[f"'remote \"{remote}\"'"]["url"]
    assert "://" not in url  # a local directory


def test_gpu_profile_is_valid_params(tmp_path):
    from src.cloud.profile import load_profile, merged
    from src.stages.train import build_configs
    from tests.conftest import repo_params

    overlay, imports = load_profile(ROOT / "profiles/llama2-7b-qlora.yaml")
    cfg = validate_params(merged(repo_params(), overlay))
    assert cfg.train.quantized and cfg.fetch_base_model.model == "llama-2-7b-chat"
    # the upstream files, not the samples
    assert {cfg.datasets["orca"].path, cfg.datasets["platypus"].path} == set(imports)
    assert cfg.datasets["orca"].subset_rows is None and cfg.datasets["platypus"].subset_rows is None
    _, quantization, lora, sft = build_configs(cfg, str(tmp_path))
    assert quantization["bnb_4bit_quant_type"] == "nf4" and quantization["bnb_4bit_use_double_quant"]
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (64, 16, 0.1)
    assert (sft.learning_rate, sft.optim, sft.weight_decay, sft.num_train_epochs) == \
        (2e-4, "paged_adamw_32bit", 0.001, 5)
    assert sft.packing and sft.per_device_train_batch_size == 4 and sft.max_length == 1024 and sft.warmup_steps == 0.03
