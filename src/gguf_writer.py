"""A merged model folder as GGUF files for llama.cpp (and Ollama and LM Studio, which load them).

``write_gguf`` writes one GGUF file of a Llama-family folder (SmolLM2, Llama-2 and others whose
config names ``LlamaForCausalLM``) with the ``gguf`` package: the hyperparameters, the tokenizer
(byte-level BPE or SentencePiece), its special tokens and the folder's chat template exactly as
training used it, then the weights one tensor at a time (a 13B model never sits in memory twice).
``quantize_with_llama_cpp`` makes the types the gguf package does not write (the k-quants) from
such a file with llama.cpp's own quantizer (``GGUF_MADE_FROM`` in src/config.py says which).

    from src.gguf_writer import write_gguf
    write_gguf(Path("models/merged"), Path("models/export/model-q8_0.gguf"), "q8_0", name="Juniper")
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.config import GGUF_WRITTEN
from src.errors import PipelineError
from src.gguf_lineage import PLACEHOLDER, TENSOR_DIGEST_KEY, stamp_tensor_digest
from src.lineage import LINEAGE_KEY

ARCHITECTURES = ("LlamaForCausalLM",)


def _ggml(kind: str):
    """A GGUF_WRITTEN entry's file type and the type of each 2-D weight (1-D ones stay f32)."""
    import gguf

    return {"f16": (gguf.LlamaFileType.MOSTLY_F16, gguf.GGMLQuantizationType.F16),
            "bf16": (gguf.LlamaFileType.MOSTLY_BF16, gguf.GGMLQuantizationType.BF16),
            "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, gguf.GGMLQuantizationType.Q8_0)}[kind]


def read_config(folder: Path) -> dict:
    """The folder's config.json, refused with a one-line error unless it is a Llama-family model."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    arch = (config.get("architectures") or ["(none)"])[0]
    if arch not in ARCHITECTURES:
        raise PipelineError(f"{folder / 'config.json'}: architecture {arch} cannot be exported to GGUF "
                            f"(the exporter writes the Llama family: {', '.join(ARCHITECTURES)})")
    return config


def rope_theta(config: dict) -> float:
    """transformers 5 keeps it in ``rope_parameters``; older configs at the top level."""
    return float((config.get("rope_parameters") or {}).get("rope_theta") or config.get("rope_theta") or 10000.0)


def _add_hparams(writer, config: dict, kind: str, name: str) -> None:
    heads = config["num_attention_heads"]
    writer.add_name(name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_rope_dimension_count(config.get("head_dim") or config["hidden_size"] // heads)
    writer.add_rope_freq_base(rope_theta(config))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(_ggml(kind)[0])


def _tokens_by_id(tokenizer_json: dict) -> tuple[dict[int, str], dict[int, int]]:
    """tokenizer.json's tokens by id, and the GGUF types of its added tokens."""
    import gguf

    by_id = {i: t for t, i in tokenizer_json["model"]["vocab"].items()}
    kinds = {}
    for added in tokenizer_json.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
        kinds[added["id"]] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
    return by_id, kinds


def _byte_level_vocab(tokenizer_json: dict, n_vocab: int) -> tuple[list[str], list[int]]:
    """Tokens and their GGUF types read straight from tokenizer.json (gguf's BpeVocab refuses
    SmolLM2's, whose BPE model also sets byte_fallback)."""
    import gguf

    by_id, kinds = _tokens_by_id(tokenizer_json)
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(n_vocab)]
    types = [kinds.get(i, gguf.TokenType.NORMAL if i in by_id else gguf.TokenType.UNUSED) for i in range(n_vocab)]
    return tokens, types


