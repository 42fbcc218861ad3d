"""The repository's promises: README and CI agree, the docs' links resolve, outputs are DVC's and git-ignored,
DVC is set up."""

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
    assert test_cmd.endswith("ruff check && python -m pytest")  # the linter passes before the tests run
    for var in ("HF_HUB_OFFLINE=1", "TRANSFORMERS_OFFLINE=1", "HF_DATASETS_OFFLINE=1", "HF_HUB_DISABLE_TELEMETRY=1"):
        assert any(var in line for line in ci_lines if line.startswith("export"))


DOC_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def without_fences(text: str) -> str:
    """Markdown text without its fenced code blocks (a '# comment' there is no heading, a link no link)."""
    return re.sub(r"^(`{3,}|~{3,})[^\n]*\n.*?^\1[ \t]*$", "", text, flags=re.S | re.M)


def heading_anchors(path) -> set[str]:
    """The #anchors GitHub gives a page's headings: lowercase, punctuation removed, spaces to '-', repeats numbered."""
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", without_fences(path.read_text()), flags=re.M):
        heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading counts as its text
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in anchors:
            n += 1
            anchor = f"{slug}-{n}"
        anchors.add(anchor)
    return anchors


def relative_links(path) -> list[str]:
    text = re.sub(r"`[^`\n]*`", "", without_fences(path.read_text()))  # nor in inline code
    targets = re.findall(r"\[[^\]]*\]\(<?([^)\s>]+)>?(?:[ \t]+\"[^\"]*\")?\)", text)
    return [t for t in targets if not re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", t)]  # not http:, mailto:, ...


def test_heading_anchors_follow_github_rules(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Profiles: the GPU runs\n## bench/gpu_check.sh\n"
                    "## Forgetting: retention, leaks and the quality gate\n## Use the model\n## Use the model\n"
                    "```bash\n# Not a heading\n```\n### `dvc exp run` [links](x.md)\n")
    assert heading_anchors(page) == {"profiles-the-gpu-runs", "benchgpu_checksh", "use-the-model", "use-the-model-1",
                                     "forgetting-retention-leaks-and-the-quality-gate", "dvc-exp-run-links"}


def test_every_relative_link_in_readme_and_docs_resolves():
    broken, checked = [], 0
    for page in DOC_PAGES:
        for target in relative_links(page):
            checked += 1
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(ROOT)}: {target}"
            if not file.is_relative_to(ROOT) or not file.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in heading_anchors(file):
                broken.append(f"{where} (no heading with that anchor)")
    assert checked >= 50  # the pages do link to each other: a broken pattern must not pass silently
    assert broken == []


def test_readme_links_every_docs_page():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in relative_links(ROOT / "README.md")}
    assert len(DOC_PAGES) > 1
    assert [p.name for p in DOC_PAGES[1:] if p.resolve() not in linked] == []


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
    from src.library_configs import build_configs
    from tests.conftest import repo_params

    overlay, imports = load_profile(ROOT / "profiles/llama2-7b-qlora.yaml")
    cfg = validate_params(merged(repo_params(), overlay))
    assert cfg.train.quantized and cfg.fetch_base_model.model == "llama-2-7b-chat"
    # the upstream files, not the samples
    assert {cfg.datasets["orca"].path, cfg.datasets["platypus"].path} == set(imports)
    assert cfg.datasets["orca"].subset_rows is None and cfg.datasets["platypus"].subset_rows is None
    configs = build_configs(cfg, str(tmp_path))
    quantization, lora, sft = configs.quantization, configs.lora, configs.sft
    assert quantization["bnb_4bit_quant_type"] == "nf4" and quantization["bnb_4bit_use_double_quant"]
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (64, 16, 0.1)
    assert (sft.learning_rate, sft.optim, sft.weight_decay, sft.num_train_epochs) == \
        (2e-4, "paged_adamw_32bit", 0.001, 5)
    rows_per_step = sft.per_device_train_batch_size * sft.gradient_accumulation_steps  # one per forward without flash
    assert sft.packing and rows_per_step == 4 and sft.max_length == 1024 and sft.warmup_steps == 0.03
