"""Stage ``export_model``: the merged model for llama.cpp, Ollama and LM Studio.

Writes into ``models/export``:

* ``model-<type>.gguf`` for each type in ``export.gguf`` (f16 and q8_0 by default): weights,
  tokenizer, special tokens and the chat template of training (``chat.system_prompt`` as the
  default system message included), so that llama.cpp builds the prompts training used;
  k-quants (q4_k_m, ...) come from the f16 file through llama.cpp's own quantizer;
* ``Modelfile`` for Ollama (``export.ollama`` names the GGUF file it loads): a ``TEMPLATE``
  derived from the same chat template and checked to render the same text, the stop words,
  and ``SYSTEM`` from ``chat.system_prompt`` (left out where Ollama's parser would not read it
  back whole, e.g. a zero-width joiner: the ``TEMPLATE`` puts the prompt first itself). Any
  Unicode in ``chat.system_prompt`` and ``generate_identity_data.name`` is written as typed.

    python -m src.stages.export_model
    ollama create juniper -f models/export/Modelfile && ollama run juniper
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from src.cli import run
from src.config import GGUF_MADE_FROM, Params
from src.files import output_folder, read_json
from src.gguf_writer import quantize_with_llama_cpp, read_config, write_gguf
from src.lineage import LINEAGE_FILE
from src.ollama import modelfile

log = logging.getLogger(__name__)


def gguf_name(kind: str) -> str:
    return f"model-{kind}.gguf"


def main(cfg: Params) -> dict[str, int]:
    from transformers import AutoTokenizer

    logging.getLogger("gguf").setLevel(logging.WARNING)  # its INFO lines say nothing a user needs
    folder, out, export = Path(cfg.paths.merged_model), Path(cfg.paths.export), cfg.export
    if export.gguf:
        read_config(folder)  # an architecture the exporter cannot write fails before any work
    tokenizer = AutoTokenizer.from_pretrained(folder)
    lineage = read_json(folder / LINEAGE_FILE) if (folder / LINEAGE_FILE).is_file() else None  # merge_model's
    sizes: dict[str, int] = {}
    # the types gguf writes first: the k-quants are made from one of their files
    kinds = sorted(export.gguf, key=lambda k: GGUF_MADE_FROM[k] is not None)
    with output_folder(out) as partial:
        for kind in kinds:
            start = time.monotonic()
            file = partial / gguf_name(kind)
            if GGUF_MADE_FROM[kind] is None:
                write_gguf(folder, file, kind, cfg.generate_identity_data.name, tokenizer, lineage)
            else:
                quantize_with_llama_cpp(partial / gguf_name(GGUF_MADE_FROM[kind]), file, kind)
            sizes[kind] = file.stat().st_size
            log.info("%s: %.1f MB in %.1f s", gguf_name(kind), sizes[kind] / 1e6, time.monotonic() - start)
        if export.ollama:
            text = modelfile(tokenizer, gguf_name(export.ollama), cfg.chat.system_prompt, lineage)
            (partial / "Modelfile").write_text(text, encoding="utf-8")
            log.info("Modelfile: FROM ./%s (ollama create <name> -f %s)", gguf_name(export.ollama),
                     out / "Modelfile")
    if "f16" in sizes:
        for kind, size in sizes.items():
            if kind != "f16":
                log.info("%s is %.2f of f16's size", kind, size / sizes["f16"])
    log.info("wrote %s", out)
    return sizes


if __name__ == "__main__":
    raise SystemExit(run(main, __doc__))
