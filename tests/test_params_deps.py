"""Each stage depends on exactly the params it reads: every value a stage reads is under a key its
``dvc.yaml`` entry lists in ``params`` (or a change to it would not rerun the stage), and every key
listed there is read, at least in part (or a change to it would rerun the stage for nothing). As
DVC reads the list, ``train`` covers every key under it and ``train.sft.max_length`` that one key.

Every stage runs once, in the order of the DAG, on the tiny random model and the sample data, with
its params recording what it reads (tests/paramskit.py). A params value that dvc.yaml itself puts
into a stage (``${evaluate.retention_probes}`` in its deps) is read by that stage too: DVC reruns
the stage when it changes (the dep is then another path), but records it among the stage's params
(dvc.lock, ``dvc exp show --param-deps``) only when ``params`` declares it.
"""

from __future__ import annotations

import copy
import importlib
import json
import re

import pytest
import yaml

from src.config import IdentityParams, Params, TrainParams, validate_params
from tests.conftest import ROOT, repo_params
from tests.modelkit import TINY_SFT, repo_sft, tiny_params
from tests.paramskit import NOT_PARAMS, Reads, recording

# The stages in the order of the DAG, each run on what the ones before wrote, on the paths that read
# the most: replay on (from the sources), near duplicates on, GGUF files and a Modelfile. Off those
# paths a stage reads less than it declares, and the check would fail there:
# - generate_replay_data reads nothing but ``generate_replay_data.enabled`` when that is false (none
#   of ``chat``, ``train.precision``, ``fetch_base_model.trust_remote_code``);
# - preference_data and align read nothing but ``align.method`` when that is none;
# - merge_data reads no other ``merge_data.near_duplicates`` key while its ``threshold`` is null;
# - export_model reads ``generate_identity_data.name`` only with an ``export.gguf`` type to write, and
#   ``chat.system_prompt`` only with a Modelfile (``export.ollama`` set).
ORDER = ("generate_identity_data", "process_data", "data_split", "fetch_base_model", "generate_replay_data",
         "merge_data", "train", "preference_data", "align", "merge_model", "export_model", "sanity_check",
         "evaluate_base", "evaluate", "benchmark_base", "benchmark", "quality_gate")
# A benchmark task to score (the tiny DAG has none): its first four questions.
FOUR_QUESTIONS = {"tasks": {"general_knowledge": {"limit": 4}}, "tasks_dir": str(ROOT / "src/benchmarks")}
# Two optimizer steps, an evaluation and a checkpoint on the way.
SHORT_SFT = {"max_steps": 2, "eval_steps": 2, "save_steps": 2, "logging_steps": 1}
INTERPOLATION = re.compile(r"\$\{\s*([^}\s]+)\s*\}")


def pipeline_stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def declared(stage: dict) -> list[str]:
    """The params keys a stage lists (all of them keys of params.yaml)."""
    keys = stage.get("params", [])
    assert all(isinstance(key, str) for key in keys), f"params of another file than params.yaml: {keys}"
    return keys


def interpolated(stage: dict) -> set[str]:
    """The params keys that dvc.yaml's ``${...}`` puts into a stage (its vars ``paths`` are not params)."""
    found, todo = set(), [stage]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            todo += node.values()
        elif isinstance(node, list):
            todo += node
        elif isinstance(node, str):
            found |= {key for key in INTERPOLATION.findall(node) if key.split(".")[0] not in NOT_PARAMS}
    return found


def under(key: str, entry: str) -> bool:
    """Whether the params entry ``entry`` covers ``key`` (``train`` covers ``train.sft.max_length``)."""
    return key == entry or key.startswith(entry + ".")


def preference_file(tmp) -> str:
    """A preference source of a few pairs (align.datasets): held out by ``align.val_fraction``."""
    path = tmp / "pairs.jsonl"
    path.write_text("".join(json.dumps({"question": f"{i} + {i}?", "chosen": f"{2 * i}", "rejected": f"{2 * i + 1}"})
                            + "\n" for i in range(10)))
    return path


@pytest.fixture(scope="module")
def reads(tmp_path_factory, tiny_model) -> dict[str, set[str]]:
    """Each stage of ORDER run on recording params: stage name -> the keys it read."""
    tmp = tmp_path_factory.mktemp("params-deps")
    cfg = tiny_params(tmp, tiny_model,
                      train={"sft": {**repo_sft(), **TINY_SFT, **SHORT_SFT}}, benchmark=FOUR_QUESTIONS,
                      align={"method": "dpo", "dpo": {**repo_params()["align"]["dpo"], **SHORT_SFT},
                             "datasets": {"mine": {"path": str(preference_file(tmp)), "format": "orca_dpo_pairs"}}})
    found = {}
    for name in ORDER:
        keys = Reads()
        importlib.import_module(f"src.stages.{name}").main(recording(cfg, keys))
        found[name] = keys
    return found


@pytest.mark.parametrize("name", sorted(pipeline_stages()))
def test_stage_reads_the_params_it_declares(name, reads):
    assert name in reads, f"{name} is not run here: add it to ORDER"
    stage = pipeline_stages()[name]
    entries, read = declared(stage), reads[name] | interpolated(stage)
    problems = [f"{name} reads {key}, which dvc.yaml does not declare"
                for key in sorted(read) if not any(under(key, entry) for entry in entries)]
    problems += [f"{name} declares {entry} but never reads it"
                 for entry in entries if not any(under(key, entry) or under(entry, key) for key in read)]
    assert not problems, "\n".join(problems)


