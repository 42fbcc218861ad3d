"""fetch_base_model's sources: presets, Hub ids (against a local folder standing in for the
Hub download), local folders, and the errors for each."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from src import fetching, modeling
from src.errors import PipelineError
from src.stages import fetch_base_model
from tests.conftest import ROOT, params_in
from tests.modelkit import chatml_tokenizer, tiny_model_folder

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory) -> Path:
    return tiny_model_folder(tmp_path_factory.mktemp("hub") / "snapshot", chatml_tokenizer())


def test_presets_and_sources():
    assert fetching.resolve_source("smollm2-135m-instruct", None).kind == "gguf"
    llama = fetching.resolve_source("llama-2-7b-chat", SHA)
    assert (llama.kind, llama.location, llama.revision) == ("hub", "meta-llama/Llama-2-7b-chat-hf", SHA)
    assert fetching.resolve_source("llama-2-13b-chat", SHA).location == "meta-llama/Llama-2-13b-chat-hf"
    assert fetching.resolve_source("org/model", SHA).kind == "hub"


@pytest.mark.parametrize("model, revision, message", [
    ("llama-2-7b-chat", None, "fetch_base_model.revision: meta-llama/Llama-2-7b-chat-hf is a Hub model"),
    ("org/model", None, "fetch_base_model.revision: org/model"),
    ("org/model", "main", "fetch_base_model.revision: 'main' is not a commit SHA (40 hex digits; a branch or tag "
                          "can move); look it up with python -c \"from huggingface_hub import HfApi; "
                          "print(HfApi().model_info('org/model', revision='main').sha)\""),
    ("llama-2-7b-chat", SHA[:12], f"fetch_base_model.revision: '{SHA[:12]}' is not a commit SHA"),
    ("org/model", SHA.upper(), "is not a commit SHA"),
    ("./no/such/folder", None, "fetch_base_model.model: './no/such/folder' is not a preset"),
])
def test_source_errors_name_the_key(model, revision, message):
    with pytest.raises(PipelineError) as err:
        fetching.resolve_source(model, revision)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_fetch_records_each_weight_files_sha256_and_load_checks_it(tmp_path, hub_folder):
    import hashlib

    cfg = params_in(tmp_path, fetch_base_model={"model": str(hub_folder)})
    fetch_base_model.main(cfg)
    base = Path(cfg.paths.base_model)
    recorded = json.loads((base / modeling.SOURCE_FILE).read_text())["weights_sha256"]
    assert recorded == {"model.safetensors": hashlib.sha256((base / "model.safetensors").read_bytes()).hexdigest()}
    modeling.load_model(base, None)  # as fetched: loads
    weights = bytearray((base / "model.safetensors").read_bytes())
    weights[-100] ^= 0xFF  # one flipped byte in a tensor: safetensors itself would not notice
    (base / "model.safetensors").write_bytes(bytes(weights))
    with pytest.raises(PipelineError) as err:
        modeling.load_model(base, None)
    assert str(err.value) == (f"{base / 'model.safetensors'}: its sha256 differs from the one fetch recorded in "
                              "source.json (corrupt or changed; run dvc repro fetch_base_model)")


def test_a_truncated_weight_file_is_one_line_at_fetch_and_at_load(tmp_path, hub_folder):
    folder = shutil.copytree(hub_folder, tmp_path / "model")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    cfg = params_in(tmp_path, fetch_base_model={"model": str(folder)})
    with pytest.raises(PipelineError) as err:
        fetch_base_model.main(cfg)
    assert str(err.value).startswith(f"{Path(cfg.paths.base_model).with_name('base.partial') / 'model.safetensors'}: "
                                     "not a readable safetensors file (") and "\n" not in str(err.value)
    assert not Path(cfg.paths.base_model).exists()
    with pytest.raises(PipelineError) as err:  # a folder loaded as it is (no source.json): safetensors' own error
        modeling.load_model(folder, None)
    assert str(err.value).startswith(f"{folder}: cannot read its weights (") and "\n" not in str(err.value)


def test_a_real_safetensors_write_error_is_one_line(tmp_path, hub_folder):
    """A write the OS refuses (here the file-size limit, RLIMIT_FSIZE, failing it as a full disk
    would) reaches us from safetensors as its own SafetensorError, not OSError; the stage turns
    it into the same one line."""
    import resource
    import signal

    from src.records import output_folder

    model = modeling.load_model(hub_folder, None)
    out = tmp_path / "merged"
    limits, handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        with pytest.raises(PipelineError) as err:
            with output_folder(out) as partial:
                resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, limits[1]))
                try:
                    model.save_pretrained(partial)
                finally:
                    resource.setrlimit(resource.RLIMIT_FSIZE, limits)
    finally:
        signal.signal(signal.SIGXFSZ, handler)
    assert str(err.value) == f"{out}: cannot write (File too large)"
    assert err.value.__cause__.__class__.__name__ == "SafetensorError"
    assert not out.exists() and not out.with_name("merged.partial").exists()


def test_hub_download_pins_revision_and_reads_token_from_env(tmp_path, hub_folder, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, revision, token, allow_patterns, local_dir):
        calls.append({"repo_id": repo_id, "revision": revision, "token": token,
                      "patterns": allow_patterns})
        shutil.copytree(hub_folder, local_dir, dirs_exist_ok=True)
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_test")
    cfg = params_in(tmp_path, fetch_base_model={"model": "org/chat-model", "revision": SHA})
    fetch_base_model.main(cfg)
    assert calls == [{"repo_id": "org/chat-model", "revision": SHA, "token": "hf_fake_token_for_test",
                      "patterns": fetching.HUB_PATTERNS}]
    assert not any("*.bin" in p for p in fetching.HUB_PATTERNS)
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
    ("model.safetensors", "no model weights"),
    ("tokenizer.json", "no tokenizer"),
    ("config.json", "no config.json"),
])
def test_incomplete_local_folder(tmp_path, hub_folder, remove, message):
    folder = shutil.copytree(hub_folder, tmp_path / "model")
    (folder / remove).unlink()
    cfg = params_in(tmp_path, fetch_base_model={"model": str(folder)})
    with pytest.raises(PipelineError, match=message):
        fetch_base_model.main(cfg)


def without_template(hub_folder: Path, dest: Path) -> Path:
    folder = shutil.copytree(hub_folder, dest)
    (folder / "chat_template.jinja").unlink()
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_tokenizer_without_chat_template_names_the_params_option(tmp_path, hub_folder):
    folder = without_template(hub_folder, tmp_path / "model")
    cfg = params_in(tmp_path, fetch_base_model={"model": str(folder)})
    with pytest.raises(PipelineError, match="has no chat template; name one in params.yaml with "
                                            "fetch_base_model.chat_template"):
        fetch_base_model.main(cfg)
    assert not Path(cfg.paths.base_model).exists()
    # the option names a shipped template; the fetched folder keeps it for every later stage
    cfg = params_in(tmp_path, fetch_base_model={"model": str(folder), "chat_template": "chatml"})
    fetch_base_model.main(cfg)
    tokenizer = modeling.load_tokenizer(cfg.paths.base_model)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert json.loads((Path(cfg.paths.base_model) / modeling.SOURCE_FILE).read_text())["chat_template"] == "chatml"


def test_chat_template_that_never_emits_eos_is_refused(tmp_path, hub_folder, monkeypatch):
    templates = tmp_path / "templates"  # src/templates, where a template of one's own goes
    shutil.copytree(fetching.TEMPLATES, templates)
    monkeypatch.setattr(fetching, "TEMPLATES", templates)
    template = templates / "no-eos.jinja"
    template.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                        "{% if add_generation_prompt %}assistant: {% endif %}")
    cfg = params_in(tmp_path, fetch_base_model={"model": str(hub_folder), "chat_template": str(template)})
    with pytest.raises(PipelineError, match="does not end an assistant turn with the EOS token '<\\|im_end\\|>'"):
        fetch_base_model.main(cfg)
    cfg = params_in(tmp_path, fetch_base_model={"model": str(hub_folder), "chat_template": "no-such"})
    with pytest.raises(PipelineError, match="chat_template: 'no-such' is neither a shipped template "
                                            "\\(chatml, llama-2, no-eos\\) nor a file"):
        fetch_base_model.main(cfg)


def test_a_template_outside_src_templates_is_refused(tmp_path, hub_folder):
    """DVC reruns fetch_base_model when src/templates changes; a file elsewhere it would not see."""
    template = tmp_path / "mine.jinja"
    template.write_text((fetching.TEMPLATES / "chatml.jinja").read_text())
    cfg = params_in(tmp_path, fetch_base_model={"model": str(hub_folder), "chat_template": str(template)})
    with pytest.raises(PipelineError) as err:
        fetch_base_model.main(cfg)
    assert f"'{template}': put a template of your own in src/templates/" in str(err.value)
    assert "src/templates" in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["fetch_base_model"]["deps"]


def test_an_edited_local_source_folder_is_caught_at_load(tmp_path, hub_folder):
    folder = shutil.copytree(hub_folder, tmp_path / "model")
    cfg = params_in(tmp_path, fetch_base_model={"model": str(folder)})
    fetch_base_model.main(cfg)
    modeling.load_model(cfg.paths.base_model, None)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "rope_theta": 12345.0}))
    with pytest.raises(PipelineError) as err:
        modeling.load_model(cfg.paths.base_model, None)
    assert str(err.value) == (f"{cfg.paths.base_model}: fetched from {folder}, which has changed since; "
                              "run dvc repro -f fetch_base_model")


def test_pickled_weights_refused_unless_params_allow_them(tmp_path, hub_folder):
    import torch
    from safetensors.torch import load_file

    folder = shutil.copytree(hub_folder, tmp_path / "model")
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")
    cfg = params_in(tmp_path, fetch_base_model={"model": str(folder)})
    with pytest.raises(PipelineError, match="pytorch_model.bin.*allow_pickle_weights: true"):
        fetch_base_model.main(cfg)
    cfg = params_in(tmp_path, fetch_base_model={"model": str(folder), "allow_pickle_weights": True})
    fetch_base_model.main(cfg)
    base = Path(cfg.paths.base_model)
    assert not [p.name for p in base.iterdir() if p.suffix in (".bin", ".pt", ".pth")]
    converted = load_file(base / "model.safetensors")
    assert all(torch.equal(converted[k], v) for k, v in weights.items() if k in converted)
    assert "model.embed_tokens.weight" in converted


def test_smollm2_gguf_tokenizer_special_tokens():
    tok = fetching.gguf_tokenizer()
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert tok.pad_token_id != tok.eos_token_id


def test_gguf_file_parsed_once_while_converting(monkeypatch):
    """transformers reads a GGUF file for the config, the weights and the tokenizer: in the
    conversion each file is parsed once, and the reader is the library's again afterwards."""
    import gguf

    made = []
    monkeypatch.setattr(gguf, "GGUFReader", lambda path, *a, **k: made.append(str(path)) or object())
    with fetching.gguf_parsed_once():
        first, again, other = gguf.GGUFReader("a.gguf"), gguf.GGUFReader(Path("a.gguf")), gguf.GGUFReader("b.gguf")
    assert first is again and other is not first and made == ["a.gguf", "b.gguf"]
    assert gguf.GGUFReader("a.gguf") is not first and len(made) == 3
