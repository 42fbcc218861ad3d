"""Loading a fetched model folder the same way in every stage: tokenizer, weights, precision.

``fetch_base_model`` (:mod:`src.fetching`) writes one plain Hugging Face folder; every later
stage loads it, and the merged model, with :func:`load_tokenizer` and :func:`load_model`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

from src.errors import PipelineError
from src.files import file_digest

log = logging.getLogger(__name__)

SOURCE_FILE = "source.json"  # written into the fetched folder: where the model came from
TRAIN_CONFIG_FILE = "train_config.json"  # written beside the adapter: the resolved training config
ALIGN_CONFIG_FILE = "align_config.json"  # written by align beside its adapter (or alone, with align.method none)


def tensor_shapes(path: Path) -> list[list[int]]:
    """The shape of every tensor of a safetensors file, from its header (no tensor is read)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return [f.get_slice(name).get_shape() for name in f.keys()]


def folder_digests(folder: Path) -> dict[str, str]:
    """A quick digest (size, head and tail for big files) of every file of a local model folder."""
    return {p.relative_to(folder).as_posix(): file_digest(p, sampled=True)
            for p in sorted(folder.rglob("*")) if p.is_file() and ".cache" not in p.parts}


def check_weight_digests(folder: Path) -> None:
    """The weights of a fetched folder are the ones fetch recorded (sha256 in source.json), and
    a local folder it was fetched from has not changed since: DVC cannot see a folder outside
    the repository, so this is where an edited one shows (rerun fetch_base_model)."""
    source = folder / SOURCE_FILE
    record = json.loads(source.read_text()) if source.is_file() else {}
    origin = Path(record.get("path") or "")
    if record.get("kind") == "local" and origin.is_dir() and folder_digests(origin) != record.get("files"):
        raise PipelineError(f"{folder}: fetched from {origin}, which has changed since; "
                            "run dvc repro -f fetch_base_model")
    recorded = record.get("weights_sha256")
    for name, digest in (recorded or {}).items():
        path = folder / name
        if not path.is_file():
            raise PipelineError(f"{path}: missing; {SOURCE_FILE} lists it (run dvc repro fetch_base_model)")
        if file_digest(path) != digest:
            raise PipelineError(f"{path}: its sha256 differs from the one fetch recorded in {SOURCE_FILE} "
                                "(corrupt or changed; run dvc repro fetch_base_model)")


