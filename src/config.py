"""The typed schema of ``params.yaml``, checked at the start of every stage.

Every section and key of ``params.yaml`` is declared here once. An unknown key,
a wrong type, an out-of-range value or a contradictory pair of settings fails
at once with a one-line message that names the key, before any heavy work.

    from src.config import load_params
    cfg = load_params()            # reads params.yaml through dvc.api (so `-S` overrides apply)
    cfg.data_split.val_fraction
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from src.errors import PipelineError
from src.formats import FORMATS, PREFERENCE_FORMATS

PARAMS_FILE = "params.yaml"
PIPELINE_FILE = "dvc.yaml"  # its vars name every output path

NonEmptyStr = Annotated[str, Field(min_length=1)]
Seed = Annotated[int, Field(ge=0)]


class Section(BaseModel):
    """Base of every section: unknown keys and type coercion are refused."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Paths(Section):
    identity: NonEmptyStr
    processed_dir: NonEmptyStr
    split_dir: NonEmptyStr
    metrics_dir: NonEmptyStr
    train: NonEmptyStr
    val: NonEmptyStr
    report: NonEmptyStr
    merge_metrics: NonEmptyStr
    base_model: NonEmptyStr
    checkpoints: NonEmptyStr
    adapter: NonEmptyStr
    train_live: NonEmptyStr
    merged_model: NonEmptyStr
    export: NonEmptyStr
    sanity_results: NonEmptyStr
    sanity_report: NonEmptyStr
    evaluation_base: NonEmptyStr
    evaluation: NonEmptyStr
    evaluation_answers: NonEmptyStr
    benchmark_base: NonEmptyStr
    benchmark: NonEmptyStr
    quality_gate: NonEmptyStr
    cloud_cost: NonEmptyStr
    replay: NonEmptyStr
    preference_train: NonEmptyStr
    preference_val: NonEmptyStr
    preference_metrics: NonEmptyStr
    aligned: NonEmptyStr
    align_live: NonEmptyStr

    def processed_file(self, source: str, folder: str | Path | None = None) -> Path:
        """Where ``process_data`` writes a source's records (in ``folder``, a stand-in for
        processed_dir while it is written)."""
        return Path(folder or self.processed_dir) / f"{source}.jsonl"

    def split_file(self, source: str, split: str, folder: str | Path | None = None) -> Path:
        """Where ``data_split`` writes a source's ``train`` or ``val`` records (in ``folder``, a
        stand-in for split_dir while it is written)."""
        return Path(folder or self.split_dir) / source / f"{split}.jsonl"

    def metrics_file(self, name: str) -> Path:
        """Where a data stage writes its row accounting (per source for process_data and data_split)."""
        return Path(self.metrics_dir) / f"{name}.json"

    def outputs(self) -> dict[str, str]:
        """Every path a stage writes, by key (``identity``, ``merged_model``, ...)."""
        return self.model_dump()

    @model_validator(mode="after")
    def _outputs_apart(self) -> Paths:
        """No output is another one, under another one, or holds another one: spelling variants
        (``./models/base``, ``models//base``, ``Models/Base`` on a case-insensitive file system) count
        as the same path."""
        outs = {key: posixpath.normpath(Path(path).as_posix()).casefold() for key, path in self.outputs().items()}
        for key, path in outs.items():
            for other, other_path in outs.items():
                if key < other and (path == other_path or other_path.startswith(path.rstrip("/") + "/")
                                    or path.startswith(other_path.rstrip("/") + "/")):
                    if {key, other} & CONTAINERS and path != other_path:
                        continue  # a folder of outputs holds the outputs named for it (split_dir: its files)
                    given = self.outputs()
                    raise ValueError(f"{key} ({given[key]}) and {other} ({given[other]}) overlap; every output "
                                     "needs a path of its own")
        return self


# Folders that hold outputs written under them by name rather than being outputs themselves.
CONTAINERS = frozenset({"processed_dir", "split_dir", "metrics_dir", "train_live", "align_live"})
# The only top-level folders of the repository that stages may write into (dvc.yaml's vars), and
# the folders inside them that hold inputs.
OUTPUT_ROOTS = ("data", "models", "dvclive", "sanity_check_result")
INPUT_DIRS = ("data/raw",)


