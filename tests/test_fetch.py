"""fetch_base_model's sources: presets, Hub ids (against a local folder standing in for the
Hub download), local folders, and the errors for each."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from src import modeling
from src.errors import PipelineError
from src.stages import fetch_base_model
from tests.conftest import params_in
from tests.modelkit import chatml_tokenizer, tiny_model_folder

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory) -> Path:
    return tiny_model_folder(tmp_path_factory.mktemp("hub") / "snapshot", chatml_tokenizer())


def test_presets_and_sources():
    assert modeling.resolve_source("smollm2-135m-instruct", None).kind == "gguf"
    llama = modeling.resolve_source("llama-2-7b-chat", SHA)
    assert (llama.kind, llama.location, llama.revision) == ("hub", "meta-llama/Llama-2-7b-chat-hf", SHA)
    assert modeling.resolve_source("llama-2-13b-chat", SHA).location == "meta-llama/Llama-2-13b-chat-hf"
    assert modeling.resolve_source("org/model", "main").kind == "hub"


@pytest.mark.parametrize("model, revision, message", [
    ("llama-2-7b-chat", None, "fetch_base_model.revision: meta-llama/Llama-2-7b-chat-hf is a Hub model"),
    ("org/model", None, "fetch_base_model.revision: org/model"),
    ("./no/such/folder", None, "fetch_base_model.model: './no/such/folder' is not a preset"),
])
def test_source_errors_name_the_key(model, revision, message):
    with pytest.raises(PipelineError, match=message.replace(".", r"\.").replace("(", r"\(")):
        modeling.resolve_source(model, revision)


def test_hub_download_pins_revision_and_reads_token_from_env(tmp_path, hub_folder, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, revision, token, allow_patterns, local_dir):
        calls.append({"repo_id": repo_id, "revision": revision, "token": token,
                      "patterns": allow_patterns})
        shutil.copytree(hub_folder, local_dir)
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_test")
    cfg = params_in(tmp_path, fetch_base_model={"model": "org/chat-model", "revision": SHA})
    fetch_base_model.main(cfg)
    assert calls == [{"repo_id": "org/chat-model", "revision": SHA, "token": "hf_fake_token_for_test",
                      "patterns": modeling.HUB_PATTERNS}]
    assert not any("*.bin" in p for p in modeling.HUB_PATTERNS)
    base = Path(cfg.paths.base_model)
    source = json.loads((base / modeling.SOURCE_FILE).read_text())
    assert source["repo"] == "org/chat-model" and source["revision"] == SHA
    assert "hf_fake_token" not in "".join(p.read_text(errors="ignore") for p in base.iterdir() if p.is_file())
    assert modeling.load_tokenizer(base).chat_template


def test_hub_download_offline_is_a_clear_error(tmp_path):
    cfg = params_in(tmp_path, fetch_base_model={"model": "org/chat-model", "revision": SHA})
    with pytest.raises(PipelineError, match=r"org/chat-model@0123.*cannot download"):
        fetch_base_model.main(cfg)
    assert not Path(cfg.paths.base_model).exists()


@pytest.mark.parametrize("remove, message", [
    ("model.safetensors", "no \\*.safetensors weights"),
    ("tokenizer.json", "no tokenizer"),
    ("config.json", "no config.json"),
])
def test_incomplete_local_folder(tmp_path, hub_folder, remove, message):
    folder = shutil.copytree(hub_folder, tmp_path / "model")
    (folder / remove).unlink()
    cfg = params_in(tmp_path, fetch_base_model={"model": str(folder)})
    with pytest.raises(PipelineError, match=message):
        fetch_base_model.main(cfg)


def test_tokenizer_without_chat_template(tmp_path, hub_folder):
    folder = shutil.copytree(hub_folder, tmp_path / "model")
    (folder / "chat_template.jinja").unlink()
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(PipelineError, match="has no chat template"):
        modeling.load_tokenizer(folder)


def test_smollm2_gguf_tokenizer_special_tokens():
    tok = modeling.gguf_tokenizer()
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert tok.pad_token_id != tok.eos_token_id