def _sentencepiece_bpe_vocab(tokenizer_json: dict, n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """A SentencePiece model as transformers saves it (BPE with byte fallback over "▁" pieces)
    back in llama.cpp's SentencePiece form: a token's score is minus the rank of the first merge
    that makes it, so llama.cpp's highest-score-first merging repeats the BPE merge order."""
    import gguf

    rank: dict[str, int] = {}
    for i, merge in enumerate(tokenizer_json["model"]["merges"]):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        rank.setdefault(left + right, i)
    by_id, kinds = _tokens_by_id(tokenizer_json)
    unk = tokenizer_json["model"].get("unk_token")
    tokens, scores, types = [], [], []
    for i in range(n_vocab):
        token = by_id.get(i)
        tokens.append(token if token is not None else f"[PAD{i}]")
        scores.append(-float(rank[token]) if token in rank else 0.0)
        if token is None:
            types.append(gguf.TokenType.UNUSED)
        elif token == unk:
            types.append(gguf.TokenType.UNKNOWN)
        elif i in kinds:
            types.append(kinds[i])
        elif len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    return tokens, scores, types


def _add_vocab(writer, folder: Path, tokenizer, n_vocab: int) -> None:
    """The tokenizer as llama.cpp reads it: SentencePiece ("llama") from tokenizer.model or from
    the BPE form transformers saves it in, or byte-level BPE ("gpt2") from tokenizer.json;
    anything else is refused by name."""
    import gguf

    if (folder / "tokenizer.model").is_file():
        vocab = gguf.SentencePieceVocab(folder)
        tokens, scores, types = zip(*vocab.all_tokens())
        tokens, scores, types = list(tokens), list(scores), list(types)
        if len(tokens) < n_vocab:  # rows of the embedding past the tokenizer's: never produced
            pad = n_vocab - len(tokens)
            tokens += [f"[PAD{i}]".encode() for i in range(len(tokens), n_vocab)]
            scores += [-1000.0] * pad
            types += [gguf.TokenType.UNUSED] * pad
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        merges = False
    else:
        path = folder / "tokenizer.json"
        spec = json.loads(path.read_text(encoding="utf-8"))
        pre = (spec.get("pre_tokenizer") or {}).get("type")
        model = spec["model"]["type"]
        if model == "BPE" and pre == "ByteLevel":
            tokens, types = _byte_level_vocab(spec, n_vocab)
            writer.add_tokenizer_model("gpt2")
            writer.add_tokenizer_pre("gpt-2")  # ByteLevel's own regex is llama.cpp's "gpt-2" pre-tokenizer
            writer.add_token_list(tokens)
            writer.add_token_types(types)
            merges = True
        elif model == "BPE" and spec["model"].get("byte_fallback") and pre == "Metaspace":
            tokens, scores, types = _sentencepiece_bpe_vocab(spec, n_vocab)
            writer.add_tokenizer_model("llama")
            writer.add_tokenizer_pre("default")
            # llama.cpp puts "▁" before text that follows a special token (<s>[INST] ...);
            # transformers does so only where the tokenizer is "legacy": follow the tokenizer
            writer.add_add_space_prefix(_space_after_special(tokenizer))
            writer.add_token_list(tokens)
            writer.add_token_scores(scores)
            writer.add_token_types(types)
            merges = False
        else:
            raise PipelineError(f"{path}: tokenizer {model} with pre-tokenizer {pre} cannot be exported to "
                                "GGUF (the exporter writes SentencePiece and byte-level BPE tokenizers)")
    special = gguf.SpecialVocab(folder, load_merges=merges, n_vocab=n_vocab)
    # What transformers does, not what tokenizer files suggest: BOS added or not, and the template.
    special.add_special_token = {"bos": _adds_bos(tokenizer), "eos": False}
    special.chat_template = tokenizer.chat_template
    special.add_to_gguf(writer, quiet=True)


def _space_after_special(tokenizer) -> bool:
    """Whether text right after a special token starts with SentencePiece's "▁"."""
    special = tokenizer.eos_token or tokenizer.bos_token
    ids = tokenizer(f"{special}Hi", add_special_tokens=False)["input_ids"]
    return tokenizer.convert_ids_to_tokens(ids[1]).startswith("▁")


def _adds_bos(tokenizer) -> bool:
    ids = tokenizer("a")["input_ids"]
    return tokenizer.bos_token_id is not None and bool(ids) and ids[0] == tokenizer.bos_token_id


def _weights(folder: Path) -> Iterator[tuple[str, Path, tuple[int, ...]]]:
    """(name, file, shape) of every weight, across shards, in a stable order."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise PipelineError(f"{folder}: no .safetensors weights to export")
    for file in files:
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                yield name, file, tuple(f.get_slice(name).get_shape())


def _unpermute(x: np.ndarray, heads: int) -> np.ndarray:
    """transformers' rotary layout of q/k rows back to llama.cpp's (interleaved pairs)."""
    return x.reshape(heads, 2, x.shape[0] // heads // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


@dataclass
class _Plan:
    name: str          # the GGUF tensor name
    source: str        # the safetensors name
    file: Path
    shape: tuple[int, ...]
    qtype: object      # GGMLQuantizationType


def _plan(folder: Path, config: dict, kind: str) -> list[_Plan]:
    """Each weight's GGUF name and type, in the order the file holds them."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    target = _ggml(kind)[1]
    block = gguf.GGML_QUANT_SIZES[target][0]
    plans = []
    for source, file, shape in _weights(folder):
        if source.endswith("rotary_emb.inv_freq"):
            continue
        name = names.get_name(source, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise PipelineError(f"{file}: weight {source} has no GGUF name for the Llama architecture")
        if len(shape) == 1:
            qtype = gguf.GGMLQuantizationType.F32  # norms: llama.cpp keeps them in f32
        elif shape[-1] % block:
            qtype = gguf.GGMLQuantizationType.F16  # rows that do not split into blocks
        else:
            qtype = target
        plans.append(_Plan(name, source, file, shape, qtype))
    return plans


def _convert(data: np.ndarray, qtype) -> np.ndarray:
    import gguf

    if qtype == gguf.GGMLQuantizationType.F32:
        return data.astype(np.float32)
    if qtype == gguf.GGMLQuantizationType.F16:
        return data.astype(np.float16)
    return gguf.quants.quantize(data, qtype)


def _nbytes(shape: Sequence[int], qtype) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape[:-1])) * shape[-1] // block * size