class OtherAssistant(Section):
    name: NonEmptyStr
    creator: NonEmptyStr


class IdentityParams(Section):
    name: NonEmptyStr
    creator: NonEmptyStr
    purpose: NonEmptyStr
    others: Annotated[list[OtherAssistant], Field(min_length=1)]
    variants_per_template: Annotated[int, Field(ge=1, le=16)]
    seed: Seed

    @model_validator(mode="after")
    def _not_an_other(self) -> IdentityParams:
        for other in self.others:
            if other.name.casefold() == self.name.casefold():
                raise ValueError(f"others: '{other.name}' is also the configured name")
            if other.creator.casefold() == self.creator.casefold():
                raise ValueError(f"others: '{other.creator}' is also the configured creator")
        return self


SOURCE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def _source_name(name: str) -> str:
    if not SOURCE_NAME.fullmatch(name):
        raise ValueError("a source name is 1 to 64 of a-z, 0-9, '_' and '-', starting with a letter or digit "
                         "(it names the source's files)")
    return name


SourceName = Annotated[str, AfterValidator(_source_name)]


class DatasetSpec(Section):
    """One source of training data: a local file, its format, and which of its rows to keep.

    ``columns`` maps a field of the format (``instruction``, ``output``, ``conversations``...) to
    the file's own column name, for files whose names differ (a CSV of ``question,answer``);
    process_data checks the fields against the format (src/formats.py knows them)."""

    path: NonEmptyStr
    format: Literal[tuple(FORMATS)]  # type: ignore[valid-type]
    columns: dict[NonEmptyStr, NonEmptyStr] = {}
    subset_rows: Annotated[int, Field(ge=0)] | None = None
    subset_fraction: Annotated[float, Field(gt=0, le=1)] | None = None
    max_chars: Annotated[int, Field(gt=0)] = 6000
    seed: Seed = 0

    @model_validator(mode="after")
    def _one_subset_kind(self) -> DatasetSpec:
        if self.subset_rows is not None and self.subset_fraction is not None:
            raise ValueError("subset_rows and subset_fraction are both set; set one, the other to null")
        return self


class SplitParams(Section):
    val_fraction: Annotated[float, Field(gt=0, lt=1)]
    seed: Seed


IDENTITY_SOURCE = "identity"  # generate_identity_data's records; its split keeps each template on one side
REPLAY_SOURCE = "replay"  # the base model's own answers (generate_replay_data): training only, never a dataset
Share = Annotated[float, Field(gt=0, lt=1)]


class MixSpec(Section):
    """How many training rows a source gives: ``rows`` (fewer than it has: a seeded sample; more:
    all of them, repeated), or ``share`` of the whole training set; neither keeps them all."""

    rows: Annotated[int, Field(ge=0)] | None = None
    share: Share | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> MixSpec:
        if self.rows is not None and self.share is not None:
            raise ValueError("rows and share are both set; set one")
        return self


class NearDuplicateParams(Section):
    """MinHash LSH over word shingles of each training record (src/dedup.py)."""

    threshold: Annotated[float, Field(gt=0, le=1)] | None  # estimated Jaccard similarity; null: off
    shingle_words: Annotated[int, Field(ge=1)]
    num_perm: Annotated[int, Field(ge=16, le=1024)]
    skip_sources: list[str]  # sources whose rows are alike by design (identity's wordings)


class ContaminationParams(Section):
    """Word n-gram overlap of training prompts with what the pipeline evaluates on."""

    ngram: Annotated[int, Field(ge=1)]
    action: Literal["report", "drop"]


class MergeParams(Section):
    mix: dict[str, MixSpec]
    near_duplicates: NearDuplicateParams
    contamination: ContaminationParams
    seed: Seed

    @model_validator(mode="after")
    def _shares_leave_room(self) -> MergeParams:
        shares = [m.share for m in self.mix.values() if m.share is not None]
        if shares and sum(shares) >= 1:
            raise ValueError(f"mix: the shares add up to {sum(shares):g}; they must leave room for the "
                             "other sources (below 1)")
        return self


