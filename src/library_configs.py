"""The libraries' configs of a training run (``BitsAndBytesConfig``, ``LoraConfig``, ``SFTConfig``),
built from the ``train`` params and checked field by field against the libraries' own types,
so that a wrong field fails in one line naming its key before any model loads.

    from src.config import load_params
    from src.library_configs import build_configs
    configs = build_configs(load_params(), "models/checkpoints")  # configs.sft, configs.lora, configs.precision
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import json
import types
import typing

from src.config import Params
from src.errors import PipelineError
from src.modeling import compute_dtype, device_kind, load_model, resolve_precision, weights_dtype
from src.throughput import AttentionPath, choose_attention, split_rows

if typing.TYPE_CHECKING:
    import torch
    from peft import LoraConfig
    from trl import SFTConfig


def _type_ok(value, hint) -> bool:
    """Whether a params value fits a library field's annotation (types params cannot hold, such
    as torch.dtype, are left to the library's own checks)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, set) or hint in (list, tuple, set):
        return isinstance(value, list)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return isinstance(value, str)
    return True


def _field_types(cls) -> dict[str, object]:
    """A library config's field annotations: a dataclass's, then its __init__'s parameters (by
    annotation, or by the type of the default where there is none)."""
    hints = {}
    if dataclasses.is_dataclass(cls):
        try:
            hints = typing.get_type_hints(cls)
        except Exception:  # an annotation that does not resolve: the ones that are types
            hints = {f.name: f.type for f in dataclasses.fields(cls) if not isinstance(f.type, str)}
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if name in hints:
            continue
        if p.annotation is not inspect.Parameter.empty and not isinstance(p.annotation, str):
            hints[name] = p.annotation
        elif isinstance(p.default, (bool, int, float, str)):
            hints[name] = float if type(p.default) is float else type(p.default)
    return hints


def check_fields(key: str, cls, fields: dict) -> None:
    """Each of ``fields`` against ``cls``'s annotation; the first wrong one fails in one line
    naming ``key`` (``train.sft``) and the field."""
    hints = _field_types(cls)
    for name, value in fields.items():
        if key == "train.quantization" and name == "bnb_4bit_compute_dtype" and value == "auto":
            continue
        if name in hints and not _type_ok(value, hints[name]):
            wanted = getattr(hints[name], "__name__", None) or str(hints[name]).replace("typing.", "")
            raise PipelineError(f"params.yaml: {key}.{name}: {value!r} ({type(value).__name__}) "
                                f"where {cls.__name__} wants {wanted}")


def check_library_types(tc) -> None:
    """A wrongly typed library field (``learning_rate: "2e-4"``, ``r: "16"``) fails here, with one
    line naming the key, before any model loads: the libraries' configs would take it as given."""
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig
    from trl import SFTConfig

    for key, cls, fields in (("quantization", BitsAndBytesConfig, tc.quantization), ("lora", LoraConfig, tc.lora),
                             ("sft", SFTConfig, tc.sft)):
        check_fields(f"train.{key}", cls, fields)


class LibraryConfigs(typing.NamedTuple):
    """What ``build_configs`` makes of params."""

    dtype: torch.dtype  # the base weights' dtype as loaded (fp32 on CPU, where bf16 is autocast)
    quantization: dict | None  # BitsAndBytesConfig's fields for load_model; None unless train.quantized
    lora: LoraConfig
    sft: SFTConfig
    precision: str  # the precision the math runs in: fp32, bf16 or fp16 (train.precision resolved)
    attention: AttentionPath  # the attention kernel, and whether packed rows share a forward

    @property
    def computes(self) -> str:
        """The precision as the train metrics record it: ``bf16 autocast`` over fp32 weights on CPU."""
        return self.precision + (" autocast" if self.dtype != compute_dtype(self.precision) else "")


def quantization_fields(tc, precision: str) -> dict:
    """BitsAndBytesConfig's fields from ``train.quantization``, the compute dtype ``auto`` resolved."""
    quantization = dict(tc.quantization)
    if quantization.get("bnb_4bit_compute_dtype") == "auto":
        quantization["bnb_4bit_compute_dtype"] = str(compute_dtype(precision)).removeprefix("torch.")
    return quantization


