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

    from src.files import output_folder

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


def stand_in_hub(monkeypatch, repo: Path) -> list[dict]:
    """``snapshot_download`` answered from ``repo``, a folder standing for the Hub repository at
    the asked revision: it copies the files the patterns select, matched as huggingface_hub
    matches them (its own ``filter_repo_objects``). Returns the calls, each with what it fetched."""
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    calls = []

    def snapshot_download(repo_id, revision, token, local_dir, allow_patterns=None, ignore_patterns=None):
        files = sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file())
        fetched = list(filter_repo_objects(files, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns))
        calls.append({"repo_id": repo_id, "revision": revision, "token": token, "patterns": allow_patterns,
                      "ignore": ignore_patterns, "fetched": fetched})
        for rel in fetched:
            (Path(local_dir) / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / rel, Path(local_dir) / rel)
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


# What a Hub repository holds beside a transformers model: other formats of the same weights at
# its top level (Mistral's consolidated.safetensors, pickles, Flax, TF, GGUF), Meta's original
# checkpoint and ONNX exports in folders, training leftovers, the README and licence.
EXTRAS = {"consolidated.safetensors": "model.safetensors", "pytorch_model.bin": b"pickle",
          "original/consolidated.00.pth": b"pickle", "original/params.json": b"{}", "original/tokenizer.model": b"sp",
          "onnx/model.onnx": b"onnx", "onnx/config.json": b"{}", "model-q4_k_m.gguf": b"GGUF",
          "flax_model.msgpack": b"flax", "tf_model.h5": b"tf", "training_args.bin": b"pickle",
          "optimizer.pt": b"pickle",
          "README.md": b"# A model", "LICENSE.txt": b"licence", ".gitattributes": b"*.bin filter=lfs"}


def hub_repo(hub_folder: Path, dest: Path, extras: dict) -> Path:
    """``hub_folder`` as a Hub repository with ``extras`` (path -> bytes, or the name of a file
    of the folder to copy) beside it."""
    repo = shutil.copytree(hub_folder, dest)
    for rel, data in extras.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_bytes((hub_folder / data).read_bytes() if isinstance(data, str) else data)
    return repo


def test_hub_download_pins_revision_and_reads_token_from_env(tmp_path, hub_folder, monkeypatch):
    calls = stand_in_hub(monkeypatch, hub_folder)
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_test")
    cfg = params_in(tmp_path, fetch_base_model={"model": "org/chat-model", "revision": SHA})
    fetch_base_model.main(cfg)
    assert [{k: c[k] for k in ("repo_id", "revision", "token", "patterns")} for c in calls] == \
        [{"repo_id": "org/chat-model", "revision": SHA, "token": "hf_fake_token_for_test",
          "patterns": fetching.HUB_PATTERNS}]
    assert not any("*.bin" in p for p in fetching.HUB_PATTERNS)
    base = Path(cfg.paths.base_model)
    source = json.loads((base / modeling.SOURCE_FILE).read_text())
    assert source["repo"] == "org/chat-model" and source["revision"] == SHA
    assert "hf_fake_token" not in "".join(p.read_text(errors="ignore") for p in base.iterdir() if p.is_file())
    assert modeling.load_tokenizer(base).chat_template


def test_hub_download_fetches_only_what_transformers_loads(tmp_path, hub_folder, monkeypatch):
    """From a repository with every other format and folder beside the model, the download
    takes the top-level config, tokenizer and safetensors weights transformers reads, not a
    second copy of the weights in another format or folder."""
    calls = stand_in_hub(monkeypatch, hub_repo(hub_folder, tmp_path / "repo", EXTRAS))
    cfg = params_in(tmp_path, fetch_base_model={"model": "org/chat-model", "revision": SHA})
    fetch_base_model.main(cfg)
    model_files = sorted(p.name for p in hub_folder.iterdir() if p.is_file())
    assert [c["fetched"] for c in calls] == [sorted([*model_files, "LICENSE.txt"])]
    base = Path(cfg.paths.base_model)
    assert not [p for p in base.rglob("*") if p.is_dir() or p.suffix in (".bin", ".pth", ".pt", ".gguf")]
    assert [p.name for p in base.glob("*.safetensors")] == ["model.safetensors"]


def test_hub_download_with_pickles_allowed_takes_them_only_without_safetensors(tmp_path, hub_folder, monkeypatch):
    """allow_pickle_weights lets fetch convert a repository's pytorch_model*.bin when it has no
    safetensors: they are downloaded then, and only they (not the original/ checkpoint, nor an
    optimizer's or trainer's pickles); a repository with safetensors gives no pickle at all."""
    import torch
    from safetensors.torch import load_file

    calls = stand_in_hub(monkeypatch, hub_repo(hub_folder, tmp_path / "both", EXTRAS))
    cfg = params_in(tmp_path / "a", fetch_base_model={"model": "org/chat-model", "revision": SHA,
                                                       "allow_pickle_weights": True})
    fetch_base_model.main(cfg)
    assert not [f for c in calls for f in c["fetched"] if f.endswith((".bin", ".pt", ".pth"))]

    no_safetensors = {k: v for k, v in EXTRAS.items() if not k.endswith(".safetensors")}
    pickled = hub_repo(hub_folder, tmp_path / "pickled", no_safetensors)
    weights = load_file(pickled / "model.safetensors")
    (pickled / "model.safetensors").unlink()
    torch.save(weights, pickled / "pytorch_model.bin")
    calls = stand_in_hub(monkeypatch, pickled)
    cfg = params_in(tmp_path / "b", fetch_base_model={"model": "org/chat-model", "revision": SHA,
                                                       "allow_pickle_weights": True})
    fetch_base_model.main(cfg)
    assert [f for c in calls for f in c["fetched"] if f.endswith((".bin", ".pt", ".pth"))] == ["pytorch_model.bin"]
    base = Path(cfg.paths.base_model)
    assert not [p for p in base.rglob("*") if p.is_dir() or p.suffix in (".bin", ".pth", ".pt", ".gguf")]
    converted = load_file(base / "model.safetensors")
    assert converted and all(torch.equal(converted[k], v) for k, v in weights.items() if k in converted)


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


@pytest.mark.slow
def test_smollm2_gguf_tokenizer_special_tokens():
    from tests.modelkit import smollm2_tokenizer

    tok = smollm2_tokenizer()  # fetching.gguf_tokenizer(), read once a session
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