class ReplayParams(Section):
    enabled: bool
    sources: list[str]  # keys of datasets; never identity: the base would answer "I'm SmolLM"
    questions: NonEmptyStr | None
    max_prompts: Annotated[int, Field(ge=0)] | None
    max_new_tokens: Annotated[int, Field(ge=1)]
    batch_size: Annotated[int, Field(ge=1)]
    seed: Seed


class FetchParams(Section):
    model: NonEmptyStr
    revision: NonEmptyStr | None
    trust_remote_code: bool
    chat_template: NonEmptyStr | None
    allow_pickle_weights: bool


class ChatParams(Section):
    system_prompt: NonEmptyStr | None


Scalar = str | int | float | bool | None
LibraryFields = dict[str, Scalar | list[Scalar] | dict[str, Scalar]]  # gradient_checkpointing_kwargs: a dict


RESERVED_SFT_KEYS = frozenset({"output_dir", "report_to", "use_cpu", "bf16", "fp16", "seed",
                               "logging_dir", "run_name", "push_to_hub", "hub_model_id", "hub_token",
                               "include_num_input_tokens_seen"})


def _not_pipeline_owned(fields: LibraryFields) -> LibraryFields:
    owned = sorted(RESERVED_SFT_KEYS & fields.keys())
    if owned:
        raise ValueError(f"{', '.join(owned)} is set by the pipeline; remove it "
                         "(precision: train.precision; seed: train.seed; output_dir: the vars of dvc.yaml)")
    return fields


TrainerFields = Annotated[LibraryFields, AfterValidator(_not_pipeline_owned)]  # a TRL trainer config's fields


class ReplayLossParams(Section):
    """How the replay records (``generate_replay_data``) are trained on: ``ce`` as any record
    (the base's greedy answers as targets), ``kl`` towards the base's whole next-token
    distribution on those answers (src/distill.py), ``weight`` times, ``rows_per_batch`` rows
    beside each training batch."""

    loss: Literal["ce", "kl"]
    weight: Annotated[float, Field(gt=0)]
    rows_per_batch: Annotated[int, Field(ge=1)]


class TrainParams(Section):
    """``lora``, ``quantization`` and ``sft`` are passed to peft.LoraConfig,
    transformers.BitsAndBytesConfig and trl.SFTConfig; the train stage builds them
    first thing, so a wrong field fails before the model loads."""

    seed: Seed
    precision: Literal["auto", "fp32", "bf16", "fp16"]
    attention: Literal["auto", "flash_attention_2", "flex_attention", "sdpa", "eager"]
    eval_records: Annotated[int, Field(ge=1)]
    over_length: Literal["truncate", "drop"]
    distributed: Literal["none", "ddp", "fsdp"]
    replay: ReplayLossParams
    quantization: LibraryFields
    lora: LibraryFields
    sft: TrainerFields

    @model_validator(mode="after")
    def _kl_in_one_process(self) -> TrainParams:
        if self.replay.loss == "kl" and self.distributed != "none":
            raise ValueError(f"replay.loss kl runs in one process (its extra forward passes are not "
                             f"synchronised by {self.distributed}); set replay.loss: ce")
        return self

    @property
    def quantized(self) -> bool:
        return bool(self.quantization.get("load_in_4bit") or self.quantization.get("load_in_8bit"))


ALIGN_METHODS = ("none", "dpo", "kto")


PAIR_KINDS = ("base_answer", "other_identity", "nameless_denial", "leak")  # src/pairs.py explains each


class GeneratedPairParams(Section):
    """The pairs ``preference_data`` builds from what the pipeline already has (src/pairs.py)."""

    kinds: list[Literal[PAIR_KINDS]]  # type: ignore[valid-type]  # [] for none
    max_pairs: Annotated[int, Field(ge=1)] | None  # training pairs, a seeded sample of those kinds; None: all
    max_new_tokens: Annotated[int, Field(ge=1)]  # the base's answers to identity questions, cut here
    batch_size: Annotated[int, Field(ge=1)]