def test_interpolated_params_are_found_and_paths_are_not():
    stage = {"cmd": "python -m x --n ${train.seed}", "deps": ["${paths.train}", "${ evaluate.retention_probes }"],
             "outs": [{"${paths.report}": {"cache": False}}]}
    assert interpolated(stage) == {"train.seed", "evaluate.retention_probes"}


# Each form of read, and what it records.
READ_FORMS = {
    "attribute": (lambda c: c.data_split.seed, {"data_split.seed"}),
    "getattr": (lambda c: getattr(c.quality_gate, "min_retention"), {"quality_gate.min_retention"}),
    "a section reached into": (lambda c: (c.train, c.train.sft, c.datasets["orca"], c.merge_data.mix.get("identity")),
                               set()),
    "a list, whole": (lambda c: c.sanity_check.prompts[0], {"sanity_check.prompts"}),
    "a None value": (lambda c: c.fetch_base_model.revision, {"fetch_base_model.revision"}),
    "paths": (lambda c: (c.paths.train, c.paths.split_file("orca", "val")), set()),
    "[key]": (lambda c: c.train.sft["max_length"], {"train.sft.max_length"}),
    "get": (lambda c: (c.train.sft.get("packing"), c.train.sft.get("no_such_key", 1)),
            {"train.sft.packing", "train.sft.no_such_key"}),
    "in": (lambda c: "packing" in c.train.sft, {"train.sft.packing"}),
    "a section's field of a mapping": (lambda c: c.merge_data.mix["identity"].rows, {"merge_data.mix.identity.rows"}),
    "a property": (lambda c: c.train.quantized, {"train.quantization.load_in_4bit", "train.quantization.load_in_8bit"}),
    "iteration": (lambda c: [source for source in c.datasets], {"datasets"}),
    "items": (lambda c: list(c.train.lora.items()), {"train.lora"}),
    "keys and values": (lambda c: (c.train.lora.keys(), c.train.quantization.values()),
                        {"train.lora", "train.quantization"}),
    "len": (lambda c: len(c.merge_data.mix), {"merge_data.mix"}),
    "dict()": (lambda c: dict(c.train.lora), {"train.lora"}),
    "**": (lambda c: dict(**c.train.lora), {"train.lora"}),
    "{**}": (lambda c: {**c.train.quantization}, {"train.quantization"}),
    "json.dumps": (lambda c: json.dumps(c.train.sft), {"train.sft"}),
    "== of a mapping": (lambda c: c.train.lora == {}, {"train.lora"}),
    "model_dump with include": (lambda c: c.model_dump(include={"chat", "train", "paths"}), {"chat", "train"}),
    "model_dump with exclude": (lambda c: c.export.model_dump(exclude={"ollama"}), {"export.gguf"}),
    "model_dump of a section": (lambda c: c.generate_identity_data.model_dump(), {"generate_identity_data"}),
    "model_dump_json": (lambda c: c.model_dump_json(include={"quality_gate"}), {"quality_gate"}),
    "dict() of a section": (lambda c: dict(c.chat), {"chat"}),
    "== of a section": (lambda c: c.merge_model == c.merge_model, {"merge_model"}),
    "repr": (lambda c: repr(c.fetch_base_model), {"fetch_base_model"}),
    "a section validated as a field": (lambda c: IdentityParams.model_validate(c.generate_identity_data),
                                       {"generate_identity_data.name", "generate_identity_data.creator",
                                        "generate_identity_data.others"}),  # read by its own model validator
    "a copy, then a read": (lambda c: (c.train.model_copy().seed, copy.deepcopy(c.train).sft["optim"],
                                       c.train.lora.copy()["r"], copy.copy(c.train.quantization)["load_in_4bit"]),
                            {"train.seed", "train.sft.optim", "train.lora.r", "train.quantization.load_in_4bit"}),
}


@pytest.mark.parametrize("form", sorted(READ_FORMS))
def test_every_form_of_read_is_recorded(form):
    """The check would be hollow if a form of read went unrecorded; reaching into a section or a
    mapping records only what is read of it, and ``paths`` nothing."""
    read, keys = READ_FORMS[form]
    found = Reads()
    read(recording(validate_params(repo_params()), found))
    assert {key for key in found if not any(under(key, other) for other in found - {key})} == keys  # the widest


def test_recording_params_are_the_params():
    """What a stage does with its params works as on the real ones: type checks, equality, the
    values and what pydantic and json make of them."""
    cfg = validate_params(repo_params())
    found = Reads()
    recorded = recording(cfg, found)
    assert isinstance(recorded, Params) and isinstance(recorded.train, TrainParams)
    assert isinstance(recorded.train.sft, dict) and recorded == cfg and cfg == recorded
    assert recorded.model_dump() == cfg.model_dump() and recorded.model_dump_json() == cfg.model_dump_json()
    assert json.dumps(recorded.train.sft) == json.dumps(cfg.train.sft) and hash(recorded.chat) == hash(cfg.chat)
    assert type(recorded.paths) is type(cfg.paths) and recorded.paths == cfg.paths and repr(recorded) == repr(cfg)
    assert validate_params(recorded.model_dump()) == cfg
    changed = recorded.model_copy(update={"chat": recorded.chat.model_copy(update={"system_prompt": "Hi."})})
    assert changed.chat.system_prompt == "Hi." and changed != cfg
