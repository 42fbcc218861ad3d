"""python -m src.publish against a stand-in of the Hub's upload API on 127.0.0.1: the merged
folder arrives whole in one commit on the asked branch, the repository is created private, the
token travels only in the request header, and is written nowhere."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
import yaml

from tests.cloudkit import UploadHub
from tests.conftest import files_holding, run_cli
from tests.modelkit import chatml_tokenizer, tiny_model_folder

TOKEN = f"hf_{secrets.token_hex(12)}"  # made afresh each run: no file holds it beforehand


@pytest.fixture
def hub():
    server = UploadHub()
    yield server
    server.close()


@pytest.fixture
def merged(clone):
    folder = tiny_model_folder(clone / "models/merged", chatml_tokenizer())
    (folder / "README.md").write_text("# Juniper\n\nA model card.\n")
    return folder


def publish(clone, hub, *args, token=TOKEN):
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1"}
    if token:
        env["HF_TOKEN"] = token
    return run_cli(["python", "-m", "src.publish", *args], clone, env=env)


def test_the_merged_folder_arrives_whole_in_one_private_commit(clone, hub, merged):
    proc = publish(clone, hub, "--repo-id", "northwind/juniper-135m")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == f"{hub.url}/northwind/juniper-135m/commit/{hub.COMMIT}"
    assert [(c["name"], c.get("organization"), c.get("visibility")) for c in hub.created] == \
        [("juniper-135m", "northwind", "private")]
    assert set(hub.cards) == {(merged / "README.md").read_text()}  # the card checked as the Hub checks it
    ((repo, revision, summary, files),) = hub.commits
    assert (repo, revision) == ("northwind/juniper-135m", "main") and "Juniper" in summary
    assert files == {p.name: p.read_bytes() for p in merged.iterdir() if p.is_file()}
    assert {"README.md", "model.safetensors", "config.json", "tokenizer.json"} <= set(files)
    # the token: in every request's header, nowhere else
    assert hub.requests and all(r["auth"] == f"Bearer {TOKEN}" for r in hub.requests)
    assert not any(TOKEN.encode() in r["body"] for r in hub.requests)
    assert TOKEN not in proc.stdout + proc.stderr
    assert files_holding(clone, [TOKEN]) == []
    assert files_holding(Path.home() / ".cache" / "huggingface", [TOKEN]) == []  # no token file either


def test_the_gguf_files_and_modelfile_go_in_the_same_commit(clone, hub, merged):
    """With export_model's folder present, its files sit beside the merged folder's in the one
    commit, where llama.cpp, Ollama (hf.co/<repo>) and LM Studio look for GGUF files."""
    from src.export import write_gguf

    export = clone / "models" / "export"
    write_gguf(merged, export / "model-q8_0.gguf", "q8_0", "Juniper")
    (export / "Modelfile").write_text("FROM ./model-q8_0.gguf\n")
    proc = publish(clone, hub, "--repo-id", "northwind/juniper-135m")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ((_, _, _, files),) = hub.commits
    expected = {p.name: p.read_bytes() for folder in (merged, export) for p in folder.iterdir()}
    assert files == expected and {"model-q8_0.gguf", "Modelfile", "model.safetensors"} <= set(files)


def test_params_name_the_repository_branch_and_visibility(clone, hub, merged):
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["publish"] = {"repo_id": "northwind/juniper-public", "private": False, "revision": "release"}
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = publish(clone, hub)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert hub.created[0]["visibility"] == "public"
    assert [c[:2] for c in hub.commits] == [("northwind/juniper-public", "release")]
    assert any(r["path"] == "/api/models/northwind/juniper-public/branch/release" for r in hub.requests)


def test_missing_token_repository_or_model_is_one_line(clone, hub, merged):
    cases = [(publish(clone, hub, "--repo-id", "a/b", token=None),
              "error: HF_TOKEN is not set: a Hub token with write access, from the environment only"),
             (publish(clone, hub),
              "error: params.yaml: publish.repo_id is null; name the Hub repository (or --repo-id)")]
    for path in merged.iterdir():
        path.unlink()
    cases.append((publish(clone, hub, "--repo-id", "a/b"),
                  "error: models/merged: no merged model with its card here (run dvc exp run first)"))
    for proc, line in cases:
        assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1] == line, proc.stderr[-2000:]
    assert hub.requests == []  # nothing was sent