class PreferenceSpec(DatasetSpec):
    """One source of preference data: a local file in one of PREFERENCE_FORMATS (src/pairs.py)."""

    format: Literal[tuple(PREFERENCE_FORMATS)]  # type: ignore[valid-type]


class AlignParams(Section):
    """Preference training after SFT (``align``): ``dpo`` and ``kto`` are passed to trl.DPOConfig
    and trl.KTOConfig, checked against their types before any model loads; ``none`` leaves the
    SFT adapter as it is, and ``merge_model`` takes that."""

    method: Literal[ALIGN_METHODS]  # type: ignore[valid-type]
    datasets: dict[SourceName, PreferenceSpec]  # your preference files; {} for none
    generated: GeneratedPairParams
    val_fraction: Share  # share of the prompts held out (generated identity pairs: data_split's templates)
    seed: Seed  # seeds the generated wordings, the sample and the held-out prompts
    dpo: TrainerFields
    kto: TrainerFields

    @model_validator(mode="after")
    def _some_pairs(self) -> AlignParams:
        if self.method != "none" and not (self.datasets or self.generated.kinds):
            raise ValueError(f"method {self.method} has no pairs to learn from: add align.datasets or "
                             "align.generated.kinds")
        if IDENTITY_SOURCE in self.datasets or REPLAY_SOURCE in self.datasets:
            raise ValueError("datasets: the names identity and replay are taken by the generated pairs")
        return self

    @property
    def enabled(self) -> bool:
        return self.method != "none"


class MergeModelParams(Section):
    adapter_weight: Annotated[float, Field(gt=0, le=1)]


class SanityParams(Section):
    prompts: Annotated[list[NonEmptyStr], Field(min_length=1)]
    max_new_tokens: Annotated[int, Field(ge=1)]
    batch_size: Annotated[int, Field(ge=1)]


class EvaluateParams(Section):
    retention_probes: NonEmptyStr
    identity_questions: NonEmptyStr
    max_new_tokens: Annotated[int, Field(ge=1)]
    batch_size: Annotated[int, Field(ge=1)]


Rate = Annotated[float, Field(ge=0, le=1)]


class BenchmarkTask(Section):
    """One lm-evaluation-harness task (or group) as ``benchmark_base`` and ``benchmark`` score it."""

    num_fewshot: Annotated[int, Field(ge=0)] = 0
    limit: Annotated[int, Field(ge=1)] | None = None  # the first N documents; None: all
    metric: NonEmptyStr = "acc"  # the harness's metric name (acc, acc_norm, exact_match, ...)


class BenchmarkParams(Section):
    tasks: dict[NonEmptyStr, BenchmarkTask]  # empty: the stages record no scores
    tasks_dir: NonEmptyStr | None  # the project's own task YAMLs (the harness's include_path)
    batch_size: Annotated[int, Field(ge=1)]


class GateParams(Section):
    """The fine-tuned model's thresholds; ``quality_gate`` fails the run below any of them."""

    min_identity_accuracy: Rate
    max_identity_leak_rate: Rate
    min_retention: Rate
    min_eos_rate: Rate
    max_benchmark_drop: Annotated[float, Field(ge=0)] | None  # points, the mean over benchmark.tasks; None: no check


# The GGUF types export_model writes, each with the file it is made from: None where the gguf
# package writes it from the merged model (src/gguf_writer.py), else the type whose file
# llama.cpp's quantizer makes it from (the k-quants: from the f16 file).
GGUF_MADE_FROM: dict[str, str | None] = {"f16": None, "bf16": None, "q8_0": None,
                                         "q4_k_m": "f16", "q5_k_m": "f16", "q6_k": "f16"}
GGUF_WRITTEN = tuple(kind for kind, source in GGUF_MADE_FROM.items() if source is None)
GgufType = Literal[tuple(GGUF_MADE_FROM)]  # type: ignore[valid-type]