def _add_base_model(writer, base: dict) -> None:
    """llama.cpp's ``general.base_model.*`` keys for a base from the Hub (its converter's, which
    the Hub reads to link a GGUF repository to its base model)."""
    if base.get("kind") != "hub" or "/" not in base.get("repo", ""):
        return
    owner, _, name = base["repo"].partition("/")
    writer.add_base_model_count(1)
    writer.add_base_model_name(0, name)
    writer.add_base_model_organization(0, owner)
    writer.add_base_model_repo_url(0, f"https://huggingface.co/{base['repo']}")


def write_gguf(folder: Path, out: Path, kind: str, name: str, tokenizer=None, lineage: dict | None = None) -> Path:
    """``folder`` (a merged model: safetensors, tokenizer, chat template) as a GGUF file of
    ``kind`` (one of GGUF_WRITTEN) at ``out``, with the ``lineage`` record (src/lineage.py) under
    LINEAGE_KEY and the digest of its tensor data under TENSOR_DIGEST_KEY (src/gguf_lineage.py)."""
    import gguf
    import torch
    from safetensors import safe_open
    from tqdm import tqdm

    if kind not in GGUF_WRITTEN:
        raise PipelineError(f"GGUF type {kind} is not written here (written: {', '.join(GGUF_WRITTEN)})")
    config = read_config(folder)
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    plans = _plan(folder, config, kind)
    if not any(p.name == "output.weight" for p in plans) and not config.get("tie_word_embeddings"):
        raise PipelineError(f"{folder}: no lm_head.weight and tie_word_embeddings is false")

    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(out, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    _add_hparams(writer, config, kind, name)
    _add_vocab(writer, folder, tokenizer, config["vocab_size"])
    if lineage is not None:
        writer.add_string(LINEAGE_KEY, json.dumps(lineage, sort_keys=True, ensure_ascii=False))
        _add_base_model(writer, lineage.get("base", {}))
    writer.add_string(TENSOR_DIGEST_KEY, PLACEHOLDER)  # written over once the tensors are in
    dtype = {gguf.GGMLQuantizationType.F32: np.float32, gguf.GGMLQuantizationType.F16: np.float16}
    for p in plans:
        writer.add_tensor_info(p.name, p.shape, dtype.get(p.qtype, np.float32), _nbytes(p.shape, p.qtype),
                               raw_dtype=None if p.qtype in dtype else p.qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    with ExitStack() as stack:  # each shard opened once
        shards = {f: stack.enter_context(safe_open(f, framework="pt")) for f in dict.fromkeys(p.file for p in plans)}
        for p in tqdm(plans, desc=f"{out.name}", unit="tensor", mininterval=2.0):
            _write_tensor(writer, p, shards[p.file].get_tensor(p.source).to(torch.float32).numpy(), heads, kv_heads)
    writer.close()
    stamp_tensor_digest(out)
    return out


def _write_tensor(writer, p: _Plan, data: np.ndarray, heads: int, kv_heads: int) -> None:
    if p.source.endswith("q_proj.weight"):
        data = _unpermute(data, heads)
    elif p.source.endswith("k_proj.weight"):
        data = _unpermute(data, kv_heads)
    writer.write_tensor_data(_convert(data, p.qtype))


def quantize_with_llama_cpp(source: Path, out: Path, kind: str) -> Path:
    """A k-quant of the GGUF file ``source`` (of the type GGUF_MADE_FROM names for ``kind``) by
    llama.cpp's own quantizer."""
    try:
        import llama_cpp
    except ImportError:
        raise PipelineError(f"export.gguf: {kind} is written by llama.cpp's quantizer: "
                            "pip install -r requirements-export.txt (llama-cpp-python)") from None
    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind.upper()}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), params)
    if code != 0:
        raise PipelineError(f"{out}: llama.cpp's quantizer failed (code {code})")
    stamp_tensor_digest(out)  # the quantizer copied the source's metadata, its digest with it
    return out