def require_tokenizer_files(path: str | Path) -> None:
    if not any((Path(path) / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        raise PipelineError(f"{path}: no tokenizer (tokenizer.json or tokenizer.model)")


def _require_folder(path: str | Path) -> None:
    if not (Path(path) / "config.json").is_file() and not (Path(path) / "tokenizer_config.json").is_file():
        raise PipelineError(f"{path}: not a model folder (run dvc repro, or check paths in params.yaml)")


def load_tokenizer(path: str | Path, trust_remote_code: bool = False, chat_template: str | None = None):
    """The model's tokenizer; it must have a chat template (all formatting goes through it).
    ``chat_template`` (the template's text) replaces the tokenizer's own."""
    from transformers import AutoTokenizer

    _require_folder(path)
    require_tokenizer_files(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise PipelineError(f"{path}: cannot load the tokenizer ({err})") from err
    if chat_template:
        tokenizer.chat_template = chat_template
    if not tokenizer.chat_template:
        raise PipelineError(f"{path}: the tokenizer has no chat template; name one in params.yaml "
                            "with fetch_base_model.chat_template (chatml, llama-2 or a .jinja file)")
    if tokenizer.eos_token is None:
        raise PipelineError(f"{path}: the tokenizer has no EOS token")
    if tokenizer.pad_token is None:
        # Never pad with EOS: take a spare special token when there is one.
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token not in (None, tokenizer.eos_token) \
            else tokenizer.eos_token
    return tokenizer


def device_kind() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with bf16 arithmetic


def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX), by the flags the kernel
    lists; False where there is no /proc/cpuinfo (bf16 there is emulated, slower than fp32)."""
    try:
        text = Path(cpuinfo).read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def resolve_precision(precision: str) -> str:
    """``train.precision`` as this machine runs it: ``auto`` is bf16 on GPUs that support it,
    else fp16; on CPU bf16 where the CPU has bf16 instructions, else fp32. A forced value is kept."""
    import torch

    if precision != "auto":
        return precision
    if device_kind() == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


def compute_dtype(precision: str):
    """The dtype the math runs in (:func:`resolve_precision`): the weights' dtype for inference,
    autocast's for training on CPU."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[resolve_precision(precision)]


def weights_dtype(precision: str):
    """The dtype a trained or merged model's weights are held in: the compute dtype on GPU; fp32
    on CPU, where training computes under bf16 autocast over fp32 weights (a bf16 step is no
    faster without autocast, and merged weights keep full precision)."""
    import torch

    return compute_dtype(precision) if device_kind() == "cuda" else torch.float32


def inference_attention() -> str | None:
    """The attention kernel for generation: eager on CPU (about 15% faster than sdpa's CPU
    kernel on short batched prompts, bench/RESULTS.md), the model's default elsewhere."""
    return "eager" if device_kind() == "cpu" else None


def weights_bytes(path: str | Path, dtype) -> int:
    """The size of a folder's weights once loaded unquantized in ``dtype`` (from the safetensors
    headers: no tensor is read)."""
    import torch

    per_value = torch.empty((), dtype=dtype).element_size()
    return sum(math.prod(shape) * per_value for file in Path(path).glob("*.safetensors")
               for shape in tensor_shapes(file))


def available_memory() -> tuple[int, int]:
    """(free GPU memory of this process's GPU, or 0 without one; RAM available), in bytes."""
    import torch

    gpu = torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else 0
    with open("/proc/meminfo", encoding="ascii") as f:
        info = dict(line.split(":", 1) for line in f)
    return gpu, int(info["MemAvailable"].split()[0]) * 1024


def merge_device(path: str | Path, dtype, headroom: float = 1.2) -> str:
    """Where an unquantized model fits for merging: the GPU, else CPU memory; if neither, one
    line before anything loads (a 13B model in 16-bit needs about 26 GB)."""
    need = weights_bytes(path, dtype) * headroom
    gpu, ram = available_memory()
    if need <= gpu:
        return "cuda"
    if need <= ram:
        return "cpu"
    raise PipelineError(f"{path}: merging needs about {need / 1e9:.1f} GB in {str(dtype).removeprefix('torch.')} "
                        f"(weights and 20% headroom), more than the GPU's free {gpu / 1e9:.1f} GB and the "
                        f"{ram / 1e9:.1f} GB of RAM available; use a machine with more of either "
                        "(docs/training.md: Profiles)")


def load_model(path: str | Path, dtype, quantization: dict | None = None,
               trust_remote_code: bool = False, device: str | None = None, attention: str | None = None):
    """A causal LM in ``dtype``; with ``quantization`` (BitsAndBytesConfig fields), quantized on
    load; ``device`` ``cpu`` keeps it in CPU memory even where there is a GPU; ``attention``
    names transformers' attention implementation (None: the model's default)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    _require_folder(path)
    if not any(Path(path).glob("*.safetensors")):
        raise PipelineError(f"{path}: no model weights (*.safetensors); run dvc repro fetch_base_model")
    check_weight_digests(Path(path))
    kwargs = {"attn_implementation": attention} if attention else {}
    if quantization:
        kwargs["quantization_config"] = BitsAndBytesConfig(**quantization)
    if device_kind() == "cuda" and device != "cpu":
        if os.environ.get("ACCELERATE_USE_FSDP", "").lower() not in ("1", "true"):  # FSDP places its shards
            kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}  # a launcher's process: its GPU
    elif quantization:
        kwargs["device_map"] = "cpu"
    from safetensors import SafetensorError

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code,
                                                     use_safetensors=True, **kwargs)
    except SafetensorError as err:
        raise PipelineError(f"{path}: cannot read its weights ({' '.join(str(err).split())})") from err
    if quantization and device_kind() == "cpu":
        keep_4bit_trainable(model)
    return model


def keep_4bit_trainable(model) -> None:
    """On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit layer's weights for inference the
    first time it runs in eval mode (as the evaluation during training does), and from then on
    computes it with a kernel that has no backward: gradients stop flowing through the frozen
    layers to the LoRA weights below them. Training keeps the trainable layout."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def load_for_inference(path: str | Path, dtype, trust_remote_code: bool = False):
    """Tokenizer and unquantized model of a folder in ``dtype``, as the sanity check, evaluation
    and replay generation use them (the first two with :func:`compute_dtype`: bf16 on CPUs that
    have it, generation about 1.7x faster than fp32, bench/RESULTS.md)."""
    return (load_tokenizer(path, trust_remote_code),
            load_model(path, dtype, None, trust_remote_code, attention=inference_attention()))