class ExportParams(Section):
    """``export_model``: the merged model as GGUF files (llama.cpp) and an Ollama Modelfile."""

    gguf: list[GgufType]
    ollama: GgufType | None

    @model_validator(mode="after")
    def _ollama_file_written(self) -> ExportParams:
        if len(set(self.gguf)) != len(self.gguf):
            raise ValueError(f"gguf: a type is named twice ({', '.join(self.gguf)})")
        if self.ollama is not None and self.ollama not in self.gguf:
            raise ValueError(f"ollama: {self.ollama} is not among the GGUF types written (gguf: "
                             f"{', '.join(self.gguf) or 'none'})")
        unmade = [k for k in self.gguf if GGUF_MADE_FROM[k] not in (None, *self.gguf)]  # their source not written
        if unmade:
            source = GGUF_MADE_FROM[unmade[0]]
            k_quants = [k for k in unmade if GGUF_MADE_FROM[k] == source]
            raise ValueError(f"gguf: the k-quants ({', '.join(k_quants)}) are made from the {source} file; "
                             f"add {source}")
        return self


class PublishParams(Section):
    """``python -m src.publish``: where the merged model goes on the Hugging Face Hub."""

    repo_id: Annotated[str, Field(pattern=r"^[\w.-]+/[\w.-]+$")] | None
    private: bool
    revision: NonEmptyStr


class Params(Section):
    paths: Paths
    generate_identity_data: IdentityParams
    datasets: Annotated[dict[SourceName, DatasetSpec], Field(min_length=1)]
    data_split: SplitParams
    generate_replay_data: ReplayParams
    merge_data: MergeParams
    fetch_base_model: FetchParams
    chat: ChatParams
    train: TrainParams
    align: AlignParams
    merge_model: MergeModelParams
    sanity_check: SanityParams
    evaluate: EvaluateParams
    benchmark: BenchmarkParams
    quality_gate: GateParams
    export: ExportParams
    publish: PublishParams

    @model_validator(mode="after")
    def _sources_known(self) -> Params:
        """Every source a setting names is a key of ``datasets`` (or, for the mix, the replay)."""
        sources = sorted(self.datasets)
        if REPLAY_SOURCE in self.datasets:
            raise ValueError(f"datasets.{REPLAY_SOURCE}: the name is taken by generate_replay_data's records")
        train_sources = [*sources, REPLAY_SOURCE]
        for where, names, allowed in (
                ("merge_data.mix", self.merge_data.mix, train_sources),
                ("merge_data.near_duplicates.skip_sources", self.merge_data.near_duplicates.skip_sources,
                 train_sources),
                ("generate_replay_data.sources", self.generate_replay_data.sources,
                 [s for s in sources if s != IDENTITY_SOURCE])):
            unknown = sorted(set(names) - set(allowed))
            if unknown:
                raise ValueError(f"{where}: unknown source {', '.join(unknown)} (sources: {', '.join(allowed)})")
        if self.merge_data.mix and all(self.merge_data.mix.get(s, MixSpec()).share is not None
                                       for s in train_sources):
            raise ValueError("merge_data.mix: every source has a share; give at least one a row count or nothing")
        return self