def build_configs(cfg: Params, output_dir: str) -> LibraryConfigs:
    """The library configs from params; a wrong field fails here, naming its key."""
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig
    from trl import SFTConfig

    tc = cfg.train
    check_library_types(tc)
    precision = resolve_precision(tc.precision)
    on_cpu = device_kind() == "cpu"
    if on_cpu and precision == "fp16":
        raise PipelineError("train.precision: fp16 trains on GPUs only; on CPU use auto, bf16 or fp32")
    quantization = quantization_fields(tc, precision)  # checked even when off, so a typo fails today
    attention = choose_attention(tc.attention, device_kind(), tc.sft.get("packing", False))
    built = {}
    for key, make, fields in (
        ("quantization", BitsAndBytesConfig, quantization),
        ("lora", LoraConfig, dict(tc.lora)),
        ("sft", SFTConfig, {
            **split_rows(tc.sft, attention), "output_dir": output_dir, "report_to": "none", "use_cpu": on_cpu,
            "bf16": precision == "bf16", "fp16": precision == "fp16",  # autocast (on CPU over fp32 weights)
            "seed": tc.seed, "save_only_model": False, "include_num_input_tokens_seen": "non_padding",
        }),
    ):
        try:
            built[key] = make(**fields)
        except (TypeError, ValueError) as err:
            raise PipelineError(f"params.yaml: train.{key}: {err}") from err
    return LibraryConfigs(weights_dtype(precision), quantization if tc.quantized else None, built["lora"],
                          built["sft"], precision, attention)


def jsonable(data: dict) -> dict:
    """Library configs hold sets and enums; write them as sorted lists and strings."""
    return json.loads(json.dumps(data, default=lambda o: sorted(o) if isinstance(o, (set, frozenset))
                                 else str(o)))


def check_align_types(align):
    """``align.dpo`` or ``align.kto`` (the one ``align.method`` trains with) against the library's
    field types and its list of loss types; returns (the config class, the fields). Nothing for
    ``none``."""
    from trl import DPOConfig, KTOConfig

    if align.method == "none":
        return None, {}
    cls, fields = {"dpo": (DPOConfig, align.dpo), "kto": (KTOConfig, align.kto)}[align.method]
    check_fields(f"align.{align.method}", cls, fields)
    known = dpo_loss_types() if cls is DPOConfig else cls.__dataclass_fields__["loss_type"].metadata.get("choices", [])
    unknown = [t for t in as_list(fields.get("loss_type", [])) if t not in known]
    if known and unknown:
        raise PipelineError(f"params.yaml: align.{align.method}.loss_type: {', '.join(map(repr, unknown))} is not "
                            f"one of TRL's: {', '.join(known)}")
    return cls, fields


def build_preference_config(cfg: Params, output_dir: str):
    """trl.DPOConfig or trl.KTOConfig (``align.method``) from ``align.dpo`` or ``align.kto``, with
    what the pipeline sets (precision, seed, device, output folder) as ``build_configs`` sets them for
    SFT; a wrong field fails here, naming its key."""
    cls, fields = check_align_types(cfg.align)
    method = cfg.align.method
    precision = resolve_precision(cfg.train.precision)
    on_cpu = device_kind() == "cpu"
    if on_cpu and precision == "fp16":
        raise PipelineError("train.precision: fp16 trains on GPUs only; on CPU use auto, bf16 or fp32")
    try:
        return cls(**{**fields, "output_dir": output_dir, "report_to": "none", "use_cpu": on_cpu,
                      "bf16": precision == "bf16", "fp16": precision == "fp16", "seed": cfg.train.seed,
                      "save_only_model": False})
    except (TypeError, ValueError) as err:
        raise PipelineError(f"params.yaml: align.{method}: {err}") from err


def dpo_loss_types() -> list[str]:
    """The loss types trl.DPOConfig lists in its ``loss_type`` help (TRL does not check them itself)."""
    import re

    from trl import DPOConfig

    return re.findall(r"`'(\w+)'`", DPOConfig.__dataclass_fields__["loss_type"].metadata.get("help", ""))


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def align_attention(cfg: Params) -> str:
    """The attention kernel of preference training, whose batches are padded (no packing):
    flash_attention_2 where train.attention gets it, else sdpa."""
    path = choose_attention(cfg.train.attention, device_kind(), packing=False)
    return path.kernel if path.kernel in ("flash_attention_2", "sdpa", "eager") else "sdpa"


def load_training_base(cfg: Params, dtype, quantization: dict | None, attention: str, gradient_checkpointing: bool):
    """The frozen base model as training loads it: quantized on load for QLoRA, prepared for
    k-bit training (the adapter goes on after)."""
    import torch
    from peft import prepare_model_for_kbit_training

    torch.manual_seed(cfg.train.seed)
    model = load_model(cfg.paths.base_model, dtype, quantization, cfg.fetch_base_model.trust_remote_code,
                       attention=attention)
    if quantization:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    return model