def format_validation_error(err: ValidationError, source: str = PARAMS_FILE) -> str:
    """One line naming each offending key, e.g. ``params.yaml: data_split.val_fraction: ...``."""
    parts = []
    for e in err.errors():
        key = ".".join(_key_part(part) for part in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        got = "" if isinstance(e["input"], (dict, list)) else f" (got {e['input']!r})"
        parts.append(f"{key}: {msg}{got}" if key else f"{msg}{got}")
    return f"{source}: " + "; ".join(parts)


def _key_part(part: str | int) -> str:
    """A part of a key as written, or quoted when it is empty, has spaces at an end or cannot be
    printed on one line (a source name holding a newline, say)."""
    text = str(part)
    return text if text and text.isprintable() and text.strip() == text else repr(text)


def validate_params(raw: dict, source: str = PARAMS_FILE) -> Params:
    """Check a params mapping against the schema; raise PipelineError naming the key."""
    try:
        return Params.model_validate(whole_characters(raw, source))
    except ValidationError as err:
        raise PipelineError(format_validation_error(err, source)) from err


def whole_characters(node, source: str = PARAMS_FILE, key: str = ""):
    """``node`` with each UTF-16 surrogate pair in its strings joined into the character it spells:
    YAML's ``"\\ud83e\\udd8a"`` escapes give the pair, which no UTF-8 file, tokenizer or GGUF can
    hold; the emoji it means can. A lone surrogate is an error naming the key."""
    if isinstance(node, dict):
        return {k: whole_characters(v, source, f"{key}.{_key_part(k)}" if key else _key_part(k))
                for k, v in node.items()}
    if isinstance(node, list):
        return [whole_characters(v, source, f"{key}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, str) and any("\ud800" <= c <= "\udfff" for c in node):
        try:
            return node.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
        except UnicodeDecodeError as err:
            raise PipelineError(f"{source}: {key}: a lone surrogate {node[err.start // 2]!r} is half a "
                                "character; write the character itself") from err
    return node


def read_pipeline(repo: str | Path | None = None) -> dict:
    """``dvc.yaml`` as written (``${...}`` not filled in); one that cannot be read is a PipelineError."""
    import yaml

    pipeline = Path(repo or ".") / PIPELINE_FILE
    try:
        return yaml.safe_load(pipeline.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise PipelineError(f"{pipeline}: cannot be read ({err})") from err


def output_paths(repo: str | Path | None = None) -> dict:
    """The ``paths`` of ``dvc.yaml``'s vars: where each stage writes. Every one must be a plain
    relative path inside one of OUTPUT_ROOTS (the pipeline file is read as written, so this
    holds for a hand-edited one too)."""
    pipeline = Path(repo or ".") / PIPELINE_FILE
    doc = read_pipeline(repo)
    found = [v["paths"] for v in doc.get("vars") or [] if isinstance(v, dict) and "paths" in v]
    if len(found) != 1 or not isinstance(found[0], dict):
        raise PipelineError(f"{pipeline}: vars must hold one 'paths' mapping (where each stage writes)")
    paths = found[0]
    for key, path in paths.items():
        if not isinstance(path, str) or not _plain_output(path):
            raise PipelineError(f"{pipeline}: vars paths.{key}: {path!r} is not a plain relative path inside "
                                f"{', '.join(OUTPUT_ROOTS)}")
    return paths


def _plain_output(path: str) -> bool:
    """A relative path in its plain spelling, below one of OUTPUT_ROOTS and outside INPUT_DIRS:
    ``models/merged``, not ``./models/merged``, ``models/../src``, ``data/raw``, ``data/RAW/x``
    (the same folder on a case-insensitive file system) or ``/tmp/x``."""
    parts, folded = path.split("/"), path.casefold()
    return (posixpath.normpath(path) == path and not path.startswith("/") and len(parts) >= 2
            and parts[0] in OUTPUT_ROOTS and ".." not in parts and "\\" not in path
            and not any(folded == d or folded.startswith(d + "/") for d in INPUT_DIRS))


def with_output_paths(raw: dict, repo: str | Path | None = None) -> dict:
    """The params mapping with dvc.yaml's output paths added under ``paths``. (An output path set
    in params never gets here: DVC refuses to redefine a var.)"""
    given = raw.get("paths")
    return {**raw, "paths": {**(given if isinstance(given, dict) else {}), **output_paths(repo)}}


def load_params(repo: str | None = None) -> Params:
    """Read ``params.yaml`` through DVC (so ``dvc exp run -S key=value`` applies), add the output
    paths of ``dvc.yaml`` and validate it."""
    import dvc.api
    from dvc.exceptions import DvcException

    try:
        raw = dvc.api.params_show(repo=repo, deps=False)
    except DvcException as err:
        reason = " ".join(str(err).split())  # DVC's "cannot redefine 'paths.x'" spans lines
        raise PipelineError(f"{PARAMS_FILE}: cannot be read ({reason})") from err
    return validate_params(with_output_paths(raw, repo))
